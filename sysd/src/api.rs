//! The `org.berth.Manager1` server: a thin adapter from D-Bus calls to sysd's own actions,
//! served peer-to-peer, one connection per client.

use berth_api::{
    ApiStatus, ContainerInfo, ContainerStats, ExecReply, ImageInfo, LogChunk, ManagerError, Method,
    Role, RunRequest, Status,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use zbus::object_server::SignalEmitter;

/// The object served at `/org/berth/Manager`.
#[derive(Clone, Default)]
pub struct Manager {
    /// How often PID 1 has started sysd during this boot (from `BERTH_SYSD_START`).
    pub sysd_start: u32,
    /// The container manager; `None` in tests of the bare API.
    pub containers: Option<crate::containers::Manager>,
    /// Config and network state; `None` in tests of the bare API.
    pub node: Option<std::sync::Arc<crate::node::Node>>,
    /// OS updates; `None` in tests of the bare API.
    pub updates: Option<std::sync::Arc<crate::update::NodeUpdates>>,
    /// Interactive exec sessions of every connection.
    pub exec: std::sync::Arc<crate::exec::Sessions>,
    /// The connection this copy serves (set by [`serve_connection`]): sessions belong to it.
    pub owner: String,
    /// Who calls: `admin` on the local socket and the serial bridge; a client
    /// certificate's role over the network.
    pub caller: Caller,
    /// The audit log: every call of a network caller goes in; `Logs("@api")` reads it.
    pub audit: Option<Arc<crate::audit::Audit>>,
    /// The remote API listener, for `ApiStatus`; `None` when not started.
    pub remote: Option<Arc<crate::remote::RemoteApi>>,
}

/// Who is on the other end of a connection.
#[derive(Clone)]
pub struct Caller {
    /// What it may call (see [`berth_api::roles`]).
    pub role: Role,
    /// The TLS peer, for a network caller.
    pub peer: Option<Arc<Peer>>,
}

impl Default for Caller {
    /// The local socket (and the serial bridge in front of it): `admin`, not audited.
    fn default() -> Self {
        Caller {
            role: Role::Admin,
            peer: None,
        }
    }
}

/// Why a network caller (certificate serial, address) may no longer call, read from the
/// live config at every call; `None` while it may.
pub type Recheck = Arc<dyn Fn(&str, SocketAddr) -> Option<String> + Send + Sync>;

/// A caller over the network: its certificate and where it connects from.
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The node address it reached.
    pub local: SocketAddr,
    /// Subject CN of its certificate.
    pub common_name: String,
    /// Serial of its certificate, normalized.
    pub serial: String,
    /// End of its certificate's validity, Unix seconds.
    pub not_after: i64,
    /// The live revocation list, allowed sources and listener generation.
    pub recheck: Recheck,
    /// Fired when the connection must close (its certificate was revoked or expired).
    pub cut: Arc<tokio::sync::Notify>,
}

impl Caller {
    /// Whether this caller may call `method` now: its role suffices, and for a network
    /// caller, its certificate is neither revoked (the live list: a config apply that
    /// revokes it refuses the next call and closes the connection) nor expired, and its
    /// connection still allowed (see [`Recheck`]).
    fn check(&self, method: Method) -> Result<(), ManagerError> {
        if let Some(p) = &self.peer {
            let why = if let Some(why) = (p.recheck)(&p.serial, p.addr) {
                Some(why)
            } else if p.not_after < unix_now() {
                Some(format!(
                    "the client certificate expired at {}",
                    berth_remote::pki::format_time(p.not_after)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                // Close once the refusal has gone out.
                let cut = p.cut.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    cut.notify_one();
                });
                return Err(ManagerError::Denied(why));
            }
        }
        if !self.role.may_call(method) {
            return Err(ManagerError::Denied(format!(
                "role {} cannot call {method}: it needs {}",
                self.role,
                method.role()
            )));
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Manager {
    fn updates(
        &self,
    ) -> Result<
        (
            &std::sync::Arc<crate::update::NodeUpdates>,
            berth_config::Config,
        ),
        ManagerError,
    > {
        match (&self.updates, &self.node) {
            (Some(u), Some(n)) => Ok((u, n.config())),
            _ => Err(ManagerError::Failed("updates are not managed here".into())),
        }
    }

    fn containers(&self) -> Result<&crate::containers::Manager, ManagerError> {
        self.containers
            .as_ref()
            .ok_or_else(|| ManagerError::Failed("containers are not managed here".into()))
    }

    /// Every method's body runs through here: refused unless the caller may call
    /// `method` (see [`Caller::check`]), and recorded in the audit log when the caller
    /// is on the network.
    async fn call<T>(
        &self,
        method: Method,
        body: impl Future<Output = Result<T, ManagerError>>,
    ) -> Result<T, ManagerError> {
        let r = match self.caller.check(method) {
            Ok(()) => body.await,
            Err(e) => Err(e),
        };
        if let (Some(p), Some(audit)) = (&self.caller.peer, &self.audit) {
            audit.call(&crate::audit::Call {
                peer: p.addr,
                common_name: &p.common_name,
                serial: &p.serial,
                role: self.caller.role,
                method,
                result: crate::audit::result_name(&r),
            });
        }
        r
    }

    fn audit_log(&self) -> Result<&crate::audit::Audit, ManagerError> {
        self.audit
            .as_deref()
            .ok_or_else(|| ManagerError::NotFound(berth_api::AUDIT_LOG_NAME.into()))
    }

    /// The config in force as `Config` returns it: all of it for an admin, with the
    /// secrets redacted for anyone else.
    fn config_text(&self) -> Result<(String, String, String), ManagerError> {
        let store = berth_config::store::Store::new(Path::new("/var"));
        let mut text = store
            .current()
            .map_err(|e| ManagerError::Failed(format!("reading the config: {e}")))?
            .unwrap_or_default();
        let boot = std::fs::read_to_string(berth_api::BOOT_INFO_PATH)
            .ok()
            .and_then(|s| berth_api::BootInfo::from_json(&s).ok())
            .unwrap_or_default();
        let source = match self.node.as_ref().and_then(|n| n.config_source()) {
            _ if text.is_empty() => "defaults (no config)".to_string(),
            Some((source, _)) => source,
            None => boot.config_source,
        };
        let outcome = match store.last_outcome() {
            Ok(Some(o)) if o.reason.is_empty() => o.result,
            Ok(Some(o)) => format!("{}: {}", o.result, o.reason),
            _ => String::new(),
        };
        if self.caller.role < Role::Admin && !text.is_empty() {
            text = redact(&text, self.caller.role)?;
        }
        Ok((source, text, outcome))
    }

    /// `PkiIssue`: a client file with a new certificate signed by `[api] ca_key`.
    async fn pki_issue_file(
        &self,
        role: &str,
        ttl_secs: u64,
        name: &str,
    ) -> Result<String, ManagerError> {
        let api = self
            .remote
            .as_ref()
            .ok_or_else(|| ManagerError::Failed("the remote API is not managed here".into()))?
            .config();
        let (Some(ca_pem), Some(ca_key)) = (&api.ca, &api.ca_key) else {
            return Err(ManagerError::Invalid(
                "this node cannot sign client certificates: its config has no [api] ca_key (sign one with `osctl pki client --ca DIR` where the CA key is)".into(),
            ));
        };
        let role = Role::parse(role).ok_or_else(|| {
            ManagerError::Invalid(format!("unknown role {role:?} (admin, operator or reader)"))
        })?;
        check_client_name(name)?;
        let ttl = match ttl_secs {
            0 => DEFAULT_ISSUE_TTL,
            t if t > MAX_ISSUE_TTL.as_secs() => {
                return Err(ManagerError::Invalid(format!(
                    "ttl {t} s is longer than the {} days a node-issued certificate may last",
                    MAX_ISSUE_TTL.as_secs() / 86400
                )))
            }
            t => Duration::from_secs(t),
        };
        let failed = |what: &str, e: &dyn std::error::Error| {
            ManagerError::Failed(format!("{what}: {}", berth_config::error_chain(e)))
        };
        let ca = berth_remote::pki::Ca::from_pem(ca_pem, ca_key)
            .map_err(|e| failed("[api] ca and ca_key", &e))?;
        let ck = ca
            .issue_client(name, role, ttl)
            .map_err(|e| failed("issuing the certificate", &e))?;
        let id = berth_remote::pki::identity_pem(&ck.cert_pem)
            .map_err(|e| failed("reading the new certificate", &e))?;
        let endpoint = self.endpoint(&api).await;
        let mut file = berth_remote::contexts::ClientFile {
            context: Some(name.to_string()),
            ..Default::default()
        };
        file.contexts.insert(
            name.to_string(),
            berth_remote::contexts::Context {
                endpoints: vec![endpoint],
                ca: Some(ca_pem.clone()),
                node_fingerprint: None,
                cert: ck.cert_pem,
                key: ck.key_pem,
            },
        );
        let by = match &self.caller.peer {
            Some(p) => format!(
                "cn={} serial={} peer={}",
                crate::audit::quote(&p.common_name),
                p.serial,
                p.addr
            ),
            None => "the local socket".into(),
        };
        let what = format!(
            "issued client certificate serial={} cn={} role={role} not_after={} for {by}",
            id.serial,
            crate::audit::quote(name),
            berth_remote::pki::format_time(id.not_after)
        );
        tracing::info!("api: {what}");
        if let Some(a) = &self.audit {
            a.note(&what);
        }
        Ok(file.to_toml())
    }

    /// The endpoint a new client file names: the address a network caller reached, else
    /// `[api] listen` when it is a specific address, else this node's first global address.
    async fn endpoint(&self, api: &berth_config::Api) -> String {
        if let Some(p) = &self.caller.peer {
            return p.local.to_string();
        }
        if !api.listen.ip().is_unspecified() {
            return api.listen.to_string();
        }
        let ip = crate::remote::node_addresses()
            .await
            .into_iter()
            .find(|ip| !ip.is_loopback());
        match ip {
            Some(ip) => SocketAddr::new(ip, api.listen.port()).to_string(),
            None => format!("{}:{}", crate::remote::hostname(), api.listen.port()),
        }
    }
}

/// Lifetime of a client certificate from `PkiIssue` when the caller gives none.
pub const DEFAULT_ISSUE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime of a client certificate from `PkiIssue`.
pub const MAX_ISSUE_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// A client certificate's CN (and context name): 1-64 printable ASCII characters.
fn check_client_name(name: &str) -> Result<(), ManagerError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ManagerError::Invalid(format!(
            "invalid client name {name:?} (1-64 letters, digits, '-', '_', '.', '@')"
        )))
    }
}

/// `text` (the stored config) with its secrets redacted, for a caller with `role`.
fn redact(text: &str, role: Role) -> Result<String, ManagerError> {
    let c = berth_config::parse(text)
        .map_err(|e| ManagerError::Failed(format!("the stored config does not parse: {e}")))?;
    let t = c
        .redacted()
        .to_toml()
        .map_err(|e| ManagerError::Failed(format!("printing the config: {e}")))?;
    Ok(format!(
        "# Secrets ({}) redacted for role {role}.\n{t}",
        berth_config::REDACTED
    ))
}

/// A progress callback that turns pull progress into `PullProgress` signals (at most
/// five a second, plus the last one). Await the task after the pull (once every clone of
/// the callback is gone) so that no signal trails the method's reply: a host client that
/// got its reply hangs up, and nothing may be left in flight on the bridged channel.
fn pull_signals(
    emitter: &SignalEmitter<'_>,
    reference: &str,
) -> (berth_registry::Progress, tokio::task::JoinHandle<()>) {
    use berth_registry::ProgressEvent;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
    let emitter = emitter.to_owned();
    let reference = reference.to_string();
    let task = tokio::spawn(async move {
        let (mut done, mut total, mut layers_done, mut layers) = (0u64, 0u64, 0u32, 0u32);
        let mut last = std::time::Instant::now() - Duration::from_secs(1);
        while let Some(ev) = rx.recv().await {
            match ev {
                ProgressEvent::Resolved {
                    layers: l,
                    total_bytes,
                    ..
                } => {
                    layers = l as u32;
                    total = total_bytes;
                }
                ProgressEvent::Bytes { n, .. } => done += n,
                ProgressEvent::BlobDone { .. } => {
                    layers_done = (layers_done + 1).min(layers.max(1))
                }
                ProgressEvent::BlobStart { .. } => {}
            }
            if last.elapsed() >= Duration::from_millis(200) || rx.is_empty() {
                last = std::time::Instant::now();
                let _ =
                    Manager::pull_progress(&emitter, &reference, done, total, layers_done, layers)
                        .await;
            }
        }
    });
    let progress: berth_registry::Progress = std::sync::Arc::new(move |ev| {
        let _ = tx.send(ev);
    });
    (progress, task)
}

/// Waits (briefly) for the signal task of [`pull_signals`] to drain.
async fn drain(task: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

// Every method's body is `self.call(Method::X, async move { ... })` with its own `X`: the
// role check and the audit record cannot be forgotten (a test reads this file to be sure).
#[zbus::interface(name = "org.berth.Manager1")]
impl Manager {
    async fn status(&self) -> Result<Status, ManagerError> {
        self.call(Method::Status, async move {
            let mut s = crate::status::collect(self.sysd_start);
            let (network, route) = crate::node::network_status().await;
            s.network = network;
            s.default_route = route;
            if let Some(c) = &self.containers {
                let (req, healthy) = c.required_health();
                s.required_services = req;
                s.healthy = healthy;
                s.warnings.extend(c.problems());
            }
            s.config_change = crate::node::config_change(Path::new("/var"));
            if let Some((source, error)) = self.node.as_ref().and_then(|n| n.config_source()) {
                s.config_source = source;
                s.config_error = error;
            }
            if let Some(r) = &self.remote {
                s.warnings.extend(r.problem());
            }
            Ok(s)
        })
        .await
    }

    async fn ps(&self) -> Result<Vec<ContainerInfo>, ManagerError> {
        self.call(Method::Ps, async move { Ok(self.containers()?.ps()) })
            .await
    }

    async fn start(&self, name: &str) -> Result<(), ManagerError> {
        self.call(Method::Start, async move {
            Ok(self.containers()?.start(name).await?)
        })
        .await
    }

    async fn stop(&self, name: &str) -> Result<(), ManagerError> {
        self.call(Method::Stop, async move {
            Ok(self.containers()?.stop(name).await?)
        })
        .await
    }

    async fn restart(&self, name: &str) -> Result<(), ManagerError> {
        self.call(Method::Restart, async move {
            Ok(self.containers()?.restart(name).await?)
        })
        .await
    }

    async fn logs(&self, name: &str, tail: u32) -> Result<LogChunk, ManagerError> {
        self.call(Method::Logs, async move {
            let (data, next) = if name == berth_api::AUDIT_LOG_NAME {
                self.audit_log()?.tail(tail)?
            } else {
                self.containers()?.logs(name, tail)?
            };
            Ok(LogChunk { data, next })
        })
        .await
    }

    async fn logs_from(&self, name: &str, from: u64) -> Result<LogChunk, ManagerError> {
        self.call(Method::LogsFrom, async move {
            let (data, next) = if name == berth_api::AUDIT_LOG_NAME {
                self.audit_log()?.read_from(from)?
            } else {
                self.containers()?.logs_from(name, from)?
            };
            Ok(LogChunk { data, next })
        })
        .await
    }

    async fn run(
        &self,
        request: RunRequest,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, ManagerError> {
        self.call(Method::Run, async move {
            let c = self.containers()?;
            let (progress, task) = pull_signals(&emitter, &request.image);
            let r = c.run(&request, progress).await;
            drain(task).await;
            Ok(r?)
        })
        .await
    }

    async fn remove(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        self.call(Method::Remove, async move {
            Ok(self.containers()?.remove(name, force).await?)
        })
        .await
    }

    async fn exec(
        &self,
        name: &str,
        command: Vec<String>,
        stdin: Vec<u8>,
    ) -> Result<ExecReply, ManagerError> {
        self.call(Method::Exec, async move {
            Ok(self
                .containers()?
                .exec(name, command, stdin, Duration::from_secs(300))
                .await?)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_start(
        &self,
        session: &str,
        name: &str,
        command: Vec<String>,
        tty: bool,
        rows: u16,
        cols: u16,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), ManagerError> {
        self.call(Method::ExecStart, async move {
            crate::exec::check_id(session)?;
            if self.exec.contains(&self.owner, session) {
                return Err(ManagerError::Invalid(format!(
                    "exec session {session} is already open"
                )));
            }
            let started = self
                .containers()?
                .exec_start(name, command, tty.then_some((rows, cols)))
                .await?;
            let emitter = emitter.to_owned();
            let sid = session.to_string();
            let emit: crate::exec::Emit = std::sync::Arc::new(move |stream, data| {
                let (emitter, sid) = (emitter.clone(), sid.clone());
                Box::pin(async move {
                    Manager::exec_output(&emitter, &sid, stream, &data)
                        .await
                        .map_err(|e| e.to_string())
                })
            });
            self.exec.open(&self.owner, session, started, emit)
        })
        .await
    }

    async fn exec_input(&self, session: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        self.call(Method::ExecInput, async move {
            self.exec.input(&self.owner, session, data).await
        })
        .await
    }

    async fn exec_resize(&self, session: &str, rows: u16, cols: u16) -> Result<(), ManagerError> {
        self.call(Method::ExecResize, async move {
            self.exec.resize(&self.owner, session, rows, cols)
        })
        .await
    }

    async fn exec_wait(&self, session: &str) -> Result<(i32, u64), ManagerError> {
        self.call(Method::ExecWait, async move {
            self.exec.wait(&self.owner, session).await
        })
        .await
    }

    #[zbus(signal)]
    async fn exec_output(
        emitter: &SignalEmitter<'_>,
        session: &str,
        stream: u8,
        data: &[u8],
    ) -> zbus::Result<()>;

    async fn stats(&self) -> Result<Vec<ContainerStats>, ManagerError> {
        self.call(Method::Stats, async move { Ok(self.containers()?.stats()) })
            .await
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, ManagerError> {
        self.call(
            Method::Images,
            async move { Ok(self.containers()?.images()?) },
        )
        .await
    }

    async fn pull(
        &self,
        reference: &str,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<ImageInfo, ManagerError> {
        self.call(Method::Pull, async move {
            let c = self.containers()?;
            let (progress, task) = pull_signals(&emitter, reference);
            let r = c.pull(reference, progress).await;
            drain(task).await;
            Ok(r?)
        })
        .await
    }

    async fn remove_image(&self, name: &str) -> Result<(), ManagerError> {
        self.call(Method::RemoveImage, async move {
            Ok(self.containers()?.remove_image(name)?)
        })
        .await
    }

    async fn config(&self) -> Result<(String, String, String), ManagerError> {
        self.call(Method::Config, async move { self.config_text() })
            .await
    }

    async fn config_apply(&self, config: &str, deadline: u32) -> Result<String, ManagerError> {
        self.call(Method::ConfigApply, async move {
            let node = self.node.as_ref().ok_or_else(|| {
                ManagerError::Failed("config changes are not managed here".into())
            })?;
            let deadline = if deadline == 0 {
                berth_config::store::DEFAULT_DEADLINE_SECS
            } else {
                deadline.into()
            };
            node.apply(config, deadline).await
        })
        .await
    }

    async fn update_status(&self) -> Result<String, ManagerError> {
        self.call(Method::UpdateStatus, async move {
            let (u, config) = self.updates()?;
            u.status(&config)
        })
        .await
    }

    async fn update_check(&self, source: &str) -> Result<String, ManagerError> {
        self.call(Method::UpdateCheck, async move {
            let (u, config) = self.updates()?;
            u.check(&config, source).await
        })
        .await
    }

    async fn update_apply(
        &self,
        source: &str,
        allow_downgrade: bool,
        force: bool,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, ManagerError> {
        self.call(Method::UpdateApply, async move {
            let (u, config) = self.updates()?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, u64, u64)>();
            let emitter = emitter.to_owned();
            let task = tokio::spawn(async move {
                while let Some((phase, detail, done, total)) = rx.recv().await {
                    let _ = Manager::update_progress(&emitter, &phase, &detail, done, total).await;
                }
            });
            let progress = crate::update::progress_events(move |p, d, n, t| {
                let _ = tx.send((p, d, n, t));
            });
            let r = u
                .apply(&config, source, allow_downgrade, force, Some(progress))
                .await;
            drain(task).await;
            r
        })
        .await
    }

    async fn update_rollback(&self, force: bool) -> Result<String, ManagerError> {
        self.call(Method::UpdateRollback, async move {
            let (u, config) = self.updates()?;
            u.rollback(&config, force).await
        })
        .await
    }

    async fn machine_id(&self) -> Result<String, ManagerError> {
        self.call(Method::MachineId, async move {
            let p = berth_updater::fleetlock::MACHINE_ID_PATH;
            berth_updater::fleetlock::node_id(std::path::Path::new(p))
                .map_err(|e| ManagerError::Failed(format!("machine id {p}: {e}")))
        })
        .await
    }

    async fn api_status(&self) -> Result<ApiStatus, ManagerError> {
        self.call(Method::ApiStatus, async move {
            Ok(self
                .remote
                .as_ref()
                .map(|r| r.status())
                .unwrap_or_else(|| ApiStatus {
                    state: "off".into(),
                    ..Default::default()
                }))
        })
        .await
    }

    async fn pki_issue(
        &self,
        role: &str,
        ttl_secs: u64,
        name: &str,
    ) -> Result<String, ManagerError> {
        self.call(Method::PkiIssue, async move {
            self.pki_issue_file(role, ttl_secs, name).await
        })
        .await
    }

    #[zbus(signal)]
    async fn update_progress(
        emitter: &SignalEmitter<'_>,
        phase: &str,
        detail: &str,
        done: u64,
        total: u64,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn pull_progress(
        emitter: &SignalEmitter<'_>,
        reference: &str,
        done: u64,
        total: u64,
        layers_done: u32,
        layers: u32,
    ) -> zbus::Result<()>;

    async fn reboot(&self) -> Result<(), ManagerError> {
        self.call(Method::Reboot, async move {
            tracing::info!("reboot requested over the API");
            signal_init(Signal::SIGTERM)
        })
        .await
    }

    async fn power_off(&self) -> Result<(), ManagerError> {
        self.call(Method::PowerOff, async move {
            tracing::info!("power-off requested over the API");
            signal_init(Signal::SIGUSR2)
        })
        .await
    }

    async fn kill_supervisor(&self) -> Result<(), ManagerError> {
        self.call(Method::KillSupervisor, async move {
            tracing::warn!("supervisor kill drill requested: SIGKILL in 200 ms");
            tokio::spawn(async {
                // Let the reply reach the caller first.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let _ = kill(Pid::this(), Signal::SIGKILL);
            });
            Ok(())
        })
        .await
    }
}

/// PID 1 turns SIGTERM into a reboot and SIGUSR2 into a power-off (ordered shutdown).
fn signal_init(sig: Signal) -> Result<(), ManagerError> {
    kill(Pid::from_raw(1), sig).map_err(|e| ManagerError::Failed(format!("signalling PID 1: {e}")))
}

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {path}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Bind the API socket (mode 0600, stale socket removed).
pub fn listen(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// How long a new connection may take to authenticate.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve one peer-to-peer D-Bus connection until the peer goes away.
pub async fn serve_connection(
    stream: tokio::net::UnixStream,
    manager: Manager,
) -> zbus::Result<()> {
    use zbus::connection::socket::Socket;
    let (r, w) = stream.split().take();
    let socket = guard_auth(zbus::connection::socket::Split::new(
        Box::new(r),
        Box::new(w),
    ));
    serve_p2p(zbus::connection::Builder::socket(socket), manager).await
}

/// Most bytes a client may send before its D-Bus authentication ends (`BEGIN`).
pub const AUTH_MAX: usize = 16 << 10;

/// `socket` with its client's D-Bus authentication lines checked before zbus reads them:
/// every line ends in `\r\n`, and all of them together are at most [`AUTH_MAX`] bytes;
/// past `BEGIN` the bytes pass untouched. zbus 5.19 indexes the byte before a line feed
/// without checking that there is one, so a line feed at the start of its buffer (`"\n"`,
/// or `"\0AUTH ANONYMOUS\r\n\n"`) panics, which aborts sysd (the release build has
/// `panic = "abort"`); and it keeps an unterminated line in memory however long it grows.
/// Found by the `api_tls_transport` fuzz target. Used on every connection: the local
/// socket (which the serial bridge feeds from the host) and the TLS ones.
pub fn guard_auth(
    socket: zbus::connection::socket::BoxedSplit,
) -> zbus::connection::socket::BoxedSplit {
    let (r, w) = socket.take();
    let read: Box<dyn zbus::connection::socket::ReadHalf> = Box::new(GuardedRead {
        inner: r,
        check: AuthCheck::default(),
    });
    zbus::connection::socket::Split::new(read, w)
}

/// The authentication lines seen so far.
#[derive(Debug, Default)]
struct AuthCheck {
    prev: u8,
    /// The start of the current line (enough to recognize `BEGIN\r`).
    line: Vec<u8>,
    seen: usize,
    done: bool,
}

impl AuthCheck {
    fn check(&mut self, data: &[u8]) -> std::io::Result<()> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        for &b in data {
            if self.done {
                break;
            }
            self.seen += 1;
            if self.seen > AUTH_MAX {
                return Err(bad("the D-Bus authentication is too long"));
            }
            if b == b'\n' {
                if self.prev != b'\r' {
                    return Err(bad("a D-Bus authentication line does not end in CR LF"));
                }
                self.done = self.line == b"BEGIN\r";
                self.line.clear();
            } else if self.line.len() < 8 {
                self.line.push(b);
            }
            self.prev = b;
        }
        Ok(())
    }
}

/// A read half whose authentication phase is checked (see [`guard_auth`]).
#[derive(Debug)]
struct GuardedRead {
    inner: Box<dyn zbus::connection::socket::ReadHalf>,
    check: AuthCheck,
}

#[async_trait::async_trait]
impl zbus::connection::socket::ReadHalf for GuardedRead {
    async fn recvmsg(
        &mut self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
        let (n, fds) = self.inner.recvmsg(buf).await?;
        if !self.check.done {
            self.check.check(&buf[..n.min(buf.len())])?;
        }
        Ok((n, fds))
    }

    fn can_pass_unix_fd(&self) -> bool {
        self.inner.can_pass_unix_fd()
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        self.inner.peer_credentials().await
    }

    fn auth_mechanism(&self) -> zbus::AuthMechanism {
        self.inner.auth_mechanism()
    }
}

/// Serve `manager` on the peer-to-peer connection `builder` makes (a Unix stream, or a TLS
/// stream with `ANONYMOUS` authentication) until the peer goes away, or until the caller's
/// certificate is cut off (see [`Caller::check`]).
pub async fn serve_p2p(
    builder: zbus::connection::Builder<'_>,
    manager: Manager,
) -> zbus::Result<()> {
    use futures_util::StreamExt;
    let guid = zbus::Guid::generate();
    let mut manager = manager;
    manager.owner = guid.to_string();
    let (sessions, owner) = (manager.exec.clone(), manager.owner.clone());
    let cut = manager.caller.peer.as_ref().map(|p| p.cut.clone());
    // Whatever ends this connection ends its exec sessions.
    sessions.connected(&owner);
    let _close = CloseSessions(sessions, owner);
    let build = builder
        .server(guid)?
        .p2p()
        .serve_at(berth_api::OBJECT_PATH, manager)?
        .build();
    // A peer that connects and never authenticates must not hold a descriptor forever.
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, build)
        .await
        .map_err(|_| zbus::Error::Failure("D-Bus handshake timed out".into()))??;
    let mut stream = zbus::MessageStream::from(&conn);
    let served = async { while stream.next().await.is_some() {} };
    match cut {
        Some(cut) => {
            tokio::select! {
                _ = served => {}
                _ = cut.notified() => {
                    tracing::info!("api: connection closed: its client certificate is no longer valid");
                }
            }
        }
        None => served.await,
    }
    Ok(())
}

/// Closes a connection's exec sessions when dropped.
struct CloseSessions(std::sync::Arc<crate::exec::Sessions>, String);

impl Drop for CloseSessions {
    fn drop(&mut self) {
        self.0.close_owner(&self.1);
    }
}

/// Accept connections forever.
pub async fn serve(listener: UnixListener, manager: Manager) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let m = manager.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(s, m).await {
                        tracing::debug!("API connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on the API socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::ManagerProxy;

    /// Serve `manager` on one end of a socket pair; osctl's proxy on the other.
    async fn pair(manager: Manager) -> (zbus::Connection, ManagerProxy<'static>) {
        let (server, client) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(serve_connection(server, manager));
        let conn = zbus::connection::Builder::unix_stream(client)
            .p2p()
            .build()
            .await
            .unwrap();
        let m = ManagerProxy::new(&conn).await.unwrap();
        (conn, m)
    }

    fn as_role(role: Role) -> Manager {
        Manager {
            caller: Caller { role, peer: None },
            ..Default::default()
        }
    }

    /// `ExecStart` -> `exec_start`.
    fn snake(name: &str) -> String {
        let mut s = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        }
        s
    }

    #[tokio::test]
    async fn the_served_methods_are_exactly_the_role_table() {
        let (conn, _m) = pair(Manager::default()).await;
        let xml = zbus::fdo::IntrospectableProxy::builder(&conn)
            .destination(berth_api::BUS_NAME)
            .unwrap()
            .path(berth_api::OBJECT_PATH)
            .unwrap()
            .build()
            .await
            .unwrap()
            .introspect()
            .await
            .unwrap();
        let start = xml
            .find(&format!("<interface name=\"{}\">", berth_api::INTERFACE))
            .expect("the interface is served");
        let body = &xml[start..start + xml[start..].find("</interface>").unwrap()];
        let mut served: Vec<&str> = body
            .split("<method name=\"")
            .skip(1)
            .map(|m| &m[..m.find('"').unwrap()])
            .collect();
        served.sort_unstable();
        let mut table: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        table.sort_unstable();
        assert_eq!(
            served, table,
            "every D-Bus method has exactly one role entry"
        );
        assert!(served.len() >= 29, "{served:?}");
    }

    #[test]
    fn every_method_body_checks_its_own_entry() {
        let src = include_str!("api.rs");
        let start = src.find("impl Manager {\n    async fn status").unwrap();
        let end = start + src[start..].find("\n}\n").unwrap();
        let block = &src[start..end];
        // The methods, in the order they are written, with their bodies.
        let mut found = Vec::new();
        let parts: Vec<&str> = block.split("\n    async fn ").skip(1).collect();
        for part in parts {
            let name = &part[..part.find('(').unwrap()];
            let Some(body_start) = part.find("{\n") else {
                continue; // a signal (the last one): no body
            };
            let body = &part[body_start..];
            if part[..body_start].contains("zbus::Result<()>;") {
                continue; // a signal: no body
            }
            let method = Method::ALL
                .iter()
                .find(|m| snake(m.name()) == name)
                .unwrap_or_else(|| panic!("{name} has no entry in the role table"));
            // Up to the body's future, whitespace aside (rustfmt may wrap the call).
            let head: String = body[1..]
                .split("async move")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            assert_eq!(
                head,
                format!("self.call(Method::{},", method.name()),
                "{name} must start with its own role check"
            );
            assert_eq!(
                body.matches("self.call(").count(),
                1,
                "{name} checks exactly once"
            );
            found.push(*method);
        }
        assert_eq!(found.len(), Method::ALL.len(), "{found:?}");
    }

    #[tokio::test]
    async fn a_reader_is_refused_what_changes_the_node_with_the_role_named() {
        let (_c, m) = pair(as_role(Role::Reader)).await;
        let denied = |r: Result<String, ManagerError>, method: &str, needs: &str| match r {
            Err(ManagerError::Denied(msg)) => assert_eq!(
                msg,
                format!("role reader cannot call {method}: it needs {needs}")
            ),
            other => panic!("{method}: {other:?}"),
        };
        let r = m
            .exec("admin", &["id".into()], b"")
            .await
            .map(|_| String::new());
        denied(r, "Exec", "admin");
        let r = m.run(&RunRequest::default()).await;
        denied(r, "Run", "operator");
        denied(m.config_apply("", 0).await, "ConfigApply", "admin");
        denied(
            m.update_apply("", false, false).await,
            "UpdateApply",
            "operator",
        );
        denied(m.pki_issue("admin", 60, "me").await, "PkiIssue", "admin");
        let r = m.reboot().await.map(|_| String::new());
        denied(r, "Reboot", "operator");
        // What it may do goes through (and fails only for want of containers here).
        assert!(m.status().await.is_ok());
        assert!(matches!(m.ps().await, Err(ManagerError::Failed(_))));
        assert_eq!(m.api_status().await.unwrap().state, "off");
    }

    #[tokio::test]
    async fn an_operator_may_reboot_but_not_exec() {
        let (_c, m) = pair(as_role(Role::Operator)).await;
        let e = m.exec("admin", &["id".into()], b"").await.unwrap_err();
        assert!(
            matches!(&e, ManagerError::Denied(m) if m == "role operator cannot call Exec: it needs admin"),
            "{e:?}"
        );
        let e = m.logs("web", 10).await.unwrap_err();
        assert!(matches!(e, ManagerError::Failed(_)), "allowed: {e:?}");
        // No audit log behind this bare manager: "@api" is not found, not denied.
        let e = m.logs(berth_api::AUDIT_LOG_NAME, 10).await.unwrap_err();
        assert!(matches!(e, ManagerError::NotFound(_)), "{e:?}");
    }

    #[test]
    fn a_reader_sees_the_config_without_its_secrets() {
        let text = "[registries.\"r.example.com\"]\nusername = \"u\"\npassword = \"hunter2\"\n\n[api]\nca = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\nca_key = \"\"\"\n-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n\"\"\"\n";
        let r = redact(text, Role::Reader).unwrap();
        assert!(!r.contains("hunter2") && !r.contains("MIGH"), "{r}");
        assert!(r.contains("MIIB"), "certificates are public: {r}");
        assert!(
            r.starts_with("# Secrets ((redacted)) redacted for role reader."),
            "{r}"
        );
        // Still a config (with the placeholders).
        let c = berth_config::parse(&r).err();
        assert!(c.is_some_and(|e| e.to_string().contains("api.ca_key")));
    }

    #[test]
    fn the_auth_check_passes_good_authentication_and_stops_bad() {
        let mut g = AuthCheck::default();
        g.check(b"\0AUTH EXTERNAL 30\r\nDATA\r\nNEGOTIATE").unwrap();
        g.check(b"_UNIX_FD\r\nBEGIN\r\nl\n\n\x00anything").unwrap();
        assert!(g.done);
        for bad in [&b"\n"[..], b"\0AUTH\r\n\n", b"\0AUTH\n"] {
            assert!(AuthCheck::default().check(bad).is_err(), "{bad:?}");
        }
        assert!(AuthCheck::default()
            .check(&vec![b'A'; AUTH_MAX + 1])
            .is_err());
        // "BEGIN" only counts as a whole line.
        let mut g = AuthCheck::default();
        g.check(b"\0XBEGIN\r\nxxBEGIN\r\n").unwrap();
        assert!(!g.done);
    }

    #[tokio::test]
    async fn a_bare_line_feed_on_the_local_socket_ends_the_connection_not_sysd() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for junk in [&b"\n"[..], b"\0AUTH EXTERNAL\r\n\n"] {
            let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
            let task = tokio::spawn(serve_connection(server, Manager::default()));
            client.write_all(junk).await.unwrap();
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut sink)).await;
            let r = tokio::time::timeout(Duration::from_secs(5), task).await;
            assert!(matches!(r, Ok(Ok(Err(_)))), "{junk:?}: {r:?}");
        }
        // And a real client still gets in (EXTERNAL, with its credentials).
        let (_c, m) = pair(Manager::default()).await;
        assert!(m.status().await.is_ok());
    }

    #[test]
    fn client_names_are_plain() {
        assert!(check_client_name("alice@laptop-1").is_ok());
        for bad in ["", "a b", "a\nb", "x\"y", &"a".repeat(65)] {
            assert!(check_client_name(bad).is_err(), "{bad:?}");
        }
    }
}
