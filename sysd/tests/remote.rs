//! The remote API listener for real on 127.0.0.1: sysd's `Manager` served over TLS with
//! client certificates, driven by osctl's side of berth-remote (a real TLS client and the
//! `ManagerProxy`). Roles, denials that name the role, revocation at the handshake and in
//! a live connection, garbage before and after the handshake, allowed sources, the
//! handshake limit, a bad `[api]`, and the audit log.

use berth_api::{ManagerError, ManagerProxy, Role, RunRequest};
use berth_config::Config;
use berth_remote::pki::{self, Ca, CertKey};
use berth_remote::tls::{self, ServerTrust};
use berth_sysd::audit::Audit;
use berth_sysd::remote::{Options, RemoteApi};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86400);

/// A node with the remote API on 127.0.0.1 (a free port).
struct Node {
    config: watch::Sender<Config>,
    api: Arc<RemoteApi>,
    audit: Arc<Audit>,
    ca: Ca,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn api_config(ca: &Ca, with_key: bool) -> Config {
    let mut c = Config::default();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.ca = Some(ca.cert_pem().to_string());
    if with_key {
        c.api.ca_key = Some(ca.key_pem().to_string());
    }
    c
}

async fn node_with(config: Config, ca: Ca, opts: Options) -> Node {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(config);
    let audit = Audit::start(logs.path());
    let manager = berth_sysd::api::Manager {
        sysd_start: 3,
        ..Default::default()
    };
    let opts = Options {
        state_dir: state.path().to_path_buf(),
        ..opts
    };
    let api = berth_sysd::remote::start(rx, manager, audit.clone(), opts);
    let n = Node {
        config: tx,
        api,
        audit,
        ca,
        _dirs: (state, logs),
    };
    n.wait_for(|s| !s.state.is_empty()).await;
    n
}

async fn node() -> Node {
    let ca = Ca::generate("test CA", DAY).unwrap();
    node_with(api_config(&ca, true), ca, Options::default()).await
}

impl Node {
    /// Wait (up to 5 s) until the listener's state satisfies `f`.
    async fn wait_for(&self, f: impl Fn(&berth_api::ApiStatus) -> bool) -> berth_api::ApiStatus {
        for _ in 0..500 {
            let s = self.api.status();
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("listener state: {:?}", self.api.status());
    }

    fn addr(&self) -> SocketAddr {
        self.api.status().listen.parse().unwrap()
    }

    fn client(&self, cn: &str, role: Role) -> CertKey {
        self.ca.issue_client(cn, role, DAY).unwrap()
    }

    fn change(&self, f: impl FnOnce(&mut Config)) {
        self.config.send_modify(f);
    }

    /// The audit log so far (waits for `want` to appear, up to 5 s).
    async fn audit_has(&self, want: &str) -> String {
        let mut text = String::new();
        for _ in 0..500 {
            text = String::from_utf8(self.audit.tail(0).unwrap().0).unwrap();
            if text.contains(want) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{want:?} not in the audit log:\n{text}");
    }

    /// osctl's side: TLS with `client`, trusting the node by CA, then D-Bus.
    async fn connect(
        &self,
        client: &CertKey,
    ) -> Result<(zbus::Connection, ManagerProxy<'static>), String> {
        connect(
            self.addr(),
            &ServerTrust::Ca(self.ca.cert_pem().into()),
            client,
        )
        .await
    }
}

async fn connect(
    addr: SocketAddr,
    trust: &ServerTrust,
    client: &CertKey,
) -> Result<(zbus::Connection, ManagerProxy<'static>), String> {
    let cfg = tls::client_config(trust, client).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name(&addr.ip().to_string()).unwrap(), tcp)
        .await
        .map_err(|e| tls::explain_handshake_error(&e))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        zbus::connection::Builder::socket(berth_remote::transport::zbus_socket(tls))
            .p2p()
            .auth_mechanism(zbus::AuthMechanism::Anonymous)
            .build(),
    )
    .await
    .map_err(|_| "D-Bus handshake timed out".to_string())?
    .map_err(|e| match berth_remote::transport::io_error(&e) {
        Some(io) => tls::explain_handshake_error(io),
        None => e.to_string(),
    })?;
    let m = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
    Ok((conn, m))
}

fn denied<T: std::fmt::Debug>(r: Result<T, ManagerError>) -> String {
    match r {
        Err(ManagerError::Denied(m)) => m,
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[tokio::test]
async fn each_role_gets_what_the_table_gives_it_and_every_call_is_audited() {
    let n = node().await;
    let s = n.api.status();
    assert_eq!(s.state, "listening", "{s:?}");
    assert_eq!(s.cert_source, "ca");
    assert!(s.can_issue && s.fingerprint.len() == 64, "{s:?}");

    // admin: everything, including minting a client file.
    let (_c, admin) = n.connect(&n.client("root", Role::Admin)).await.unwrap();
    assert_eq!(admin.status().await.unwrap().sysd_starts, 3);
    let a = admin.api_status().await.unwrap();
    assert_eq!((a.state.as_str(), a.connections), ("listening", 1));
    let file = admin.pki_issue("reader", 3600, "ro-bot").await.unwrap();
    let f = berth_remote::contexts::ClientFile::from_toml(&file).unwrap();
    let ctx = &f.contexts["ro-bot"];
    assert_eq!(
        ctx.endpoints,
        [n.addr().to_string()],
        "the address it reached"
    );
    let id = pki::identity_pem(&ctx.cert).unwrap();
    assert_eq!(
        (id.common_name.as_str(), id.role),
        ("ro-bot", Some(Role::Reader))
    );
    assert!((3500..=3700).contains(&(id.not_after - unix_now())));
    let e = admin.pki_issue("root", 60, "x").await.unwrap_err();
    assert!(
        matches!(&e, ManagerError::Invalid(m) if m.contains("unknown role")),
        "{e:?}"
    );

    // reader (with the issued file): reads, and is refused the rest with the role named.
    let issued = CertKey {
        cert_pem: ctx.cert.clone(),
        key_pem: ctx.key.clone(),
    };
    let (_c, reader) = n.connect(&issued).await.unwrap();
    assert!(reader.status().await.is_ok());
    assert!(
        matches!(reader.ps().await, Err(ManagerError::Failed(_))),
        "allowed"
    );
    let exec = reader.exec("admin", &["id".into()], b"").await;
    assert_eq!(denied(exec), "role reader cannot call Exec: it needs admin");
    let run = reader.run(&RunRequest::default()).await;
    assert_eq!(
        denied(run),
        "role reader cannot call Run: it needs operator"
    );
    let apply = reader.config_apply("", 0).await;
    assert_eq!(
        denied(apply),
        "role reader cannot call ConfigApply: it needs admin"
    );
    let update = reader.update_apply("", false, false).await;
    assert_eq!(
        denied(update),
        "role reader cannot call UpdateApply: it needs operator"
    );
    let logs = reader.logs(berth_api::AUDIT_LOG_NAME, 0).await;
    assert_eq!(
        denied(logs),
        "role reader cannot call Logs: it needs operator"
    );

    // operator: logs (the audit log too), not exec.
    let (_c, op) = n.connect(&n.client("ops", Role::Operator)).await.unwrap();
    let exec = op.exec("admin", &["id".into()], b"").await;
    assert_eq!(
        denied(exec),
        "role operator cannot call Exec: it needs admin"
    );
    n.audit_has("method=Exec result=Denied").await;
    let chunk = op.logs(berth_api::AUDIT_LOG_NAME, 0).await.unwrap();
    let text = String::from_utf8(chunk.data).unwrap();
    assert!(
        text.contains(&format!(
            "cn=\"ro-bot\" serial={} role=reader method=Exec result=Denied",
            id.serial
        )),
        "{text}"
    );
    assert!(text.contains("cn=\"root\""), "{text}");
    assert!(
        text.contains("role=admin method=PkiIssue result=ok"),
        "{text}"
    );
    assert!(
        text.contains("role=admin method=PkiIssue result=Invalid"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "issued client certificate serial={} cn=\"ro-bot\" role=reader",
            id.serial
        )),
        "{text}"
    );
    assert!(text.contains("peer=127.0.0.1:"), "{text}");
    n.audit_has("method=Logs result=ok").await;
    let more = op
        .logs_from(berth_api::AUDIT_LOG_NAME, chunk.next)
        .await
        .unwrap();
    assert!(String::from_utf8(more.data)
        .unwrap()
        .contains("method=Logs result=ok"));
}

#[tokio::test]
async fn a_self_signed_node_is_reached_by_its_pin_and_cannot_issue() {
    let ca = Ca::generate("test CA", DAY).unwrap();
    let n = node_with(api_config(&ca, false), ca, Options::default()).await;
    let s = n.api.status();
    assert_eq!(
        (s.state.as_str(), s.cert_source.as_str(), s.can_issue),
        ("listening", "self-signed", false)
    );
    // By CA: the node's certificate is not the CA's.
    let err = n.connect(&n.client("root", Role::Admin)).await.unwrap_err();
    assert!(err.contains("not signed by the CA"), "{err}");
    let pin = ServerTrust::Fingerprint(s.fingerprint.clone());
    let (_c, admin) = connect(n.addr(), &pin, &n.client("root", Role::Admin))
        .await
        .unwrap();
    let e = admin.pki_issue("reader", 60, "x").await.unwrap_err();
    assert!(
        matches!(&e, ManagerError::Invalid(m) if m.contains("no [api] ca_key")),
        "{e:?}"
    );
    // The key is kept: a restart of the listener (a new cert_ttl) keeps the pin.
    n.change(|c| c.api.cert_ttl = berth_config::Duration::secs(7200));
    let s2 = n
        .wait_for(|s| s.state == "listening" && s.cert_not_after <= unix_now() + 7300)
        .await;
    assert_eq!(
        s2.fingerprint, s.fingerprint,
        "the key survives a new certificate"
    );
    let key = std::fs::metadata(n._dirs.0.path().join("node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // The old connection is refused at its next call, and closed.
    let e = admin.status().await.unwrap_err();
    assert!(
        matches!(&e, ManagerError::Denied(m) if m.contains("settings changed")),
        "{e:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(admin.status().await.is_err(), "closed");
    let (_c, again) = connect(n.addr(), &pin, &n.client("root", Role::Admin))
        .await
        .unwrap();
    assert!(again.status().await.is_ok());
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn revocation_refuses_the_handshake_and_cuts_a_live_connection_at_its_next_call() {
    let n = node().await;
    let old = n.client("old", Role::Admin);
    let old_serial = pki::identity_pem(&old.cert_pem).unwrap().serial;
    let live = n.client("live", Role::Operator);
    let live_serial = pki::identity_pem(&live.cert_pem).unwrap().serial;
    // Revoked as written by a person: upper case with colons.
    let written = old_serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    n.change(|c| c.api.revoked_serials = vec![written.parse().unwrap()]);
    let err = n.connect(&old).await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    // (berth-remote's verifier does not pass the serial on to the refusal.)
    n.audit_has("refused=\"client certificate is revoked").await;

    let (_c, m) = n.connect(&live).await.unwrap();
    assert!(m
        .ps()
        .await
        .is_err_and(|e| matches!(e, ManagerError::Failed(_))));
    n.change(|c| c.api.revoked_serials.push(live_serial.parse().unwrap()));
    let e = denied(m.ps().await);
    assert_eq!(
        e,
        format!("the client certificate (serial {live_serial}) has been revoked")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !matches!(m.ps().await, Err(ManagerError::Denied(_)) | Ok(_)),
        "the connection is closed"
    );
    n.audit_has(&format!(
        "serial={live_serial} role=operator method=Ps result=Denied"
    ))
    .await;
    // Everyone else is still served.
    let (_c, other) = n.connect(&n.client("other", Role::Reader)).await.unwrap();
    assert!(other.status().await.is_ok());
}

#[tokio::test]
async fn garbage_before_and_after_the_handshake_leaves_the_listener_serving() {
    let n = node().await;
    // Before: plain bytes, then a plain-text D-Bus hello.
    for junk in [
        &b"\x00\xff garbage \x16\x03\x01\x00"[..],
        b"\0AUTH ANONYMOUS\r\nBEGIN\r\n",
    ] {
        let mut s = TcpStream::connect(n.addr()).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(r.is_ok(), "the node must answer or close, not hang");
    }
    n.audit_has("refused=").await;
    // After: a real handshake, then bytes that are not D-Bus.
    let client = n.client("fuzzy", Role::Admin);
    let cfg = tls::client_config(&ServerTrust::Ca(n.ca.cert_pem().into()), &client).unwrap();
    let tcp = TcpStream::connect(n.addr()).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"\0AUTH BOGUS\r\n\xff\xfe\x00garbage\r\nBEGIN\r\nl\x01\x00\x01")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut closed = false;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // REJECTED / ERROR lines; keep sending rubbish.
                let _ = tls.write_all(b"nonsense\r\n").await;
            }
            Err(_) => break,
        }
    }
    assert!(closed, "the node ends a peer that does not speak D-Bus");
    drop(tls);
    // And the next good client is served.
    let (_c, m) = n.connect(&n.client("good", Role::Reader)).await.unwrap();
    assert!(m.status().await.is_ok());
    assert_eq!(n.api.status().state, "listening");
}

#[tokio::test]
async fn a_source_outside_allowed_sources_is_dropped_before_the_handshake() {
    let n = node().await;
    n.change(|c| c.api.allowed_sources = vec!["10.0.0.0/8".parse().unwrap()]);
    let err = n.connect(&n.client("root", Role::Admin)).await.unwrap_err();
    assert!(!err.is_empty());
    n.audit_has("refused=\"not in [api] allowed_sources\"")
        .await;
    // Live: allowed again without a restart.
    n.change(|c| c.api.allowed_sources = vec!["127.0.0.0/8".parse().unwrap()]);
    let (_c, m) = n.connect(&n.client("root", Role::Admin)).await.unwrap();
    assert!(m.status().await.is_ok());
    // And a connected client whose network is taken off the list is cut.
    n.change(|c| c.api.allowed_sources = vec!["10.0.0.0/8".parse().unwrap()]);
    let e = denied(m.status().await);
    assert!(e.contains("no longer in [api] allowed_sources"), "{e}");
}

#[tokio::test]
async fn silent_connections_time_out_and_cannot_crowd_out_the_handshake() {
    let ca = Ca::generate("test CA", DAY).unwrap();
    let opts = Options {
        handshake_timeout: Duration::from_millis(700),
        max_handshaking: 2,
        ..Options::default()
    };
    let n = node_with(api_config(&ca, true), ca, opts).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(n.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third in the handshake is closed at once.
    let err = n.connect(&n.client("root", Role::Admin)).await.unwrap_err();
    assert!(!err.is_empty());
    n.audit_has("too many connections in the handshake").await;
    // The silent ones are closed after the timeout, and then there is room.
    for s in &mut silent {
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    }
    n.audit_has("no TLS handshake within 0 s").await;
    let (_c, m) = n.connect(&n.client("root", Role::Admin)).await.unwrap();
    assert!(m.status().await.is_ok());
}

#[tokio::test]
async fn a_bad_api_section_is_reported_and_a_good_one_starts_it() {
    let ca = Ca::generate("test CA", DAY).unwrap();
    let mut bad = api_config(&ca, false);
    bad.api.ca = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    let n = node_with(bad, ca, Options::default()).await;
    let s = n.wait_for(|s| s.state == "failed").await;
    assert!(
        s.error.starts_with("the remote API is not running: "),
        "{s:?}"
    );
    assert_eq!(
        n.api.problem().as_deref(),
        Some(format!("api: {}", s.error).as_str())
    );
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let ca_pem = n.ca.cert_pem().to_string();
    n.change(|c| {
        c.api.ca = Some(ca_pem);
        c.api.listen = port;
    });
    let s = n
        .wait_for(|s| s.state == "failed" && s.error.contains("cannot listen"))
        .await;
    assert!(s.error.contains(&port.to_string()), "{s:?}");
    // Fixed: listening.
    n.change(|c| c.api.listen = "127.0.0.1:0".parse().unwrap());
    n.wait_for(|s| s.state == "listening").await;
    assert_eq!(n.api.problem(), None);
    // Off.
    n.change(|c| c.api.ca = None);
    n.wait_for(|s| s.state == "off").await;
}

#[test]
fn renewal_is_due_with_a_third_of_the_lifetime_left() {
    use berth_sysd::remote::renewal_due;
    assert!(!renewal_due(0, 90, 59));
    assert!(renewal_due(0, 90, 61));
    assert!(renewal_due(0, 90, 100), "expired");
}

#[test]
fn refusals_are_rate_limited_and_counted() {
    let mut r = berth_sysd::remote::RateLimit::new(3);
    let t = std::time::Instant::now();
    let got: Vec<_> = (0..10).map(|_| r.allow(t)).collect();
    assert_eq!(got.iter().filter(|(ok, _)| *ok).count(), 3);
    assert_eq!(
        r.allow(t + Duration::from_secs(61)),
        (true, 7),
        "the skipped ones are counted"
    );
    assert_eq!(r.allow(t + Duration::from_secs(62)), (true, 0));
}

#[tokio::test]
async fn a_certificate_without_a_role_or_out_of_date_is_refused_and_logged() {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    // A CA of our own making, so that it can sign what berth-remote would not.
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "odd CA");
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = p.self_signed(&ca_key).unwrap();
    let ca = Ca::from_pem(&ca_cert.pem(), &ca_key.serialize_pem()).unwrap();
    let n = node_with(api_config(&ca, true), ca, Options::default()).await;
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "intruder");
    p.distinguished_name.push(DnType::OrganizationName, "root");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let no_role = CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let err = n.connect(&no_role).await.unwrap_err();
    assert!(!err.is_empty());
    let log = n.audit_has("names no role").await;
    assert!(log.contains("(CN \\\"intruder\\\")"), "{log}");
    // Expired: refused in the handshake, with the time.
    let now = unix_now();
    let old = pki::testing::client_with_validity(&n.ca, "old", Role::Admin, now - 7200, now - 3600)
        .unwrap();
    let err = n.connect(&old).await.unwrap_err();
    assert!(err.contains("expired"), "{err}");
    n.audit_has("refused=\"client certificate expired").await;
    // Neither took the listener down.
    let (_c, m) = n.connect(&n.client("fine", Role::Reader)).await.unwrap();
    assert!(m.status().await.is_ok());
}

/// osctl's side, naming the node `name` (its certificate must carry it).
async fn connect_as(addr: SocketAddr, name: &str, ca: &Ca, client: &CertKey) -> Result<(), String> {
    let cfg = tls::client_config(&ServerTrust::Ca(ca.cert_pem().into()), client)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(tls::server_name(name).unwrap(), tcp)
        .await
        .map(drop)
        .map_err(|e| tls::explain_handshake_error(&e))
}

#[tokio::test]
async fn the_node_certificate_follows_the_hostname_and_is_renewed_with_the_same_key() {
    let ca = Ca::generate("test CA", DAY).unwrap();
    let opts = Options {
        renew_check: Duration::from_millis(200),
        ..Options::default()
    };
    let n = node_with(api_config(&ca, true), ca, opts).await;
    let first = n.api.status();
    let client = n.client("root", Role::Admin);
    connect_as(n.addr(), "berth", &n.ca, &client).await.unwrap();
    let err = connect_as(n.addr(), "edge-7.example.com", &n.ca, &client)
        .await
        .unwrap_err();
    assert!(err.contains("not valid for the address"), "{err}");
    // A new hostname (not a listener restart): the next check makes a certificate for it
    // (a second later, so that its end of validity differs).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    n.change(|c| c.host.hostname = Some("edge-7.example.com".into()));
    let renewed = n
        .wait_for(|s| s.cert_not_after != first.cert_not_after)
        .await;
    assert_eq!(renewed.fingerprint, first.fingerprint, "same key");
    connect_as(n.addr(), "edge-7.example.com", &n.ca, &client)
        .await
        .unwrap();
    // A short lifetime is renewed before it runs out (a third left), again with the key.
    n.change(|c| c.api.cert_ttl = berth_config::Duration::secs(2));
    let short = n
        .wait_for(|s| s.state == "listening" && s.cert_not_after <= unix_now() + 3)
        .await;
    let again = n
        .wait_for(|s| s.cert_not_after > short.cert_not_after)
        .await;
    assert_eq!(again.fingerprint, first.fingerprint);
    assert_eq!(again.cert_source, "ca");
    let (_c, m) = n.connect(&client).await.unwrap();
    assert!(m.status().await.is_ok());
}
