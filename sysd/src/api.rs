//! The `org.berth.Manager1` server: a thin adapter from D-Bus calls to sysd's own actions,
//! served peer-to-peer, one connection per client.

use berth_api::{ManagerError, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use tokio::net::UnixListener;

/// The object served at `/org/berth/Manager`.
pub struct Manager {
    /// How often PID 1 has started sysd during this boot (from `BERTH_SYSD_START`).
    pub sysd_start: u32,
}

#[zbus::interface(name = "org.berth.Manager1")]
impl Manager {
    async fn status(&self) -> Result<Status, ManagerError> {
        Ok(crate::status::collect(self.sysd_start))
    }

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
pub async fn serve_connection(stream: tokio::net::UnixStream, sysd_start: u32) -> zbus::Result<()> {
    use futures_util::StreamExt;
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())?
        .p2p()
        .serve_at(berth_api::OBJECT_PATH, Manager { sysd_start })?
        .build();
    // A peer that connects and never authenticates must not hold a descriptor forever.
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, build)
        .await
        .map_err(|_| zbus::Error::Failure("D-Bus handshake timed out".into()))??;
    let mut stream = zbus::MessageStream::from(&conn);
    while stream.next().await.is_some() {}
    Ok(())
}

/// Accept connections forever.
pub async fn serve(listener: UnixListener, sysd_start: u32) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(s, sysd_start).await {
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
