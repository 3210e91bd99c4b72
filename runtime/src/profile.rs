//! The default security profile sysd applies to the images it runs:
//! Docker's default capability set, a seccomp policy equivalent to Docker's
//! default profile (for that capability set, on this architecture),
//! `noNewPrivileges`, Docker's masked and read-only `/proc` paths and a
//! read-only `/sys`.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilitiesBuilder, LinuxSeccomp, Spec};

/// Docker's default capabilities, without CAP_MKNOD: device nodes come from the runtime, never from the
/// workload (the device cgroup filter denies mknod of anything else anyway).
pub const DEFAULT_CAPS: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths masked in every container (Docker's list).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in every container (Docker's list).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The io_uring syscalls, which fail with ENOSYS in the default profile.
pub const IO_URING: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// Syscalls allowed unconditionally: Docker's default allow list plus the
/// groups it enables for the default capabilities (`chroot` for
/// CAP_SYS_CHROOT) and for x86_64/arm64.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "chroot",
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET | CLONE_NEWCGROUP`: clone with any of them is refused
/// without CAP_SYS_ADMIN.
const CLONE_NS_MASK: u64 = 0x7e02_0000;

/// Docker's default seccomp profile for [`DEFAULT_CAPS`].
pub fn default_seccomp() -> LinuxSeccomp {
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [
            { "names": ALLOWED, "action": "SCMP_ACT_ALLOW" },
            { "names": ["socket"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": libc::AF_VSOCK, "op": "SCMP_CMP_NE" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_EQ" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 131072, "op": "SCMP_CMP_EQ" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 131080, "op": "SCMP_CMP_EQ" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ" }] },
            { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": CLONE_NS_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }] },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS },
            // io_uring bypasses the syscall filter for the operations it
            // submits; programs fall back to plain syscalls on ENOSYS.
            { "names": IO_URING, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS },
        ]
    });
    // The JSON above is a constant of this crate; it always deserialises.
    serde_json::from_value(json).unwrap_or_default()
}

/// The system calls Docker's default profile allows only when a capability
/// beyond the default set is granted (Docker's `includes.caps` groups, for
/// x86_64 and arm64). Without these, a capability added to a container would
/// be granted and still refused by the filter.
pub const CAP_SYSCALLS: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// Docker's default seccomp profile for [`DEFAULT_CAPS`] plus `extra`: the
/// capability-conditional system calls of every extra capability are allowed,
/// and with `CAP_SYS_ADMIN` `clone` may create namespaces, as in Docker.
pub fn seccomp_for(extra: &[Capability]) -> LinuxSeccomp {
    let mut s = default_seccomp();
    let mut names: Vec<String> = Vec::new();
    for (cap, calls) in CAP_SYSCALLS {
        if extra.contains(cap) {
            names.extend(calls.iter().map(|c| c.to_string()));
        }
    }
    names.sort();
    names.dedup();
    let mut syscalls = s.syscalls().clone().unwrap_or_default();
    if extra.contains(&Capability::SysAdmin) {
        names.push("clone".into());
    }
    if !names.is_empty() {
        let rule = serde_json::json!({ "names": names, "action": "SCMP_ACT_ALLOW" });
        if let Ok(r) = serde_json::from_value(rule) {
            syscalls.push(r);
        }
    }
    s.set_syscalls(Some(syscalls));
    s
}

/// Applies the default profile to `spec` in place: capabilities (all five
/// sets: bounding, effective, permitted = Docker's set; inheritable and
/// ambient empty), `noNewPrivileges`, seccomp, masked and read-only paths,
/// a `nodev` `/dev` tmpfs and a read-only `/sys` mount.
pub fn apply_default(spec: &mut Spec) {
    let caps: Capabilities = DEFAULT_CAPS.iter().copied().collect();
    let lc = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .unwrap_or_default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_capabilities(Some(lc));
    process.set_no_new_privileges(Some(true));
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_seccomp(Some(default_seccomp()));
    let mut masked: Vec<String> = linux.masked_paths().clone().unwrap_or_default();
    for p in MASKED_PATHS {
        if !masked.iter().any(|m| m == p) {
            masked.push(p.to_string());
        }
    }
    linux.set_masked_paths(Some(masked));
    let mut ro: Vec<String> = linux.readonly_paths().clone().unwrap_or_default();
    for p in READONLY_PATHS {
        if !ro.iter().any(|m| m == p) {
            ro.push(p.to_string());
        }
    }
    linux.set_readonly_paths(Some(ro));
    spec.set_linux(Some(linux));

    if let Some(mounts) = spec.mounts_mut() {
        for m in mounts.iter_mut() {
            if m.destination() == std::path::Path::new("/dev")
                && m.typ().as_deref() == Some("tmpfs")
            {
                // Nodes made with mknod on /dev cannot be opened; the
                // runtime binds the host's nodes for linux.devices instead.
                let mut opts = m.options().clone().unwrap_or_default();
                opts.retain(|o| o != "dev");
                if !opts.iter().any(|o| o == "nodev") {
                    opts.push("nodev".into());
                }
                m.set_options(Some(opts));
            }
            if m.destination() == std::path::Path::new("/sys") {
                let mut opts = m.options().clone().unwrap_or_default();
                opts.retain(|o| o != "rw");
                if !opts.iter().any(|o| o == "ro") {
                    opts.push("ro".into());
                }
                m.set_options(Some(opts));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_sets_everything() {
        let mut spec = Spec::default();
        apply_default(&mut spec);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let c = p.capabilities().as_ref().unwrap();
        assert_eq!(c.bounding().as_ref().unwrap().len(), 13);
        for set in [c.bounding(), c.effective(), c.permitted()] {
            assert!(!set.as_ref().unwrap().contains(&Capability::Mknod));
        }
        let dev = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/dev"))
            .unwrap();
        assert!(dev.options().as_ref().unwrap().iter().any(|o| o == "nodev"));
        assert!(!c
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(c.ambient().as_ref().unwrap().is_empty());
        let l = spec.linux().as_ref().unwrap();
        assert!(l
            .masked_paths()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m == "/proc/kcore"));
        assert!(l
            .readonly_paths()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m == "/proc/sys"));
        let s = l.seccomp().as_ref().unwrap();
        assert!(s.syscalls().as_ref().unwrap().len() > 5);
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn extra_capabilities_open_their_system_calls() {
        let names = |s: &LinuxSeccomp| -> Vec<String> {
            s.syscalls()
                .clone()
                .unwrap_or_default()
                .iter()
                .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
                .filter(|r| r.args().as_ref().map(|a| a.is_empty()).unwrap_or(true))
                .flat_map(|r| r.names().clone())
                .collect()
        };
        let base = names(&seccomp_for(&[]));
        assert!(!base.contains(&"mount".to_string()));
        assert_eq!(names(&default_seccomp()), base);
        let admin = names(&seccomp_for(&[Capability::SysAdmin, Capability::NetAdmin]));
        for c in ["mount", "umount2", "unshare", "setns", "clone"] {
            assert!(admin.contains(&c.to_string()), "{c}");
        }
        assert!(!admin.contains(&"init_module".to_string()));
        assert!(!admin.contains(&"reboot".to_string()));
        let time = names(&seccomp_for(&[Capability::SysTime]));
        assert!(time.contains(&"clock_settime".to_string()));
        assert!(!time.contains(&"mount".to_string()));
        // io_uring stays ENOSYS whatever is granted.
        let all: Vec<Capability> = CAP_SYSCALLS.iter().map(|(c, _)| *c).collect();
        assert!(!names(&seccomp_for(&all))
            .iter()
            .any(|n| n.starts_with("io_uring")));
    }

    #[test]
    fn io_uring_fails_with_enosys() {
        let s = default_seccomp();
        let rules = s.syscalls().as_ref().unwrap();
        for name in IO_URING {
            let hits: Vec<_> = rules
                .iter()
                .filter(|r| r.names().iter().any(|n| n == name))
                .collect();
            assert_eq!(hits.len(), 1, "{name} must appear in exactly one rule");
            assert_eq!(
                hits[0].action(),
                oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
            );
            assert_eq!(hits[0].errno_ret(), Some(libc::ENOSYS as u32));
        }
        assert!(!ALLOWED.iter().any(|n| n.starts_with("io_uring")));
    }

    #[test]
    fn io_uring_is_denied_by_the_compiled_filter() {
        // The compiled program, run for io_uring_setup on this
        // architecture, must return SECCOMP_RET_ERRNO | ENOSYS.
        use crate::seccomp::{simulate, NATIVE_ARCH};
        let prog = crate::seccomp::compile(&default_seccomp()).unwrap();
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            let ret = simulate(&prog, NATIVE_ARCH, nr as u32, [0; 6]);
            assert_eq!(
                ret,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                "syscall {nr}"
            );
        }
        let ret = simulate(&prog, NATIVE_ARCH, libc::SYS_read as u32, [0; 6]);
        assert_eq!(ret, libc::SECCOMP_RET_ALLOW);
    }
}
