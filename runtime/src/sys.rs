//! The few raw system calls the runtime needs that neither `nix` nor `caps`
//! wrap safely. Every `unsafe` block of the crate lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// One eBPF instruction, as `struct bpf_insn` (`regs`: dst in the low
/// nibble, src in the high nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl BpfInsn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        BpfInsn {
            code,
            regs: (src << 4) | (dst & 0xf),
            off,
            imm,
        }
    }
    /// `dst = *(u32 *)(src + off)` (BPF_LDX | BPF_W | BPF_MEM).
    pub const fn ldx_w(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x61, dst, src, off, 0)
    }
    /// `dst = (u32)src` (BPF_ALU | BPF_MOV | BPF_X).
    pub const fn mov32_reg(dst: u8, src: u8) -> Self {
        Self::new(0xbc, dst, src, 0, 0)
    }
    /// `dst = (u32)dst >> imm` (BPF_ALU | BPF_RSH | BPF_K).
    pub const fn rsh32_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x74, dst, 0, 0, imm)
    }
    /// `dst = (u32)dst & imm` (BPF_ALU | BPF_AND | BPF_K).
    pub const fn and32_imm(dst: u8, imm: i32) -> Self {
        Self::new(0x54, dst, 0, 0, imm)
    }
    /// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
    pub const fn mov64_imm(dst: u8, imm: i32) -> Self {
        Self::new(0xb7, dst, 0, 0, imm)
    }
    /// `if dst != imm goto +off` (BPF_JMP | BPF_JNE | BPF_K).
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x55, dst, 0, off, imm)
    }
    /// `if dst == imm goto +off` (BPF_JMP | BPF_JEQ | BPF_K).
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Self {
        Self::new(0x15, dst, 0, off, imm)
    }
    /// `if dst != src goto +off` (BPF_JMP | BPF_JNE | BPF_X).
    pub const fn jne_reg(dst: u8, src: u8, off: i16) -> Self {
        Self::new(0x5d, dst, src, off, 0)
    }
    /// `return r0` (BPF_JMP | BPF_EXIT).
    pub const fn exit() -> Self {
        Self::new(0x95, 0, 0, 0, 0)
    }
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (up to
/// `expected_attach_type`; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfGetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member the kernel expects for `cmd`,
/// and every pointer inside it must be valid for the access `cmd` makes.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: forwarded to the caller: `attr` is a valid, initialised
    // `bpf_attr` prefix of `size_of::<T>()` bytes for this command.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program; on failure the verifier's
/// log is left in `log` (NUL-terminated).
pub fn bpf_prog_load_cgroup_device(
    insns: &[BpfInsn],
    license: &std::ffi::CStr,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let insn_cnt = u32::try_from(insns.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"berth_devs");
    let mut attr = BpfProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: 6, // BPF_CGROUP_DEVICE
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: `attr` is the BPF_PROG_LOAD layout; `insns` (insn_cnt
    // entries), `license` (NUL-terminated) and `log` (log_size writable
    // bytes) all outlive the call, and the kernel copies the program.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: the kernel just returned this new fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attaches `prog` to the cgroup directory `cgroup` with `BPF_F_ALLOW_MULTI`.
pub fn bpf_prog_attach(
    cgroup: &impl AsRawFd,
    prog: &impl AsRawFd,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = BpfAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH layout and holds no pointers.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// Detaches `prog` from the cgroup directory `cgroup`.
pub fn bpf_prog_detach(
    cgroup: &impl AsRawFd,
    prog: &impl AsRawFd,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = BpfAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_DETACH layout and holds no pointers.
    unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// Ids of the programs of `attach_type` attached directly to `cgroup`.
pub fn bpf_prog_query(cgroup: &impl AsRawFd, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = BpfQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_QUERY layout; `prog_ids` points to
    // `prog_cnt` writable u32s that outlive the call.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    ids.truncate((attr.prog_cnt as usize).min(64));
    Ok(ids)
}

/// An fd for the loaded BPF program with id `id`.
pub fn bpf_prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = BpfGetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_GET_FD_BY_ID layout, no pointers.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: the kernel just returned this new fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
