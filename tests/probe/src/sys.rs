//! The raw system calls the probes make. Each wrapper returns `Ok` with the call's result
//! or `Err(errno)`; none of them dereferences memory it does not own.
#![allow(unsafe_code)]

use std::ffi::CString;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(r: libc::c_long) -> Result<libc::c_long, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

pub fn mknod(path: &str, block: bool, major: u32, minor: u32) -> Result<(), i32> {
    let mode = if block { libc::S_IFBLK } else { libc::S_IFCHR } | 0o600;
    let p = cstr(path);
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) } as libc::c_long)
        .map(|_| ())
}

pub fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), i32> {
    let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
    // SAFETY: the three strings are NUL-terminated and outlive the call; data is NULL.
    check(
        unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) }
            as libc::c_long,
    )
    .map(|_| ())
}

pub fn unshare(flags: i32) -> Result<(), i32> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) } as libc::c_long).map(|_| ())
}

pub fn ptrace_attach(pid: i32) -> Result<(), i32> {
    // SAFETY: PTRACE_ATTACH takes no pointers (addr and data are ignored).
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(r).map(|_| ())
}

pub fn ptrace_detach(pid: i32) {
    // SAFETY: PTRACE_DETACH takes no pointers here (data 0: no signal).
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        );
    }
}

/// init_module with an image that is not a module: EPERM when the call is refused, an
/// ENOEXEC-like error when the kernel got to parse it.
pub fn init_module_junk() -> Result<(), i32> {
    let junk = [0u8; 64];
    let params = cstr("");
    // SAFETY: `junk` is a readable buffer of the length passed; `params` is NUL-terminated.
    check(unsafe {
        libc::syscall(
            libc::SYS_init_module,
            junk.as_ptr(),
            junk.len(),
            params.as_ptr(),
        )
    })
    .map(|_| ())
}

/// io_uring_setup(1, &params): ENOSYS when the profile refuses it.
pub fn io_uring_setup() -> Result<i32, i32> {
    let mut params = [0u8; 120]; // struct io_uring_params
                                 // SAFETY: `params` is a writable buffer as large as struct io_uring_params.
    let r = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) })?;
    Ok(r as i32)
}

/// bpf(BPF_PROG_LOAD) of an empty program: EPERM when refused, EINVAL when the kernel
/// looked at it.
pub fn bpf_prog_load_empty() -> Result<(), i32> {
    let attr = [0u8; 128]; // union bpf_attr, zeroed: prog_type 0, no instructions
                           // SAFETY: `attr` is a readable buffer of the size passed.
    check(unsafe { libc::syscall(libc::SYS_bpf, 5i32, attr.as_ptr(), attr.len() as u32) })
        .map(|_| ())
}

/// open_by_handle_at (the "shocker" escape) with a bogus handle on `/`.
pub fn open_by_handle_at() -> Result<(), i32> {
    let root = cstr("/");
    // SAFETY: `root` is NUL-terminated; the fd is closed below.
    let dirfd = unsafe { libc::open(root.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if dirfd < 0 {
        return Err(errno());
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[8] }
    let mut handle = [0u8; 16];
    handle[0] = 8;
    handle[4] = 1; // FILEID_INO32_GEN
    handle[8] = 2; // inode 2: the root of most filesystems
                   // SAFETY: `handle` is a readable, writable buffer of 16 bytes holding a file_handle
                   // header and 8 bytes of handle; `dirfd` is open.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dirfd,
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        )
    });
    // SAFETY: dirfd is ours and open.
    unsafe { libc::close(dirfd) };
    if let Ok(fd) = r {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd as i32) };
    }
    r.map(|_| ())
}

/// reboot(2) with a command that does not exist: EPERM when refused, EINVAL when allowed.
pub fn reboot_invalid() -> Result<(), i32> {
    // SAFETY: reboot takes no pointers for this command.
    check(unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            0x0bad_c0de_u32,
            0usize,
        )
    })
    .map(|_| ())
}

pub fn kill0(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks the pid.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub fn connect_unix(path: &str) -> Result<(), i32> {
    std::os::unix::net::UnixStream::connect(path)
        .map(|_| ())
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}
