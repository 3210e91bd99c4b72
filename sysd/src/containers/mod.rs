//! The container manager: every system service and every workload runs as a container
//! through the integrated runtime ([`berth_runtime`]).
//!
//! * Definitions come from `/usr/lib/berth/services/*.toml` (system services), the
//!   config's `[[containers]]` and `osctl run` (kept in `/var/lib/berth/workloads/`).
//! * Each container has one supervising task: it waits for its dependencies, resolves the
//!   image (a shipped OCI layout imported into the store, or a registry pull), mounts an
//!   overlay rootfs (the image's unpacked layers + a per-container upper dir under
//!   `/var/lib/berth/containers/<name>/`), writes the OCI bundle, creates and starts the
//!   container in cgroup `berth/system/<name>` or `berth/workloads/<name>`, pumps its
//!   output into `/var/log/berth/<name>.log`, runs its health check, and applies the
//!   restart policy with exponential back-off when it exits.
//! * sysd may crash: containers keep running (their state is in `/run/berth/runtime`),
//!   and the next sysd adopts them instead of starting new ones.

pub mod bundle;
pub mod health;
pub mod logs;
pub mod network;
pub mod userns;

use crate::error_chain;
use berth_api::{ContainerInfo, ContainerStats, ExecReply, ImageInfo, RunRequest};
use berth_config::{ContainerSpec, ImageRef, NetworkMode, RestartPolicy};
use berth_registry::{Client, Platform, Reference, Store};
use berth_runtime::{CreateOptions, ExecOptions, Runtime, Stdio3};

use crate::logfwd::format::Stream;
use health::Health;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Where the manager keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Runtime state (`/run/berth/runtime`): survives sysd restarts, not reboots.
    pub runtime_root: PathBuf,
    /// Log FIFOs (`/run/berth/containers`).
    pub run_dir: PathBuf,
    /// Per-container upper/work dirs and bundles (`/var/lib/berth/containers`).
    pub containers: PathBuf,
    /// Definitions of `osctl run` workloads (`/var/lib/berth/workloads`).
    pub workloads: PathBuf,
    /// Logs (`/var/log/berth`).
    pub logs: PathBuf,
    /// The image store (`/var/lib/berth/images`).
    pub images: PathBuf,
    /// Shipped OCI layouts (`/usr/lib/berth/images`).
    pub shipped: PathBuf,
    /// Shipped service definitions (`/usr/lib/berth/services`).
    pub services: PathBuf,
    /// Named volumes (`/var/lib/berth/volumes`).
    pub volumes: PathBuf,
    /// Id ranges of user-namespace containers (`/var/lib/berth/userns.json`).
    pub userns: PathBuf,
    /// The workload bridge's state and files.
    pub net: network::NetPaths,
}

impl Paths {
    /// The paths on a Berth node.
    pub fn node() -> Self {
        Paths {
            runtime_root: "/run/berth/runtime".into(),
            run_dir: "/run/berth/containers".into(),
            containers: "/var/lib/berth/containers".into(),
            workloads: "/var/lib/berth/workloads".into(),
            logs: "/var/log/berth".into(),
            images: "/var/lib/berth/images".into(),
            shipped: "/usr/lib/berth/images".into(),
            services: "/usr/lib/berth/services".into(),
            volumes: berth_config::VOLUMES_DIR.into(),
            userns: "/var/lib/berth/userns.json".into(),
            net: network::NetPaths::node(),
        }
    }
}

/// Where a definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shipped in the image.
    System,
    /// The config's `[[containers]]`.
    Config,
    /// `osctl run`.
    Run,
}

impl Kind {
    fn cgroup_parent(self) -> &'static str {
        match self {
            Kind::System => "berth/system",
            _ => "berth/workloads",
        }
    }
}

/// Errors of the manager's operations, each naming the container or image.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no container named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl From<ManagerError> for berth_api::ManagerError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::NotFound(n) => {
                berth_api::ManagerError::NotFound(format!("no container named {n:?}"))
            }
            ManagerError::Invalid(m) => berth_api::ManagerError::Invalid(m),
            ManagerError::Failed(m) => berth_api::ManagerError::Failed(m),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Start,
    Stop,
    Restart,
    Remove,
}

struct Entry {
    spec: ContainerSpec,
    kind: Kind,
    state: &'static str,
    pid: i32,
    restarts: u32,
    /// `oom` and `oom_kill` of `memory.events` of this container's earlier cgroups (each
    /// start gets a new one), so the counters of [`ContainerFigures`] never go back.
    ooms_before: u64,
    oom_kills_before: u64,
    exit_code: i32,
    health: Health,
    started: Option<Instant>,
    message: String,
    /// The store ref of the image in use.
    image_ref: String,
    tx: mpsc::UnboundedSender<Cmd>,
    done: watch::Receiver<bool>,
}

struct Shared {
    entries: Mutex<BTreeMap<String, Entry>>,
    changed: watch::Sender<u64>,
    rt: Runtime,
    store: Store,
    client: Mutex<Client>,
    paths: Paths,
    platform: Platform,
    /// Problems with the definitions, for `osctl status`.
    problems: Mutex<Vec<String>>,
    /// Id ranges of containers with `user_namespace`.
    userns: Mutex<userns::Allocator>,
    /// The workload bridge, set up at start when a bridged container is defined, else
    /// when the first one starts.
    bridge: tokio::sync::OnceCell<Arc<network::Bridge>>,
    /// `[network.bridge] subnet` as sysd started (a change takes a restart).
    bridge_subnet: Mutex<berth_config::Cidr>,
    /// Log forwarding, when sysd set it up ([`Manager::set_forwarder`]).
    fwd: std::sync::OnceLock<crate::logfwd::Forwarder>,
}

/// One container's figures ([`Manager::figures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFigures {
    pub name: String,
    /// A system service (else a workload).
    pub system: bool,
    /// `running`, `stopped`, `restarting`, ... as `osctl ps` shows it.
    pub state: &'static str,
    pub restarts: u32,
    /// `none`, `starting`, `healthy` or `unhealthy`.
    pub health: &'static str,
    /// `oom` and `oom_kill` of `memory.events`, over every start of the container since
    /// sysd started.
    pub ooms: u64,
    pub oom_kills: u64,
    /// The cgroup's counters; None unless it runs.
    pub cgroup: Option<berth_runtime::Stats>,
}

/// The container manager; cheap to clone.
#[derive(Clone)]
pub struct Manager {
    sh: Arc<Shared>,
}

/// How long a container gets between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A run shorter than this counts as a quick failure for the back-off.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Quick exits in a row from which `osctl ps` reports a crash loop.
const CRASH_LOOP: u32 = 3;

fn lock(sh: &Shared) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
    sh.entries.lock().unwrap_or_else(|e| e.into_inner())
}

fn touch(sh: &Shared) {
    sh.changed.send_modify(|v| *v = v.wrapping_add(1));
}

fn update(sh: &Shared, name: &str, f: impl FnOnce(&mut Entry)) {
    if let Some(e) = lock(sh).get_mut(name) {
        f(e);
    }
    touch(sh);
}

/// Reads the service definitions in `dir` (`*.toml`, sorted). Bad files are reported and
/// skipped, so one broken definition cannot keep the others down.
pub fn load_services(dir: &Path) -> (Vec<ContainerSpec>, Vec<String>) {
    load_definitions(dir, berth_config::parse_service)
}

/// [`load_services`] with `parse` deciding the rules (workloads may bind less of the host).
fn load_definitions(
    dir: &Path,
    parse: fn(&str) -> Result<ContainerSpec, berth_config::Errors>,
) -> (Vec<ContainerSpec>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(format!("cannot read {}: {e}", dir.display()));
            Vec::new()
        }
    };
    files.sort();
    for p in files {
        match fs::read_to_string(&p) {
            Ok(t) => match parse(&t) {
                Ok(s) => out.push(s),
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            },
            Err(e) => errors.push(format!("cannot read {}: {e}", p.display())),
        }
    }
    (out, errors)
}

/// Dependency order: every container after those it names in `after`/`requires` (when
/// they are defined); ties keep the input order. Cycles are broken by input order.
pub fn start_order(specs: &[(String, Vec<String>)]) -> Vec<String> {
    let names: HashSet<&str> = specs.iter().map(|(n, _)| n.as_str()).collect();
    let mut done: Vec<String> = Vec::new();
    let mut left: Vec<&(String, Vec<String>)> = specs.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|(n, deps)| {
            let ready = deps
                .iter()
                .all(|d| !names.contains(d.as_str()) || done.contains(d) || d == n);
            if ready {
                done.push(n.clone());
            }
            !ready
        });
        if left.len() == before {
            // A cycle: take the first one as if its dependencies were met.
            let (n, _) = left.remove(0);
            done.push(n.clone());
        }
    }
    done
}

/// The new definitions (`new`) caught in a dependency cycle among `old` + `new`, each with
/// the cycle it is in (`dependency cycle: a -> b -> a`).
pub fn cycle_members(
    old: &[&ContainerSpec],
    new: &[&ContainerSpec],
) -> std::collections::HashMap<String, String> {
    let mut all: Vec<&ContainerSpec> = old.iter().chain(new).copied().collect();
    let mut out = std::collections::HashMap::new();
    while let Some(cycle) = berth_config::find_cycle(&all) {
        let why = format!("dependency cycle: {}", cycle.join(" -> "));
        for n in &cycle {
            if new.iter().any(|s| &s.name == n) {
                out.entry(n.clone()).or_insert_with(|| why.clone());
            }
        }
        all.retain(|s| !cycle.contains(&s.name));
    }
    out
}

/// Start time of a process in clock ticks after boot: field 22 of `/proc/<pid>/stat`
/// (counted after the command name, which may contain spaces and parentheses).
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// How long process `pid` has been running, from `/proc`.
fn process_age(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    let started = start_ticks(&stat)? as f64 / ticks as f64;
    let now = crate::status::uptime();
    (now >= started).then(|| Duration::from_secs_f64(now - started))
}

fn deps_of(s: &ContainerSpec) -> Vec<String> {
    let mut d = s.after.clone();
    d.extend(s.requires.iter().cloned());
    d
}

fn store_ref(r: &ImageRef) -> String {
    match r {
        ImageRef::Shipped { name, tag } => {
            format!("{name}:{}", tag.as_deref().unwrap_or("latest"))
        }
        other => other.to_string(),
    }
}

fn exit_code(ws: nix::sys::wait::WaitStatus) -> i32 {
    use nix::sys::wait::WaitStatus;
    match ws {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => -1,
    }
}

/// Waits for `pid` to exit; returns its exit status (-1 when it was not our child, e.g.
/// a container adopted from a previous sysd, whose status went to PID 1). Waits on a
/// blocking-pool thread, so the status is collected even if nobody awaits it any more.
pub(crate) async fn wait_exit(pid: i32) -> i32 {
    tokio::task::spawn_blocking(move || wait_blocking(pid))
        .await
        .unwrap_or(-1)
}

fn wait_blocking(pid: i32) -> i32 {
    use nix::errno::Errno;
    use nix::sys::wait::{waitpid, WaitStatus};
    let p = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(p, None) {
            Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return exit_code(ws),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    // Not our child: wait on a pidfd.
    if let Ok(fd) = crate::sys::pidfd_open(pid) {
        loop {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                _ => break,
            }
        }
    }
    -1
}

impl Manager {
    /// A manager over `paths` with the registry `client`.
    pub fn new(paths: Paths, client: Client) -> Result<Self, ManagerError> {
        let store = Store::open(&paths.images).map_err(|e| {
            ManagerError::Failed(format!(
                "cannot open the image store {}: {e}",
                paths.images.display()
            ))
        })?;
        for d in [&paths.run_dir, &paths.containers, &paths.logs] {
            fs::create_dir_all(d)
                .map_err(|e| ManagerError::Failed(format!("cannot create {}: {e}", d.display())))?;
        }
        // Every controller for the containers' cgroups, so `osctl stats` has all counters
        // even for containers without limits (cgroup v2: enabled per parent).
        if let Ok(root) = berth_runtime::cgroup::find_root() {
            for parent in [Kind::System.cgroup_parent(), Kind::Run.cgroup_parent()] {
                let d = root.join(parent);
                let _ = fs::create_dir_all(&d);
                for c in ["+cpu", "+io", "+memory", "+pids"] {
                    if let Err(e) = fs::write(d.join("cgroup.subtree_control"), c) {
                        tracing::debug!("{c} in {}: {e}", d.display());
                    }
                }
            }
        }
        let ids = userns::Allocator::load(&paths.userns)
            .map_err(|e| ManagerError::Failed(error_chain(&e)))?;
        let (changed, _) = watch::channel(0);
        Ok(Manager {
            sh: Arc::new(Shared {
                entries: Mutex::new(BTreeMap::new()),
                changed,
                rt: Runtime::new(&paths.runtime_root),
                store,
                client: Mutex::new(client),
                paths,
                platform: Platform::host(),
                problems: Mutex::new(Vec::new()),
                userns: Mutex::new(ids),
                bridge: tokio::sync::OnceCell::new(),
                bridge_subnet: Mutex::new(berth_config::WorkloadBridge::default().subnet),
                fwd: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Forward every container's output through `fwd` from now on (containers started or
    /// adopted after this call).
    pub fn set_forwarder(&self, fwd: crate::logfwd::Forwarder) {
        let _ = self.sh.fwd.set(fwd);
    }

    fn client(&self) -> Client {
        self.sh
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New registry settings (a config change).
    pub fn set_client(&self, client: Client) {
        *self.sh.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }

    /// Make the config's workloads what `specs` says: remove those no longer defined,
    /// replace changed ones, start new ones. System services and `osctl run` workloads
    /// are left alone. Returns problems (name clashes).
    pub async fn sync_config(&self, specs: Vec<ContainerSpec>) -> Vec<String> {
        let current: Vec<(String, ContainerSpec, watch::Receiver<bool>)> = lock(&self.sh)
            .iter()
            .filter(|(_, e)| e.kind == Kind::Config)
            .map(|(n, e)| (n.clone(), e.spec.clone(), e.done.clone()))
            .collect();
        for (name, old, mut done) in current {
            if specs.contains(&old) {
                continue;
            }
            tracing::info!(container = %name, "config changed: removing the old definition");
            if self.send(&name, Cmd::Remove).is_ok() {
                let _ = tokio::time::timeout(
                    STOP_TIMEOUT + Duration::from_secs(10),
                    done.wait_for(|d| *d),
                )
                .await;
            }
            lock(&self.sh).remove(&name);
            touch(&self.sh);
            if !specs.iter().any(|s| s.name == name && s.user_namespace) {
                self.release_ids(&name);
            }
        }
        let mut problems = Vec::new();
        let new: Vec<(ContainerSpec, Kind)> = specs
            .into_iter()
            .filter(|s| !lock(&self.sh).contains_key(&s.name))
            .filter(|s| match self.port_taken(s) {
                Some(why) => {
                    problems.push(why);
                    false
                }
                None => true,
            })
            .map(|s| (s, Kind::Config))
            .collect();
        problems.extend(self.launch(new));
        self.report(&problems);
        problems
    }

    /// Why `spec` cannot be added: a host port it publishes is published by a container
    /// defined elsewhere (an `osctl run` workload; the validator checks the config's own).
    fn port_taken(&self, spec: &ContainerSpec) -> Option<String> {
        let e = lock(&self.sh);
        let others = e
            .iter()
            .filter(|(n, _)| **n != spec.name)
            .flat_map(|(n, e)| e.spec.ports.iter().map(move |p| (n.as_str(), p)));
        berth_net::ports::check(others.chain(spec.ports.iter().map(|p| (spec.name.as_str(), p))))
            .err()
            .map(|c| format!("container {} is not started: {c}", spec.name))
    }

    /// Definitions of `osctl run` workloads kept on the state partition.
    pub fn saved_workloads(&self) -> (Vec<ContainerSpec>, Vec<String>) {
        load_definitions(&self.sh.paths.workloads, berth_config::parse_workload)
    }

    /// Before [`Manager::launch`] at sysd start: remember the bridge subnet and, when one
    /// of `specs` is a bridged container, set the bridge up with those a previous sysd
    /// left running, so their published ports keep answering (see [`network`]). A failure
    /// is logged and returned; the bridged containers then fail to start with it.
    pub async fn setup_network(
        &self,
        bridge: &berth_config::WorkloadBridge,
        specs: &[(ContainerSpec, Kind)],
    ) -> Result<(), String> {
        *self
            .sh
            .bridge_subnet
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bridge.subnet;
        let adopted: Vec<network::Adopted> = specs
            .iter()
            .filter(|(s, _)| s.network == NetworkMode::Bridge)
            .filter(|(s, _)| {
                self.sh
                    .rt
                    .state(&s.name)
                    .is_ok_and(|st| st.status == berth_runtime::Status::Running && st.pid > 0)
            })
            .map(|(s, _)| network::Adopted {
                name: s.name.clone(),
                ports: s.ports.clone(),
            })
            .collect();
        if !specs.iter().any(|(s, _)| s.network == NetworkMode::Bridge) {
            return Ok(());
        }
        bridge_of(&self.sh, Some(&adopted)).await.map(|_| ())
    }

    /// Register `specs` and start them (in dependency order; independent ones in
    /// parallel), adopting containers a previous sysd left running. Name clashes are
    /// reported and the later definition is refused.
    pub fn launch(&self, specs: Vec<(ContainerSpec, Kind)>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut accepted = Vec::new();
        {
            let entries = lock(&self.sh);
            let mut seen: HashSet<String> = entries.keys().cloned().collect();
            for (s, k) in specs {
                if !seen.insert(s.name.clone()) {
                    problems.push(format!(
                        "container {:?} is defined twice; the {} definition is ignored",
                        s.name,
                        match k {
                            Kind::System => "system",
                            Kind::Config => "config",
                            Kind::Run => "osctl run",
                        }
                    ));
                    continue;
                }
                accepted.push((s, k));
            }
        }
        // Definitions whose dependencies go round in a circle can never start: say so and
        // leave them stopped, start the rest.
        let in_cycle = {
            let entries = lock(&self.sh);
            let old: Vec<&ContainerSpec> = entries.values().map(|e| &e.spec).collect();
            let new: Vec<&ContainerSpec> = accepted.iter().map(|(s, _)| s).collect();
            cycle_members(&old, &new)
        };
        let mut cycles: Vec<&String> = in_cycle.values().collect();
        cycles.sort();
        cycles.dedup();
        for c in cycles {
            problems.push(format!("{c}: these containers are not started"));
        }
        let known: HashSet<String> = accepted.iter().map(|(s, _)| s.name.clone()).collect();
        // Containers left in the runtime that nothing defines any more: remove them.
        if let Ok(list) = self.sh.rt.list() {
            for st in list {
                if !known.contains(&st.id) && !lock(&self.sh).contains_key(&st.id) {
                    tracing::info!(container = %st.id, "removing a container nothing defines");
                    let _ = self.sh.rt.delete(&st.id, true);
                    let _ = unmount(&self.sh.paths.containers.join(&st.id).join("rootfs"));
                }
            }
        }
        for (s, k) in accepted {
            let Some(why) = in_cycle.get(&s.name) else {
                self.spawn(s, k, true);
                continue;
            };
            let name = s.name.clone();
            // Not started, but still adopted when a previous sysd left it running.
            self.spawn(s, k, false);
            update(&self.sh, &name, |e| {
                if e.state == "waiting" {
                    e.state = "failed";
                    e.message = why.clone();
                }
            });
        }
        self.report(&problems);
        problems
    }

    /// Whether a container of this name is defined.
    pub fn exists(&self, name: &str) -> bool {
        lock(&self.sh).contains_key(name)
    }

    /// Problems with the definitions (unreadable, defined twice, dependency cycles), for
    /// `osctl status`.
    pub fn problems(&self) -> Vec<String> {
        self.sh
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record problems found outside [`Manager::launch`] (reading the definitions).
    pub fn report(&self, problems: &[String]) {
        let mut kept = self.sh.problems.lock().unwrap_or_else(|e| e.into_inner());
        for p in problems {
            if !kept.contains(p) {
                kept.push(p.clone());
            }
        }
    }

    fn spawn(&self, spec: ContainerSpec, kind: Kind, start: bool) {
        let name = spec.name.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        let adopted = self.adoptable(&name);
        lock(&self.sh).insert(
            name.clone(),
            Entry {
                image_ref: store_ref(&spec.image),
                spec,
                kind,
                state: if adopted.is_some() {
                    "running"
                } else {
                    "waiting"
                },
                pid: adopted.unwrap_or(0),
                restarts: 0,
                ooms_before: 0,
                oom_kills_before: 0,
                exit_code: -1,
                health: Health::None,
                started: adopted.map(|_| Instant::now()),
                message: String::new(),
                tx,
                done: done_rx,
            },
        );
        touch(&self.sh);
        let sh = self.sh.clone();
        tokio::spawn(async move {
            supervise(sh.clone(), name.clone(), rx, adopted, start).await;
            let _ = done_tx.send(true);
        });
    }

    /// A running container from a previous sysd: its pid (the log pump is re-attached).
    fn adoptable(&self, name: &str) -> Option<i32> {
        let st = self.sh.rt.state(name).ok()?;
        if st.status != berth_runtime::Status::Running || st.pid <= 0 {
            return None;
        }
        let run = self.sh.paths.run_dir.join(name);
        let log = logs::LogFile::new(&self.sh.paths.logs, name);
        let mut pipes = Vec::new();
        // err.fifo: containers started before stderr had its own FIFO have none.
        for (file, stream) in [("log.fifo", Stream::Stdout), ("err.fifo", Stream::Stderr)] {
            let path = run.join(file);
            match open_reader(&path) {
                Ok(f) => pipes.push(logs::Pipe {
                    file: f,
                    path,
                    stream,
                }),
                Err(e) if stream == Stream::Stderr && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(container = name, "cannot re-attach the log: {e}"),
            }
        }
        if !pipes.is_empty() {
            tokio::spawn(logs::pump_from(pipes, log, forward_of(&self.sh, name)));
        }
        tracing::info!(container = name, pid = st.pid, "adopted running container");
        Some(st.pid)
    }

    fn send(&self, name: &str, cmd: Cmd) -> Result<(), ManagerError> {
        let e = lock(&self.sh);
        let e = e
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        e.tx.send(cmd)
            .map_err(|_| ManagerError::Failed(format!("container {name} is being removed")))
    }

    async fn wait_state(&self, name: &str, want: &[&str], timeout: Duration) -> bool {
        let mut rx = self.sh.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match lock(&self.sh).get(name) {
                Some(e) if want.contains(&e.state) => return true,
                None => return want.is_empty(),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Start a stopped container (returns once it runs or failed to start).
    pub async fn start(&self, name: &str) -> Result<(), ManagerError> {
        self.send(name, Cmd::Start)?;
        self.settle(name).await
    }

    async fn settle(&self, name: &str) -> Result<(), ManagerError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.wait_state(
            name,
            &[
                "running",
                "failed",
                "exited",
                "crash-loop",
                "restarting",
                "stopped",
            ],
            Duration::from_secs(120),
        )
        .await;
        let e = lock(&self.sh);
        match e.get(name) {
            Some(e) if e.state == "failed" || e.state == "crash-loop" => Err(ManagerError::Failed(
                format!("container {name} failed to start: {}", e.message),
            )),
            _ => Ok(()),
        }
    }

    /// Stop a container (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]); it stays stopped.
    pub async fn stop(&self, name: &str) -> Result<(), ManagerError> {
        self.send(name, Cmd::Stop)?;
        if !self
            .wait_state(name, &["stopped"], STOP_TIMEOUT + Duration::from_secs(10))
            .await
        {
            return Err(ManagerError::Failed(format!(
                "container {name} did not stop in time"
            )));
        }
        Ok(())
    }

    /// Stop and start again.
    pub async fn restart(&self, name: &str) -> Result<(), ManagerError> {
        self.send(name, Cmd::Restart)?;
        // Wait for the old run to go, then for the new one.
        self.wait_state(
            name,
            &["stopped", "waiting", "starting"],
            STOP_TIMEOUT + Duration::from_secs(5),
        )
        .await;
        self.settle(name).await
    }

    /// Every container.
    pub fn ps(&self) -> Vec<ContainerInfo> {
        lock(&self.sh)
            .iter()
            .map(|(n, e)| ContainerInfo {
                name: n.clone(),
                kind: if e.kind == Kind::System {
                    "system".into()
                } else {
                    "workload".into()
                },
                image: e.spec.image.to_string(),
                state: e.state.into(),
                pid: e.pid,
                restarts: e.restarts,
                exit_code: e.exit_code,
                health: e.health.as_str().into(),
                required: e.spec.required_for_boot,
                uptime_seconds: e
                    .started
                    .filter(|_| e.state == "running")
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(0.0),
                message: e.message.clone(),
                network: e.spec.network.as_str().into(),
                address: self
                    .sh
                    .bridge
                    .get()
                    .and_then(|b| b.address(n))
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                ports: e.spec.ports.iter().map(|p| p.to_string()).collect(),
            })
            .collect()
    }

    /// Boot-time containers (the system services and the config's workloads, not `osctl
    /// run` ones) that are not up yet, sorted: up is running (and healthy, where it has a
    /// check) or finished with status 0.
    pub fn boot_pending(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sh)
            .iter()
            .filter(|(_, e)| e.kind != Kind::Run)
            .filter(|(_, e)| {
                let up = e.state == "running" && matches!(e.health, Health::None | Health::Healthy);
                let done = e.state == "exited" && e.exit_code == 0;
                !(up || done)
            })
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Returns once [`Manager::boot_pending`] is empty; logs what it still waits for after
    /// `warn_after`.
    pub async fn wait_boot_services(&self, warn_after: Duration) {
        let mut rx = self.sh.changed.subscribe();
        let warn_at = tokio::time::Instant::now() + warn_after;
        let mut warned = false;
        loop {
            let pending = self.boot_pending();
            if pending.is_empty() {
                return;
            }
            if !warned && tokio::time::Instant::now() >= warn_at {
                warned = true;
                tracing::warn!("boot: still waiting for {}", pending.join(", "));
            }
            // Health results change the state without always changing `changed`: look again
            // at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    }

    /// Required services and their health, and whether all are healthy.
    pub fn required_health(&self) -> (Vec<(String, String)>, bool) {
        let e = lock(&self.sh);
        let mut all = true;
        let mut v = Vec::new();
        for (n, e) in e.iter().filter(|(_, e)| e.spec.required_for_boot) {
            let ok = e.state == "running" && matches!(e.health, Health::None | Health::Healthy);
            all &= ok;
            v.push((
                n.clone(),
                if ok {
                    "healthy".to_string()
                } else if e.state == "running" {
                    e.health.as_str().to_string()
                } else {
                    e.state.to_string()
                },
            ));
        }
        (v, all)
    }

    /// Counters of every running container (`osctl stats`): the same figures as the
    /// metrics ([`Self::figures`]).
    pub fn stats(&self) -> Vec<ContainerStats> {
        self.figures()
            .into_iter()
            .filter_map(|f| {
                let s = f.cgroup?;
                Some(ContainerStats {
                    name: f.name,
                    memory_bytes: s.memory_current.unwrap_or(0),
                    memory_max: s.memory_max.unwrap_or(0),
                    cpu_usec: s.cpu_usage_usec.unwrap_or(0),
                    pids: s.pids_current.unwrap_or(0),
                    pids_max: s.pids_max.unwrap_or(0),
                })
            })
            .collect()
    }

    /// Every container's figures: state, restarts, health, OOM counters, and the cgroup's
    /// counters while it runs. The one source of `osctl stats` and the metrics.
    pub fn figures(&self) -> Vec<ContainerFigures> {
        let mut v: Vec<ContainerFigures> = lock(&self.sh)
            .iter()
            .map(|(n, e)| ContainerFigures {
                name: n.clone(),
                system: e.kind == Kind::System,
                state: e.state,
                restarts: e.restarts,
                health: e.health.as_str(),
                ooms: e.ooms_before,
                oom_kills: e.oom_kills_before,
                cgroup: None,
            })
            .collect();
        // The cgroup files are read without the lock held.
        for f in v.iter_mut().filter(|f| f.state == "running") {
            if let Ok(s) = self.sh.rt.stats(&f.name) {
                f.ooms = f.ooms.saturating_add(s.oom_events.unwrap_or(0));
                f.oom_kills = f.oom_kills.saturating_add(s.oom_kill_events.unwrap_or(0));
                f.cgroup = Some(s);
            }
        }
        v
    }

    fn log_file(&self, name: &str) -> Result<logs::LogFile, ManagerError> {
        let known = lock(&self.sh).contains_key(name);
        let lf = logs::LogFile::new(&self.sh.paths.logs, name);
        if !known && !lf.path().exists() {
            return Err(ManagerError::NotFound(name.into()));
        }
        Ok(lf)
    }

    /// The last `tail` lines of a container's log (0 = all kept).
    pub fn logs(&self, name: &str, tail: u32) -> Result<(Vec<u8>, u64), ManagerError> {
        self.log_file(name)?
            .tail(tail as usize)
            .map_err(|e| ManagerError::Failed(format!("reading the log of {name}: {e}")))
    }

    /// Log data after position `from`.
    pub fn logs_from(&self, name: &str, from: u64) -> Result<(Vec<u8>, u64), ManagerError> {
        self.log_file(name)?
            .read_from(from)
            .map_err(|e| ManagerError::Failed(format!("reading the log of {name}: {e}")))
    }

    /// Run `argv` in the running container `name`, feeding `stdin`, and collect its
    /// output (each stream capped at 8 MiB). Killed after `timeout`.
    pub async fn exec(
        &self,
        name: &str,
        argv: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<ExecReply, ManagerError> {
        let started = self.exec_start(name, argv, None).await?;
        let name = name.to_string();
        tokio::task::spawn_blocking(move || exec_capture(&name, started, stdin, timeout))
            .await
            .map_err(|e| ManagerError::Failed(format!("exec task: {e}")))?
    }

    /// Start `argv` in the running container `name` for an interactive session: with a
    /// pty of the container's own (sized `rows` x `cols` when given) when `tty`, else with
    /// pipes. The runtime hands the pty over on a console socket in `/run/berth/exec`.
    pub async fn exec_start(
        &self,
        name: &str,
        argv: Vec<String>,
        tty: Option<(u16, u16)>,
    ) -> Result<crate::exec::Started, ManagerError> {
        let console_dir = self.sh.paths.run_dir.with_file_name("exec");
        self.check_running(name)?;
        if argv.is_empty() {
            return Err(ManagerError::Invalid("no command given".into()));
        }
        let rt = self.sh.rt.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || exec_session(&rt, &name, argv, tty, &console_dir))
            .await
            .map_err(|e| ManagerError::Failed(format!("exec task: {e}")))?
    }

    fn check_running(&self, name: &str) -> Result<(), ManagerError> {
        let e = lock(&self.sh);
        let e = e
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if e.state != "running" {
            return Err(ManagerError::Invalid(format!(
                "container {name} is {}, not running",
                e.state
            )));
        }
        Ok(())
    }

    /// Images in the store.
    pub fn images(&self) -> Result<Vec<ImageInfo>, ManagerError> {
        let refs = self
            .sh
            .store
            .refs()
            .map_err(|e| ManagerError::Failed(format!("reading the image store: {e}")))?;
        let used: HashSet<String> = lock(&self.sh)
            .values()
            .map(|e| e.image_ref.clone())
            .collect();
        Ok(refs
            .into_iter()
            .map(|(name, digest)| {
                let size = self
                    .sh
                    .store
                    .image(&name, &self.sh.platform)
                    .map(|i| {
                        i.manifest.config.size
                            + i.manifest.layers.iter().map(|l| l.size).sum::<u64>()
                    })
                    .unwrap_or(0);
                ImageInfo {
                    in_use: used.contains(&name),
                    name,
                    digest: digest.to_string(),
                    size,
                }
            })
            .collect())
    }

    /// Pull `reference` into the store.
    pub async fn pull(
        &self,
        reference: &str,
        progress: berth_registry::Progress,
    ) -> Result<ImageInfo, ManagerError> {
        let r = Reference::parse(reference)
            .map_err(|e| ManagerError::Invalid(format!("invalid image reference: {e}")))?;
        let opts = berth_registry::PullOptions {
            platform: self.sh.platform.clone(),
            progress,
            ..Default::default()
        };
        let img = self
            .sh
            .store
            .pull(&self.client(), &r, &opts)
            .await
            .map_err(|e| ManagerError::Failed(error_chain(&e)))?;
        Ok(ImageInfo {
            name: img.name.clone(),
            digest: img.digest.to_string(),
            size: img.manifest.config.size
                + img.manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            in_use: false,
        })
    }

    /// Remove an image no container uses, then garbage-collect.
    pub fn remove_image(&self, name: &str) -> Result<(), ManagerError> {
        let users: Vec<String> = lock(&self.sh)
            .iter()
            .filter(|(_, e)| e.image_ref == name)
            .map(|(n, _)| n.clone())
            .collect();
        if !users.is_empty() {
            return Err(ManagerError::Invalid(format!(
                "image {name} is used by {}; remove those containers first",
                users.join(", ")
            )));
        }
        let removed = self
            .sh
            .store
            .remove_ref(name)
            .map_err(|e| ManagerError::Failed(error_chain(&e)))?;
        if !removed {
            return Err(ManagerError::NotFound(name.into()));
        }
        self.sh
            .store
            .gc()
            .map_err(|e| ManagerError::Failed(error_chain(&e)))?;
        Ok(())
    }

    /// `osctl run`: validate with the config's rules, pull, persist, start.
    pub async fn run(
        &self,
        req: &RunRequest,
        progress: berth_registry::Progress,
    ) -> Result<String, ManagerError> {
        let spec = run_spec(req).map_err(ManagerError::Invalid)?;
        if lock(&self.sh).contains_key(&spec.name) {
            return Err(ManagerError::Invalid(format!(
                "a container named {:?} exists already (osctl rm it, or choose another --name)",
                spec.name
            )));
        }
        if let Some(why) = self.port_taken(&spec) {
            return Err(ManagerError::Invalid(why));
        }
        if let ImageRef::Registry { .. } = &spec.image {
            self.pull(&spec.image.to_string(), progress).await?;
        }
        let text = toml::to_string(&spec)
            .map_err(|e| ManagerError::Failed(format!("cannot save the definition: {e}")))?;
        let path = self.sh.paths.workloads.join(format!("{}.toml", spec.name));
        fs::create_dir_all(&self.sh.paths.workloads)
            .and_then(|_| berth_config::store::write_atomic(&path, text.as_bytes()))
            .map_err(|e| ManagerError::Failed(format!("cannot write {}: {e}", path.display())))?;
        let name = spec.name.clone();
        self.spawn(spec, Kind::Run, true);
        self.settle(&name).await?;
        Ok(name)
    }

    /// Remove an `osctl run` workload (its definition, upper dir and logs).
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        let (kind, state, mut done) = {
            let e = lock(&self.sh);
            let e = e
                .get(name)
                .ok_or_else(|| ManagerError::NotFound(name.into()))?;
            (e.kind, e.state, e.done.clone())
        };
        match kind {
            Kind::System => {
                return Err(ManagerError::Invalid(format!(
                    "{name} is a system service; it cannot be removed (osctl stop stops it)"
                )))
            }
            Kind::Config => {
                return Err(ManagerError::Invalid(format!(
                    "{name} is defined in the machine config; remove it there (osctl config apply)"
                )))
            }
            Kind::Run => {}
        }
        if matches!(state, "running" | "starting" | "restarting") && !force {
            return Err(ManagerError::Invalid(format!(
                "container {name} is {state}; stop it first or use --force"
            )));
        }
        self.send(name, Cmd::Remove)?;
        let _ = tokio::time::timeout(
            STOP_TIMEOUT + Duration::from_secs(10),
            done.wait_for(|d| *d),
        )
        .await;
        lock(&self.sh).remove(name);
        touch(&self.sh);
        let p = &self.sh.paths;
        let _ = fs::remove_file(p.workloads.join(format!("{name}.toml")));
        let _ = fs::remove_dir_all(p.containers.join(name));
        let lf = logs::LogFile::new(&p.logs, name);
        let _ = fs::remove_file(lf.path());
        for n in 1..=logs::KEEP {
            let _ = fs::remove_file(format!("{}.{n}", lf.path().display()));
        }
        self.release_ids(name);
        if let Some(b) = self.sh.bridge.get() {
            if let Err(e) = b.release(name) {
                tracing::warn!(container = %name, "{}", error_chain(&e));
            }
        }
        Ok(())
    }

    /// Give back `name`'s user-namespace id range, if it has one.
    fn release_ids(&self, name: &str) {
        let mut ids = self.sh.userns.lock().unwrap_or_else(|e| e.into_inner());
        match ids.release(name) {
            Ok(true) => tracing::info!(container = %name, "user-namespace id range released"),
            Ok(false) => {}
            Err(e) => tracing::warn!(container = %name, "{}", error_chain(&e)),
        }
    }

    /// Stop everything (sysd is shutting down): SIGTERM in reverse dependency order,
    /// giving each container a moment before the next, then wait for all of them (SIGKILL
    /// after [`STOP_TIMEOUT`]); returns within `budget`.
    pub async fn shutdown(&self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        let order = {
            let e = lock(&self.sh);
            start_order(
                &e.iter()
                    .map(|(n, e)| (n.clone(), deps_of(&e.spec)))
                    .collect::<Vec<_>>(),
            )
        };
        let is_up = |name: &str| {
            lock(&self.sh)
                .get(name)
                .is_some_and(|e| !matches!(e.state, "stopped" | "exited" | "failed" | "crash-loop"))
        };
        let mut stopping = Vec::new();
        for name in order.iter().rev() {
            if is_up(name) && self.send(name, Cmd::Stop).is_ok() {
                let _ = tokio::time::timeout_at(
                    deadline,
                    self.wait_state(name, &["stopped"], Duration::from_secs(1)),
                )
                .await;
                stopping.push(name.clone());
            }
        }
        for name in stopping {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_state(&name, &["stopped"], left).await;
        }
    }
}

/// The definition of an `osctl run` request, validated by the config crate.
pub fn run_spec(req: &RunRequest) -> Result<ContainerSpec, String> {
    let mut t = toml::Table::new();
    let name = if req.name.is_empty() {
        // The image's last path component, without tag or digest.
        let base = req.image.rsplit('/').next().unwrap_or(&req.image);
        let base = base.split(['@', ':']).next().unwrap_or(base);
        base.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    } else {
        req.name.clone()
    };
    t.insert("name".into(), name.into());
    t.insert("image".into(), req.image.clone().into());
    if !req.command.is_empty() {
        t.insert("command".into(), req.command.clone().into());
    }
    if !req.env.is_empty() {
        let mut env = toml::Table::new();
        for kv in &req.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env {kv:?}: use KEY=VALUE"))?;
            env.insert(k.into(), v.into());
        }
        t.insert("env".into(), env.into());
    }
    let mut limits = toml::Table::new();
    if !req.memory.is_empty() {
        limits.insert("memory".into(), req.memory.clone().into());
    }
    if !req.cpus.is_empty() {
        let c: f64 = req
            .cpus
            .parse()
            .map_err(|_| format!("--cpus {:?}: use a number such as 0.5", req.cpus))?;
        limits.insert("cpus".into(), c.into());
    }
    if req.pids > 0 {
        limits.insert("pids".into(), i64::from(req.pids).into());
    }
    if !limits.is_empty() {
        t.insert("limits".into(), limits.into());
    }
    if !req.volumes.is_empty() {
        let mut vols = Vec::new();
        for v in &req.volumes {
            let (n, target) = v
                .split_once(':')
                .ok_or_else(|| format!("--volume {v:?}: use NAME:/path/in/container"))?;
            let mut vt = toml::Table::new();
            vt.insert("name".into(), n.into());
            vt.insert("target".into(), target.into());
            vols.push(toml::Value::Table(vt));
        }
        t.insert("volumes".into(), vols.into());
    }
    if !req.restart.is_empty() {
        let mut r = toml::Table::new();
        r.insert("policy".into(), req.restart.clone().into());
        t.insert("restart".into(), r.into());
    }
    if req.user_namespace {
        t.insert("user_namespace".into(), true.into());
    }
    if !req.network.is_empty() {
        t.insert("network".into(), req.network.clone().into());
    }
    if !req.ports.is_empty() {
        t.insert("ports".into(), req.ports.clone().into());
    }
    let text = toml::to_string(&t).map_err(|e| e.to_string())?;
    berth_config::parse_workload(&text).map_err(|e| e.to_string())
}

// ----- one container's life -----

enum Outcome {
    Exited(i32),
    Stop,
    Restart,
    Remove,
}

async fn supervise(
    sh: Arc<Shared>,
    name: String,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut adopted: Option<i32>,
    start: bool,
) {
    let mut want = start || adopted.is_some();
    let mut quick_failures: u32 = 0;
    let mut first = true;
    loop {
        if !want {
            match rx.recv().await {
                Some(Cmd::Start) | Some(Cmd::Restart) => {
                    want = true;
                    quick_failures = 0;
                    update(&sh, &name, |e| e.message.clear());
                }
                Some(Cmd::Stop) => continue,
                Some(Cmd::Remove) | None => {
                    cleanup(&sh, &name).await;
                    return;
                }
            }
        }
        let spec = match lock(&sh).get(&name) {
            Some(e) => e.spec.clone(),
            None => return,
        };
        let mut up_since = None;
        let pid = match adopted.take() {
            Some(pid) => {
                // Adopted (sysd restarted): up since its process started.
                up_since = process_age(pid).and_then(|age| Instant::now().checked_sub(age));
                pid
            }
            None => {
                if first {
                    match wait_deps(&sh, &spec, &mut rx).await {
                        Some(Cmd::Remove) => {
                            cleanup(&sh, &name).await;
                            return;
                        }
                        Some(Cmd::Stop) => {
                            want = false;
                            update(&sh, &name, |e| e.state = "stopped");
                            continue;
                        }
                        _ => {}
                    }
                }
                update(&sh, &name, |e| {
                    e.state = "starting";
                    e.message.clear();
                });
                match start_container(&sh, &spec).await {
                    Ok(pid) => pid,
                    Err(msg) => {
                        tracing::warn!(container = %name, "start failed: {msg}");
                        cleanup(&sh, &name).await;
                        quick_failures += 1;
                        update(&sh, &name, |e| {
                            e.state = "failed";
                            e.message = msg;
                            e.pid = 0;
                        });
                        if spec.restart.policy == RestartPolicy::Never
                            || spec.restart.limit.is_some_and(|l| quick_failures > l)
                        {
                            want = false;
                            continue;
                        }
                        match backoff(&sh, &name, &spec, quick_failures, None, &mut rx).await {
                            Some(Cmd::Remove) => {
                                cleanup(&sh, &name).await;
                                return;
                            }
                            Some(Cmd::Stop) => {
                                want = false;
                                update(&sh, &name, |e| e.state = "stopped");
                            }
                            _ => {}
                        }
                        continue;
                    }
                }
            }
        };
        first = false;
        let started = up_since.unwrap_or_else(Instant::now);
        tracing::info!(container = %name, pid, "running");
        update(&sh, &name, |e| {
            e.state = "running";
            e.pid = pid;
            e.started = Some(started);
            e.health = if spec.health.is_some() {
                Health::Starting
            } else {
                Health::None
            };
        });
        let checker = spec
            .health
            .clone()
            .map(|h| tokio::spawn(health_loop(sh.clone(), name.clone(), h)));
        let exit = wait_exit(pid);
        tokio::pin!(exit);
        let outcome = loop {
            tokio::select! {
                code = &mut exit => break Outcome::Exited(code),
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Start) => continue,
                    Some(Cmd::Stop) => break Outcome::Stop,
                    Some(Cmd::Restart) => break Outcome::Restart,
                    Some(Cmd::Remove) | None => break Outcome::Remove,
                },
            }
        };
        if let Some(c) = checker {
            c.abort();
        }
        let code = match outcome {
            Outcome::Exited(c) => c,
            _ => {
                update(&sh, &name, |e| e.state = "stopping");
                stop_pid(&sh, &name, pid, &mut exit).await
            }
        };
        // Before the cgroup goes: did the kernel's OOM killer end it? Its OOM counters
        // are kept (no longer read from the cgroup once it is not `running`).
        let last = sh.rt.stats(&name).unwrap_or_default();
        let oom_kills = last.oom_kill_events.unwrap_or(0);
        let oom = oom_kills > 0;
        update(&sh, &name, |e| {
            e.state = "stopping";
            e.ooms_before = e.ooms_before.saturating_add(last.oom_events.unwrap_or(0));
            e.oom_kills_before = e.oom_kills_before.saturating_add(oom_kills);
        });
        cleanup(&sh, &name).await;
        let ran = started.elapsed();
        tracing::info!(container = %name, code, oom, "exited after {:.1} s", ran.as_secs_f64());
        let oom_note = oom.then(|| {
            format!(
                "OOM-killed: it reached its memory limit{}",
                spec.limits
                    .memory
                    .map(|m| format!(" of {} MiB", m.bytes() >> 20))
                    .unwrap_or_default()
            )
        });
        update(&sh, &name, |e| {
            e.exit_code = code;
            e.pid = 0;
            e.health = Health::None;
        });
        match outcome {
            Outcome::Stop => {
                want = false;
                update(&sh, &name, |e| e.state = "stopped");
                continue;
            }
            Outcome::Remove => return,
            Outcome::Restart => {
                quick_failures = 0;
                update(&sh, &name, |e| e.restarts += 1);
                continue;
            }
            Outcome::Exited(_) => {}
        }
        let again = match spec.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        };
        if ran < QUICK_EXIT {
            quick_failures += 1;
        } else {
            quick_failures = 0;
        }
        if !again {
            want = false;
            update(&sh, &name, |e| {
                e.state = if code == 0 { "exited" } else { "failed" };
                e.message = oom_note
                    .clone()
                    .unwrap_or_else(|| format!("exited with status {code}"));
            });
            continue;
        }
        if spec.restart.limit.is_some_and(|l| quick_failures > l) {
            want = false;
            update(&sh, &name, |e| {
                e.state = "crash-loop";
                e.message = format!(
                    "exited {quick_failures} times in a row within {} s (last status {code}); \
                     not restarted again (osctl start {name} to retry)",
                    QUICK_EXIT.as_secs()
                );
            });
            tracing::warn!(container = %name, "crash loop: giving up");
            continue;
        }
        update(&sh, &name, |e| e.restarts += 1);
        if let Some(n) = &oom_note {
            tracing::warn!(container = %name, "{n}");
        }
        match backoff(&sh, &name, &spec, quick_failures, oom_note.clone(), &mut rx).await {
            Some(Cmd::Remove) => return,
            Some(Cmd::Stop) => {
                want = false;
                update(&sh, &name, |e| e.state = "stopped");
            }
            _ => {}
        }
    }
}

/// Sleeps the back-off before a restart; returns early with a Stop/Remove command.
async fn backoff(
    sh: &Shared,
    name: &str,
    spec: &ContainerSpec,
    quick: u32,
    note: Option<String>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Option<Cmd> {
    let base = spec.restart.backoff.get();
    let max = spec.restart.max_backoff.get();
    let delay = if quick == 0 {
        base
    } else {
        base.saturating_mul(1u32 << quick.saturating_sub(1).min(16))
            .min(max)
    };
    let code = lock(sh).get(name).map(|e| e.exit_code).unwrap_or(-1);
    update(sh, name, |e| {
        if e.state != "failed" {
            e.state = "restarting";
        }
        if quick >= CRASH_LOOP {
            e.message = format!(
                "crash loop: {quick} quick exits in a row (last status {code}); next start in {:.1} s",
                delay.as_secs_f64()
            );
        } else if e.state != "failed" {
            e.message = format!("restarting in {:.1} s", delay.as_secs_f64());
        }
        if let Some(n) = &note {
            e.message = format!("{n}; {}", e.message);
        }
    });
    tokio::select! {
        _ = tokio::time::sleep(delay) => None,
        cmd = rx.recv() => match cmd {
            Some(Cmd::Start) | Some(Cmd::Restart) => None,
            Some(c) => Some(c),
            None => Some(Cmd::Remove),
        },
    }
}

/// Waits until the containers this one names in `after` are running (and healthy when
/// they have a check) and those in `requires` are; a command may interrupt.
async fn wait_deps(
    sh: &Shared,
    spec: &ContainerSpec,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Option<Cmd> {
    let deps = deps_of(spec);
    if deps.is_empty() {
        return None;
    }
    let mut changed = sh.changed.subscribe();
    loop {
        let pending: Vec<String> = {
            let e = lock(sh);
            deps.iter()
                .filter(|d| match e.get(d.as_str()) {
                    None => spec.requires.contains(d),
                    Some(x) => {
                        let up = x.state == "running"
                            && matches!(x.health, Health::None | Health::Healthy);
                        let gave_up =
                            matches!(x.state, "exited" | "failed" | "crash-loop" | "stopped");
                        !(up || (gave_up && !spec.requires.contains(d)))
                    }
                })
                .cloned()
                .collect()
        };
        if pending.is_empty() {
            return None;
        }
        update(sh, &spec.name, |e| {
            e.state = "waiting";
            e.message = format!("waiting for {}", pending.join(", "));
        });
        let mut mark = *changed.borrow_and_update();
        loop {
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() { return None; }
                    // Our own update above also bumps the counter: look again only
                    // when something else changed.
                    let now = *changed.borrow_and_update();
                    if now != mark { break; }
                    mark = now;
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Start) | Some(Cmd::Restart) => {}
                    Some(c) => return Some(c),
                    None => return Some(Cmd::Remove),
                },
            }
        }
    }
}

/// `target` (`[scheme]host:port...`) with a loopback host (`127.0.0.1`, `localhost`)
/// replaced by `addr`, the container's own address on the bridge; unchanged otherwise.
fn to_container(target: &str, scheme: &str, addr: Option<std::net::Ipv4Addr>) -> String {
    let Some(addr) = addr else {
        return target.to_string();
    };
    let rest = target.strip_prefix(scheme).unwrap_or(target);
    for lo in ["127.0.0.1:", "localhost:"] {
        if let Some(tail) = rest.strip_prefix(lo) {
            return format!("{scheme}{addr}:{tail}");
        }
    }
    target.to_string()
}

async fn health_loop(sh: Arc<Shared>, name: String, h: berth_config::Health) {
    use berth_config::HealthCheck;
    let started = Instant::now();
    let mut fails = 0u32;
    loop {
        // A bridged container's loopback is its own: checks of it go to its address.
        let own = sh.bridge.get().and_then(|b| b.address(&name));
        let res = match h.check() {
            Some(HealthCheck::Tcp(a)) => {
                health::tcp(&to_container(a, "", own), h.timeout.get()).await
            }
            Some(HealthCheck::Http(u)) => {
                health::http(&to_container(u, "http://", own), h.timeout.get()).await
            }
            Some(HealthCheck::Exec(argv)) => {
                let rt = sh.rt.clone();
                let (n, argv, t) = (name.clone(), argv.to_vec(), h.timeout.get());
                match tokio::task::spawn_blocking(move || {
                    exec_session(&rt, &n, argv, None, Path::new(""))
                        .and_then(|started| exec_capture(&n, started, Vec::new(), t))
                })
                .await
                {
                    Ok(Ok(r)) if r.exit_code == 0 => Ok(()),
                    Ok(Ok(r)) => Err(format!(
                        "health command exited with {}: {}",
                        r.exit_code,
                        String::from_utf8_lossy(&r.stderr).trim()
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => return,
        };
        match res {
            Ok(()) => {
                fails = 0;
                update(&sh, &name, |e| {
                    if e.health != Health::Healthy {
                        tracing::info!(container = %name, "healthy");
                    }
                    e.health = Health::Healthy;
                    if e.message.starts_with("health:") {
                        e.message.clear();
                    }
                });
            }
            Err(msg) => {
                if started.elapsed() >= h.start_period.get() {
                    fails += 1;
                }
                let unhealthy = fails >= h.retries.max(1);
                update(&sh, &name, |e| {
                    if unhealthy {
                        if e.health != Health::Unhealthy {
                            tracing::warn!(container = %name, "unhealthy: {msg}");
                        }
                        e.health = Health::Unhealthy;
                    }
                    e.message = format!("health: {msg}");
                });
            }
        }
        // Until the first success, check often so a boot is blessed quickly.
        let wait = if lock(&sh)
            .get(&name)
            .is_some_and(|e| e.health == Health::Healthy)
        {
            h.interval.get()
        } else {
            h.interval.get().min(Duration::from_secs(1))
        };
        tokio::time::sleep(wait).await;
    }
}

/// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL everything in the container.
async fn stop_pid(
    sh: &Shared,
    name: &str,
    pid: i32,
    exit: &mut std::pin::Pin<&mut impl std::future::Future<Output = i32>>,
) -> i32 {
    let _ = sh.rt.kill(name, libc::SIGTERM, false);
    if let Ok(c) = tokio::time::timeout(STOP_TIMEOUT, exit.as_mut()).await {
        return c;
    }
    tracing::warn!(
        container = name,
        pid,
        "did not stop within {} s: SIGKILL",
        STOP_TIMEOUT.as_secs()
    );
    let _ = sh.rt.kill(name, libc::SIGKILL, true);
    tokio::time::timeout(Duration::from_secs(5), exit.as_mut())
        .await
        .unwrap_or(137)
}

/// Deletes the runtime's container and unmounts its rootfs (the upper dir stays); a
/// bridged container's ports and veth go (its address stays).
async fn cleanup(sh: &Arc<Shared>, name: &str) {
    let bridged = lock(sh)
        .get(name)
        .is_some_and(|e| e.spec.network == NetworkMode::Bridge);
    if let (true, Some(b)) = (bridged, sh.bridge.get()) {
        if let Err(e) = b.detach(name).await {
            tracing::warn!(container = %name, "{}", error_chain(&e));
        }
    }
    let sh2 = sh.clone();
    let name = name.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        match sh2.rt.delete(&name, true) {
            Ok(()) | Err(berth_runtime::RuntimeError::NotFound(_)) => {}
            Err(e) => tracing::warn!(container = %name, "delete: {}", error_chain(&e)),
        }
        let _ = unmount(&sh2.paths.containers.join(&name).join("rootfs"));
        let _ = fs::remove_dir_all(sh2.paths.run_dir.join(&name));
    })
    .await;
}

fn unmount(p: &Path) -> nix::Result<()> {
    nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
}

fn open_reader(fifo: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
}

/// Resolves the image (import a shipped layout, or pull), prepares the bundle and the
/// overlay rootfs, creates and starts the container; returns its pid.
async fn start_container(sh: &Arc<Shared>, spec: &ContainerSpec) -> Result<i32, String> {
    let name = spec.name.clone();
    let sref = store_ref(&spec.image);
    let image = match &spec.image {
        ImageRef::Shipped { name: img, tag } => {
            let sh2 = sh.clone();
            let (img, tag, sref2) = (
                img.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
                sref.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let dir = sh2.paths.shipped.join(&img);
                sh2.store
                    .import_layout(&dir, &tag, &sref2)
                    .map_err(|e| format!("shipped image {img}: {}", error_chain(&e)))?;
                sh2.store
                    .unpack_image(&sref2, &sh2.platform, &Default::default())
                    .map_err(|e| format!("shipped image {img}: {}", error_chain(&e)))
            })
            .await
            .map_err(|e| e.to_string())??
        }
        ImageRef::Registry { .. } => match sh.store.image(&sref, &sh.platform) {
            Ok(i) if i.layers.len() == i.manifest.layers.len() => i,
            _ => {
                update(sh, &name, |e| e.message = format!("pulling {sref}"));
                let r = Reference::parse(&sref).map_err(|e| format!("image {sref}: {e}"))?;
                let opts = berth_registry::PullOptions {
                    platform: sh.platform.clone(),
                    ..Default::default()
                };
                let client = sh.client.lock().unwrap_or_else(|e| e.into_inner()).clone();
                sh.store
                    .pull(&client, &r, &opts)
                    .await
                    .map_err(|e| format!("pulling {sref}: {}", error_chain(&e)))?
            }
        },
    };
    update(sh, &name, |e| {
        e.image_ref = sref.clone();
        e.message.clear();
    });
    // A bridged container: ports free, an address, its hosts and resolv.conf.
    let net = match spec.network {
        NetworkMode::Bridge => {
            let b = bridge_of(sh, None).await?;
            let addr = b
                .prepare(&name, &spec.ports)
                .map_err(|e| format!("network: {}", error_chain(&e)))?;
            Some((b, addr))
        }
        NetworkMode::Host | NetworkMode::None => None,
    };
    let net_files = net.as_ref().map(|(b, _)| b.files_of(&name));
    let sh2 = sh.clone();
    let spec2 = spec.clone();
    let kind = lock(sh).get(&name).map(|e| e.kind).unwrap_or(Kind::Config);
    let (pid, pipes) = tokio::task::spawn_blocking(move || {
        create_container(&sh2, &spec2, kind, &image, net_files.as_ref())
    })
    .await
    .map_err(|e| e.to_string())??;
    // Created, not started: plug it into the bridge before its workload runs.
    if let Some((b, addr)) = &net {
        let attached = match u32::try_from(pid) {
            Ok(p) => b
                .attach(&name, p, *addr, &spec.ports)
                .await
                .map_err(|e| format!("network: {}", error_chain(&e))),
            Err(_) => Err(format!("network: bad pid {pid}")),
        };
        if let Err(msg) = attached {
            let _ = sh.rt.delete(&name, true);
            return Err(msg);
        }
    }
    let sh2 = sh.clone();
    let name2 = name.clone();
    let started = tokio::task::spawn_blocking(move || sh2.rt.start(&name2))
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = started {
        let _ = sh.rt.delete(&name, true);
        if let Some((b, _)) = &net {
            let _ = b.detach(&name).await;
        }
        return Err(format!("start: {}", error_chain(&e)));
    }
    let log = logs::LogFile::new(&sh.paths.logs, &name);
    tokio::spawn(logs::pump_from(pipes, log, forward_of(sh, &name)));
    Ok(pid)
}

/// The workload bridge, set up on first use (`adopted`: the running bridged containers it
/// must keep; `None`: those the manager knows to be running).
async fn bridge_of(
    sh: &Arc<Shared>,
    adopted: Option<&[network::Adopted]>,
) -> Result<Arc<network::Bridge>, String> {
    let adopted: Vec<network::Adopted> = match adopted {
        Some(a) => a.to_vec(),
        None => lock(sh)
            .iter()
            .filter(|(_, e)| e.spec.network == NetworkMode::Bridge && e.pid > 0)
            .map(|(n, e)| network::Adopted {
                name: n.clone(),
                ports: e.spec.ports.clone(),
            })
            .collect(),
    };
    let subnet = *sh.bridge_subnet.lock().unwrap_or_else(|e| e.into_inner());
    sh.bridge
        .get_or_try_init(|| {
            network::Bridge::setup(
                berth_net::bridge::BRIDGE,
                subnet,
                sh.paths.net.clone(),
                &adopted,
            )
        })
        .await
        .cloned()
        .map_err(|e| {
            let msg = format!("the workload bridge is not available: {}", error_chain(&e));
            tracing::error!("{msg}");
            msg
        })
}

/// Prepares the rootfs and bundle and creates the container (its init waits to be
/// started); returns its pid and the log FIFO.
fn create_container(
    sh: &Shared,
    spec: &ContainerSpec,
    kind: Kind,
    image: &berth_registry::Image,
    net_files: Option<&(PathBuf, PathBuf)>,
) -> Result<(i32, Vec<logs::Pipe>), String> {
    let name = &spec.name;
    let io = |what: &str, p: &Path, e: io::Error| format!("{what} {}: {e}", p.display());
    let dir = sh.paths.containers.join(name);
    let rootfs = dir.join("rootfs");
    let upper = dir.join("upper");
    let work = dir.join("work");
    // A different image than last time: start from a clean upper dir.
    let digest_file = dir.join("image-digest");
    let digest = image.digest.to_string();
    // A user-namespace container's id range (kept across restarts and reboots).
    let id_base = if spec.user_namespace {
        let mut ids = sh.userns.lock().unwrap_or_else(|e| e.into_inner());
        Some(ids.allocate(name).map_err(|e| error_chain(&e))?)
    } else {
        None
    };
    // The upper dir's files belong to the ids of the range it was written with: another
    // range (or none) starts from a clean one too. No marker = no user namespace.
    let ids_file = dir.join("userns-base");
    let ids_had = fs::read_to_string(&ids_file).ok();
    let ids_want = id_base.map(|b| b.to_string());
    if fs::read_to_string(&digest_file).ok().as_deref() != Some(digest.as_str())
        || ids_had != ids_want
    {
        let _ = unmount(&rootfs);
        let _ = fs::remove_dir_all(&upper);
        let _ = fs::remove_dir_all(&work);
    }
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d).map_err(|e| io("cannot create", d, e))?;
    }
    fs::write(&digest_file, &digest).map_err(|e| io("cannot write", &digest_file, e))?;
    match &ids_want {
        Some(b) => fs::write(&ids_file, b).map_err(|e| io("cannot write", &ids_file, e))?,
        None => {
            let _ = fs::remove_file(&ids_file);
        }
    }
    for v in &spec.volumes {
        let p = sh.paths.volumes.join(&v.name);
        let new = !p.exists();
        fs::create_dir_all(&p).map_err(|e| io("cannot create volume", &p, e))?;
        // A volume this container creates belongs to its root.
        if let (true, Some(b)) = (new, id_base) {
            std::os::unix::fs::chown(&p, Some(b), Some(b))
                .map_err(|e| io("cannot chown volume", &p, e))?;
        }
    }
    // Leftovers of an earlier run (sysd crashed before cleaning up).
    if sh.rt.state(name).is_ok() {
        let _ = sh.rt.delete(name, true);
    }
    let _ = unmount(&rootfs);
    let lowers = berth_registry::rootfs::lower_dirs(image);
    if lowers.is_empty() && !image.manifest.layers.is_empty() {
        // The same check (and message) as the plain overlay's.
        berth_registry::rootfs::overlay_options(image, None).map_err(|e| error_chain(&e))?;
    }
    match id_base {
        None => mount_overlay(&lowers, &upper, &work, &rootfs)?,
        Some(b) => mount_idmapped_overlay(&lowers, &upper, &work, &dir.join("layers"), &rootfs, b)?,
    }
    let oci = bundle::build(
        spec,
        &bundle::Inputs {
            rootfs: &rootfs,
            image: &image.config,
            volumes_dir: &sh.paths.volumes,
            id_base,
            net_files: net_files.map(|(h, r)| (h.as_path(), r.as_path())),
        },
    )
    .map_err(|e| e.to_string())?;
    let cfg = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&oci).map_err(|e| e.to_string())?;
    fs::write(&cfg, json).map_err(|e| io("cannot write", &cfg, e))?;

    // Output: one FIFO for stdout and one for stderr, each held read-write by the
    // container (see `logs`).
    let run = sh.paths.run_dir.join(name);
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run).map_err(|e| io("cannot create", &run, e))?;
    let mut pipes = Vec::new();
    let mut ends = Vec::new();
    for (file, stream) in [("log.fifo", Stream::Stdout), ("err.fifo", Stream::Stderr)] {
        let fifo = run.join(file);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("cannot create {}: {e}", fifo.display()))?;
        let rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| io("cannot open", &fifo, e))?;
        let reader = open_reader(&fifo).map_err(|e| io("cannot open", &fifo, e))?;
        ends.push(OwnedFd::from(rw));
        pipes.push(logs::Pipe {
            file: reader,
            path: fifo,
            stream,
        });
    }
    let (Some(stderr), Some(stdout)) = (ends.pop(), ends.pop()) else {
        return Err("no output FIFOs".into());
    };
    let stdio = Stdio3 {
        stdin: fs::File::open("/dev/null")
            .map_err(|e| io("cannot open", Path::new("/dev/null"), e))?
            .into(),
        stdout,
        stderr,
    };
    let opts = CreateOptions {
        cgroup_parent: Some(kind.cgroup_parent().into()),
        stdio: Some(stdio),
        default_profile: false,
        ..Default::default()
    };
    let st = sh
        .rt
        .create(name, &dir, opts)
        .map_err(|e| format!("create: {}", error_chain(&e)))?;
    Ok((st.pid, pipes))
}

/// Where a container's pump forwards lines, when forwarding is set up.
fn forward_of(sh: &Shared, name: &str) -> Option<logs::Forward> {
    sh.fwd.get().map(|f| logs::Forward {
        fwd: f.clone(),
        app: name.to_string(),
    })
}

/// overlayfs `lowerdir=` (top first), `upperdir=`, `workdir=` options.
fn overlay_opts(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let esc = |p: &Path| {
        p.to_string_lossy()
            .replace('\\', "\\\\")
            .replace(':', "\\:")
            .replace(',', "\\,")
    };
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.iter().map(|p| esc(p)).collect::<Vec<_>>().join(":"),
        esc(upper),
        esc(work)
    )
}

/// Mounts the overlay rootfs of `lowers` (top first) + `upper` at `rootfs`.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
) -> Result<(), String> {
    let opts = overlay_opts(lowers, upper, work);
    // nodev: a device node in an image or written to the upper dir opens nothing of the
    // host's. Not nosuid: images may carry setuid binaries (su, ping), and
    // no_new_privileges in every container's profile already keeps them from gaining
    // anything.
    nix::mount::mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the overlay rootfs at {}: {e}",
            rootfs.display()
        )
    })
}

/// The overlay rootfs of a user-namespace container whose ids start at host id `base`:
/// each shared layer (owned by the host's ids) is bind-mounted idmapped under
/// `layers/<n>` so that its id `n` is host id `base + n`, overlayfs is mounted over those
/// (it keeps private clones of its layers), and the binds are detached again. `upper`
/// (the container's writes, copy-ups included) is owned by `base`, the container's root.
pub fn mount_idmapped_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    layers: &Path,
    rootfs: &Path,
    base: u32,
) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: io::Error| format!("{what} {}: {e}", p.display());
    std::os::unix::fs::chown(upper, Some(base), Some(base))
        .map_err(|e| io("cannot chown", upper, e))?;
    let ns = crate::sys::userns_fd(base, userns::SIZE)
        .map_err(|e| format!("cannot create a user namespace for ids {base}+: {e}"))?;
    detach_layers(layers);
    let mut mapped = Vec::new();
    let result = (|| {
        for (i, l) in lowers.iter().enumerate() {
            let m = layers.join(i.to_string());
            fs::create_dir_all(&m).map_err(|e| io("cannot create", &m, e))?;
            crate::sys::idmapped_bind(l, &m, std::os::fd::AsFd::as_fd(&ns)).map_err(|e| {
                format!(
                    "cannot make an idmapped mount of layer {} (needs Linux 5.12 and \
                     idmapped-mount support in its filesystem): {e}",
                    l.display()
                )
            })?;
            mapped.push(m);
        }
        mount_overlay(&mapped, upper, work, rootfs)
    })();
    detach_layers(layers);
    result
}

/// Detaches the idmapped layer binds under `layers` (left by a crash, or no longer
/// needed once the overlay holds its own clones).
fn detach_layers(layers: &Path) {
    if let Ok(rd) = fs::read_dir(layers) {
        for e in rd.flatten() {
            while unmount(&e.path()).is_ok() {}
        }
    }
}

/// Starts `argv` in container `name` for an exec session; blocking. With a terminal, the
/// runtime opens a pty in the container and passes its master over a console socket.
fn exec_session(
    rt: &Runtime,
    name: &str,
    argv: Vec<String>,
    tty: Option<(u16, u16)>,
    console_dir: &Path,
) -> Result<crate::exec::Started, ManagerError> {
    use crate::exec::{Started, STDERR, STDOUT};
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ManagerError::Failed(format!("exec in {name}: {what}: {e}"))
    };
    let mut process = rt
        .default_process(name)
        .map_err(|e| failed("container state", &error_chain(&e)))?;
    process.args = argv;
    process.terminal = tty.is_some();
    process.console_size = tty.filter(|&(r, c)| r > 0 && c > 0);
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    if tty.is_none() {
        let (in_r, in_w) = pipe().map_err(|e| failed("pipe", &e))?;
        let (out_r, out_w) = pipe().map_err(|e| failed("pipe", &e))?;
        let (err_r, err_w) = pipe().map_err(|e| failed("pipe", &e))?;
        let stdio = Stdio3 {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        };
        let pid = rt
            .exec(
                name,
                process,
                ExecOptions {
                    stdio: Some(stdio),
                    ..Default::default()
                },
            )
            .map_err(|e| failed("start", &error_chain(&e)))?;
        return Ok(Started {
            pid,
            input: fs::File::from(in_w),
            outputs: vec![
                (STDOUT, fs::File::from(out_r)),
                (STDERR, fs::File::from(err_r)),
            ],
            tty: None,
        });
    }
    fs::create_dir_all(console_dir).map_err(|e| failed("console socket directory", &e))?;
    let sock = console_dir.join(format!("console-{}.sock", next_console()));
    let _ = fs::remove_file(&sock);
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).map_err(|e| failed("console socket", &e))?;
    // Before the process starts, its streams are nothing; then they are its pty.
    let null = || {
        fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| failed("/dev/null", &e))
    };
    let stdio = Stdio3 {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    };
    let started = rt.exec(
        name,
        process,
        ExecOptions {
            stdio: Some(stdio),
            console_socket: Some(sock.clone()),
            ..Default::default()
        },
    );
    let master = started
        .map_err(|e| failed("start", &error_chain(&e)))
        .and_then(|pid| {
            // The process is running: its pty master is already queued on the socket.
            listener
                .set_nonblocking(true)
                .and_then(|_| listener.accept())
                .and_then(|(conn, _)| recv_fd(&conn))
                .map(|fd| (pid, fd))
                .map_err(|e| {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = wait_blocking(pid);
                    failed("receiving the terminal", &e)
                })
        });
    let _ = fs::remove_file(&sock);
    let (pid, master) = master?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| failed("dup", &e));
    Ok(Started {
        pid,
        input: fs::File::from(dup(&master)?),
        outputs: vec![(STDOUT, fs::File::from(dup(&master)?))],
        tty: Some(master),
    })
}

/// A number for a console socket name, unique within this sysd.
fn next_console() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Receives one file descriptor (SCM_RIGHTS) from a connected socket.
fn recv_fd(conn: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the descriptor was just received over SCM_RIGHTS: it is open and
                // nothing else owns it.
                #[allow(unsafe_code)]
                return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("no descriptor came with the message"))
}

/// Feeds `stdin` to a command started with pipes and collects its output; blocking.
fn exec_capture(
    name: &str,
    started: crate::exec::Started,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<ExecReply, ManagerError> {
    const CAP: u64 = 8 << 20;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ManagerError::Failed(format!("exec in {name}: {what}: {e}"))
    };
    let pid = started.pid;
    let mut input = started.input;
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let read = |f: fs::File| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = f.take(CAP).read_to_end(&mut v);
            v
        })
    };
    let mut outputs = started.outputs.into_iter().map(|(_, f)| f);
    let (Some(out_r), Some(err_r)) = (outputs.next(), outputs.next()) else {
        return Err(failed("start", &"no output pipes"));
    };
    let (out_t, err_t) = (read(out_r), read(err_r));
    // Kill it when it overstays.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    let p = nix::unistd::Pid::from_raw(pid);
    let status = loop {
        if let Some(fd) = &pidfd {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
            if matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)),
                Ok(0)
            ) {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
        match nix::sys::wait::waitpid(p, None) {
            Ok(ws) => break exit_code(ws),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(failed("wait", &e)),
        }
    };
    let _ = pidfd.map(|fd| fd.as_raw_fd());
    let _ = writer.join();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(ExecReply {
        exit_code: status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_cycles_are_found_across_old_and_new_definitions() {
        let spec = |n: &str, after: &[&str], requires: &[&str]| {
            let mut t = format!("name = \"{n}\"\nimage = \"admin\"\n");
            t += &format!("after = {after:?}\nrequires = {requires:?}\n");
            berth_config::parse_service(&t).unwrap()
        };
        let (ntpd, admin) = (spec("ntpd", &[], &[]), spec("admin", &["ntpd"], &[]));
        let (a, b) = (spec("a", &["b"], &[]), spec("b", &[], &["a"]));
        let c = spec("c", &["ntpd"], &[]);
        let m = cycle_members(&[&ntpd, &admin], &[&a, &b, &c]);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["a"], "dependency cycle: a -> b -> a");
        assert_eq!(m["b"], m["a"]);
        // Only new definitions are reported; an old one in the cycle is not.
        let m = cycle_members(&[&a], &[&b]);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b"]);
        // Two separate cycles.
        let (x, y) = (spec("x", &["y"], &[]), spec("y", &["x"], &[]));
        let m = cycle_members(&[], &[&a, &b, &x, &y, &c]);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m["x"].contains("x -> y -> x") || m["x"].contains("y -> x -> y"));
        assert!(cycle_members(&[&ntpd, &admin], &[&c]).is_empty());
    }

    #[test]
    fn loopback_health_checks_of_bridged_containers_go_to_their_address() {
        let a = Some(std::net::Ipv4Addr::new(10, 88, 0, 7));
        assert_eq!(to_container("127.0.0.1:80", "", a), "10.88.0.7:80");
        assert_eq!(to_container("localhost:80", "", a), "10.88.0.7:80");
        assert_eq!(
            to_container("http://127.0.0.1:8080/healthz", "http://", a),
            "http://10.88.0.7:8080/healthz"
        );
        assert_eq!(to_container("10.0.2.2:80", "", a), "10.0.2.2:80");
        assert_eq!(
            to_container("http://localhost.example:80/", "http://", a),
            "http://localhost.example:80/"
        );
        assert_eq!(to_container("127.0.0.1:80", "", None), "127.0.0.1:80");
    }

    #[test]
    fn dependency_order() {
        let s = |n: &str, d: &[&str]| (n.to_string(), d.iter().map(|x| x.to_string()).collect());
        let o = start_order(&[
            s("web", &["db", "ghost"]),
            s("db", &["net"]),
            s("net", &[]),
            s("ntpd", &[]),
        ]);
        assert_eq!(o, ["net", "ntpd", "db", "web"]);
        // A cycle still yields every name once.
        let o = start_order(&[s("a", &["b"]), s("b", &["a"])]);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn process_start_time_from_proc_stat() {
        let stat = "1234 (sh -c (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 2473984 200 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(98765));
        assert_eq!(start_ticks("garbage"), None);
        let me = process_age(std::process::id() as i32).expect("own age");
        assert!(me < Duration::from_secs(24 * 3600), "{me:?}");
    }

    #[test]
    fn run_requests_are_validated_like_the_config() {
        let ok = run_spec(&RunRequest {
            image: "10.0.2.100:5000/apps/web:1".into(),
            env: vec!["A=b".into()],
            memory: "64M".into(),
            cpus: "0.5".into(),
            pids: 32,
            volumes: vec!["data:/data".into()],
            restart: "on-failure".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.name, "web");
        assert_eq!(ok.limits.memory.unwrap().bytes(), 64 << 20);
        assert_eq!(ok.limits.pids, Some(32));
        assert_eq!(ok.restart.policy, RestartPolicy::OnFailure);
        assert!(!ok.user_namespace);
        let u = run_spec(&RunRequest {
            image: "admin".into(),
            user_namespace: true,
            ..Default::default()
        })
        .unwrap();
        assert!(u.user_namespace);
        assert_eq!(
            u.network,
            NetworkMode::Bridge,
            "a new workload is bridged by default"
        );
        // `--network bridge -p 8080:80 -p 127.0.0.1:5353:53/udp`.
        let b = run_spec(&RunRequest {
            image: "admin".into(),
            network: "bridge".into(),
            ports: vec!["8080:80".into(), "127.0.0.1:5353:53/udp".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(b.network, NetworkMode::Bridge);
        assert_eq!(
            b.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["8080:80", "127.0.0.1:5353:53/udp"]
        );
        for (net, ports, want) in [
            (
                "host",
                vec!["8080:80"],
                "ports are published only from network = \"bridge\"",
            ),
            ("none", vec!["8080:80"], "ports are published only"),
            (
                "bridge",
                vec!["8080:80", "8080:81"],
                "conflicts with ports[0]",
            ),
            ("bridge", vec!["80"], "invalid port mapping"),
            ("wifi", vec![], "unknown variant `wifi`"),
        ] {
            let e = run_spec(&RunRequest {
                image: "admin".into(),
                network: net.into(),
                ports: ports.into_iter().map(String::from).collect(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(e.contains(want), "{net} {e}");
        }
        let e = run_spec(&RunRequest {
            name: "Bad_Name".into(),
            image: "admin".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("name"), "{e}");
        let e = run_spec(&RunRequest {
            image: "admin".into(),
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("KEY=VALUE"), "{e}");
        // `osctl run -v NAME:/path`: a volume name cannot leave /var/lib/berth/volumes.
        for v in ["../images:/x", "..:/x", "a/../../images:/x", ".:/x"] {
            let e = run_spec(&RunRequest {
                image: "admin".into(),
                volumes: vec![v.into()],
                ..Default::default()
            })
            .unwrap_err();
            let name = v.split_once(':').unwrap().0;
            assert!(
                e.ends_with(&format!("invalid volume name {name:?}")),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn saved_workloads_may_not_bind_what_services_may() {
        // A workload definition on the state partition is checked like `osctl run`: the
        // file sysd renders for ntpd is a system service's to bind, not a workload's.
        let d = tempfile::tempdir().unwrap();
        let def = "name = \"w\"\nimage = \"admin\"\nmounts = [{ source = \"/run/berth/ntpd.conf\", target = \"/c\" }]\n";
        fs::write(d.path().join("w.toml"), def).unwrap();
        let (ok, bad) = load_services(d.path());
        assert_eq!(ok.len(), 1, "{bad:?}");
        let (ok, bad) = load_definitions(d.path(), berth_config::parse_workload);
        assert!(ok.is_empty());
        assert!(
            bad[0]
                .contains("mounts[0].source: \"/run/berth/ntpd.conf\" holds Berth's runtime state"),
            "{bad:?}"
        );
    }

    #[test]
    fn service_files_load_and_bad_ones_are_reported() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.toml"), "name = \"a\"\nimage = \"admin\"\n").unwrap();
        fs::write(
            d.path().join("b.toml"),
            "name = \"b\"\nimage = \"admin\"\nbogus = 1\n",
        )
        .unwrap();
        fs::write(d.path().join("README"), "not a service").unwrap();
        let (ok, bad) = load_services(d.path());
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("b.toml"), "{bad:?}");
    }

    fn uid_of(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .uid()
    }

    /// Privileged (root, Linux >= 5.19, a filesystem with idmapped mounts: ext4 here).
    #[test]
    fn idmapped_overlay_shows_layers_shifted_and_leaves_no_binds() {
        use std::os::unix::fs::chown;
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(layer.join("etc/root-file"), "layer\n").unwrap();
        fs::write(layer.join("etc/user-file"), "layer\n").unwrap();
        chown(layer.join("etc/user-file"), Some(1000), Some(1000)).unwrap();
        let c = d.path().join("c");
        let (upper, work, layers, rootfs) = (
            c.join("upper"),
            c.join("work"),
            c.join("layers"),
            c.join("rootfs"),
        );
        for p in [&upper, &work, &rootfs] {
            fs::create_dir_all(p).unwrap();
        }
        let base = userns::FIRST + 3 * userns::SIZE;
        mount_idmapped_overlay(
            std::slice::from_ref(&layer),
            &upper,
            &work,
            &layers,
            &rootfs,
            base,
        )
        .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = unmount(self.0);
            }
        }
        let _guard = Unmount(&rootfs);
        {
            // Through the rootfs: the layer's ids shifted into the range.
            assert_eq!(uid_of(&rootfs), base, "the root dir is the upper dir's");
            assert_eq!(uid_of(&rootfs.join("etc/root-file")), base);
            assert_eq!(uid_of(&rootfs.join("etc/user-file")), base + 1000);
            // The shared layer itself is unchanged.
            assert_eq!(uid_of(&layer.join("etc/root-file")), 0);
            // The idmapped binds are gone; the overlay keeps its own clones.
            let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let points: Vec<&str> = mi.lines().filter_map(|l| l.split(' ').nth(4)).collect();
            let bind = layers.join("0");
            assert!(!points.contains(&bind.to_str().unwrap()), "{mi}");
            assert!(points.contains(&rootfs.to_str().unwrap()), "{mi}");
            assert_eq!(
                fs::read_to_string(rootfs.join("etc/root-file")).unwrap(),
                "layer\n"
            );
            // A write by the host's root (as sysd) copies up keeping the shifted owner.
            fs::write(rootfs.join("etc/root-file"), "changed\n").unwrap();
            assert_eq!(uid_of(&upper.join("etc/root-file")), base);
            assert_eq!(
                fs::read_to_string(layer.join("etc/root-file")).unwrap(),
                "layer\n"
            );
        }
    }
}
