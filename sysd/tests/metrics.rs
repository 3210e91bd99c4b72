//! The metrics listener for real on 127.0.0.1: what it serves, and what it does with
//! hostile clients (silent ones, oversized heads, too many connections, wrong methods),
//! and `tls = true` behind the remote API's mutual TLS (a reader scrapes; no certificate,
//! no role, or no running remote API: refused).

use berth_api::Role;
use berth_config::Config;
use berth_remote::pki::{Ca, CertKey};
use berth_remote::tls::{self, ServerTrust};
use berth_sysd::audit::Audit;
use berth_sysd::metrics::serve::{serve, Options};
use berth_sysd::metrics::Sources;
use berth_sysd::remote::RemoteApi;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86400);

fn opts() -> Options {
    Options {
        max_connections: 3,
        header_timeout: Duration::from_millis(500),
        connection_timeout: Duration::from_secs(5),
        log_per_minute: 100,
    }
}

async fn listener(tls: bool, remote: Option<Arc<RemoteApi>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, tls, Sources::default(), remote, opts()));
    addr
}

/// Send `req`, read until the server closes (at most 10 s): the whole answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> String {
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn request(addr: SocketAddr, req: &str) -> String {
    exchange(TcpStream::connect(addr).await.unwrap(), req.as_bytes()).await
}

fn get(path: &str, accept: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn serves_both_formats_and_refuses_other_paths_and_methods() {
    let addr = listener(false, None).await;
    let r = request(addr, &get("/metrics", "*/*")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
    assert!(
        r.contains("berth_node_cpu_seconds_total{mode=\"idle\"}"),
        "{r}"
    );
    assert!(!r.contains("# EOF"));
    let r = request(
        addr,
        &get(
            "/metrics?x=1",
            "application/openmetrics-text; version=1.0.0",
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("content-type: application/openmetrics-text"),
        "{r}"
    );
    assert!(r.ends_with("# EOF\n"), "{r}");
    let r = request(addr, &get("/", "*/*")).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = request(
        addr,
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("allow: GET, HEAD"), "{r}");
    let r = request(
        addr,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 200") && !r.contains("berth_node"),
        "{r}"
    );
    // Not HTTP at all.
    let r = request(addr, "\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(!r.contains("berth_"), "{r}");
    // Two requests on one keep-alive connection.
    let two = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n{}",
        get("/metrics", "*/*")
    );
    let r = request(addr, &two).await;
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
}

#[tokio::test]
async fn hostile_clients_are_cut_off() {
    let addr = listener(false, None).await;
    // A request head over 8 KiB: refused without being buffered whole.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = request(addr, &big).await;
    assert!(!r.contains("berth_"), "{}", &r[..r.len().min(300)]);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // A silent client is closed after the header timeout.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A client dripping its head one byte at a time is cut off too.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).contains("berth_"));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // More connections than allowed: the extra ones are closed at once, and once the
    // others go, scrapes work again.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = request(addr, &get("/metrics", "*/*")).await;
    assert!(r.is_empty(), "{r}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = request(addr, &get("/metrics", "*/*")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// A remote API on 127.0.0.1 (as in tests/remote.rs), for its TLS settings.
struct Api {
    _config: watch::Sender<Config>,
    api: Arc<RemoteApi>,
    ca: Ca,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn remote_api() -> Api {
    let ca = Ca::generate("test CA", DAY).unwrap();
    let mut c = Config::default();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.ca = Some(ca.cert_pem().to_string());
    c.api.ca_key = Some(ca.key_pem().to_string());
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(c);
    let audit = Audit::start(logs.path());
    let opts = berth_sysd::remote::Options {
        state_dir: state.path().to_path_buf(),
        ..Default::default()
    };
    let api = berth_sysd::remote::start(rx, Default::default(), audit, opts);
    for _ in 0..500 {
        if api.acceptor().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(api.acceptor().is_some(), "{:?}", api.status());
    Api {
        _config: tx,
        api,
        ca,
        _dirs: (state, logs),
    }
}

async fn tls_get(addr: SocketAddr, ca: &Ca, client: &CertKey) -> Result<String, String> {
    let cfg = tls::client_config(&ServerTrust::Ca(ca.cert_pem().into()), client)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| tls::explain_handshake_error(&e))?;
    Ok(exchange(s, get("/metrics", "*/*").as_bytes()).await)
}

#[tokio::test]
async fn tls_takes_the_remote_apis_certificates_and_any_role() {
    let api = remote_api().await;
    let addr = listener(true, Some(api.api.clone())).await;
    let reader = api.ca.issue_client("scraper", Role::Reader, DAY).unwrap();
    let r = tls_get(addr, &api.ca, &reader).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("berth_node_uptime_seconds"), "{r}");
    // Plain HTTP on the TLS port gets nothing.
    let r = request(addr, &get("/metrics", "*/*")).await;
    assert!(!r.contains("berth_"), "{r}");
    // A client certificate from another CA: refused in the handshake.
    let other = Ca::generate("other CA", DAY).unwrap();
    let foreign = other.issue_client("intruder", Role::Admin, DAY).unwrap();
    let r = tls_get(addr, &api.ca, &foreign).await;
    assert!(!r.as_deref().unwrap_or("").contains("berth_"), "{r:?}");
}

#[tokio::test]
async fn tls_without_a_running_remote_api_refuses_every_connection() {
    let addr = listener(true, None).await;
    let r = request(addr, &get("/metrics", "*/*")).await;
    assert!(r.is_empty(), "{r}");
}
