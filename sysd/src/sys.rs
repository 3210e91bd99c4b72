//! The one place sysd needs `unsafe`: taking ownership of the readiness fd PID 1 passed us,
//! and a malloc setting.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::FromRawFd;

/// The pipe end PID 1 reads `READY\n` from.
pub struct ReadyFd(std::fs::File);

impl ReadyFd {
    /// Take the fd named by `BERTH_READY_FD`. Must be called first thing in `main`, before
    /// anything else opens files, so the number cannot have been reused. `None` when sysd
    /// was started by hand.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var(berth_api::READY_FD_ENV).ok()?;
        let fd: i32 = v.parse().ok().filter(|fd| *fd > 2)?;
        // SAFETY: PID 1 created this pipe end for us alone and left it open across exec; it
        // is the only fd above 2 we inherit, and nothing in this process has opened a file
        // yet, so owning it (and closing it on drop) cannot affect any other descriptor.
        Some(ReadyFd(unsafe { std::fs::File::from_raw_fd(fd) }))
    }

    /// Tell PID 1 the machine is ready; consumes the fd.
    pub fn notify(mut self) -> std::io::Result<()> {
        self.0.write_all(b"READY\n")
    }
}

/// A pidfd for `pid` (readable once the process has exited).
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(Into::into)
}

/// One malloc arena for the whole process. glibc gives threads arenas of their own (up to
/// 8 per core), and sysd's short-lived threads (log pumps, exec sessions, blocking waits)
/// would each leave freed memory resident in one: with a single arena, idle RSS stays low.
/// Call first thing in `main`, before other threads exist.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc tuning parameter; M_ARENA_MAX with a positive
    // value is always valid, and no other thread exists yet to race with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
