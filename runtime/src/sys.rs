//! The few raw system calls the runtime needs that neither `nix` nor `caps`
//! wrap safely. Every `unsafe` block of the crate lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Outcome of [`clone_fork`].
pub enum CloneResult {
    /// We are the new process.
    Child,
    /// We are the caller; the new process has this pid.
    Parent(i32),
}

/// `clone(2)` with fork semantics (no new stack, copy of the address space),
/// used to create a process directly inside new namespaces and, with
/// `CLONE_PARENT`, as a sibling of the caller.
///
/// Must only be called from a single-threaded process (the hidden init entry
/// point or a single-threaded CLI): the child continues running Rust code.
pub fn clone_fork(flags: libc::c_int) -> io::Result<CloneResult> {
    // SAFETY: raw clone with a NULL stack behaves like fork(2): the child gets a
    // copy-on-write copy of the (single-threaded) caller's memory, including the
    // stack, so returning into Rust code in both processes is sound. No pointer
    // arguments are passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(pid as i32)),
    }
}

/// Classic BPF instruction, as `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

/// Installs a seccomp filter for the calling thread (`seccomp(2)`,
/// `SECCOMP_SET_MODE_FILTER`).
pub fn seccomp_install(prog: &[SockFilter], flags: libc::c_ulong) -> io::Result<()> {
    let len = libc::c_ushort::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let fprog = SockFprog {
        len,
        filter: prog.as_ptr(),
    };
    // SAFETY: `fprog` points to `len` valid, initialised sock_filter structs that
    // outlive the call; the kernel copies the program before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags,
            &fprog as *const SockFprog,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the return value is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes `fd` the controlling terminal of the calling session (`TIOCSCTTY`).
pub fn set_controlling_terminal(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, no memory is passed.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the terminal window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `struct winsize` from the valid pointer.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setrlimit(2)` for a raw resource number.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit struct for the duration of the call.
    let ret = unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of an fd number inherited from the parent process.
///
/// # Panics
/// Never; returns an error when the fd is not open.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above) and by protocol was handed to this
    // process for its exclusive use (its number comes from our own parent).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clears `FD_CLOEXEC` on `fd` so it survives `execve`.
/// Async-signal-safe (only `fcntl`), so it may run in a `pre_exec` hook.
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd, no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd, no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers a `pre_exec` hook that clears `FD_CLOEXEC` on `fd` in the child,
/// so the re-executed init process inherits the sync socket. The hook only
/// calls `fcntl`, which is async-signal-safe, so this is sound even when the
/// caller is multi-threaded (sysd).
pub fn keep_fd_on_exec(cmd: &mut std::process::Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only performs
    // async-signal-safe fcntl calls; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || clear_cloexec(fd));
    }
}

/// `umask(2)`.
pub fn umask(mask: u32) {
    // SAFETY: umask cannot fail and takes a plain integer.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

/// `setdomainname(2)`.
pub fn setdomainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which
    // outlives the call; the kernel copies them.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Outcome of [`fork`].
pub enum ForkResult {
    Child,
    Parent(i32),
}

/// `fork(2)`. Callers must only use it while the process is single-threaded
/// (checked by [`threads`] == 1), so the child may keep running Rust code.
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: only called when the process has exactly one thread, so no lock
    // can be held by another thread at the time of the fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent(pid)),
    }
}

/// Number of threads of the calling process.
pub fn threads() -> usize {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(17)?.parse().ok()
        })
        .unwrap_or(usize::MAX)
}

/// Restores the default SIGPIPE disposition (Rust ignores it, and an ignored
/// disposition survives `execve`).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL involves no handler code, so it cannot
    // break any invariant of the running program.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
