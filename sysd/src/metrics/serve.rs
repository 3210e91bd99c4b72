//! The metrics listener: HTTP/1.1 (hyper's server) on `[metrics] listen`, `GET /metrics`.
//!
//! - Off without `[metrics] listen`; a change of `listen` or `tls` restarts it. A port
//!   already taken is logged, and the listener waits for a config that changes something.
//! - Hostile clients: at most [`Options::max_connections`] connections at once (more are
//!   closed at once); the request head must arrive within [`Options::header_timeout`] and
//!   fit in 8 KiB (hyper's smallest buffer); a connection lives at most
//!   [`Options::connection_timeout`]; request bodies are never read; only `GET`/`HEAD`
//!   of `/metrics` are served.
//! - `tls = true`: the connection must first pass the remote API's mutual TLS: the node
//!   certificate and CA of `[api]`, the revocation list, and a role in the client
//!   certificate (any role may scrape). Without a running remote API every connection is
//!   refused, and the log says why.

use super::{encode, gather, Format, Sources};
use crate::remote::{RateLimit, RemoteApi};
use berth_config::Config;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Limits of the listener (tests shorten them).
#[derive(Debug, Clone)]
pub struct Options {
    pub max_connections: usize,
    /// Time to send the request head (and to finish the TLS handshake).
    pub header_timeout: Duration,
    /// Longest life of one connection (keep-alive included).
    pub connection_timeout: Duration,
    /// Refusals logged per minute.
    pub log_per_minute: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 16,
            header_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(120),
            log_per_minute: 10,
        }
    }
}

/// Run the listener for `[metrics]` of `config` and every change of it. `remote` is the
/// remote API, whose TLS `tls = true` uses.
pub async fn run(
    mut config: watch::Receiver<Config>,
    sources: Sources,
    remote: Option<Arc<RemoteApi>>,
    opts: Options,
) {
    loop {
        let cfg = config.borrow_and_update().metrics.clone();
        let changed = async {
            loop {
                if config.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if config.borrow().metrics != cfg {
                    return;
                }
            }
        };
        tokio::pin!(changed);
        tokio::select! {
            () = &mut changed => {}
            () = listen(&cfg, &sources, remote.clone(), &opts) => changed.await,
        }
        tracing::info!("metrics: [metrics] changed; restarting the listener");
    }
}

/// Serve `cfg` until the listener fails; never returns when metrics are off.
async fn listen(
    cfg: &berth_config::Metrics,
    sources: &Sources,
    remote: Option<Arc<RemoteApi>>,
    opts: &Options,
) {
    let Some(addr) = cfg.listen else {
        return std::future::pending().await;
    };
    let listener = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics: cannot listen on {addr}: {e}");
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        "metrics: serving http{}://{bound}/metrics",
        if cfg.tls { "s" } else { "" }
    );
    serve(listener, cfg.tls, sources.clone(), remote, opts.clone()).await;
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// Accept and serve connections on `listener` (tests call this with their own listener).
pub async fn serve(
    listener: TcpListener,
    tls: bool,
    sources: Sources,
    remote: Option<Arc<RemoteApi>>,
    opts: Options,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let log = Arc::new(Mutex::new(RateLimit::new(opts.log_per_minute)));
    let sources = Arc::new(sources);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                refused(&log, None, &format!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused(&log, Some(peer), "too many connections");
            continue;
        };
        let acceptor = if tls {
            match remote.as_ref().and_then(|r| r.acceptor()) {
                Some(a) => Some(a),
                None => {
                    refused(
                        &log,
                        Some(peer),
                        "metrics.tls is set but the remote API is not running (see osctl status)",
                    );
                    continue;
                }
            }
        } else {
            None
        };
        let (sources, opts, log) = (sources.clone(), opts.clone(), log.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = opts.connection_timeout;
            let served = async {
                match acceptor {
                    None => http(tcp, sources, &opts).await,
                    Some(a) => match handshake(a, tcp, &opts).await {
                        Ok(s) => http(s, sources, &opts).await,
                        Err(why) => refused(&log, Some(peer), &why),
                    },
                }
            };
            if tokio::time::timeout(deadline, served).await.is_err() {
                tracing::debug!("metrics: closed {peer} after {} s", deadline.as_secs());
            }
        });
    }
}

/// The TLS handshake with the remote API's settings, and a client certificate with a role.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    opts: &Options,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    let tls = match tokio::time::timeout(opts.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(berth_remote::tls::explain_server_handshake_error(&e)),
        Err(_) => {
            return Err(format!(
                "no TLS handshake within {} s",
                opts.header_timeout.as_secs()
            ))
        }
    };
    let id = berth_remote::tls::peer_identity(tls.get_ref().1)
        .map_err(|e| berth_config::error_chain(&e))?;
    if id.role.is_none() {
        return Err(format!(
            "client certificate serial {} names no role in its Subject O (admin, operator or reader)",
            id.serial
        ));
    }
    Ok(tls)
}

/// Serve HTTP/1.1 on one connection.
async fn http<S>(stream: S, sources: Arc<Sources>, opts: &Options)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let sources = sources.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&req, &sources)) }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(8192);
    if let Err(e) = b
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("metrics: connection ended: {e}");
    }
}

/// The answer to one request.
fn respond<B>(req: &Request<B>, sources: &Sources) -> Response<Full<Bytes>> {
    let plain = |code: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let format = Format::negotiate(
        req.headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let start = Instant::now();
    let body = encode(&gather(sources), format);
    tracing::trace!("metrics: scrape took {:?}", start.elapsed());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(format.content_type()),
    );
    r
}

/// Log (rate-limited) a refused connection.
fn refused(log: &Mutex<RateLimit>, peer: Option<SocketAddr>, why: &str) {
    let Some((peer, more)) = crate::remote::refusal(log, peer) else {
        return;
    };
    tracing::warn!("metrics: refused {peer}: {why}{more}");
}
