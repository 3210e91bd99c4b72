//! Ordered shutdown: stop sysd (which stops the containers in reverse order), then every
//! other process, sync, unmount what can be unmounted, remount the rest read-only, and call
//! reboot(2).

use crate::console;
use crate::sys::{self, RebootKind};
use berth_api::mountinfo::parse_mountinfo;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::mount::{MountFlags, UnmountFlags};
use std::time::{Duration, Instant};

/// How long sysd gets to stop the containers.
pub const SYSD_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the remaining processes get after SIGTERM.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// Reap children until `pid` is gone (or every child when `pid` is None) or the timeout passes.
/// Returns true when the awaited process(es) exited.
fn reap_until(pid: Option<Pid>, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(ws) => {
                if pid.is_some() && ws.pid() == pid {
                    return true;
                }
                continue;
            }
            // ECHILD: nothing left at all.
            Err(_) => return true,
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Carry out the shutdown. Never returns.
pub fn run(kind: RebootKind, sysd: Option<Pid>) -> ! {
    let what = match kind {
        RebootKind::Reboot => "reboot",
        RebootKind::PowerOff => "poweroff",
    };
    console::phase(&format!("shutdown ({what})"));
    if let Some(pid) = sysd {
        let _ = kill(pid, Signal::SIGTERM);
        if !reap_until(Some(pid), SYSD_STOP_TIMEOUT) {
            console::warn(&format!(
                "sysd did not stop within {} s; killing it",
                SYSD_STOP_TIMEOUT.as_secs()
            ));
            let _ = kill(pid, Signal::SIGKILL);
            reap_until(Some(pid), Duration::from_secs(2));
        }
    }
    // Everything else: TERM, a grace period, then KILL. kill(-1) spares PID 1 itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_until(None, KILL_TIMEOUT) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_until(None, Duration::from_secs(2));
    }
    sys::sync();
    unmount_all();
    sys::sync();
    console::phase(&format!("{what} now"));
    sys::reboot(kind);
    // Not PID 1 (only reachable in a test run by hand).
    std::process::exit(0)
}

/// Unmount in reverse mount order; what cannot be unmounted is remounted read-only.
fn unmount_all() {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let keep = ["/", "/proc", "/sys", "/dev"];
    for m in parse_mountinfo(&text).iter().rev() {
        if keep.contains(&m.target.as_str()) {
            continue;
        }
        if rustix::mount::unmount(m.target.as_str(), UnmountFlags::empty()).is_err() && !m.read_only
        {
            let r = rustix::mount::mount_remount(m.target.as_str(), MountFlags::RDONLY, "");
            if let Err(e) = r {
                console::warn(&format!(
                    "cannot unmount or remount read-only {}: {e}",
                    m.target
                ));
            }
        }
    }
}
