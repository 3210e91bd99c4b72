//! The TLS layer and the zbus transport for real on 127.0.0.1: a node serving a tiny
//! D-Bus interface peer-to-peer over TLS, and clients that must be let in or refused
//! during the handshake, each with the sentence both sides read.

use berth_api::Role;
use berth_remote::pki::{self, testing, Ca, CertKey};
use berth_remote::tls::{self, ServerTrust, Side, TlsError};
use berth_remote::transport;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zbus::AuthMechanism;

const DAY: Duration = Duration::from_secs(86400);

struct Echo {
    peer: String,
}

#[zbus::interface(name = "org.berth.Test1")]
impl Echo {
    fn hello(&self, name: &str) -> String {
        format!("hello {name}, you are {}", self.peer)
    }
}

/// A running node: its address, its CA, its revocation list, and what it says about each
/// refused handshake.
struct Node {
    addr: std::net::SocketAddr,
    revoked: Arc<Mutex<HashSet<String>>>,
    refusals: mpsc::UnboundedReceiver<String>,
}

async fn node(ca: &Ca, cert: &CertKey) -> Node {
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let r = revoked.clone();
    let cfg = tls::server_config(
        ca.cert_pem(),
        cert,
        Arc::new(move |serial: &str| r.lock().unwrap().contains(serial)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, refusals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = tx.send(tls::explain_server_handshake_error(&e));
                        return;
                    }
                };
                let id = tls::peer_identity(tls.get_ref().1).unwrap();
                let peer = format!(
                    "{} ({})",
                    id.common_name,
                    id.role.map(|r| r.as_str()).unwrap_or("no role")
                );
                let conn = zbus::connection::Builder::socket(transport::zbus_socket(tls))
                    .server(zbus::Guid::generate())
                    .unwrap()
                    .p2p()
                    .auth_mechanism(AuthMechanism::Anonymous)
                    .serve_at("/test", Echo { peer })
                    .unwrap()
                    .build()
                    .await;
                if let Ok(conn) = conn {
                    // Serve for the rest of the test.
                    std::future::pending::<()>().await;
                    drop(conn);
                }
            });
        }
    });
    Node {
        addr,
        revoked,
        refusals,
    }
}

fn node_cert(ca: &Ca) -> CertKey {
    ca.issue_server(
        &["node.test".into()],
        &["127.0.0.1".parse().unwrap()],
        DAY,
        None,
    )
    .unwrap()
}

/// Connect with `cfg` to `addr` as `name`, call Hello; the answer, or the client's
/// sentence for the failure.
async fn call(
    addr: std::net::SocketAddr,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name(name).unwrap(), tcp)
        .await
        .map_err(|e| tls::explain_handshake_error(&e))?;
    let explain = |e: zbus::Error| match transport::io_error(&e) {
        Some(io) => tls::explain_handshake_error(io),
        None => format!("zbus: {e}"),
    };
    let conn = zbus::connection::Builder::socket(transport::zbus_socket(tls))
        .p2p()
        .auth_mechanism(AuthMechanism::Anonymous)
        .build()
        .await
        .map_err(explain)?;
    let reply = conn
        .call_method(
            None::<&str>,
            "/test",
            Some("org.berth.Test1"),
            "Hello",
            &("osctl",),
        )
        .await
        .map_err(explain)?;
    reply.body().deserialize::<String>().map_err(explain)
}

fn client(ca: &Ca, c: &CertKey) -> Arc<rustls::ClientConfig> {
    tls::client_config(&ServerTrust::Ca(ca.cert_pem().into()), c).unwrap()
}

async fn refusal(n: &mut Node) -> String {
    tokio::time::timeout(Duration::from_secs(10), n.refusals.recv())
        .await
        .expect("the node logs the refusal")
        .unwrap()
}

#[tokio::test]
async fn good_client_calls_a_method() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let n = node(&ca, &node_cert(&ca)).await;
    let alice = ca.issue_client("alice", Role::Operator, DAY).unwrap();
    let r = call(n.addr, "127.0.0.1", client(&ca, &alice)).await;
    assert_eq!(r.unwrap(), "hello osctl, you are alice (operator)");
    // By DNS name too.
    let r = call(n.addr, "node.test", client(&ca, &alice)).await;
    assert!(r.is_ok(), "{r:?}");
    // A CA loaded back from its PEM issues certificates the node accepts.
    let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let bob = again.issue_client("bob", Role::Reader, DAY).unwrap();
    let r = call(n.addr, "127.0.0.1", client(&ca, &bob)).await;
    assert_eq!(r.unwrap(), "hello osctl, you are bob (reader)");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let other = Ca::generate("ca", DAY).unwrap();
    let mallory = other.issue_client("mallory", Role::Admin, DAY).unwrap();
    let e = call(n.addr, "127.0.0.1", client(&ca, &mallory))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::RefusedUnknownCa.to_string());
    assert_eq!(
        refusal(&mut n).await,
        "the client certificate is not signed by this node's CA"
    );
    // A foreign CA with another name: the node finds no issuer at all.
    let other = Ca::generate("elsewhere", DAY).unwrap();
    let mallory = other.issue_client("mallory", Role::Admin, DAY).unwrap();
    let e = call(n.addr, "127.0.0.1", client(&ca, &mallory))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::RefusedUnknownCa.to_string());
    assert_eq!(
        refusal(&mut n).await,
        "the client certificate is not signed by this node's CA"
    );
}

#[tokio::test]
async fn expired_client_is_refused_with_the_time() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old =
        testing::client_with_validity(&ca, "old", Role::Admin, now - 7200, now - 3600).unwrap();
    let e = call(n.addr, "127.0.0.1", client(&ca, &old))
        .await
        .unwrap_err();
    assert!(
        e.contains("expired") && e.contains("osctl pki issue"),
        "{e}"
    );
    let at = pki::format_time(pki::identity_pem(&old.cert_pem).unwrap().not_after);
    assert_eq!(
        refusal(&mut n).await,
        format!("client certificate expired at {at}")
    );
    // Not valid yet.
    let future =
        testing::client_with_validity(&ca, "f", Role::Admin, now + 3600, now + 7200).unwrap();
    assert!(call(n.addr, "127.0.0.1", client(&ca, &future))
        .await
        .is_err());
    assert!(refusal(&mut n)
        .await
        .starts_with("client certificate is not valid yet (from "));
}

#[tokio::test]
async fn revocation_is_live() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let c = ca.issue_client("carol", Role::Admin, DAY).unwrap();
    assert!(call(n.addr, "127.0.0.1", client(&ca, &c)).await.is_ok());
    let serial = pki::identity_pem(&c.cert_pem).unwrap().serial;
    n.revoked.lock().unwrap().insert(serial);
    let e = call(n.addr, "127.0.0.1", client(&ca, &c))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::RefusedRevoked.to_string());
    assert_eq!(refusal(&mut n).await, "client certificate is revoked");
    // Another certificate of the same CA is not affected.
    let d = ca.issue_client("dave", Role::Admin, DAY).unwrap();
    assert!(call(n.addr, "127.0.0.1", client(&ca, &d)).await.is_ok());
}

#[tokio::test]
async fn certificate_without_client_auth_is_refused() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let node_ck = node_cert(&ca);
    let mut n = node(&ca, &node_ck).await;
    // The node's own certificate (serverAuth only) used as a client certificate.
    let e = call(n.addr, "127.0.0.1", client(&ca, &node_ck))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::RefusedNoClientAuth.to_string());
    assert_eq!(refusal(&mut n).await, TlsError::NoClientAuth.to_string());
    // No extended key usage at all: WebPKI would take it, Berth does not.
    let bare = testing::client_without_eku(&ca, "bare", Role::Admin).unwrap();
    let e = call(n.addr, "127.0.0.1", client(&ca, &bare))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::RefusedNoClientAuth.to_string());
    assert_eq!(refusal(&mut n).await, TlsError::NoClientAuth.to_string());
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    r.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    r
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots(&ca))
    .with_no_client_auth();
    let e = call(n.addr, "127.0.0.1", Arc::new(cfg)).await.unwrap_err();
    assert_eq!(e, TlsError::RefusedNoCertificate.to_string());
    assert_eq!(
        refusal(&mut n).await,
        TlsError::NoClientCertificate.to_string()
    );
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let c = ca.issue_client("old-tls", Role::Admin, DAY).unwrap();
    use rustls::pki_types::pem::PemObject;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots(&ca))
    .with_client_auth_cert(
        vec![rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let e = call(n.addr, "127.0.0.1", Arc::new(cfg)).await.unwrap_err();
    assert_eq!(e, TlsError::RefusedProtocol.to_string());
    assert_eq!(refusal(&mut n).await, TlsError::ProtocolVersion.to_string());
}

#[tokio::test]
async fn plain_tcp_is_refused_and_the_node_keeps_serving() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let mut n = node(&ca, &node_cert(&ca)).await;
    let mut tcp = TcpStream::connect(n.addr).await.unwrap();
    tcp.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n")
        .await
        .unwrap();
    assert_eq!(refusal(&mut n).await, TlsError::NotTls.to_string());
    drop(tcp);
    // A client that hangs up mid-handshake.
    let tcp = TcpStream::connect(n.addr).await.unwrap();
    drop(tcp);
    assert_eq!(refusal(&mut n).await, TlsError::Closed.to_string());
    let c = ca.issue_client("after", Role::Reader, DAY).unwrap();
    assert!(call(n.addr, "127.0.0.1", client(&ca, &c)).await.is_ok());
}

#[tokio::test]
async fn node_checked_by_ca_and_name() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let n = node(&ca, &node_cert(&ca)).await;
    let c = ca.issue_client("eve", Role::Admin, DAY).unwrap();
    let e = call(n.addr, "other.test", client(&ca, &c))
        .await
        .unwrap_err();
    assert_eq!(e, TlsError::NodeNameMismatch.to_string());
    // The client trusts another CA than the node's.
    let other = Ca::generate("other", DAY).unwrap();
    let cfg = tls::client_config(&ServerTrust::Ca(other.cert_pem().into()), &c).unwrap();
    let e = call(n.addr, "127.0.0.1", cfg).await.unwrap_err();
    assert_eq!(e, TlsError::NodeUnknownCa.to_string());
}

#[tokio::test]
async fn self_signed_node_by_pin() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let me = pki::self_signed_server(&["node.test".into()], &[], DAY, None).unwrap();
    let n = node(&ca, &me).await;
    let c = ca.issue_client("frank", Role::Admin, DAY).unwrap();
    let pin = pki::spki_sha256(&me.cert_pem).unwrap();
    // The pin ignores names: any address reaches the node.
    let cfg = tls::client_config(&ServerTrust::Fingerprint(pin.to_uppercase()), &c).unwrap();
    let r = call(n.addr, "127.0.0.1", cfg).await;
    assert_eq!(r.unwrap(), "hello osctl, you are frank (admin)");
    let wrong = "0".repeat(64);
    let cfg = tls::client_config(&ServerTrust::Fingerprint(wrong.clone()), &c).unwrap();
    let e = call(n.addr, "127.0.0.1", cfg).await.unwrap_err();
    assert_eq!(
        e,
        TlsError::PinMismatch {
            expected: wrong,
            got: pin
        }
        .to_string()
    );
    assert!(matches!(
        tls::client_config(&ServerTrust::Fingerprint("abc".into()), &c),
        Err(TlsError::BadFingerprint(_))
    ));
}

#[test]
fn non_tls_io_errors_are_explained() {
    let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    assert!(matches!(
        tls::handshake_error(&e, Side::Client),
        TlsError::Closed
    ));
    let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(tls::explain_handshake_error(&e).starts_with("connection failed"));
}
