//! The one place sysd needs `unsafe`: taking ownership of the readiness fd PID 1 passed us,
//! and a malloc setting.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::FromRawFd;

/// The pipe end PID 1 reads `READY\n` (the API is up) and then `SERVICES\n` (every boot-time
/// container runs) from.
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

    /// Tell PID 1 the API is up (`berth: ready`).
    pub fn ready(&mut self) -> std::io::Result<()> {
        self.0.write_all(b"READY\n")
    }

    /// Tell PID 1 every system container and boot-time workload runs (`berth: services`);
    /// consumes the fd, the last message.
    pub fn services(mut self) -> std::io::Result<()> {
        self.0.write_all(b"SERVICES\n")
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

/// `struct mount_attr` of `mount_setattr(2)` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A user namespace whose ids `0..size` are host ids `base..base+size` (uids and gids
/// alike), held by an fd: for idmapped mounts. A short-lived child enters a new user
/// namespace, we write its maps and open `/proc/PID/ns/user`, and the child exits.
pub fn userns_fd(base: u32, size: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::{Error, Read, Write};
    use std::os::fd::AsRawFd;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: fork duplicates only the calling thread; the child below calls nothing but
    // the raw syscalls unshare, write, pause and _exit (all async-signal-safe: no locks,
    // no allocation), so the other threads' state copied into it is never touched.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os_error());
    }
    if pid == 0 {
        let w = ready_w.as_raw_fd();
        // SAFETY: the child of fork: only async-signal-safe syscalls on an fd it owns (its
        // copy of the pipe end) and a stack byte; it never returns into Rust code (the
        // parent SIGKILLs it), so no destructor or handler of the parent's runs here.
        unsafe {
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(w, (&ok as *const u8).cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_w);
    let result = (|| {
        let mut ok = [0u8];
        std::fs::File::from(ready_r).read_exact(&mut ok)?;
        if ok[0] != 1 {
            return Err(Error::other("cannot create a user namespace"));
        }
        let line = format!("0 {base} {size}\n");
        for map in ["uid_map", "gid_map"] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/{map}"))?
                .write_all(line.as_bytes())?;
        }
        Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))?.into())
    })();
    let child = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Bind `src` onto `dst` (an existing directory) read-only and idmapped through `userns`
/// (from [`userns_fd`]): through `dst`, a file owned by id `n` on disk is owned by host
/// id `base + n`, which is `n` inside the namespace. Needs Linux 5.12 and a filesystem
/// that supports idmapped mounts (ext4, xfs, btrfs, tmpfs from 6.3); overlayfs takes such
/// mounts as layers from 5.19.
pub fn idmapped_bind(
    src: &std::path::Path,
    dst: &std::path::Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
    use std::os::fd::AsRawFd;
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from `attr`, a live
    // repr(C) struct laid out as the kernel's `struct mount_attr` (version 0, 32 bytes);
    // the path is an empty NUL-terminated string with AT_EMPTY_PATH, and `tree` is an open
    // fd we own for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}
