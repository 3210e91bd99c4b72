//! osctl over mutual TLS against an in-process node: a TLS listener on 127.0.0.1 serving a
//! small `org.berth.Manager1` (status, a ps its caller's role may not call) the way sysd
//! does, driven through the real osctl binary with a client file.

use berth_api::{ApiStatus, ManagerError, Role, Status};
use berth_remote::pki::{self, testing, Ca, CertKey};
use berth_remote::{tls, transport};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86400);

struct Node {
    ca: (String, String),
}

#[zbus::interface(name = "org.berth.Manager1")]
impl Node {
    fn status(&self) -> Status {
        Status {
            os: "Berth test".into(),
            hostname: "tls-node".into(),
            ..Default::default()
        }
    }

    fn api_status(&self) -> ApiStatus {
        ApiStatus {
            state: "listening".into(),
            listen: "127.0.0.1:7443".into(),
            fingerprint: "ab".repeat(32),
            cert_source: "ca".into(),
            ..Default::default()
        }
    }

    /// As sysd: a client file with one context called `name`, no endpoint.
    fn pki_issue(&self, role: &str, ttl_secs: u64, name: &str) -> Result<String, ManagerError> {
        let ca = Ca::from_pem(&self.ca.0, &self.ca.1)
            .map_err(|e| ManagerError::Failed(e.to_string()))?;
        let role = Role::parse(role).ok_or_else(|| ManagerError::Invalid(role.into()))?;
        let ck = ca
            .issue_client(name, role, Duration::from_secs(ttl_secs))
            .map_err(|e| ManagerError::Failed(e.to_string()))?;
        let mut f = berth_remote::ClientFile {
            context: Some(name.into()),
            ..Default::default()
        };
        f.contexts.insert(
            name.into(),
            berth_remote::Context {
                ca: Some(ca.cert_pem().into()),
                cert: ck.cert_pem,
                key: ck.key_pem,
                ..Default::default()
            },
        );
        Ok(f.to_toml())
    }

    fn ps(&self) -> Result<Vec<berth_api::ContainerInfo>, ManagerError> {
        Err(ManagerError::Denied(
            "role reader cannot call Ps: it needs operator".into(),
        ))
    }
}

/// Start the node on a thread of its own; its address.
fn start_node(ca: &Ca) -> std::net::SocketAddr {
    let node = ca
        .issue_server(&[], &["127.0.0.1".parse().unwrap()], DAY, None)
        .unwrap();
    let cfg = tls::server_config(ca.cert_pem(), &node, Arc::new(|_: &str| false)).unwrap();
    let pair = (ca.cert_pem().to_string(), ca.key_pem().to_string());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let ca = pair.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = zbus::connection::Builder::socket(transport::zbus_socket(tls))
                        .server(zbus::Guid::generate())
                        .unwrap()
                        .p2p()
                        .auth_mechanism(zbus::AuthMechanism::Anonymous)
                        .serve_at(berth_api::OBJECT_PATH, Node { ca })
                        .unwrap()
                        .build()
                        .await;
                    if let Ok(c) = conn {
                        std::future::pending::<()>().await;
                        drop(c);
                    }
                });
            }
        });
    });
    addr
}

fn client_file(dir: &Path, ca: &Ca, contexts: &[(&str, CertKey, String)]) -> PathBuf {
    let mut f = berth_remote::ClientFile::default();
    for (name, ck, endpoint) in contexts {
        f.contexts.insert(
            name.to_string(),
            berth_remote::Context {
                endpoints: vec![endpoint.clone()],
                ca: Some(ca.cert_pem().into()),
                node_fingerprint: None,
                cert: ck.cert_pem.clone(),
                key: ck.key_pem.clone(),
            },
        );
    }
    f.context = contexts.first().map(|c| c.0.to_string());
    let p = dir.join("osctl.toml");
    f.save(&p).unwrap();
    p
}

fn osctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osctl"))
        .args(args)
        .env("BERTH_CONFIG", config)
        .env_remove("BERTH_CONNECT")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn status_over_tls_and_a_denied_call() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let addr = start_node(&ca);
    let d = tempfile::tempdir().unwrap();
    let reader = ca.issue_client("rita", Role::Reader, DAY).unwrap();
    let cfg = client_file(d.path(), &ca, &[("lab", reader, addr.to_string())]);

    let o = osctl(&cfg, &["--context", "lab", "status"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("hostname       tls-node"), "{out}");
    assert!(
        out.contains(&format!(
            "api            listening on 127.0.0.1:7443, fingerprint {}",
            "ab".repeat(32)
        )),
        "{out}"
    );

    let o = osctl(&cfg, &["--context", "lab", "ps"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        err,
        "osctl: role reader cannot call Ps: it needs operator\n"
    );

    // --node replaces the endpoint: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let o = osctl(&cfg, &["--node", &format!("127.0.0.1:{port}"), "status"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );

    // --connect wins over the context.
    let o = osctl(
        &cfg,
        &[
            "--context",
            "lab",
            "--connect",
            "/nonexistent/osctl.sock",
            "status",
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("/nonexistent/osctl.sock"), "{err}");

    // Off the machine, the current context is the default.
    let o = osctl(&cfg, &["status"]);
    assert!(o.status.success(), "{:?}", text(&o));

    // pki issue: the node mints a client file; osctl fills in the endpoint it used.
    let issued = d.path().join("issued.toml");
    let o = osctl(
        &cfg,
        &[
            "pki", "issue", "--role", "operator", "--ttl", "2h", "--name", "ops1", "--out",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "--out needs a value");
    let o = osctl(
        &cfg,
        &[
            "pki",
            "issue",
            "--role",
            "operator",
            "--ttl",
            "2h",
            "--name",
            "ops1",
            "--out",
            issued.to_str().unwrap(),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("context ops1 (operator, serial "), "{out}");
    let f = berth_remote::ClientFile::load(&issued).unwrap();
    assert_eq!(f.contexts["ops1"].endpoints, vec![addr.to_string()]);
    let id = pki::identity_pem(&f.contexts["ops1"].cert).unwrap();
    assert_eq!(
        (id.common_name.as_str(), id.role),
        ("ops1", Some(Role::Operator))
    );
    assert!((id.not_after - id.not_before - 7200 - 300).abs() < 5);
    // The new file works on its own.
    let o = osctl(&issued, &["status"]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn refused_handshakes_exit_3_with_one_sentence() {
    let ca = Ca::generate("ca", DAY).unwrap();
    let addr = start_node(&ca);
    let d = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old = testing::client_with_validity(&ca, "old", Role::Admin, now - 7200, now - 60).unwrap();
    let serial = pki::identity_pem(&old.cert_pem).unwrap().serial;
    let other = Ca::generate("other", DAY).unwrap();
    let foreign = other.issue_client("mallory", Role::Admin, DAY).unwrap();
    let cfg = client_file(
        d.path(),
        &ca,
        &[
            ("old", old, addr.to_string()),
            ("foreign", foreign, addr.to_string()),
        ],
    );

    let o = osctl(&cfg, &["--context", "old", "status"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.starts_with(&format!("osctl: client certificate {serial} expired at 20"))
            && err.contains("osctl pki issue"),
        "{err}"
    );

    let o = osctl(&cfg, &["--context", "foreign", "status"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(
        err,
        format!(
            "osctl: {addr}: {}\n",
            berth_remote::TlsError::RefusedUnknownCa
        )
    );

    let o = osctl(&cfg, &["--context", "nope", "status"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no context named \"nope\"") && err.contains("foreign, old"),
        "{err}"
    );
}

#[test]
fn pki_commands_and_contexts() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).display().to_string();
    let cfg = d.path().join("osctl.toml");
    let ok = |args: &[&str]| {
        let o = osctl(&cfg, args);
        assert!(o.status.success(), "{args:?}: {:?}", text(&o));
        text(&o).0
    };
    let out = ok(&["pki", "init", "--out", &p("ca")]);
    assert!(out.contains("serial ") && out.contains("expires "), "{out}");
    let o = osctl(&cfg, &["pki", "init", "--out", &p("ca")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("exists: refusing to overwrite"),
        "{:?}",
        text(&o)
    );

    ok(&[
        "pki",
        "node",
        "--ca",
        &p("ca"),
        "--name",
        "node1",
        "--ip",
        "10.0.0.5",
        "--out",
        &p("n1"),
    ]);
    assert!(d.path().join("n1/node.key").exists());

    let out = ok(&[
        "pki",
        "client",
        "--ca",
        &p("ca"),
        "--role",
        "reader",
        "--ttl",
        "24h",
        "--endpoint",
        "10.0.0.5:7443",
        "--out",
        &p("osctl.toml"),
    ]);
    assert!(out.starts_with("context reader (reader, serial "), "{out}");
    ok(&[
        "pki",
        "client",
        "--ca",
        &p("ca"),
        "--role",
        "admin",
        "--ttl",
        "30m",
        "--context",
        "root",
        "--name",
        "alice",
        "--out",
        &p("osctl.toml"),
        "--merge",
    ]);
    let o = osctl(
        &cfg,
        &[
            "pki",
            "client",
            "--ca",
            &p("ca"),
            "--role",
            "boss",
            "--ttl",
            "1h",
            "--out",
            &p("x"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("unknown role \"boss\""));

    let out = ok(&["config", "contexts"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains("reader") && lines[1].contains("10.0.0.5:7443"),
        "{out}"
    );
    assert!(
        lines[2].starts_with('*') && lines[2].contains("root") && lines[2].contains("alice"),
        "{out}"
    );
    ok(&["config", "use-context", "reader"]);
    assert!(ok(&["config", "contexts"])
        .lines()
        .nth(1)
        .unwrap()
        .starts_with('*'));
    let o = osctl(&cfg, &["config", "use-context", "prod"]);
    assert_eq!(o.status.code(), Some(2));
}
