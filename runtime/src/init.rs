//! The container side: stage 1 (joins the cgroup and existing namespaces,
//! clones the container process into new ones, writes id maps) and stage 2
//! (the container init: rootfs, pivot_root, devices, masked paths, hostname,
//! rlimits, user, capabilities, seccomp, then waits for `start` on the exec
//! fifo and execs the user process).
//!
//! Both stages only run in a single-threaded process: either a fork of the
//! single-threaded CLI, or a fresh `execve` of `/proc/self/exe` (see
//! [`crate::maybe_run_init`]). The runtime talks to them over a unix stream
//! socket with length-prefixed JSON [`Msg`]s.

use crate::mountfd;
use crate::plan::{CapsPlan, DevicePlan, MountKind, MountPlan, Plan, ProcessPlan};
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

/// Messages between the runtime and the init stages.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Runtime -> stage 1 (re-exec mode only): what to do.
    Init(Box<InitPlan>),
    /// Stage 1 -> runtime: pid of the container process (runtime's pid ns).
    Pid(i32),
    /// Stage 2 -> runtime: run prestart/createRuntime hooks now.
    HooksRequest,
    /// Runtime -> stage 2: hooks done.
    HooksDone,
    /// Stage 2 -> runtime: the container is created and waits for start.
    Created,
    /// Any stage -> runtime: setup failed.
    Error(String),
}

/// What a stage-1 process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InitPlan {
    Create {
        plan: Box<Plan>,
        /// Absolute cgroup directory to join, if any.
        cgroup: Option<PathBuf>,
        fifo: PathBuf,
        console_socket: Option<PathBuf>,
        preserve_fds: i32,
        /// The OCI state (JSON) handed to createContainer/startContainer
        /// hooks; `pid` is filled in by stage 2.
        state_json: String,
    },
    Exec {
        target_pid: i32,
        cgroup: Option<PathBuf>,
        process: Box<ProcessPlan>,
        console_socket: Option<PathBuf>,
        preserve_fds: i32,
    },
}

/// Writes one framed message.
pub fn send(sock: &mut UnixStream, msg: &Msg) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    sock.write_all(&buf)
}

/// Reads one framed message; `Ok(None)` on a clean EOF.
pub fn recv(sock: &mut UnixStream) -> io::Result<Option<Msg>> {
    let mut len = [0u8; 4];
    match sock.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// An error inside the init stages: what step failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct InitError {
    step: String,
    #[source]
    source: io::Error,
}

trait Ctx<T> {
    fn ctx(self, step: impl FnOnce() -> String) -> Result<T, InitError>;
}
impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, step: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|source| InitError {
            step: step(),
            source,
        })
    }
}
impl<T> Ctx<T> for nix::Result<T> {
    fn ctx(self, step: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| InitError {
            step: step(),
            source: io::Error::from(e),
        })
    }
}

fn error_text(err: &InitError) -> String {
    let mut text = err.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

fn report_and_exit(sock: &mut UnixStream, err: &InitError) -> ! {
    let _ = send(sock, &Msg::Error(error_text(err)));
    std::process::exit(1)
}

/// Runs stage 1 in the current (single-threaded) process and exits.
pub fn stage1(init: InitPlan, mut sock: UnixStream) -> ! {
    match stage1_inner(&init, &mut sock) {
        Ok(()) => std::process::exit(0),
        Err(e) => report_and_exit(&mut sock, &e),
    }
}

fn join_cgroup(cgroup: &Option<PathBuf>) -> Result<(), InitError> {
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        fs::write(&procs, "0").ctx(|| format!("joining cgroup {}", procs.display()))?;
    }
    Ok(())
}

fn stage1_inner(init: &InitPlan, sock: &mut UnixStream) -> Result<(), InitError> {
    match init {
        InitPlan::Create { plan, cgroup, .. } => {
            if let Some(adj) = plan.process.oom_score_adj {
                fs::write("/proc/self/oom_score_adj", adj.to_string())
                    .ctx(|| "process.oomScoreAdj: writing /proc/self/oom_score_adj".into())?;
            }
            join_cgroup(cgroup)?;
            // Join existing namespaces, the user namespace first.
            let mut joins: Vec<_> = plan
                .namespaces
                .iter()
                .filter(|n| n.path.is_some())
                .collect();
            joins.sort_by_key(|n| n.flag != libc::CLONE_NEWUSER);
            for ns in joins {
                let path = ns.path.as_deref().unwrap_or(Path::new(""));
                let f = fs::File::open(path)
                    .ctx(|| format!("linux.namespaces: opening {}", path.display()))?;
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::from_bits_retain(ns.flag))
                    .ctx(|| format!("linux.namespaces: joining {}", path.display()))?;
            }
            let (rd, wr) = nix::unistd::pipe().ctx(|| "creating pipe".into())?;
            let flags = plan.clone_flags() | libc::CLONE_PARENT;
            match sys::clone_fork(flags).ctx(|| "linux.namespaces: clone".into())? {
                sys::CloneResult::Child => {
                    drop(wr);
                    let mut pidbuf = [0u8; 4];
                    let mut f = fs::File::from(rd);
                    if f.read_exact(&mut pidbuf).is_err() {
                        std::process::exit(1);
                    }
                    drop(f);
                    let host_pid = i32::from_le_bytes(pidbuf);
                    match stage2(init, sock, host_pid) {
                        Ok(never) => match never {},
                        Err(e) => report_and_exit(sock, &e),
                    }
                }
                sys::CloneResult::Parent(pid) => {
                    drop(rd);
                    let kill_child = |e: InitError| {
                        let _ =
                            nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                        e
                    };
                    if plan
                        .namespaces
                        .iter()
                        .any(|n| n.flag == libc::CLONE_NEWUSER && n.path.is_none())
                    {
                        write_id_map(pid, "uid_map", &plan.uid_map).map_err(kill_child)?;
                        write_id_map(pid, "gid_map", &plan.gid_map).map_err(kill_child)?;
                    }
                    send(sock, &Msg::Pid(pid))
                        .ctx(|| "reporting pid".into())
                        .map_err(kill_child)?;
                    let mut f = fs::File::from(wr);
                    f.write_all(&pid.to_le_bytes())
                        .ctx(|| "waking container".into())?;
                    Ok(())
                }
            }
        }
        InitPlan::Exec {
            target_pid,
            cgroup,
            process,
            console_socket,
            preserve_fds,
        } => {
            // Non-dumpable until execve (which resets the flag): a process
            // already in the container must not ptrace this helper, or read
            // its memory through /proc, while it joins the namespaces and
            // before the seccomp filter is installed. The clone below
            // inherits the flag and apply_user_caps keeps it.
            nix::sys::prctl::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE, 0)".into())?;
            join_cgroup(cgroup)?;
            // The console socket is a path on the caller's side: connect before joining
            // the container's mount namespace, where the path means something else.
            let console = connect_console(process.terminal, console_socket.as_deref())?;
            let order = [
                ("user", libc::CLONE_NEWUSER),
                ("ipc", libc::CLONE_NEWIPC),
                ("uts", libc::CLONE_NEWUTS),
                ("net", libc::CLONE_NEWNET),
                ("pid", libc::CLONE_NEWPID),
                ("cgroup", libc::CLONE_NEWCGROUP),
                ("mnt", libc::CLONE_NEWNS),
            ];
            let mut files = Vec::new();
            for (name, flag) in order {
                let theirs = format!("/proc/{target_pid}/ns/{name}");
                let ours = format!("/proc/self/ns/{name}");
                let (Ok(a), Ok(b)) = (fs::metadata(&theirs), fs::metadata(&ours)) else {
                    continue;
                };
                if a.ino() == b.ino() && a.dev() == b.dev() {
                    continue;
                }
                let f = fs::File::open(&theirs).ctx(|| format!("opening {theirs}"))?;
                files.push((f, flag, theirs));
            }
            for (f, flag, path) in &files {
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::from_bits_retain(*flag))
                    .ctx(|| format!("joining {path}"))?;
            }
            drop(files);
            // Root and cwd come from the joined mount namespace.
            std::env::set_current_dir("/").ctx(|| "chdir /".into())?;
            match sys::clone_fork(libc::CLONE_PARENT).ctx(|| "clone".into())? {
                sys::CloneResult::Child => {
                    let r = exec_process(process, console, *preserve_fds, sock);
                    match r {
                        Ok(never) => match never {},
                        Err(e) => report_and_exit(sock, &e),
                    }
                }
                sys::CloneResult::Parent(pid) => {
                    send(sock, &Msg::Pid(pid)).ctx(|| "reporting pid".into())?;
                    Ok(())
                }
            }
        }
    }
}

fn write_id_map(pid: i32, file: &str, maps: &[crate::plan::IdMap]) -> Result<(), InitError> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.size))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, text).ctx(|| format!("linux.uidMappings/gidMappings: writing {path}"))
}

enum Never {}

/// The `exec` child: already in the container's namespaces and cgroup.
fn exec_process(
    p: &ProcessPlan,
    console: Option<UnixStream>,
    preserve_fds: i32,
    sock: &mut UnixStream,
) -> Result<Never, InitError> {
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    if let Some(c) = console {
        setup_terminal(&c, p.console_size)?;
    }
    apply_rlimits(p)?;
    let argv0 = resolve_exec(p)?;
    let nnp_seccomp = apply_user_caps(p)?;
    std::env::set_current_dir(&p.cwd).ctx(|| format!("process.cwd: chdir {}", p.cwd.display()))?;
    if let Some(m) = p.umask {
        sys::umask(m);
    }
    let _ = sock;
    do_exec(p, &argv0, nnp_seccomp, preserve_fds)
}

/// Stage 2, the container init. Returns only on error.
fn stage2(init: &InitPlan, sock: &mut UnixStream, host_pid: i32) -> Result<Never, InitError> {
    let InitPlan::Create {
        plan,
        fifo,
        console_socket,
        preserve_fds,
        state_json,
        ..
    } = init
    else {
        return Err(InitError {
            step: "stage2".into(),
            source: io::Error::other("not a create plan"),
        });
    };
    let new_user = plan
        .namespaces
        .iter()
        .any(|n| n.flag == libc::CLONE_NEWUSER);
    if new_user {
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "becoming root in the user namespace (is gid 0 mapped?)".into())?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "becoming root in the user namespace (is uid 0 mapped?)".into())?;
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    sys::umask(0o022);

    // Root filesystem, before pivot_root. Shared and unbindable cannot be
    // in place during the bind + pivot_root: use private (same recursion)
    // then, and apply the requested type to the new / afterwards.
    let prop = MsFlags::from_bits_retain(plan.rootfs_propagation);
    let late_prop = prop.intersects(MsFlags::MS_SHARED | MsFlags::MS_UNBINDABLE);
    let early_prop = if late_prop {
        MsFlags::MS_PRIVATE | (prop & MsFlags::MS_REC)
    } else {
        prop
    };
    mount(None::<&str>, "/", None::<&str>, early_prop, None::<&str>)
        .ctx(|| "linux.rootfsPropagation: setting propagation of /".into())?;
    let rootfs = &plan.rootfs;
    // pivot_root refuses a shared current root or a shared parent of the
    // new root; shared propagation is re-applied after the pivot.
    if MsFlags::from_bits_retain(plan.rootfs_propagation).contains(MsFlags::MS_SHARED) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .ctx(|| "linux.rootfsPropagation: making / private for pivot_root".into())?;
    }
    make_parent_mount_private(rootfs).ctx(|| {
        format!(
            "root.path: making the mount holding {} private",
            rootfs.display()
        )
    })?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("root.path: bind mounting {}", rootfs.display()))?;
    // The mounts are made by fd below this handle of the bound rootfs.
    let root_fd = mountfd::open_root(rootfs)
        .map_err(io::Error::from)
        .ctx(|| "root.path: opening the rootfs".into())?;
    for (i, m) in plan.mounts.iter().enumerate() {
        do_mount(root_fd.as_fd(), m, new_user).ctx(|| {
            format!(
                "mounts[{i}]: mounting {} on {}",
                m.fstype,
                m.destination.display()
            )
        })?;
    }
    drop(root_fd);
    for (i, d) in plan.devices.iter().enumerate() {
        create_device(rootfs, d, new_user)
            .ctx(|| format!("linux.devices[{i}]: creating {}", d.path.display()))?;
    }
    dev_symlinks(rootfs);

    let state_with_pid = state_json.replace("\"pid\":0", &format!("\"pid\":{host_pid}"));
    if !plan.hooks.prestart.is_empty() || !plan.hooks.create_runtime.is_empty() {
        send(sock, &Msg::HooksRequest).ctx(|| "requesting hooks".into())?;
        match recv(sock) {
            Ok(Some(Msg::HooksDone)) => {}
            _ => std::process::exit(1),
        }
    }
    for (i, h) in plan.hooks.create_container.iter().enumerate() {
        crate::hooks::run(h, &state_with_pid).map_err(|e| InitError {
            step: format!("hooks.createContainer[{i}]"),
            source: io::Error::other(e),
        })?;
    }

    let fifo_fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(fifo)
        .ctx(|| format!("opening exec fifo {}", fifo.display()))?;
    let console = connect_console(plan.process.terminal, console_socket.as_deref())?;

    // pivot_root.
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;

    for p in &plan.masked_paths {
        mask_path(p).ctx(|| format!("linux.maskedPaths: masking {}", p.display()))?;
    }
    for p in &plan.readonly_paths {
        readonly_path(p).ctx(|| format!("linux.readonlyPaths: {}", p.display()))?;
    }
    // After masking (bind mounts from an unbindable tree would fail).
    if late_prop {
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
            .ctx(|| "linux.rootfsPropagation: setting propagation of the new /".into())?;
    }
    for (k, v) in &plan.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        fs::write(&path, v).ctx(|| format!("linux.sysctl: writing {k}"))?;
    }
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).ctx(|| "hostname: sethostname".into())?;
    }
    if let Some(d) = &plan.domainname {
        sys::setdomainname(d).ctx(|| "domainname: setdomainname".into())?;
    }
    if plan.rootfs_readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags("/");
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .ctx(|| "root.readonly: remounting /".into())?;
    }
    if let Some(c) = console {
        setup_terminal(&c, plan.process.console_size)?;
    }

    let p = &plan.process;
    apply_rlimits(p)?;
    let argv0 = resolve_exec(p)?;
    let nnp_seccomp = apply_user_caps(p)?;
    std::env::set_current_dir(&p.cwd).ctx(|| format!("process.cwd: chdir {}", p.cwd.display()))?;
    if let Some(m) = p.umask {
        sys::umask(m);
    }

    send(sock, &Msg::Created).ctx(|| "reporting created".into())?;
    // From here on nobody reads the socket: errors go to stderr.
    match wait_start_and_exec(
        plan,
        fifo_fd,
        &state_with_pid,
        &argv0,
        nnp_seccomp,
        *preserve_fds,
    ) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("berth-runtime: container {}: {}", plan.id, error_text(&e));
            std::process::exit(1)
        }
    }
}

fn wait_start_and_exec(
    plan: &Plan,
    fifo_fd: fs::File,
    state_with_pid: &str,
    argv0: &CString,
    nnp_seccomp: bool,
    preserve_fds: i32,
) -> Result<Never, InitError> {
    let p = &plan.process;
    // Wait for `start`: opening the fifo for writing blocks until the
    // runtime opens it for reading.
    let proc_path = format!("/proc/self/fd/{}", fifo_fd.as_raw_fd());
    let mut w = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&proc_path)
        .ctx(|| "opening exec fifo for writing (is /proc mounted?)".into())?;
    w.write_all(b"0").ctx(|| "writing exec fifo".into())?;
    drop(w);
    drop(fifo_fd);
    for (i, h) in plan.hooks.start_container.iter().enumerate() {
        if let Err(e) = crate::hooks::run(h, &state_with_pid.replace("\"created\"", "\"running\""))
        {
            eprintln!("berth-runtime: hooks.startContainer[{i}] failed: {e}");
            std::process::exit(1);
        }
    }
    do_exec(p, argv0, nnp_seccomp, preserve_fds)
}

fn do_exec(
    p: &ProcessPlan,
    argv0: &CString,
    nnp_seccomp: bool,
    preserve_fds: i32,
) -> Result<Never, InitError> {
    if nnp_seccomp {
        if let Some(s) = &p.seccomp {
            s.install()
                .ctx(|| "linux.seccomp: installing the filter".into())?;
        }
    }
    close_extra_fds(3 + preserve_fds);
    let argv: Vec<CString> = p
        .args
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = p
        .env
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    reset_signals();
    let e = nix::unistd::execve(argv0, &argv, &envp).unwrap_err();
    eprintln!("berth-runtime: exec {:?} failed: {e}", p.args[0]);
    std::process::exit(127)
}

fn reset_signals() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    sys::default_sigpipe();
}

/// Marks every fd >= `from` close-on-exec.
fn close_extra_fds(from: i32) {
    let Ok(rd) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    for fd in fds {
        if fd >= from {
            let _ = sys::set_cloexec(fd);
        }
    }
}

fn apply_rlimits(p: &ProcessPlan) -> Result<(), InitError> {
    for (res, soft, hard) in &p.rlimits {
        sys::setrlimit(*res, *soft, *hard)
            .ctx(|| format!("process.rlimits: setting resource {res}"))?;
    }
    Ok(())
}

/// Finds the executable: a path with `/` is taken as is, else it is looked
/// up in the process's PATH.
fn resolve_exec(p: &ProcessPlan) -> Result<CString, InitError> {
    let name = &p.args[0];
    let not_found = |what: String| InitError {
        step: format!("process.args[0]: {what}"),
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    let candidate = if name.contains('/') {
        let path = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            p.cwd.join(name)
        };
        if !is_executable(&path) {
            return Err(not_found(format!(
                "{name} is not an executable file in the container"
            )));
        }
        PathBuf::from(name)
    } else {
        let path_var = p
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path_var
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|c| is_executable(c))
            .ok_or_else(|| not_found(format!("executable {name:?} not found in $PATH")))?
    };
    CString::new(candidate.into_os_string().into_encoded_bytes())
        .map_err(|_| not_found("contains a NUL byte".into()))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Sets groups, uid/gid and capabilities. Installs seccomp here when
/// `noNewPrivileges` is off (it needs CAP_SYS_ADMIN then); returns whether
/// seccomp still has to be installed right before exec.
fn apply_user_caps(p: &ProcessPlan) -> Result<bool, InitError> {
    if !p.no_new_privileges {
        if let Some(s) = &p.seccomp {
            s.install()
                .ctx(|| "linux.seccomp: installing the filter".into())?;
        }
    }
    if let Some(c) = &p.caps {
        drop_bounding(c)?;
    }
    nix::sys::prctl::set_keepcaps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let dumpable = nix::sys::prctl::get_dumpable().ctx(|| "prctl(PR_GET_DUMPABLE)".into())?;
    let gids: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups fails in a user namespace with setgroups=deny; only insist when asked.
    if let Err(e) = nix::unistd::setgroups(&gids) {
        if !gids.is_empty() {
            return Err(InitError {
                step: "process.user.additionalGids: setgroups".into(),
                source: e.into(),
            });
        }
    }
    let g = Gid::from_raw(p.gid);
    nix::unistd::setresgid(g, g, g).ctx(|| format!("process.user.gid: setresgid({})", p.gid))?;
    let u = Uid::from_raw(p.uid);
    nix::unistd::setresuid(u, u, u).ctx(|| format!("process.user.uid: setresuid({})", p.uid))?;
    // Changing uid clears the dumpable flag, which makes /proc/self/fd
    // (needed by the container init to reopen the exec fifo) inaccessible:
    // restore what it was. The exec helper is non-dumpable on purpose and
    // stays so (see stage1_inner); exec resets the flag anyway.
    nix::sys::prctl::set_dumpable(dumpable).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;
    if let Some(c) = &p.caps {
        set_caps(c)?;
    }
    nix::sys::prctl::set_keepcaps(false).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().ctx(|| "process.noNewPrivileges: prctl".into())?;
    }
    Ok(p.no_new_privileges)
}

fn cap_set(mask: u64) -> caps::CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & (1u64 << c.index()) != 0)
        .collect()
}

fn drop_bounding(c: &CapsPlan) -> Result<(), InitError> {
    let supported = caps::runtime::thread_all_supported();
    for cap in supported {
        if c.bounding & (1u64 << cap.index()) == 0 {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(|e| InitError {
                step: format!("process.capabilities.bounding: dropping {cap}"),
                source: io::Error::other(e.to_string()),
            })?;
        }
    }
    Ok(())
}

fn set_caps(c: &CapsPlan) -> Result<(), InitError> {
    // Capabilities this process does not hold (e.g. outside the host's
    // bounding set) cannot be granted; they are left out, as crun does.
    let supported = caps::read(None, caps::CapSet::Permitted).unwrap_or_default();
    let only = |m: u64| -> caps::CapsHashSet {
        cap_set(m)
            .into_iter()
            .filter(|c| supported.contains(c))
            .collect()
    };
    let err = |what: &str, e: caps::errors::CapsError| InitError {
        step: format!("process.capabilities.{what}"),
        source: io::Error::other(e.to_string()),
    };
    // Effective must stay a subset of permitted at every step.
    caps::clear(None, caps::CapSet::Effective).map_err(|e| err("effective", e))?;
    caps::set(None, caps::CapSet::Permitted, &only(c.permitted))
        .map_err(|e| err("permitted", e))?;
    caps::set(None, caps::CapSet::Inheritable, &only(c.inheritable))
        .map_err(|e| err("inheritable", e))?;
    caps::set(None, caps::CapSet::Effective, &only(c.effective))
        .map_err(|e| err("effective", e))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| err("ambient", e))?;
    // The kernel only raises an ambient capability that is both permitted
    // and inheritable. `runc spec` and `crun spec` list ambient capabilities
    // without an inheritable set; runc (and crun) then warn and run the
    // container without them, so do the same rather than fail.
    let mut ambient: Vec<_> = only(c.ambient).into_iter().collect();
    ambient.sort_by_key(|c| c.index());
    for cap in ambient {
        if let Err(e) = caps::raise(None, caps::CapSet::Ambient, cap) {
            eprintln!(
                "berth-runtime: warning: can't raise ambient capability {cap} (it must also be permitted and inheritable): {e}"
            );
        }
    }
    Ok(())
}

/// The connection to the console socket when the process wants a terminal.
fn connect_console(terminal: bool, socket: Option<&Path>) -> Result<Option<UnixStream>, InitError> {
    match (terminal, socket) {
        (true, Some(c)) => UnixStream::connect(c)
            .map(Some)
            .ctx(|| format!("connecting to console socket {}", c.display())),
        (true, None) => Err(InitError {
            step: "process.terminal".into(),
            source: io::Error::other("a terminal was requested but no --console-socket was given"),
        }),
        (false, _) => Ok(None),
    }
}

fn setup_terminal(console: &UnixStream, size: Option<(u16, u16)>) -> Result<(), InitError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "process.terminal: opening /dev/ptmx".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .ctx(|| format!("opening {name}"))?;
    if let Some((rows, cols)) = size {
        let _ = sys::set_winsize(slave.as_raw_fd(), rows, cols);
    }
    let fds = [master.as_raw_fd()];
    let iov = [io::IoSlice::new(name.as_bytes())];
    nix::sys::socket::sendmsg::<()>(
        console.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .ctx(|| "sending the pty master to the console socket".into())?;
    drop(master);
    nix::unistd::dup2_stdin(&slave).ctx(|| "dup2 stdin".into())?;
    nix::unistd::dup2_stdout(&slave).ctx(|| "dup2 stdout".into())?;
    nix::unistd::dup2_stderr(&slave).ctx(|| "dup2 stderr".into())?;
    sys::set_controlling_terminal(0).ctx(|| "TIOCSCTTY".into())?;
    drop(slave);
    Ok(())
}

/// Joins `unsafe_path` below `root`, resolving symlinks as if `root` were `/`,
/// so a mount destination can never escape the rootfs.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> PathBuf {
    let mut todo: Vec<OsString> = unsafe_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() && links < 255 => {
                links += 1;
                if let Ok(target) = fs::read_link(&full) {
                    if target.is_absolute() {
                        cur = PathBuf::new();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => todo.push(n.to_os_string()),
                            Component::ParentDir => todo.push(OsString::from("..")),
                            _ => {}
                        }
                    }
                } else {
                    cur = next;
                }
            }
            _ => cur = next,
        }
    }
    root.join(cur)
}

fn ensure_file(p: &Path) -> io::Result<()> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::symlink_metadata(p).is_err() {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p)?;
    }
    Ok(())
}

/// Makes one spec mount. Every path is resolved once into a file descriptor
/// and the mount acts on that descriptor (see [`crate::mountfd`]): the bind
/// source refusing symlinks, the destination inside the rootfs `root`.
fn do_mount(root: BorrowedFd<'_>, m: &MountPlan, in_userns: bool) -> io::Result<()> {
    let flags = MsFlags::from_bits_retain(m.flags);
    let dest = &m.destination;
    let mounted = match &m.kind {
        MountKind::Bind { recursive } => {
            let src_path = m.source.as_deref().unwrap_or(Path::new(""));
            let src = mountfd::open_source(src_path)?;
            let create = if mountfd::is_dir(src.as_fd(), src_path)? {
                mountfd::Create::Dir
            } else {
                mountfd::Create::File
            };
            let target = mountfd::open_in_root(root, dest, create)?;
            let mounted = mountfd::bind(
                src.as_fd(),
                src_path,
                &target,
                *recursive,
                mountfd::Api::Auto,
            )?;
            let extra = flags & !(MsFlags::MS_REMOUNT);
            if !extra.is_empty() {
                let rflags = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | extra
                    | locked_flags(mounted.proc_path());
                mounted.remount(rflags)?;
            }
            mounted
        }
        MountKind::Fs => {
            let target = mountfd::open_in_root(root, dest, mountfd::Create::Dir)?;
            let src = m
                .source
                .as_deref()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(&m.fstype));
            let data = (!m.data.is_empty()).then_some(m.data.as_str());
            match mountfd::mount_fs(&src, &target, &m.fstype, flags, data) {
                Ok(mounted) => mounted,
                Err(e)
                    if e.mount_errno() == Some(libc::EPERM) && m.fstype == "sysfs" && in_userns =>
                {
                    // sysfs needs a net namespace owned by the user namespace.
                    bind_host(Path::new("/sys"), &target)?
                }
                Err(e)
                    if matches!(e.mount_errno(), Some(libc::EPERM | libc::EINVAL))
                        && m.fstype == "mqueue"
                        && in_userns =>
                {
                    bind_host(Path::new("/dev/mqueue"), &target)?
                }
                Err(e) => return Err(e.into()),
            }
        }
        MountKind::Cgroup => {
            let target = mountfd::open_in_root(root, dest, mountfd::Create::Dir)?;
            match mountfd::mount_fs(Path::new("cgroup2"), &target, "cgroup2", flags, None) {
                Ok(mounted) => mounted,
                Err(_) => {
                    let host = crate::cgroup::find_root().map_err(io::Error::other)?;
                    let mounted = bind_host(&host, &target)?;
                    if flags.contains(MsFlags::MS_RDONLY) {
                        mounted.remount(
                            MsFlags::MS_BIND
                                | MsFlags::MS_REMOUNT
                                | MsFlags::MS_RDONLY
                                | locked_flags(mounted.proc_path()),
                        )?;
                    }
                    mounted
                }
            }
        }
    };
    for p in &m.propagation {
        mounted.set_propagation(MsFlags::from_bits_retain(*p))?;
    }
    Ok(())
}

/// Recursive bind of a host path (a fallback source) onto `target`.
fn bind_host(src_path: &Path, target: &mountfd::Target) -> io::Result<mountfd::Mounted> {
    let src = mountfd::open_source(src_path)?;
    Ok(mountfd::bind(
        src.as_fd(),
        src_path,
        target,
        true,
        mountfd::Api::Auto,
    )?)
}

/// Unescapes a mountinfo path field (`\040` for a space and so on).
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Makes the mount that contains `path` private if it is shared.
fn make_parent_mount_private(path: &Path) -> io::Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(PathBuf, bool)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 7 {
            continue;
        }
        let mp = unescape_mountinfo(f[4]);
        if path.starts_with(&mp)
            && best
                .as_ref()
                .map(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len())
                .unwrap_or(true)
        {
            let shared = f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"));
            best = Some((mp, shared));
        }
    }
    if let Some((mp, true)) = best {
        mount(
            None::<&str>,
            &mp,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Mount flags that must be kept on a bind remount (they may be locked in a
/// user namespace).
fn locked_flags(p: impl AsRef<Path>) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(p.as_ref()) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

fn create_device(rootfs: &Path, d: &DevicePlan, in_userns: bool) -> io::Result<()> {
    let dest = secure_join(rootfs, &d.path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    // mknod is not allowed in a user namespace, and a node made on a nodev
    // /dev (the default profile's) cannot be opened: bind the host's node.
    let nodev = dest.parent().is_some_and(|parent| {
        nix::sys::statvfs::statvfs(parent)
            .is_ok_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV))
    });
    if in_userns || nodev {
        if nodev && !in_userns {
            let host = fs::metadata(&d.path)?;
            let kind_ok = match d.kind {
                'b' => host.file_type().is_block_device(),
                'p' => host.file_type().is_fifo(),
                _ => host.file_type().is_char_device(),
            };
            if !kind_ok || host.rdev() != nix::sys::stat::makedev(d.major, d.minor) {
                return Err(io::Error::other(format!(
                    "/dev is nodev, so the node must be bound from the host, but the host's {} is not {} {}:{}",
                    d.path.display(),
                    d.kind,
                    d.major,
                    d.minor
                )));
            }
        }
        ensure_file(&dest)?;
        return mount(
            Some(&d.path),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Into::into);
    }
    if let Ok(md) = fs::symlink_metadata(&dest) {
        {
            let same = (md.file_type().is_char_device() && d.kind == 'c'
                || md.file_type().is_block_device() && d.kind == 'b')
                && md.rdev() == nix::sys::stat::makedev(d.major, d.minor);
            if same {
                fs::set_permissions(&dest, fs::Permissions::from_mode(d.mode))?;
                nix::unistd::chown(
                    &dest,
                    Some(Uid::from_raw(d.uid)),
                    Some(Gid::from_raw(d.gid)),
                )?;
                return Ok(());
            }
            if md.is_dir() {
                return Err(io::Error::other("a directory is in the way"));
            }
            fs::remove_file(&dest)?;
        }
    }
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    nix::sys::stat::mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(d.mode),
        nix::sys::stat::makedev(d.major, d.minor),
    )?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(d.mode))?;
    nix::unistd::chown(
        &dest,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
    )?;
    Ok(())
}

fn dev_symlinks(rootfs: &Path) {
    let dev = secure_join(rootfs, Path::new("/dev"));
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    if dev.join("pts/ptmx").exists() {
        let ptmx = dev.join("ptmx");
        if fs::symlink_metadata(&ptmx)
            .map(|m| !m.is_dir())
            .unwrap_or(false)
        {
            let _ = fs::remove_file(&ptmx);
        }
        let _ = std::os::unix::fs::symlink("pts/ptmx", ptmx);
    }
}

fn mask_path(p: &Path) -> io::Result<()> {
    match fs::metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(Into::into),
        Ok(_) => mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Into::into),
    }
}

fn readonly_path(p: &Path) -> io::Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_REC
        | locked_flags(p);
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Sends an fd-less `OwnedFd` for type checks in tests.
#[allow(dead_code)]
fn _assert_send(_: OwnedFd) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("a/up")).unwrap();
        assert_eq!(secure_join(root, Path::new("/a/b")), root.join("a/b"));
        assert_eq!(secure_join(root, Path::new("/../../x")), root.join("x"));
        assert_eq!(
            secure_join(root, Path::new("/a/abs/passwd")),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(root, Path::new("/a/up/etc")), root.join("etc"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn messages_round_trip() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &Msg::Pid(42)).unwrap();
        send(&mut a, &Msg::Error("x".into())).unwrap();
        drop(a);
        assert!(matches!(recv(&mut b).unwrap(), Some(Msg::Pid(42))));
        assert!(matches!(recv(&mut b).unwrap(), Some(Msg::Error(e)) if e == "x"));
        assert!(recv(&mut b).unwrap().is_none());
    }
}
