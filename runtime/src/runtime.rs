//! The library API: [`Runtime`] keeps container state under a root
//! directory and implements the OCI lifecycle (create, start, state, kill,
//! delete) plus exec, ps, list and stats.

use crate::cgroup::{self, Cgroup, CgroupError, Stats};
use crate::init::{self, InitPlan, Msg};
use crate::plan::{self, HookPlan, Plan, PlanError, ProcessPlan};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Errors of the lifecycle operations; each names the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid configuration")]
    Plan(#[from] PlanError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {id} is {status}, cannot {op} it")]
    WrongState {
        id: String,
        status: Status,
        op: &'static str,
    },
    #[error("container {id}: cgroup setup failed")]
    Cgroup {
        id: String,
        #[source]
        source: CgroupError,
    },
    #[error("container {id}: {op} {path}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: init failed: {msg}")]
    Init { id: String, msg: String },
    #[error("container {id}: {phase} hook failed")]
    Hook {
        id: String,
        phase: &'static str,
        #[source]
        source: crate::hooks::HookError,
    },
    #[error("container {id}: cannot send signal {signal}")]
    Kill {
        id: String,
        signal: i32,
        #[source]
        source: nix::Error,
    },
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// Container status, as in the OCI state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state of a container (what `state` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
}

/// What is stored in `<root>/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    pid: i32,
    pid_start: u64,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: String,
    annotations: BTreeMap<String, String>,
    cgroup: Option<Cgroup>,
    poststart: Vec<HookPlan>,
    poststop: Vec<HookPlan>,
    process: ProcessPlan,
}

/// Standard streams for the container process (default: inherited).
#[derive(Debug)]
pub struct Stdio3 {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Options of [`Runtime::create`].
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Parent cgroup (below the cgroup2 mount) when the spec has no absolute
    /// `cgroupsPath`; sysd passes `berth/<service>`. Default `berth-runtime`.
    pub cgroup_parent: Option<String>,
    /// Where to write the container's pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when `process.terminal`.
    pub console_socket: Option<PathBuf>,
    /// Extra fds (3..3+n) passed to the container process.
    pub preserve_fds: i32,
    /// Standard streams; `None` inherits the caller's.
    pub stdio: Option<Stdio3>,
    /// Apply [`crate::profile::apply_default`] to the spec before planning.
    pub default_profile: bool,
}

/// Options of [`Runtime::exec`].
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub stdio: Option<Stdio3>,
}

/// A container runtime rooted at a state directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// `(state char, start time)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let start = it.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && matches!(proc_stat(pid), Some((st, s)) if s == start && st != 'Z' && st != 'X')
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)
}

fn oci_state_json(
    id: &str,
    status: &str,
    pid: i32,
    bundle: &Path,
    ann: &BTreeMap<String, String>,
) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": ann,
    })
    .to_string()
}

/// Waits (up to `timeout`) for a process to exit; reaps it when it is our child.
fn wait_gone(pid: i32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let pidfd = sys::pidfd_open(pid).ok();
    loop {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if !alive(pid, start) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &pidfd {
            Some(fd) => {
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ms = left.as_millis().min(100) as u16;
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Runtime {
    /// A runtime keeping its state in `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime { root: root.into() }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn load(&self, id: &str) -> Result<Stored> {
        plan::validate_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RuntimeError::NotFound(id.to_string()),
            _ => RuntimeError::Io {
                id: id.into(),
                op: "reading",
                path: path.clone(),
                source: e,
            },
        })?;
        serde_json::from_slice(&text).map_err(|e| RuntimeError::Io {
            id: id.into(),
            op: "parsing",
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    fn status_of(&self, s: &Stored) -> Status {
        if !alive(s.pid, s.pid_start) {
            Status::Stopped
        } else if self.dir(&s.id).join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    fn cgroup_for(&self, plan: &Plan, opts: &CreateOptions) -> Result<Option<Cgroup>> {
        // Every container gets a cgroup: its device filter needs one.
        let root = cgroup::find_root().map_err(|source| RuntimeError::Cgroup {
            id: plan.id.clone(),
            source,
        })?;
        let rel = match &plan.cgroups_path {
            Some(p) if p.starts_with('/') => p.clone(),
            Some(p) => format!(
                "{}/{}",
                opts.cgroup_parent.as_deref().unwrap_or("berth-runtime"),
                p
            ),
            None => format!(
                "{}/{}",
                opts.cgroup_parent.as_deref().unwrap_or("berth-runtime"),
                plan.id
            ),
        };
        Cgroup::new(root, &rel)
            .map(Some)
            .map_err(|source| RuntimeError::Cgroup {
                id: plan.id.clone(),
                source,
            })
    }

    /// Creates container `id` from the bundle; on return the container
    /// process waits for [`Runtime::start`]. On error nothing is left behind.
    pub fn create(&self, id: &str, bundle: &Path, opts: CreateOptions) -> Result<State> {
        plan::validate_id(id)?;
        let bundle = fs::canonicalize(bundle).map_err(|source| {
            RuntimeError::Plan(PlanError::Read {
                path: bundle.to_path_buf(),
                source,
            })
        })?;
        let mut spec = plan::load_spec(&bundle)?;
        if opts.default_profile {
            crate::profile::apply_default(&mut spec);
        }
        let plan = plan::build(id, &bundle, &spec)?;
        self.create_from_plan(plan, opts)
    }

    /// Like [`Runtime::create`] with an already built plan.
    pub fn create_from_plan(&self, plan: Plan, mut opts: CreateOptions) -> Result<State> {
        let id = plan.id.clone();
        let io_err = |op: &'static str, path: &Path| {
            let id = id.clone();
            let path = path.to_path_buf();
            move |source| RuntimeError::Io {
                id,
                op,
                path,
                source,
            }
        };
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let dir = self.dir(&id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(id))
            }
            Err(e) => return Err(io_err("creating", &dir)(e)),
        }
        let mut cleanup = Cleanup {
            dir: Some(dir.clone()),
            cgroup: None,
            pid: 0,
        };
        let cg = self.cgroup_for(&plan, &opts)?;
        if let Some(cg) = &cg {
            // The device filter is in place before any process joins the
            // cgroup, so the container never runs without it.
            cg.create(&plan.resources)
                .and_then(|()| cg.set_device_filter(&plan.device_filter))
                .map_err(|source| {
                    let _ = cg.destroy();
                    RuntimeError::Cgroup {
                        id: id.clone(),
                        source,
                    }
                })?;
            cleanup.cgroup = Some(cg.clone());
        }
        let fifo = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| io_err("creating", &fifo)(e.into()))?;
        // Writable by the container's user, whatever the umask.
        fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(io_err("chmod", &fifo))?;
        let state_json = oci_state_json(&id, "created", 0, &plan.bundle, &plan.annotations);
        let init_plan = InitPlan::Create {
            plan: Box::new(plan.clone()),
            cgroup: cg.as_ref().map(Cgroup::path),
            fifo,
            console_socket: opts.console_socket.clone(),
            preserve_fds: opts.preserve_fds,
            state_json,
        };
        let (mut sock, _stage1) = spawn_stage1(init_plan, opts.stdio.take())
            .map_err(io_err("starting init for", &dir))?;
        let mut pid = 0;
        loop {
            let msg = init::recv(&mut sock).map_err(io_err("talking to init of", &dir))?;
            match msg {
                Some(Msg::Pid(p)) => {
                    pid = p;
                    cleanup.pid = p;
                }
                Some(Msg::HooksRequest) => {
                    let st = oci_state_json(&id, "created", pid, &plan.bundle, &plan.annotations);
                    for h in &plan.hooks.prestart {
                        crate::hooks::run(h, &st).map_err(|source| RuntimeError::Hook {
                            id: id.clone(),
                            phase: "prestart",
                            source,
                        })?;
                    }
                    for h in &plan.hooks.create_runtime {
                        crate::hooks::run(h, &st).map_err(|source| RuntimeError::Hook {
                            id: id.clone(),
                            phase: "createRuntime",
                            source,
                        })?;
                    }
                    init::send(&mut sock, &Msg::HooksDone)
                        .map_err(io_err("talking to init of", &dir))?;
                }
                Some(Msg::Created) => break,
                Some(Msg::Error(msg)) => return Err(RuntimeError::Init { id, msg }),
                Some(other) => {
                    return Err(RuntimeError::Init {
                        id,
                        msg: format!("unexpected message {other:?}"),
                    })
                }
                None => {
                    return Err(RuntimeError::Init {
                        id,
                        msg: "init exited during setup".into(),
                    })
                }
            }
        }
        let pid_start = proc_stat(pid).map(|s| s.1).unwrap_or(0);
        let created = now_rfc3339();
        let stored = Stored {
            id: id.clone(),
            pid,
            pid_start,
            bundle: plan.bundle.clone(),
            rootfs: plan.rootfs.clone(),
            created,
            annotations: plan.annotations.clone(),
            cgroup: cg,
            poststart: plan.hooks.poststart.clone(),
            poststop: plan.hooks.poststop.clone(),
            process: plan.process.clone(),
        };
        let path = dir.join("state.json");
        let data = serde_json::to_vec(&stored).unwrap_or_default();
        write_atomic(&path, &data).map_err(io_err("writing", &path))?;
        if let Some(pf) = &opts.pid_file {
            write_atomic(pf, pid.to_string().as_bytes()).map_err(io_err("writing", pf))?;
        }
        cleanup.disarm();
        Ok(self.state_of(&stored))
    }

    fn state_of(&self, s: &Stored) -> State {
        let status = self.status_of(s);
        State {
            oci_version: "1.0.2".into(),
            id: s.id.clone(),
            status,
            pid: if status == Status::Stopped { 0 } else { s.pid },
            bundle: s.bundle.clone(),
            rootfs: s.rootfs.clone(),
            created: s.created.clone(),
            annotations: s.annotations.clone(),
        }
    }

    /// The state of container `id`.
    pub fn state(&self, id: &str) -> Result<State> {
        let s = self.load(id)?;
        Ok(self.state_of(&s))
    }

    /// Starts the user process of a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let s = self.load(id)?;
        let status = self.status_of(&s);
        if status != Status::Created {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status,
                op: "start",
            });
        }
        let fifo = self.dir(id).join("exec.fifo");
        let io_err = |op, source| RuntimeError::Io {
            id: id.into(),
            op,
            path: fifo.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| io_err("opening", e))?;
        let mut buf = [0u8; 8];
        loop {
            let mut fds = [nix::poll::PollFd::new(
                f.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            match f.read(&mut buf) {
                Ok(n) if n > 0 => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_err("reading", e)),
            }
            if !alive(s.pid, s.pid_start) {
                let _ = fs::remove_file(&fifo);
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    status: Status::Stopped,
                    op: "start",
                });
            }
        }
        drop(f);
        let _ = fs::remove_file(&fifo);
        let st = oci_state_json(id, "running", s.pid, &s.bundle, &s.annotations);
        for (i, h) in s.poststart.iter().enumerate() {
            if let Err(e) = crate::hooks::run(h, &st) {
                tracing::warn!(container = id, hook = i, error = %e, "poststart hook failed");
            }
        }
        Ok(())
    }

    /// Sends `signal` to the container's init (or every process with `all`).
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let s = self.load(id)?;
        let status = self.status_of(&s);
        if !matches!(status, Status::Created | Status::Running) {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status,
                op: "kill",
            });
        }
        let sig =
            nix::sys::signal::Signal::try_from(signal).map_err(|source| RuntimeError::Kill {
                id: id.into(),
                signal,
                source,
            })?;
        if all {
            if let Some(cg) = &s.cgroup {
                for p in cg.pids().unwrap_or_default() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
                }
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid), sig).map_err(|source| {
            RuntimeError::Kill {
                id: id.into(),
                signal,
                source,
            }
        })
    }

    /// Deletes a stopped (or, with `force`, any) container: kills what is
    /// left, removes the cgroup and the state, runs poststop hooks.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let s = match self.load(id) {
            Ok(s) => s,
            Err(RuntimeError::NotFound(_)) if force => {
                // A half-created container may lack state.json.
                let _ = fs::remove_dir_all(self.dir(id));
                return Err(RuntimeError::NotFound(id.into()));
            }
            Err(e) => return Err(e),
        };
        let status = self.status_of(&s);
        // The spec: deleting a container that is not stopped is an error
        // (runc also deletes created ones; use force for that).
        if status != Status::Stopped && !force {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status,
                op: "delete (use --force)",
            });
        }
        if status != Status::Stopped {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(cg) = &s.cgroup {
            cg.kill_all();
        }
        wait_gone(s.pid, s.pid_start, Duration::from_secs(5));
        if let Some(cg) = &s.cgroup {
            cg.destroy().map_err(|source| RuntimeError::Cgroup {
                id: id.into(),
                source,
            })?;
        }
        let dir = self.dir(id);
        fs::remove_dir_all(&dir).map_err(|source| RuntimeError::Io {
            id: id.into(),
            op: "removing",
            path: dir.clone(),
            source,
        })?;
        let st = oci_state_json(id, "stopped", 0, &s.bundle, &s.annotations);
        for (i, h) in s.poststop.iter().enumerate() {
            if let Err(e) = crate::hooks::run(h, &st) {
                tracing::warn!(container = id, hook = i, error = %e, "poststop hook failed");
            }
        }
        Ok(())
    }

    /// All containers under the root.
    pub fn list(&self) -> Result<Vec<State>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(s) = self.load(&name) {
                out.push(self.state_of(&s));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Pids in the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let s = self.load(id)?;
        match &s.cgroup {
            Some(cg) => cg.pids().map_err(|source| RuntimeError::Cgroup {
                id: id.into(),
                source,
            }),
            None => Ok(if alive(s.pid, s.pid_start) {
                vec![s.pid]
            } else {
                vec![]
            }),
        }
    }

    /// Memory, cpu and pids statistics of the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let s = self.load(id)?;
        Ok(s.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default())
    }

    /// The container's process defaults (for `exec` without `--process`).
    pub fn default_process(&self, id: &str) -> Result<ProcessPlan> {
        Ok(self.load(id)?.process)
    }

    /// Runs an extra process in a running container; returns its pid. The
    /// process is a child of the caller, which should wait for it.
    pub fn exec(&self, id: &str, process: ProcessPlan, mut opts: ExecOptions) -> Result<i32> {
        let s = self.load(id)?;
        let status = self.status_of(&s);
        if status != Status::Running && status != Status::Created {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status,
                op: "exec in",
            });
        }
        let dir = self.dir(id);
        let io_err = |op, source| RuntimeError::Io {
            id: id.into(),
            op,
            path: dir.clone(),
            source,
        };
        let init_plan = InitPlan::Exec {
            target_pid: s.pid,
            cgroup: s.cgroup.as_ref().map(Cgroup::path),
            process: Box::new(process),
            console_socket: opts.console_socket.clone(),
            preserve_fds: opts.preserve_fds,
        };
        let (mut sock, _stage1) =
            spawn_stage1(init_plan, opts.stdio.take()).map_err(|e| io_err("exec in", e))?;
        let mut pid = 0;
        loop {
            match init::recv(&mut sock).map_err(|e| io_err("exec in", e))? {
                Some(Msg::Pid(p)) => pid = p,
                Some(Msg::Error(msg)) => {
                    if pid > 0 {
                        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                    }
                    return Err(RuntimeError::Init { id: id.into(), msg });
                }
                // EOF: the process exec'd (the socket is close-on-exec).
                None => break,
                Some(_) => {}
            }
        }
        if pid == 0 {
            return Err(RuntimeError::Init {
                id: id.into(),
                msg: "exec process did not start".into(),
            });
        }
        if let Some(pf) = &opts.pid_file {
            write_atomic(pf, pid.to_string().as_bytes())
                .map_err(|e| io_err("writing pid file", e))?;
        }
        Ok(pid)
    }
}

/// Undoes a half-done create.
struct Cleanup {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    pid: i32,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pid = 0;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.pid > 0 {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Environment variable carrying the sync socket fd to a re-executed init.
pub(crate) const INIT_ENV: &str = "_BERTH_RUNTIME_INIT_FD";

/// Starts stage 1: a plain fork when this process is single-threaded (the
/// CLI), otherwise a re-exec of `/proc/self/exe` whose `main` calls
/// [`crate::maybe_run_init`] (sysd). Returns the runtime's end of the socket.
fn spawn_stage1(init_plan: InitPlan, stdio: Option<Stdio3>) -> io::Result<(UnixStream, Reaper)> {
    let (mut ours, theirs) = UnixStream::pair()?;
    if sys::threads() == 1 {
        match sys::fork()? {
            sys::ForkResult::Child => {
                drop(ours);
                if let Some(s) = &stdio {
                    let ok = nix::unistd::dup2_stdin(&s.stdin).is_ok()
                        && nix::unistd::dup2_stdout(&s.stdout).is_ok()
                        && nix::unistd::dup2_stderr(&s.stderr).is_ok();
                    if !ok {
                        std::process::exit(1);
                    }
                }
                drop(stdio);
                init::stage1(init_plan, theirs)
            }
            sys::ForkResult::Parent(pid) => {
                drop(theirs);
                drop(stdio);
                Ok((ours, Reaper(pid)))
            }
        }
    } else {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.env(INIT_ENV, theirs.as_raw_fd().to_string());
        if let Some(s) = stdio {
            cmd.stdin(Stdio::from(s.stdin))
                .stdout(Stdio::from(s.stdout))
                .stderr(Stdio::from(s.stderr));
        }
        sys::keep_fd_on_exec(&mut cmd, theirs.as_raw_fd());
        let child = cmd.spawn()?;
        drop(theirs);
        let reaper = Reaper(child.id() as i32);
        if let Err(e) = init::send(&mut ours, &Msg::Init(Box::new(init_plan))) {
            // Stage 1 sees EOF and exits; then the reaper can wait for it.
            drop(ours);
            return Err(e);
        }
        Ok((ours, reaper))
    }
}

/// Reaps stage 1 when dropped. Stage 1 exits right after it has reported
/// the container's pid (or an error), so this wait is short.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let p = nix::unistd::Pid::from_raw(self.0);
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(p, None) {}
    }
}

/// Entry of a re-executed init: reads the plan from the inherited socket and
/// runs stage 1. Returns `false` when this process is not an init.
pub(crate) fn run_init_from_env() -> bool {
    let Ok(fd) = std::env::var(INIT_ENV) else {
        return false;
    };
    let Ok(fd) = fd.parse::<i32>() else {
        return false;
    };
    // Single-threaded here (fresh exec), so changing the environment is sound.
    std::env::remove_var(INIT_ENV);
    let Ok(owned) = sys::inherited_fd(fd) else {
        std::process::exit(1)
    };
    let _ = sys::set_cloexec(fd);
    let mut sock = UnixStream::from(owned);
    match init::recv(&mut sock) {
        Ok(Some(Msg::Init(p))) => init::stage1(*p, sock),
        _ => std::process::exit(1),
    }
}
