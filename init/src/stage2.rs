//! Stage 2: PID 1 on the real root. Finishes the mounts, sets up cgroup v2, supervises sysd,
//! reaps every orphan, and turns signals and the power button into an ordered shutdown.

use crate::config;
use crate::console;
use crate::mounts;
use crate::shutdown;
use crate::sys::RebootKind;
use berth_api::{BootInfo, Phase};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

const SYSD: &str = "/usr/bin/sysd";
/// Controllers enabled for children of the root cgroup and of `berth/`.
pub const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Key code of KEY_POWER in linux/input-event-codes.h.
const KEY_POWER: u16 = 116;
const EV_KEY: u16 = 1;

/// Run stage 2. Never returns.
pub fn run() -> ! {
    if std::process::id() != 1 {
        eprintln!(
            "init: stage 2 must run as PID 1 (this is PID {})",
            std::process::id()
        );
        std::process::exit(1);
    }
    // One signal path: block everything before anything else, read signals from a signalfd.
    let mask = SigSet::all();
    let _ = mask.thread_set_mask();
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let t = console::phase("stage2");

    let efi = Path::new("/sys/firmware/efi").exists();
    for m in mounts::stage2(efi) {
        if let Err(e) = mounts::mount(&m) {
            console::warn(&format!("{e}: {}", e.cause));
        }
    }
    let mut info = std::fs::read_to_string(berth_api::BOOT_INFO_PATH)
        .ok()
        .and_then(|s| BootInfo::from_json(&s).ok())
        .unwrap_or_default();
    info.phases.push(Phase {
        name: "stage2".into(),
        t,
    });
    if let Err(e) = setup_cgroups(Path::new(CGROUP_ROOT)) {
        let w = format!("cgroup setup: {e}");
        console::warn(&w);
        info.warnings.push(w);
    }
    for d in ["/var/lib/berth", "/var/log/berth", "/run/berth"] {
        let _ = std::fs::create_dir_all(d);
    }
    info.boot_count = match bump_boot_count(Path::new(berth_api::BOOT_COUNT_PATH)) {
        Ok(n) => n,
        Err(e) => {
            let w = format!(
                "cannot record the boot in {}: {e}",
                berth_api::BOOT_COUNT_PATH
            );
            console::warn(&w);
            info.warnings.push(w);
            0
        }
    };
    console::info(&format!(
        "slot {} boot #{} state: {}",
        info.slot, info.boot_count, info.state_action
    ));
    apply_config(&mut info);
    save_info(&info);

    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            // Without signals we cannot shut down on request; still supervise.
            console::warn(&format!("signalfd: {e}"));
            idle_forever()
        }
    };
    let buttons = power_buttons();
    Supervisor::new(info).run(&sfd, &buttons)
}

/// Load (first boot: discover, validate, persist) and apply the machine config.
fn apply_config(info: &mut BootInfo) {
    // A config put on trial by `osctl config apply` in an earlier boot never became
    // healthy (the node rebooted first): back to the last known good one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match berth_config::store::Store::new(Path::new("/var")).check_at_boot(info.boot_count, now) {
        Ok(berth_config::store::BootCheck::Reverted) => {
            let m = "config: the config on trial did not become healthy before a reboot; \
                     reverted to the last known good one";
            console::warn(m);
            info.warnings.push(m.into());
        }
        Ok(_) => {}
        Err(e) => console::warn(&format!("config: cannot check the config trial: {e}")),
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let boot_disk = (!info.boot_disk.is_empty()).then_some(info.boot_disk.as_str());
    let loaded = config::load(Path::new("/var"), &cmdline, boot_disk);
    if let Some(e) = &loaded.error {
        for l in e.lines() {
            console::line(&format!("berth: CONFIG ERROR: {l}"));
        }
        info.config_error = e.clone();
    }
    info.config_source = loaded.source.clone();
    let mut problems = config::apply(&loaded.config, Path::new("/proc/sys"), Path::new("/"));
    if let Err(e) = config::set_hostname(&loaded.config) {
        problems.push(e);
    }
    for p in problems {
        console::warn(&format!("config: {p}"));
        info.warnings.push(format!("config: {p}"));
    }
    console::info(&format!(
        "config: {} (hostname {})",
        loaded.source,
        loaded.config.host.hostname()
    ));
}

fn idle_forever() -> ! {
    loop {
        let _ = waitpid(Pid::from_raw(-1), None);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn save_info(info: &BootInfo) {
    let p = Path::new(berth_api::BOOT_INFO_PATH);
    let tmp = p.with_extension("json.tmp");
    if std::fs::write(&tmp, info.to_json())
        .and_then(|_| std::fs::rename(&tmp, p))
        .is_err()
    {
        console::warn("cannot write /run/berth/boot.json");
    }
}

/// Enable the controllers for children of the root cgroup and of `berth/`, where sysd puts
/// itself and every container.
pub fn setup_cgroups(root: &Path) -> std::io::Result<()> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    let line = subtree_line(&wanted);
    std::fs::write(root.join("cgroup.subtree_control"), &line)?;
    let berth = root.join("berth");
    std::fs::create_dir_all(&berth)?;
    std::fs::write(berth.join("cgroup.subtree_control"), &line)?;
    std::fs::create_dir_all(berth.join("sysd"))?;
    Ok(())
}

/// `+cpu +memory ...` for `cgroup.subtree_control`.
pub fn subtree_line(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Increment the persistent boot counter (write-new, fsync, rename, fsync dir).
pub fn bump_boot_count(path: &Path) -> std::io::Result<u64> {
    let n = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{n}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(n)
}

/// Event devices named "Power Button" (ACPI button driver + evdev).
fn power_buttons() -> Vec<File> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        if dev_name.trim() == "Power Button" {
            if let Ok(f) = File::open(Path::new("/dev/input").join(&name)) {
                out.push(f);
            }
        }
    }
    out
}

/// Did this chunk of `struct input_event`s contain a KEY_POWER press?
pub fn power_pressed(buf: &[u8]) -> bool {
    // struct input_event on 64-bit: struct timeval (16) + type u16 + code u16 + value i32.
    buf.chunks_exact(24).any(|ev| {
        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// What sysd wrote on its readiness pipe: `READY` (the API is up) and `SERVICES` (every
/// boot-time container is up). Both may arrive in one read.
pub fn ready_messages(buf: &[u8]) -> (bool, bool) {
    let has = |word: &[u8]| buf.windows(word.len()).any(|w| w == word);
    (has(b"READY"), has(b"SERVICES"))
}

struct Supervisor {
    info: BootInfo,
    sysd: Option<Pid>,
    ready_pipe: Option<File>,
    starts: u32,
    ready_once: bool,
    services_once: bool,
    next_start: Option<Instant>,
    last_start: Instant,
    failures: u32,
}

impl Supervisor {
    fn new(info: BootInfo) -> Self {
        Supervisor {
            info,
            sysd: None,
            ready_pipe: None,
            starts: 0,
            ready_once: false,
            services_once: false,
            next_start: Some(Instant::now()),
            last_start: Instant::now(),
            failures: 0,
        }
    }

    fn start_sysd(&mut self) {
        self.next_start = None;
        self.starts += 1;
        self.last_start = Instant::now();
        let (rd, wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                console::warn(&format!("pipe for sysd: {e}"));
                self.schedule_restart();
                return;
            }
        };
        // The write end is inherited by sysd (no CLOEXEC), the read end stays here.
        let _ = nix::fcntl::fcntl(
            &wr,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        );
        let mut cmd = std::process::Command::new(SYSD);
        cmd.env(berth_api::READY_FD_ENV, wr.as_raw_fd().to_string())
            .env("BERTH_SYSD_START", self.starts.to_string());
        crate::sys::default_signals_on_exec(&mut cmd);
        let res = cmd.spawn();
        drop(wr);
        match res {
            Ok(child) => {
                let pid = child.id();
                // The one reaper is the loop below: forget the handle without waiting.
                drop(child);
                let _ = std::fs::write(
                    Path::new(CGROUP_ROOT).join("berth/sysd/cgroup.procs"),
                    pid.to_string(),
                );
                self.sysd = Some(Pid::from_raw(pid as i32));
                self.ready_pipe = Some(File::from(rd));
                if self.starts > 1 {
                    console::info(&format!(
                        "sysd restarted (pid {pid}, start #{})",
                        self.starts
                    ));
                }
            }
            Err(e) => {
                console::warn(&format!("cannot start {SYSD}: {e}"));
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        // A sysd that ran for a minute earns a fresh backoff.
        if self.last_start.elapsed() > Duration::from_secs(60) {
            self.failures = 0;
        }
        let delay = Duration::from_millis(200) * 2u32.saturating_pow(self.failures.min(6));
        self.failures += 1;
        self.next_start = Some(Instant::now() + delay.min(Duration::from_secs(10)));
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(ws) => {
                    if ws.pid().is_some() && ws.pid() == self.sysd {
                        console::warn(&format!("sysd exited ({ws:?}); restarting it"));
                        self.sysd = None;
                        self.ready_pipe = None;
                        self.schedule_restart();
                    }
                }
            }
        }
    }

    fn read_ready(&mut self) {
        let Some(p) = self.ready_pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64];
        match p.read(&mut buf) {
            Ok(0) | Err(_) => self.ready_pipe = None,
            Ok(n) => {
                let (ready, services) = ready_messages(&buf[..n]);
                if ready {
                    if !self.ready_once {
                        self.ready_once = true;
                        self.phase("ready");
                    } else {
                        console::info(&format!("sysd ready again (start #{})", self.starts));
                    }
                }
                if services && !self.services_once {
                    self.services_once = true;
                    self.phase("services");
                }
            }
        }
    }

    /// Prints `berth: <name> t=...` and records the phase in the boot info.
    fn phase(&mut self, name: &str) {
        let t = console::phase(name);
        self.info.phases.push(Phase {
            name: name.into(),
            t,
        });
        save_info(&self.info);
    }

    fn run(mut self, sfd: &SignalFd, buttons: &[File]) -> ! {
        loop {
            if let Some(at) = self.next_start {
                if Instant::now() >= at {
                    self.start_sysd();
                }
            }
            let timeout = match self.next_start {
                Some(at) => {
                    let ms = at.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let pipe_idx = self.ready_pipe.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let btn_start = fds.len();
            for b in buttons {
                fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
            }
            if poll(&mut fds, timeout).is_err() {
                continue;
            }
            let ready = |i: usize, fds: &[PollFd]| {
                fds[i]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            };
            let sig_ready = ready(0, &fds);
            let pipe_ready = pipe_idx.is_some_and(|i| ready(i, &fds));
            let pressed: Vec<usize> = (btn_start..fds.len()).filter(|i| ready(*i, &fds)).collect();
            drop(fds);
            if pipe_ready {
                self.read_ready();
            }
            for i in pressed {
                let mut buf = [0u8; 24 * 16];
                let mut f = &buttons[i - btn_start];
                if let Ok(n) = f.read(&mut buf) {
                    if power_pressed(&buf[..n]) {
                        console::info("power button pressed");
                        shutdown::run(RebootKind::PowerOff, self.sysd);
                    }
                }
            }
            if sig_ready {
                while let Ok(Some(si)) = sfd.read_signal() {
                    match Signal::try_from(si.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            shutdown::run(RebootKind::Reboot, self.sysd)
                        }
                        Ok(Signal::SIGUSR2) | Ok(Signal::SIGPWR) => {
                            shutdown::run(RebootKind::PowerOff, self.sysd)
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_messages() {
        assert_eq!(ready_messages(b"READY\n"), (true, false));
        assert_eq!(ready_messages(b"SERVICES\n"), (false, true));
        assert_eq!(ready_messages(b"READY\nSERVICES\n"), (true, true));
        assert_eq!(ready_messages(b"garbage"), (false, false));
    }

    #[test]
    fn controllers_line() {
        assert_eq!(subtree_line(&["cpu", "memory"]), "+cpu +memory");
    }

    #[test]
    fn cgroup_setup_on_fake_cgroupfs() {
        let d = std::env::temp_dir().join(format!("berth-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        setup_cgroups(&d).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids +io +cpuset"
        );
        assert!(d.join("berth/sysd").is_dir());
        // A controller the kernel lacks is not asked for.
        std::fs::write(d.join("cgroup.controllers"), "cpu pids\n").unwrap();
        setup_cgroups(&d).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("berth/cgroup.subtree_control")).unwrap(),
            "+cpu +pids"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn boot_counter_persists() {
        let d = std::env::temp_dir().join(format!("berth-bc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let p = d.join("lib/berth/boot-count");
        assert_eq!(bump_boot_count(&p).unwrap(), 1);
        assert_eq!(bump_boot_count(&p).unwrap(), 2);
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(bump_boot_count(&p).unwrap(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn power_key_event() {
        let mut ev = vec![0u8; 24];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(power_pressed(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes()); // release
        assert!(!power_pressed(&ev));
        assert!(!power_pressed(&[0u8; 24]));
    }
}
