//! Log forwarding (`[logging] forward`): every container's stdout and stderr and sysd's
//! own log go to a syslog collector as RFC 5424 messages ([`format`]), through a bounded
//! on-disk spool ([`spool`]) so that a slow or absent collector never holds up a
//! container's output.
//!
//! Writers (the log pumps, and a thread fed by sysd's `tracing` layer) append frames to
//! the spool; one sender task drains it in order over TCP, TLS or UDP, reconnecting with
//! back-off (1 s doubling to 16 s). The committed position moves only past frames the
//! connection accepted: over plain TCP, past every frame whose last byte the kernel took
//! (`write` returned it); over TLS, past the frames of a batch once `flush` handed all of
//! it to the kernel; over UDP, past each datagram sent. Before each batch, and while idle,
//! the sender checks whether the collector closed the connection (a collector never sends
//! on a syslog connection, so readable means closed) and reconnects instead of writing
//! into a dead socket. What can still be lost: frames the kernel accepted that the
//! collector never read (it was killed, or the network dropped between the last ACK and
//! the close), at most a socket buffer. A frame is never sent twice over TCP unless a write
//! failed in the middle of it (then it is sent whole again; the collector can tell by the
//! sequence number, `[meta sequenceId]`).

pub mod format;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use berth_config::{Config, ForwardProto};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{watch, Notify};

use format::{frame, Message, Severity, Stream};
use spool::{Batch, Spool};

/// Where the spool lives on a node.
pub const SPOOL_DIR: &str = "/var/lib/berth/logfwd";

/// Bytes read from the spool per batch.
const BATCH: usize = 64 << 10;
/// Lines of sysd's own log waiting for the spool writer; more are dropped (and counted).
const SYSD_QUEUE: usize = 4096;
/// Back-off between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(16);
/// How often the spool is fsynced while data moves.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A plain TCP connection is used only once it stayed open this long: a proxy in front of
/// a collector that is down (QEMU's guestfwd, a load balancer) accepts and then closes at
/// once, and what was written before the close would be lost.
const SETTLE: Duration = Duration::from_millis(500);
/// Drops are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The forwarder; cheap to clone. Off (every call a no-op) until [`Forwarder::start`]
/// finds `[logging] forward` set.
#[derive(Clone, Default)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    on: AtomicBool,
    spool: OnceLock<Arc<Spool>>,
    wake: Notify,
    /// Lines dropped (spool full, or sysd's queue full) since the last report.
    dropped: AtomicU64,
    /// Lines accepted into the spool, and lines sent (for the figures in `osctl logs`).
    spooled: AtomicU64,
    sent: AtomicU64,
    sysd_tx: OnceLock<std::sync::mpsc::SyncSender<(Severity, String)>>,
    hostname: Mutex<(String, Option<Instant>)>,
}

impl Forwarder {
    /// A forwarder that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether lines are being forwarded.
    pub fn is_on(&self) -> bool {
        self.inner.on.load(Ordering::Relaxed)
    }

    /// One line of a container's output (blocking: a file append; call it off the async
    /// threads). Never fails: a spool error is logged and the line is counted as dropped.
    pub fn line(&self, app: &str, stream: Stream, line: &[u8]) {
        if !self.is_on() {
            return;
        }
        let Some(spool) = self.inner.spool.get() else {
            return;
        };
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let host = self.hostname();
        let res = spool.push(|seq, out| {
            frame(
                &Message {
                    timestamp: &ts,
                    hostname: &host,
                    app,
                    stream,
                    seq,
                    msg: line,
                },
                out,
            )
        });
        match res {
            Ok(dropped) => {
                self.inner.spooled.fetch_add(1, Ordering::Relaxed);
                if dropped > 0 {
                    self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
                }
                self.inner.wake.notify_one();
            }
            Err(e) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                // Not through tracing from here (the sysd writer thread calls this too).
                eprintln!("log forwarding: {}", berth_config::error_chain(&e));
            }
        }
    }

    fn hostname(&self) -> String {
        let mut h = self
            .inner
            .hostname
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if h.1.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            h.0 = nix::unistd::gethostname()
                .ok()
                .and_then(|s| s.into_string().ok())
                .unwrap_or_default();
            h.1 = Some(Instant::now());
        }
        h.0.clone()
    }

    /// A `tracing` layer that forwards sysd's own log (without blocking the caller).
    pub fn layer(&self) -> SysdLayer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Severity, String)>(SYSD_QUEUE);
        let _ = self.inner.sysd_tx.set(tx);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("logfwd-sysd".into())
            .spawn(move || {
                for (sev, text) in rx {
                    me.line("sysd", Stream::Sysd(sev), text.as_bytes());
                }
            });
        if let Err(e) = spawned {
            eprintln!("log forwarding: no thread for sysd's own log: {e}");
        }
        SysdLayer { fwd: self.clone() }
    }

    /// Starts forwarding as `[logging]` says, and follows config changes: a new `forward`
    /// or `ca` reconnects; forwarding turned on later opens the spool then (`spool_max` is
    /// read when the spool opens, so a change to it takes a restart of sysd).
    pub fn start(&self, config: watch::Receiver<Config>, dir: PathBuf) {
        // On at once when configured: lines written before the sender first runs are kept.
        {
            let c = config.borrow();
            if c.logging.forward.is_some()
                && self.open_spool(&dir, c.logging.spool_max.bytes()).is_some()
            {
                self.inner.on.store(true, Ordering::Relaxed);
            }
        }
        tokio::spawn(sender(self.clone(), config, dir));
    }

    /// Makes the spool durable (at shutdown).
    pub fn sync(&self) {
        if let Some(s) = self.inner.spool.get() {
            s.sync();
        }
    }

    /// Lines spooled, lines sent, lines dropped not yet reported.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.inner.spooled.load(Ordering::Relaxed),
            self.inner.sent.load(Ordering::Relaxed),
            self.inner.dropped.load(Ordering::Relaxed),
        )
    }

    fn open_spool(&self, dir: &Path, max: u64) -> Option<Arc<Spool>> {
        if let Some(s) = self.inner.spool.get() {
            return Some(s.clone());
        }
        match Spool::open(dir, max) {
            Ok(s) => {
                let s = Arc::new(s);
                let _ = self.inner.spool.set(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::error!("log forwarding is off: {}", berth_config::error_chain(&e));
                None
            }
        }
    }

    fn report_drops(&self, last: &mut Option<Instant>) {
        if last.is_some_and(|t| t.elapsed() < DROP_LOG_EVERY) {
            return;
        }
        let n = self.inner.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            let total = self.inner.spool.get().map(|s| s.counts().dropped);
            tracing::warn!(
                "log forwarding: dropped {n} lines, the oldest (spool full, or sysd's log queue full); {} dropped from the spool since start",
                total.unwrap_or(0)
            );
            *last = Some(Instant::now());
        }
    }
}

/// The `tracing` layer of [`Forwarder::layer`].
pub struct SysdLayer {
    fwd: Forwarder,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SysdLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !self.fwd.is_on() {
            return;
        }
        let Some(tx) = self.fwd.inner.sysd_tx.get() else {
            return;
        };
        let sev = match *event.metadata().level() {
            tracing::Level::ERROR => Severity::Error,
            tracing::Level::WARN => Severity::Warning,
            tracing::Level::INFO => Severity::Info,
            _ => Severity::Debug,
        };
        let mut v = Text::default();
        event.record(&mut v);
        if tx.try_send((sev, v.0)).is_err() {
            self.fwd.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An event as one line: the message, then `key=value` for the other fields.
#[derive(Default)]
struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let sep = if self.0.is_empty() { "" } else { " " };
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{sep}{rest}");
        } else {
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }
}

/// A connection to the collector.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

/// Why a connection ended.
enum End {
    ConfigChanged,
    /// The config's sender is gone (sysd is stopping): the sender ends.
    Closed,
    Failed(String),
}

async fn connect(f: &berth_config::Forward, ca: Option<&str>) -> Result<Conn, String> {
    let addr = (f.host.as_str(), f.port);
    let timeout = Duration::from_secs(10);
    match f.proto {
        ForwardProto::Udp => {
            let peer = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", f.host))?
                .next()
                .ok_or_else(|| format!("{} has no address", f.host))?;
            let bind: std::net::SocketAddr = if peer.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
            s.connect(peer).await.map_err(|e| e.to_string())?;
            Ok(Conn::Udp(s))
        }
        proto => {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| "connection timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            if proto == ForwardProto::Tcp {
                let mut c = Conn::Tcp(tcp);
                if tokio::time::timeout(SETTLE, c.wait_closed()).await.is_ok() {
                    return Err("the connection was closed at once".into());
                }
                return Ok(c);
            }
            let ca = ca.ok_or("tcp+tls needs logging.ca")?;
            let cfg = berth_remote::tls::server_auth_client_config(ca)
                .map_err(|e| berth_config::error_chain(&e))?;
            let name = berth_remote::tls::server_name(&f.host)
                .map_err(|e| berth_config::error_chain(&e))?;
            let tls = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(Conn::Tls(Box::new(tls)))
        }
    }
}

impl Conn {
    /// Whether the collector closed the connection (it never sends anything).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        match self {
            Conn::Udp(_) => false,
            Conn::Tcp(s) => match s.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            },
            Conn::Tls(s) => matches!(s.read(&mut buf).now_or_never(), Some(Ok(0) | Err(_))),
        }
    }

    /// Waits until the collector closes the connection (never, for UDP).
    async fn wait_closed(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match self {
                Conn::Udp(_) => std::future::pending::<()>().await,
                Conn::Tcp(s) => {
                    if s.readable().await.is_err() {
                        return;
                    }
                    match s.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                Conn::Tls(s) => match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Sends `b`; commits in `spool` what was accepted. Err when the connection failed.
    async fn send(&mut self, b: &Batch, spool: &Spool, sent: &AtomicU64) -> Result<(), String> {
        match self {
            Conn::Tcp(s) => {
                let mut written = 0;
                let mut next = 0;
                while written < b.data.len() {
                    match s.write(&b.data[written..]).await {
                        Ok(0) => return Err("the connection accepts no more data".into()),
                        Ok(n) => written += n,
                        Err(e) => return Err(e.to_string()),
                    }
                    // Every frame whose last byte the kernel took.
                    let done = b.ends[next..]
                        .iter()
                        .take_while(|(e, _)| *e <= written)
                        .count();
                    if done > 0 {
                        next += done;
                        spool.commit(b.ends[next - 1].1);
                        sent.fetch_add(done as u64, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            Conn::Tls(s) => {
                s.write_all(&b.data).await.map_err(|e| e.to_string())?;
                s.flush().await.map_err(|e| e.to_string())?;
                if let Some(&(_, end)) = b.ends.last() {
                    spool.commit(end);
                    sent.fetch_add(b.ends.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            }
            Conn::Udp(s) => {
                let mut at = 0;
                for &(e, pos) in &b.ends {
                    let f = &b.data[at..e];
                    at = e;
                    // A datagram carries the message without the octet count.
                    let msg = format::parse_frame(f).map(|(m, _)| m).unwrap_or(f);
                    let msg = &msg[..msg.len().min(65_000)];
                    s.send(msg).await.map_err(|e| e.to_string())?;
                    spool.commit(pos);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }
}

type Target = (berth_config::Forward, Option<String>);

fn target(c: &Config) -> Option<Target> {
    c.logging.forward.clone().map(|f| (f, c.logging.ca.clone()))
}

async fn sender(fwd: Forwarder, mut config: watch::Receiver<Config>, dir: PathBuf) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    let mut last_drop_log = None;
    loop {
        let (t, max) = {
            let c = config.borrow_and_update();
            (target(&c), c.logging.spool_max.bytes())
        };
        let Some((f, ca)) = t else {
            if fwd.inner.on.swap(false, Ordering::Relaxed) {
                tracing::info!("log forwarding off");
            }
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        let Some(spool) = fwd.open_spool(&dir, max) else {
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        fwd.inner.on.store(true, Ordering::Relaxed);
        let conn = tokio::select! {
            c = connect(&f, ca.as_deref()) => c,
            r = config.changed() => match r {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if e != last_error {
                    tracing::warn!(
                        "log forwarding: cannot reach {f}: {e} (lines wait in the spool; retrying)"
                    );
                    last_error = e;
                }
                fwd.report_drops(&mut last_drop_log);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = config.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!("log forwarding to {f}");
        backoff = BACKOFF_MIN;
        last_error.clear();
        let end = run(&fwd, &spool, &mut conn, &mut config, &mut last_drop_log).await;
        spool.sync();
        if let (End::ConfigChanged | End::Closed, Conn::Tls(s)) = (&end, &mut conn) {
            // A clean end (close_notify) for a collector we leave on purpose.
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
        }
        match end {
            End::ConfigChanged => {}
            End::Closed => return,
            End::Failed(e) => {
                tracing::warn!("log forwarding: connection to {f} lost: {e}; reconnecting");
                last_error = e;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = config.changed() => if r.is_err() { return },
                }
            }
        }
    }
}

async fn run(
    fwd: &Forwarder,
    spool: &Arc<Spool>,
    conn: &mut Conn,
    config: &mut watch::Receiver<Config>,
    last_drop_log: &mut Option<Instant>,
) -> End {
    let mut synced = Instant::now();
    let now = target(&config.borrow());
    loop {
        let Ok(changed) = config.has_changed() else {
            return End::Closed;
        };
        if changed {
            let next = target(&config.borrow_and_update());
            if next != now {
                return End::ConfigChanged;
            }
        }
        fwd.report_drops(last_drop_log);
        if synced.elapsed() >= SYNC_EVERY {
            let s = spool.clone();
            let _ = tokio::task::spawn_blocking(move || s.sync()).await;
            synced = Instant::now();
        }
        if conn.closed() {
            return End::Failed("the collector closed the connection".into());
        }
        let s = spool.clone();
        let batch = match tokio::task::spawn_blocking(move || s.read(BATCH)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!("log forwarding: {}", berth_config::error_chain(&e));
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
            Err(_) => return End::Failed("the spool reader stopped".into()),
        };
        if batch.ends.is_empty() {
            tokio::select! {
                _ = fwd.inner.wake.notified() => {}
                _ = tokio::time::sleep(SYNC_EVERY) => {}
                r = config.changed() => {
                    if r.is_err() {
                        return End::Closed;
                    }
                    if target(&config.borrow_and_update()) != now {
                        return End::ConfigChanged;
                    }
                }
                _ = conn.wait_closed() => {
                    return End::Failed("the collector closed the connection".into());
                }
            }
            continue;
        }
        if let Err(e) = conn.send(&batch, spool, &fwd.inner.sent).await {
            return End::Failed(e);
        }
    }
}
