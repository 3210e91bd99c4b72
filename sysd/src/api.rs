//! The `org.berth.Manager1` server: a thin adapter from D-Bus calls to sysd's own actions,
//! served peer-to-peer, one connection per client.

use berth_api::{
    ContainerInfo, ContainerStats, ExecReply, ImageInfo, LogChunk, ManagerError, RunRequest, Status,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixListener;
use zbus::object_server::SignalEmitter;

/// The object served at `/org/berth/Manager`.
#[derive(Clone)]
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

#[zbus::interface(name = "org.berth.Manager1")]
impl Manager {
    async fn status(&self) -> Result<Status, ManagerError> {
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
        Ok(s)
    }

    async fn ps(&self) -> Result<Vec<ContainerInfo>, ManagerError> {
        Ok(self.containers()?.ps())
    }

    async fn start(&self, name: &str) -> Result<(), ManagerError> {
        Ok(self.containers()?.start(name).await?)
    }

    async fn stop(&self, name: &str) -> Result<(), ManagerError> {
        Ok(self.containers()?.stop(name).await?)
    }

    async fn restart(&self, name: &str) -> Result<(), ManagerError> {
        Ok(self.containers()?.restart(name).await?)
    }

    async fn logs(&self, name: &str, tail: u32) -> Result<LogChunk, ManagerError> {
        let (data, next) = self.containers()?.logs(name, tail)?;
        Ok(LogChunk { data, next })
    }

    async fn logs_from(&self, name: &str, from: u64) -> Result<LogChunk, ManagerError> {
        let (data, next) = self.containers()?.logs_from(name, from)?;
        Ok(LogChunk { data, next })
    }

    async fn run(
        &self,
        request: RunRequest,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, ManagerError> {
        let c = self.containers()?;
        let (progress, task) = pull_signals(&emitter, &request.image);
        let r = c.run(&request, progress).await;
        drain(task).await;
        Ok(r?)
    }

    async fn remove(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        Ok(self.containers()?.remove(name, force).await?)
    }

    async fn exec(
        &self,
        name: &str,
        command: Vec<String>,
        stdin: Vec<u8>,
    ) -> Result<ExecReply, ManagerError> {
        Ok(self
            .containers()?
            .exec(name, command, stdin, Duration::from_secs(300))
            .await?)
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
    }

    async fn exec_input(&self, session: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        self.exec.input(&self.owner, session, data).await
    }

    async fn exec_resize(&self, session: &str, rows: u16, cols: u16) -> Result<(), ManagerError> {
        self.exec.resize(&self.owner, session, rows, cols)
    }

    async fn exec_wait(&self, session: &str) -> Result<(i32, u64), ManagerError> {
        self.exec.wait(&self.owner, session).await
    }

    #[zbus(signal)]
    async fn exec_output(
        emitter: &SignalEmitter<'_>,
        session: &str,
        stream: u8,
        data: &[u8],
    ) -> zbus::Result<()>;

    async fn stats(&self) -> Result<Vec<ContainerStats>, ManagerError> {
        Ok(self.containers()?.stats())
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, ManagerError> {
        Ok(self.containers()?.images()?)
    }

    async fn pull(
        &self,
        reference: &str,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<ImageInfo, ManagerError> {
        let c = self.containers()?;
        let (progress, task) = pull_signals(&emitter, reference);
        let r = c.pull(reference, progress).await;
        drain(task).await;
        Ok(r?)
    }

    async fn remove_image(&self, name: &str) -> Result<(), ManagerError> {
        Ok(self.containers()?.remove_image(name)?)
    }

    async fn config(&self) -> Result<(String, String, String), ManagerError> {
        let store = berth_config::store::Store::new(Path::new("/var"));
        let text = store
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
        Ok((source, text, outcome))
    }

    async fn config_apply(&self, config: &str, deadline: u32) -> Result<String, ManagerError> {
        let node = self
            .node
            .as_ref()
            .ok_or_else(|| ManagerError::Failed("config changes are not managed here".into()))?;
        let deadline = if deadline == 0 {
            berth_config::store::DEFAULT_DEADLINE_SECS
        } else {
            deadline.into()
        };
        node.apply(config, deadline).await
    }

    async fn update_status(&self) -> Result<String, ManagerError> {
        let (u, config) = self.updates()?;
        u.status(&config)
    }

    async fn update_check(&self, source: &str) -> Result<String, ManagerError> {
        let (u, config) = self.updates()?;
        u.check(&config, source).await
    }

    async fn update_apply(
        &self,
        source: &str,
        allow_downgrade: bool,
        force: bool,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, ManagerError> {
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
    }

    async fn update_rollback(&self, force: bool) -> Result<String, ManagerError> {
        let (u, config) = self.updates()?;
        u.rollback(&config, force).await
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
        tracing::info!("reboot requested over the API");
        signal_init(Signal::SIGTERM)
    }

    async fn power_off(&self) -> Result<(), ManagerError> {
        tracing::info!("power-off requested over the API");
        signal_init(Signal::SIGUSR2)
    }

    async fn kill_supervisor(&self) -> Result<(), ManagerError> {
        tracing::warn!("supervisor kill drill requested: SIGKILL in 200 ms");
        tokio::spawn(async {
            // Let the reply reach the caller first.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let _ = kill(Pid::this(), Signal::SIGKILL);
        });
        Ok(())
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
    use futures_util::StreamExt;
    let guid = zbus::Guid::generate();
    let mut manager = manager;
    manager.owner = guid.to_string();
    let (sessions, owner) = (manager.exec.clone(), manager.owner.clone());
    // Whatever ends this connection ends its exec sessions.
    sessions.connected(&owner);
    let _close = CloseSessions(sessions, owner);
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(guid)?
        .p2p()
        .serve_at(berth_api::OBJECT_PATH, manager)?
        .build();
    // A peer that connects and never authenticates must not hold a descriptor forever.
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, build)
        .await
        .map_err(|_| zbus::Error::Failure("D-Bus handshake timed out".into()))??;
    let mut stream = zbus::MessageStream::from(&conn);
    while stream.next().await.is_some() {}
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
