//! The remote API listener: `org.berth.Manager1` over TLS 1.3 with mandatory client
//! certificates (`[api]` in the config), so a node without a serial line (a cloud VM, a
//! server in a rack) can be managed with osctl over the network.
//!
//! - Off without `[api] ca`. A bad `[api]` (a PEM that does not parse, a port already
//!   taken) is logged and shown in `Status` warnings and `ApiStatus`; sysd runs on.
//! - The node certificate: `[api] cert`/`key`, or made by the node with the key kept in
//!   `/var/lib/berth/api/node.key` (0600, kept across renewals, so a self-signed node's
//!   SPKI fingerprint, which clients pin, never changes), signed by `[api] ca_key` when
//!   given, else self-signed; SANs = the hostname, `localhost` and the node's addresses. It
//!   is made afresh when the listener starts and renewed when less than a third of its
//!   lifetime is left or the node's addresses changed (checked every minute).
//! - Each connection: its source must be in `allowed_sources` (live); at most
//!   [`Options::max_handshaking`] connections may be in the TLS handshake at once, which
//!   must finish within [`Options::handshake_timeout`]; the client certificate must chain
//!   to `ca`, be valid, carry clientAuth, not be revoked (live list) and name a role in its
//!   Subject O. Refusals are logged with the peer address and the reason, rate-limited.
//! - An accepted connection is served the same [`Manager`] as the local socket, with the
//!   certificate's role as the caller's ([`crate::api::Caller`]): every call is checked
//!   against the role table and the live revocation list, and written to the audit log.
//! - A config change to `listen`, `ca`, `ca_key`, `cert`, `key` or `cert_ttl` restarts the
//!   listener; connections of the old one are refused at their next call and closed.

use crate::api::{Caller, Manager, Peer};
use crate::audit::Audit;
use berth_api::ApiStatus;
use berth_config::Config;
use berth_remote::pki::{self, CertKey};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the node keeps the certificate and key it makes for itself.
pub const STATE_DIR: &str = "/var/lib/berth/api";

/// Errors starting the listener.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot read or write {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[api] cert and key")]
    ConfigCert(#[source] pki::PkiError),
    #[error("[api] ca and ca_key")]
    CaKey(#[source] pki::PkiError),
    #[error("making the node certificate")]
    Issue(#[source] pki::PkiError),
    #[error("reading the node certificate")]
    ReadCert(#[source] pki::PkiError),
    #[error("the TLS settings from [api]")]
    Tls(#[source] berth_remote::tls::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How the listener behaves beyond the config (tests shorten the times).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the node's own certificate and key live ([`STATE_DIR`]).
    pub state_dir: PathBuf,
    /// Time a client has to finish the TLS handshake, and then the D-Bus one.
    pub handshake_timeout: Duration,
    /// Connections allowed in the TLS handshake at once; more are closed at once.
    pub max_handshaking: usize,
    /// Connections served at once (after the handshake); more are closed.
    pub max_connections: usize,
    /// How often the node certificate's lifetime and SANs are checked.
    pub renew_check: Duration,
    /// Refusals logged per minute; the rest are counted.
    pub log_per_minute: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            state_dir: STATE_DIR.into(),
            handshake_timeout: crate::api::HANDSHAKE_TIMEOUT,
            max_handshaking: 64,
            max_connections: 256,
            renew_check: Duration::from_secs(60),
            log_per_minute: 20,
        }
    }
}

/// The listener's state, for `ApiStatus` and `Status`, and the config it follows.
#[derive(Debug)]
pub struct RemoteApi {
    status: Mutex<ApiStatus>,
    connections: AtomicU32,
    config: watch::Receiver<Config>,
    /// The TLS settings of the running listener (node certificate, CA, revocation list),
    /// which `[metrics] tls` shares; None while it does not run.
    acceptor: AcceptorSlot,
}

/// [`RemoteApi::acceptor`] (rustls' acceptor has no `Debug`).
#[derive(Default)]
struct AcceptorSlot(Mutex<Option<tokio_rustls::TlsAcceptor>>);

impl std::fmt::Debug for AcceptorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = lock(&self.0).is_some();
        f.debug_tuple("AcceptorSlot").field(&set).finish()
    }
}

impl RemoteApi {
    /// `[api]` of the config in force.
    pub fn config(&self) -> berth_config::Api {
        self.config.borrow().api.clone()
    }

    /// The listener's state now.
    pub fn status(&self) -> ApiStatus {
        let mut s = lock(&self.status).clone();
        s.connections = self.connections.load(Ordering::Relaxed);
        s
    }

    /// A line for `Status` warnings when the listener is not running as configured.
    pub fn problem(&self) -> Option<String> {
        let s = lock(&self.status);
        (!s.error.is_empty()).then(|| format!("api: {}", s.error))
    }

    fn set(&self, f: impl FnOnce(&mut ApiStatus)) {
        f(&mut lock(&self.status));
    }

    /// The running listener's TLS acceptor: mutual TLS exactly as the remote API's (a
    /// client certificate from `[api] ca`, not revoked); None while it does not run.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        lock(&self.acceptor.0).clone()
    }
}

/// Clears [`RemoteApi::acceptor`] when the listener stops.
struct ClearAcceptor(Arc<RemoteApi>);

impl Drop for ClearAcceptor {
    fn drop(&mut self) {
        *lock(&self.0.acceptor.0) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start the listener for the config in `config` (and every change of it), serving
/// `manager` with each client's role. Returns its state (give it to the local socket's
/// `Manager` too, for `ApiStatus`).
pub fn start(
    config: watch::Receiver<Config>,
    mut manager: Manager,
    audit: Arc<Audit>,
    opts: Options,
) -> Arc<RemoteApi> {
    let api = Arc::new(RemoteApi {
        status: Default::default(),
        connections: Default::default(),
        config: config.clone(),
        acceptor: Default::default(),
    });
    manager.remote = Some(api.clone());
    manager.audit = Some(audit.clone());
    tokio::spawn(supervise(api.clone(), config, manager, audit, opts));
    api
}

/// The settings whose change restarts the listener.
fn restart_key(c: &berth_config::Api) -> impl PartialEq {
    (
        c.listen,
        c.ca.clone(),
        c.ca_key.clone(),
        c.cert.clone(),
        c.key.clone(),
        c.cert_ttl,
    )
}

async fn supervise(
    api: Arc<RemoteApi>,
    mut config: watch::Receiver<Config>,
    manager: Manager,
    audit: Arc<Audit>,
    opts: Options,
) {
    loop {
        let cfg = config.borrow_and_update().api.clone();
        let key = restart_key(&cfg);
        let watched = config.clone();
        let changed = async {
            loop {
                if config.changed().await.is_err() {
                    // The node is gone: nothing will change any more.
                    std::future::pending::<()>().await;
                }
                if restart_key(&config.borrow().api) != key {
                    return;
                }
            }
        };
        let listen = listen(&api, &cfg, &watched, &manager, &audit, &opts);
        tokio::pin!(changed);
        tokio::select! {
            () = &mut changed => {}
            // It failed (and said why): wait for a config that changes something.
            () = listen => changed.await,
        }
        tracing::info!("api: [api] changed; restarting the listener");
    }
}

/// Runs the listener for `cfg` until it fails; never returns when `cfg` has no CA.
async fn listen(
    api: &Arc<RemoteApi>,
    cfg: &berth_config::Api,
    config: &watch::Receiver<Config>,
    manager: &Manager,
    audit: &Arc<Audit>,
    opts: &Options,
) {
    let listen = cfg.listen.to_string();
    let Some(ca) = cfg.ca.clone() else {
        api.set(|s| {
            *s = ApiStatus {
                state: "off".into(),
                listen,
                ..Default::default()
            }
        });
        return std::future::pending().await;
    };
    let fail = |e: &dyn std::error::Error| {
        let msg = format!(
            "the remote API is not running: {}",
            berth_config::error_chain(e)
        );
        tracing::error!("api: {msg}");
        api.set(|s| {
            *s = ApiStatus {
                state: "failed".into(),
                listen: listen.clone(),
                error: msg,
                can_issue: cfg.ca_key.is_some(),
                ..Default::default()
            }
        });
    };
    let (names, ips) = sans(config).await;
    let mut cert = match NodeCert::make(cfg, &opts.state_dir, &names, &ips) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let revoked: berth_remote::tls::IsRevoked = {
        let config = config.clone();
        Arc::new(move |serial: &str| config.borrow().api.is_revoked(serial))
    };
    let mut acceptor = match acceptor(&ca, &cert.ck, revoked.clone()) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let listener = match bind(cfg.listen) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let bound = listener.local_addr().unwrap_or(cfg.listen);
    tracing::info!(
        "api: listening on {bound}, node certificate sha256 {} ({}, valid until {})",
        cert.fingerprint,
        cert.source,
        pki::format_time(cert.not_after)
    );
    let show = |cert: &NodeCert, error: String| ApiStatus {
        state: "listening".into(),
        listen: bound.to_string(),
        fingerprint: cert.fingerprint.clone(),
        cert_source: cert.source.into(),
        cert_not_after: cert.not_after,
        can_issue: cfg.ca_key.is_some(),
        connections: 0,
        error,
    };
    api.set(|s| *s = show(&cert, cert.warning()));
    *lock(&api.acceptor.0) = Some(acceptor.clone());
    let _clear = ClearAcceptor(api.clone());
    // Connections of this listener: stale once it stops.
    let stale = Arc::new(AtomicBool::new(false));
    let _stale = SetOnDrop(stale.clone());
    let handshaking = Arc::new(tokio::sync::Semaphore::new(opts.max_handshaking));
    let log = Arc::new(Mutex::new(RateLimit::new(opts.log_per_minute)));
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + opts.renew_check,
        opts.renew_check,
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, most likely: let some close.
                        refused(&log, audit, None, &format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                if !config.borrow().api.source_allowed(addr.ip()) {
                    refused(&log, audit, Some(addr), "not in [api] allowed_sources");
                    continue;
                }
                let Ok(permit) = handshaking.clone().try_acquire_owned() else {
                    refused(&log, audit, Some(addr), "too many connections in the handshake");
                    continue;
                };
                if api.connections.load(Ordering::Relaxed) as usize >= opts.max_connections + opts.max_handshaking {
                    refused(&log, audit, Some(addr), "too many connections");
                    continue;
                }
                let conn = Conn {
                    api: api.clone(),
                    acceptor: acceptor.clone(),
                    manager: manager.clone(),
                    audit: audit.clone(),
                    config: config.clone(),
                    stale: stale.clone(),
                    log: log.clone(),
                    timeout: opts.handshake_timeout,
                };
                let local = tcp
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let _ = tcp.set_nodelay(true);
                tokio::spawn(conn.serve(tcp, addr, local, Some(permit)));
            }
            _ = check.tick() => {
                let (names, ips) = sans(config).await;
                if !cert.due(&names, &ips, unix_now()) {
                    continue;
                }
                match NodeCert::make(cfg, &opts.state_dir, &names, &ips)
                    .and_then(|c| Ok((acceptor_for(&ca, &c, revoked.clone())?, c)))
                {
                    Ok((a, c)) => {
                        tracing::info!(
                            "api: node certificate renewed (sha256 {}, valid until {})",
                            c.fingerprint,
                            pki::format_time(c.not_after)
                        );
                        acceptor = a;
                        *lock(&api.acceptor.0) = Some(acceptor.clone());
                        cert = c;
                        api.set(|s| *s = show(&cert, cert.warning()));
                    }
                    Err(e) => {
                        let msg = format!("renewing the node certificate: {}", berth_config::error_chain(&e));
                        tracing::error!("api: {msg}");
                        api.set(|s| s.error = msg);
                    }
                }
            }
        }
    }
}

fn acceptor_for(
    ca: &str,
    cert: &NodeCert,
    revoked: berth_remote::tls::IsRevoked,
) -> Result<tokio_rustls::TlsAcceptor, RemoteError> {
    acceptor(ca, &cert.ck, revoked)
}

fn acceptor(
    ca: &str,
    ck: &CertKey,
    revoked: berth_remote::tls::IsRevoked,
) -> Result<tokio_rustls::TlsAcceptor, RemoteError> {
    berth_remote::tls::server_config(ca, ck, revoked)
        .map(tokio_rustls::TlsAcceptor::from)
        .map_err(RemoteError::Tls)
}

fn bind(addr: SocketAddr) -> Result<TcpListener, RemoteError> {
    let err = |source| RemoteError::Listen { addr, source };
    let std = std::net::TcpListener::bind(addr).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std).map_err(err)
}

/// Sets the flag when dropped: the listener stopped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts a connection while it lives.
struct Counted(Arc<RemoteApi>);

impl Counted {
    fn new(api: Arc<RemoteApi>) -> Self {
        api.connections.fetch_add(1, Ordering::Relaxed);
        Counted(api)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted TCP connection and what serving it needs.
struct Conn {
    api: Arc<RemoteApi>,
    acceptor: tokio_rustls::TlsAcceptor,
    manager: Manager,
    audit: Arc<Audit>,
    config: watch::Receiver<Config>,
    stale: Arc<AtomicBool>,
    log: Arc<Mutex<RateLimit>>,
    timeout: Duration,
}

impl Conn {
    /// Handshake, check the identity, and serve the API on `stream` from `addr` (reaching
    /// the node at `local`). `permit` is a handshake slot, given back after the handshake.
    async fn serve<S>(
        self,
        stream: S,
        addr: SocketAddr,
        local: SocketAddr,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) where
        S: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + Send
            + Sync
            + Unpin
            + std::fmt::Debug
            + 'static,
    {
        let _counted = Counted::new(self.api.clone());
        let tcp = stream;
        let tls = match tokio::time::timeout(self.timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let why = berth_remote::tls::explain_server_handshake_error(&e);
                return refused(&self.log, &self.audit, Some(addr), &why);
            }
            Err(_) => {
                return refused(
                    &self.log,
                    &self.audit,
                    Some(addr),
                    &format!("no TLS handshake within {} s", self.timeout.as_secs()),
                )
            }
        };
        drop(permit);
        let id = match berth_remote::tls::peer_identity(tls.get_ref().1) {
            Ok(id) => id,
            Err(e) => {
                return refused(
                    &self.log,
                    &self.audit,
                    Some(addr),
                    &berth_config::error_chain(&e),
                )
            }
        };
        let Some(role) = id.role else {
            let why = format!(
                "client certificate serial {} (CN {}) names no role in its Subject O (admin, operator or reader)",
                id.serial,
                crate::audit::quote(&id.common_name)
            );
            return refused(&self.log, &self.audit, Some(addr), &why);
        };
        tracing::debug!(
            "api: {addr} connected as {} (role {role}, serial {})",
            id.common_name,
            id.serial
        );
        let recheck: crate::api::Recheck = {
            let (config, stale) = (self.config.clone(), self.stale.clone());
            Arc::new(move |serial: &str, peer: SocketAddr| {
                let c = config.borrow();
                if c.api.is_revoked(serial) {
                    Some(format!(
                        "the client certificate (serial {serial}) has been revoked"
                    ))
                } else if !c.api.source_allowed(peer.ip()) {
                    Some(format!(
                        "{} is no longer in [api] allowed_sources",
                        peer.ip()
                    ))
                } else if stale.load(Ordering::Relaxed) {
                    Some("the node's [api] settings changed: connect again".into())
                } else {
                    None
                }
            })
        };
        let mut manager = self.manager;
        manager.caller = Caller {
            role,
            peer: Some(Arc::new(Peer {
                addr,
                local,
                common_name: id.common_name,
                serial: id.serial,
                not_after: id.not_after,
                recheck,
                cut: Default::default(),
            })),
        };
        let socket = crate::api::guard_auth(berth_remote::transport::zbus_socket(tls));
        let builder = zbus::connection::Builder::socket(socket)
            .auth_mechanism(zbus::AuthMechanism::Anonymous);
        if let Err(e) = crate::api::serve_p2p(builder, manager).await {
            tracing::debug!("api: connection from {addr} ended: {e}");
        }
    }
}

/// Log (rate-limited) and audit a refused connection.
fn refused(log: &Mutex<RateLimit>, audit: &Audit, peer: Option<SocketAddr>, why: &str) {
    let Some((peer, more)) = refusal(log, peer) else {
        return;
    };
    tracing::warn!("api: refused {peer}: {why}{more}");
    audit.note(&format!(
        "peer={peer} refused={}{more}",
        crate::audit::quote(why)
    ));
}

/// A refused connection to log, unless `log`'s rate limit drops it: the peer (`-` when
/// unknown) and ` (N more refusals not logged)` when some were dropped before it.
pub(crate) fn refusal(
    log: &Mutex<RateLimit>,
    peer: Option<SocketAddr>,
) -> Option<(String, String)> {
    let (allowed, skipped) = lock(log).allow(Instant::now());
    if !allowed {
        return None;
    }
    let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let more = if skipped > 0 {
        format!(" ({skipped} more refusals not logged)")
    } else {
        String::new()
    };
    Some((peer, more))
}

/// At most `per_minute` events a minute; counts the rest.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    window: Option<Instant>,
    used: u32,
    skipped: u64,
}

impl RateLimit {
    /// A limit of `per_minute` events a minute.
    pub fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute,
            window: None,
            used: 0,
            skipped: 0,
        }
    }

    /// Whether an event at `now` may be logged, and how many were skipped before it
    /// (reported once, with the first event allowed after them).
    pub fn allow(&mut self, now: Instant) -> (bool, u64) {
        let fresh = self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60));
        if fresh {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.per_minute {
            self.skipped += 1;
            return (false, 0);
        }
        self.used += 1;
        (true, std::mem::take(&mut self.skipped))
    }
}

/// The node certificate in use.
#[derive(Debug, Clone)]
struct NodeCert {
    ck: CertKey,
    /// `config`, `ca` or `self-signed`.
    source: &'static str,
    fingerprint: String,
    not_before: i64,
    not_after: i64,
    /// The SANs it was made with (none for one from the config).
    sans: Option<(Vec<String>, Vec<IpAddr>)>,
}

impl NodeCert {
    /// The certificate from `[api] cert`/`key`, or one made now with the node's key
    /// (created on first use) for `names` and `ips`.
    fn make(
        cfg: &berth_config::Api,
        dir: &Path,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<NodeCert, RemoteError> {
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            let ck = CertKey {
                cert_pem: cert.clone(),
                key_pem: key.clone(),
            };
            return Self::read(ck, "config", None).map_err(|e| match e {
                RemoteError::ReadCert(e) => RemoteError::ConfigCert(e),
                e => e,
            });
        }
        let key = node_key(dir)?;
        let ttl = cfg.cert_ttl.get();
        let (ck, source) = match (&cfg.ca, &cfg.ca_key) {
            (Some(ca), Some(ca_key)) => {
                let ca = pki::Ca::from_pem(ca, ca_key).map_err(RemoteError::CaKey)?;
                let ck = ca
                    .issue_server(names, ips, ttl, Some(&key))
                    .map_err(RemoteError::Issue)?;
                (ck, "ca")
            }
            _ => (
                pki::self_signed_server(names, ips, ttl, Some(&key)).map_err(RemoteError::Issue)?,
                "self-signed",
            ),
        };
        let path = dir.join("node.crt");
        write_private(&path, ck.cert_pem.as_bytes())?;
        Self::read(ck, source, Some((names.to_vec(), ips.to_vec())))
    }

    fn read(
        ck: CertKey,
        source: &'static str,
        sans: Option<(Vec<String>, Vec<IpAddr>)>,
    ) -> Result<NodeCert, RemoteError> {
        let id = pki::identity_pem(&ck.cert_pem).map_err(RemoteError::ReadCert)?;
        let fingerprint = pki::spki_sha256(&ck.cert_pem).map_err(RemoteError::ReadCert)?;
        Ok(NodeCert {
            ck,
            source,
            fingerprint,
            not_before: id.not_before,
            not_after: id.not_after,
            sans,
        })
    }

    /// Whether to make it again: less than a third of its lifetime left, or the node's
    /// names or addresses changed. Never for a certificate from the config.
    fn due(&self, names: &[String], ips: &[IpAddr], now: i64) -> bool {
        let Some((n, i)) = &self.sans else {
            return false;
        };
        renewal_due(self.not_before, self.not_after, now) || n != names || i != ips
    }

    /// A warning for `ApiStatus` (a certificate from the config close to its end).
    fn warning(&self) -> String {
        if self.sans.is_none() && renewal_due(self.not_before, self.not_after, unix_now()) {
            format!(
                "the node certificate from [api] cert expires at {}: replace it",
                pki::format_time(self.not_after)
            )
        } else {
            String::new()
        }
    }
}

/// Less than a third of the lifetime `not_before..not_after` is left at `now`.
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = not_after.saturating_sub(not_before).max(0);
    not_after.saturating_sub(now) < life / 3
}

/// The node's key (`dir/node.key`, 0600), made on first use.
fn node_key(dir: &Path) -> Result<String, RemoteError> {
    let path = dir.join("node.key");
    match std::fs::read_to_string(&path) {
        Ok(k) if k.contains("PRIVATE KEY") => return Ok(k),
        Ok(_) => tracing::warn!("api: {} is not a key; making a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RemoteError::State { path, source }),
    }
    let key = pki::generate_key_pem().map_err(RemoteError::Issue)?;
    write_private(&path, key.as_bytes())?;
    tracing::info!("api: made the node key {}", path.display());
    Ok(key)
}

/// Write a file 0600: a new file, synced, renamed over the old one, directory synced.
fn write_private(path: &Path, data: &[u8]) -> Result<(), RemoteError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| RemoteError::State {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// The names and addresses the node certificate is made for: the hostname, `localhost`,
/// and every address of the node (loopback included: a forwarded port reaches the node as
/// 127.0.0.1 on the forwarding host).
async fn sans(config: &watch::Receiver<Config>) -> (Vec<String>, Vec<IpAddr>) {
    let host = config.borrow().host.hostname().to_string();
    let mut names = vec![host, "localhost".to_string()];
    names.dedup();
    let mut ips = node_addresses().await;
    for lo in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        if !ips.contains(&lo) {
            ips.push(lo);
        }
    }
    ips.sort();
    ips.dedup();
    (names, ips)
}

/// Every address of the node's interfaces (empty when netlink cannot be read).
pub async fn node_addresses() -> Vec<IpAddr> {
    let Ok(nl) = berth_net::Netlink::connect() else {
        return Vec::new();
    };
    match nl.status().await {
        Ok(s) => s
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(|a| a.addr))
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The kernel's hostname.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| berth_config::DEFAULT_HOSTNAME.into())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Fuzz entry point for the TLS-framed transport: `data` as the first bytes of a connection
/// (before the TLS handshake), then as application data after a real handshake (in place
/// of D-Bus), each on an in-memory connection served exactly as a TCP one. Neither may panic
/// or hang (5 s), and a good client is served afterwards. The fuzzing client is a `reader`,
/// so nothing it might stumble on changes the machine it runs on.
pub fn fuzz_tls_transport(data: &[u8]) {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    let f = FIXTURE.get_or_init(Fixture::new);
    f.rt.block_on(f.run(data));
}

/// What every fuzz input reuses: keys, configs, the runtime.
struct Fixture {
    rt: tokio::runtime::Runtime,
    acceptor: tokio_rustls::TlsAcceptor,
    client: Arc<tokio_rustls::rustls::ClientConfig>,
    api: Arc<RemoteApi>,
    manager: Manager,
    audit: Arc<Audit>,
    config: watch::Receiver<Config>,
    _keep: watch::Sender<Config>,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let day = Duration::from_secs(86400);
        let ca = pki::Ca::generate("fuzz CA", day).expect("a CA");
        let node = ca
            .issue_server(&["localhost".into()], &[], day, None)
            .expect("a node certificate");
        let client = ca
            .issue_client("fuzz", berth_api::Role::Reader, day)
            .expect("a client certificate");
        let mut config = Config::default();
        config.api.ca = Some(ca.cert_pem().into());
        let (tx, rx) = watch::channel(config);
        let acceptor = acceptor(ca.cert_pem(), &node, Arc::new(|_: &str| false)).expect("TLS");
        let client = berth_remote::tls::client_config(
            &berth_remote::tls::ServerTrust::Ca(ca.cert_pem().into()),
            &client,
        )
        .expect("TLS");
        let dir = std::env::temp_dir().join(format!("berth-fuzz-audit-{}", std::process::id()));
        let audit = {
            let _rt = rt.enter();
            Audit::start(&dir)
        };
        let api = Arc::new(RemoteApi {
            status: Default::default(),
            connections: Default::default(),
            config: rx.clone(),
            acceptor: Default::default(),
        });
        let manager = Manager {
            remote: Some(api.clone()),
            audit: Some(audit.clone()),
            ..Default::default()
        };
        Fixture {
            rt,
            acceptor,
            client,
            api,
            manager,
            audit,
            config: rx,
            _keep: tx,
        }
    }

    /// Serve one in-memory connection; returns the client's end and the server task.
    fn connect(&self) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 << 10);
        let conn = Conn {
            api: self.api.clone(),
            acceptor: self.acceptor.clone(),
            manager: self.manager.clone(),
            audit: self.audit.clone(),
            config: self.config.clone(),
            stale: Default::default(),
            log: Arc::new(Mutex::new(RateLimit::new(0))),
            timeout: Duration::from_secs(2),
        };
        let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
        let local = SocketAddr::from(([192, 0, 2, 2], 7443));
        (client, tokio::spawn(conn.serve(server, peer, local, None)))
    }

    async fn run(&self, data: &[u8]) {
        // Before the handshake.
        let (client, server) = self.connect();
        feed(client, server, data, "bytes before the handshake").await;
        // After a real handshake, in place of D-Bus.
        let (client, server) = self.connect();
        let name = berth_remote::tls::server_name("localhost").expect("a name");
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name.clone(), client)
            .await
            .expect("the fuzzing client's handshake");
        feed(tls, server, data, "application data after the handshake").await;
        // And a good client is still served.
        let (client, _server) = self.connect();
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, client)
            .await
            .expect("a good handshake");
        let conn = zbus::connection::Builder::socket(berth_remote::transport::zbus_socket(tls))
            .p2p()
            .auth_mechanism(zbus::AuthMechanism::Anonymous)
            .build()
            .await
            .expect("a good D-Bus handshake");
        let m = berth_api::ManagerProxy::new(&conn).await.expect("a proxy");
        let s = tokio::time::timeout(FUZZ_LIMIT, m.api_status())
            .await
            .expect("an answer in time");
        assert!(s.is_ok(), "a good client is refused: {s:?}");
    }
}

/// How long the fuzzed server may take to finish with one input.
const FUZZ_LIMIT: Duration = Duration::from_secs(5);

/// Write `data` into `stream` and close it, read what comes back, and require the server
/// task to end by itself, without error, within [`FUZZ_LIMIT`] (`what`: where the bytes went).
async fn feed<S>(stream: S, server: tokio::task::JoinHandle<()>, data: &[u8], what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = tokio::io::split(stream);
    let junk = data.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&junk).await;
        let _ = w.shutdown().await;
    });
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(FUZZ_LIMIT, r.read_to_end(&mut sink)).await;
    let _ = writer.await;
    match tokio::time::timeout(FUZZ_LIMIT, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the server failed on {what}: {e}"),
        Err(_) => panic!("the server hangs on {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_entry_point_survives_garbage_and_keeps_serving() {
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\x00".to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // The start of a TLS ClientHello, cut short.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            // D-Bus authentication, then a message header that lies about its length.
            b"\0AUTH ANONYMOUS\r\nBEGIN\r\nl\x01\x00\x01\xff\xff\xff\x7f\x01\x00\x00\x00".to_vec(),
            b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec(),
            // Found by the fuzz target: a line feed first panicked zbus's handshake.
            b"\n".to_vec(),
            b"\0AUTH ANONYMOUS\r\n\n".to_vec(),
            // An endless authentication line.
            vec![b'A'; 100_000],
        ];
        // Larger than every buffer on the way.
        inputs.push((0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect());
        for i in &inputs {
            fuzz_tls_transport(i);
        }
    }
}
