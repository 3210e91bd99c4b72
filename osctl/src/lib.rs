//! osctl: the operator's door into a Berth machine.
//!
//! Talks `org.berth.Manager1` peer-to-peer over a Unix socket: `/run/berth/osctl.sock` on
//! the machine itself, or the QEMU virtio-serial socket (`qemu/run.sh` writes
//! `STATE_DIR/osctl.sock`) from a VM's host; or over mutual TLS to a node's API port
//! (7443) with a context of the client file (see `berth_remote::contexts`).

use berth_api::{ContainerInfo, ContainerStats, ImageInfo, ManagerProxy};
use std::time::Duration;

pub mod exec;
pub mod pki;
pub mod progress;
pub mod update;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// The local socket, or a VM's virtio-serial socket on its host.
    Unix(std::path::PathBuf),
    /// A node's API port over mutual TLS, with a context's credential.
    Tls(Box<Remote>),
}

/// A node reached over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The context the credential comes from.
    pub context: String,
    /// `HOST:PORT` as given.
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    pub trust: berth_remote::ServerTrust,
    pub client: berth_remote::CertKey,
}

/// The node API's default TCP port.
pub const DEFAULT_PORT: u16 = 7443;

/// Errors reaching the machine.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported address {0:?}: use unix:path=/path/to/socket")]
    BadAddress(String),
    #[error("cannot connect to {path}: {source}. Is the machine running (and are you root)?")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {path} within {secs} s: the machine may still be booting")]
    Timeout { path: String, secs: u64 },
    #[error("D-Bus handshake with {path} failed: {source}")]
    Handshake {
        path: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error(transparent)]
    Context(#[from] berth_remote::ContextError),
    #[error("no client file: set BERTH_CONFIG or HOME (the file is ~/.config/berth/osctl.toml)")]
    NoConfigPath,
    #[error(
        "{path} does not exist: make one with osctl pki client (or ask an admin: osctl pki issue)"
    )]
    NoConfigFile { path: String },
    #[error("context {context:?} has no endpoints: give one with --node HOST:PORT")]
    NoEndpoint { context: String },
    #[error("invalid node address {0:?}: use HOST:PORT, [IPv6]:PORT or HOST (port 7443)")]
    BadEndpoint(String),
    #[error("context {context:?}: the client certificate cannot be read: {source}")]
    BadClientCert {
        context: String,
        #[source]
        source: berth_remote::PkiError,
    },
    #[error(
        "client certificate {serial} expired at {at}: ask an admin for a new one (osctl pki issue)"
    )]
    ClientExpired { serial: String, at: String },
    #[error("context {context:?}: {source}")]
    TlsSetup {
        context: String,
        #[source]
        source: berth_remote::TlsError,
    },
    #[error(
        "cannot connect to {endpoint}: {source}. Is the node up, and its API listening there?"
    )]
    Tcp {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint}: {reason}")]
    Refused { endpoint: String, reason: String },
}

impl ConnectError {
    /// Whether the user's input (address, client file, context) is at fault rather than
    /// the machine or the network: exit status 2 instead of 3.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ConnectError::BadAddress(_)
                | ConnectError::Context(_)
                | ConnectError::NoConfigPath
                | ConnectError::NoConfigFile { .. }
                | ConnectError::NoEndpoint { .. }
                | ConnectError::BadEndpoint(_)
                | ConnectError::BadClientCert { .. }
                | ConnectError::TlsSetup { .. }
        )
    }
}

impl Address {
    /// Parse `unix:path=/x` (D-Bus address syntax) or a plain path.
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            for kv in rest.split(',') {
                if let Some(p) = kv.strip_prefix("path=") {
                    return Ok(Address::Unix(p.into()));
                }
            }
            return Err(ConnectError::BadAddress(s.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Address::Unix(s.into()));
        }
        Err(ConnectError::BadAddress(s.into()))
    }
}

/// Where the user asked to connect.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// `--connect` / `BERTH_CONNECT`: an explicit socket; wins over everything.
    pub connect: Option<&'a str>,
    /// `--node HOST:PORT`: overrides the context's endpoint.
    pub node: Option<&'a str>,
    /// `--context NAME`.
    pub context: Option<&'a str>,
    /// The client file (`BERTH_CONFIG`, else ~/.config/berth/osctl.toml).
    pub config: Option<&'a std::path::Path>,
    /// The local socket.
    pub local: &'a std::path::Path,
}

/// Choose the address: `--connect` > `--node`/`--context` (the client file) > the local
/// socket; when the local socket does not exist (not on the machine) and the client file
/// has a current context, that context.
pub fn resolve(t: &Target<'_>) -> Result<Address, ConnectError> {
    if let Some(c) = t.connect {
        return Address::parse(c);
    }
    let remote = t.node.is_some() || t.context.is_some();
    if !remote {
        let usable = t.config.filter(|p| p.exists());
        match usable {
            Some(p) if !t.local.exists() => {
                let f = berth_remote::ClientFile::load(p)?;
                if f.select(None, p).is_err() {
                    return Ok(Address::Unix(t.local.into()));
                }
            }
            _ => return Ok(Address::Unix(t.local.into())),
        }
    }
    let path = t.config.ok_or(ConnectError::NoConfigPath)?;
    if !path.exists() {
        return Err(ConnectError::NoConfigFile {
            path: path.display().to_string(),
        });
    }
    let f = berth_remote::ClientFile::load(path)?;
    let (name, ctx) = f.select(t.context, path)?;
    let endpoint = match t.node {
        Some(n) => with_port(n),
        None => ctx
            .endpoints
            .first()
            .cloned()
            .ok_or_else(|| ConnectError::NoEndpoint {
                context: name.into(),
            })?,
    };
    let (host, port) = berth_remote::contexts::split_endpoint(&endpoint)
        .ok_or_else(|| ConnectError::BadEndpoint(endpoint.clone()))?;
    Ok(Address::Tls(Box::new(Remote {
        context: name.into(),
        host: host.into(),
        port,
        endpoint: endpoint.clone(),
        trust: ctx.trust(),
        client: ctx.cert_key(),
    })))
}

/// `HOST` gets the default port; `HOST:PORT` and `[V6]:PORT` stay; a bare IPv6 address
/// gets brackets and the port.
fn with_port(n: &str) -> String {
    if berth_remote::contexts::split_endpoint(n).is_some() {
        return n.into();
    }
    match n.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]:{DEFAULT_PORT}"),
        Err(_) if !n.contains(':') => format!("{n}:{DEFAULT_PORT}"),
        Err(_) => n.into(),
    }
}

/// Connect and return a proxy for the manager.
pub async fn connect(
    addr: &Address,
    timeout: Duration,
) -> Result<(zbus::Connection, ManagerProxy<'static>), ConnectError> {
    let (p, fut) = match addr {
        Address::Unix(path) => {
            let p = path.display().to_string();
            (
                p.clone(),
                Box::pin(connect_unix(path.clone(), p)) as BoxConnect,
            )
        }
        Address::Tls(r) => (
            r.endpoint.clone(),
            Box::pin(connect_tls(r.clone())) as BoxConnect,
        ),
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            path: p,
            secs: timeout.as_secs(),
        })?
}

type BoxConnect = std::pin::Pin<
    Box<
        dyn std::future::Future<
            Output = Result<(zbus::Connection, ManagerProxy<'static>), ConnectError>,
        >,
    >,
>;

async fn connect_unix(
    path: std::path::PathBuf,
    p: String,
) -> Result<(zbus::Connection, ManagerProxy<'static>), ConnectError> {
    let s = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|source| ConnectError::Connect {
            path: p.clone(),
            source,
        })?;
    let conn = zbus::connection::Builder::unix_stream(s)
        .p2p()
        .build()
        .await
        .map_err(|source| ConnectError::Handshake {
            path: p.clone(),
            source: Box::new(source),
        })?;
    proxy(conn, &p).await
}

async fn proxy(
    conn: zbus::Connection,
    p: &str,
) -> Result<(zbus::Connection, ManagerProxy<'static>), ConnectError> {
    let proxy = ManagerProxy::new(&conn)
        .await
        .map_err(|source| ConnectError::Handshake {
            path: p.into(),
            source: Box::new(source),
        })?;
    Ok((conn, proxy))
}

/// Check that the client certificate is still valid at `now` (unix seconds), so an
/// expired one is reported with its serial and time instead of as a refused handshake.
pub fn check_client_cert(r: &Remote, now: i64) -> Result<(), ConnectError> {
    let id = berth_remote::pki::identity_pem(&r.client.cert_pem).map_err(|source| {
        ConnectError::BadClientCert {
            context: r.context.clone(),
            source,
        }
    })?;
    if id.not_after < now {
        return Err(ConnectError::ClientExpired {
            serial: id.serial,
            at: berth_remote::pki::format_time(id.not_after),
        });
    }
    Ok(())
}

async fn connect_tls(
    r: Box<Remote>,
) -> Result<(zbus::Connection, ManagerProxy<'static>), ConnectError> {
    use berth_remote::{tls, transport};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    check_client_cert(&r, now)?;
    let setup = |source| ConnectError::TlsSetup {
        context: r.context.clone(),
        source,
    };
    let cfg = tls::client_config(&r.trust, &r.client).map_err(setup)?;
    let name = tls::server_name(&r.host).map_err(setup)?;
    let tcp = tokio::net::TcpStream::connect((r.host.as_str(), r.port))
        .await
        .map_err(|source| ConnectError::Tcp {
            endpoint: r.endpoint.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let refused = |e: &std::io::Error| ConnectError::Refused {
        endpoint: r.endpoint.clone(),
        reason: tls::explain_handshake_error(e),
    };
    let stream = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| refused(&e))?;
    // In TLS 1.3 the node refuses a client certificate after the client's handshake is
    // done: the refusal arrives on the first read, during the D-Bus authentication.
    let conn = zbus::connection::Builder::socket(transport::zbus_socket(stream))
        .p2p()
        .auth_mechanism(zbus::AuthMechanism::Anonymous)
        .build()
        .await
        .map_err(|e| match transport::io_error(&e) {
            Some(io) => refused(io),
            None => ConnectError::Handshake {
                path: r.endpoint.clone(),
                source: Box::new(e),
            },
        })?;
    proxy(conn, &r.endpoint).await
}

/// What a D-Bus call's error says to the user: a refused role is its own message (it names
/// the role needed); a connection cut mid-call over TLS is explained like a handshake.
pub fn explain_call_error(e: &berth_api::ManagerError) -> String {
    use berth_api::ManagerError as E;
    match e {
        E::Denied(m) => m.clone(),
        E::ZBus(z) => match berth_remote::transport::io_error(z) {
            Some(io) if io.get_ref().is_some() => berth_remote::tls::explain_handshake_error(io),
            _ => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Human-readable status.
pub fn format_status(s: &berth_api::Status) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<14} {v}\n"));
    line(
        "os",
        if s.arch.is_empty() {
            format!("{} (build {})", s.os, s.build_id)
        } else {
            format!("{} {} (build {})", s.os, s.arch, s.build_id)
        },
    );
    line("hostname", s.hostname.clone());
    line("slot", s.slot.clone());
    line("kernel", s.kernel.clone());
    line("uptime", format!("{:.1} s", s.uptime_seconds));
    line("boot", format!("#{}", s.boot_count));
    line(
        "root",
        format!(
            "{} {} ({}){}",
            s.root.fstype,
            s.root.source,
            if s.root.read_only { "ro" } else { "rw" },
            if s.root_dm_uuid.is_empty() {
                String::new()
            } else {
                format!(
                    ", dm {} verity {}",
                    s.root_dm_name,
                    short(&s.verity_root_hash)
                )
            }
        ),
    );
    line(
        "state",
        format!(
            "{} {} on /var: {} (was {})",
            s.var.fstype,
            s.var.source,
            s.state_action,
            if s.state_was_clean {
                "clean"
            } else {
                "not clean"
            }
        ),
    );
    if !s.boot_disk.is_empty() {
        line("boot disk", s.boot_disk.clone());
    }
    for n in &s.network {
        line("network", n.clone());
    }
    line(
        "default route",
        if s.default_route.is_empty() {
            "none".into()
        } else {
            s.default_route.clone()
        },
    );
    if !s.required_services.is_empty() {
        let v: Vec<String> = s
            .required_services
            .iter()
            .map(|(n, h)| format!("{n} {h}"))
            .collect();
        line(
            "health",
            format!(
                "{} ({})",
                if s.healthy { "healthy" } else { "not healthy" },
                v.join(", ")
            ),
        );
    }
    line("config", s.config_source.clone());
    if !s.config_change.is_empty() {
        line("config change", s.config_change.clone());
    }
    if !s.config_error.is_empty() {
        line("config error", s.config_error.clone());
    }
    line("cgroups", s.cgroup_controllers.join(" "));
    line(
        "sysd",
        format!("pid {} (start #{})", s.sysd_pid, s.sysd_starts),
    );
    line(
        "memory",
        format!(
            "init {:.1} MiB, sysd {:.1} MiB resident",
            s.init_rss_kib as f64 / 1024.0,
            s.sysd_rss_kib as f64 / 1024.0
        ),
    );
    let phases: Vec<String> = s
        .phases
        .iter()
        .map(|(n, t)| format!("{n} {t:.2}s"))
        .collect();
    line("boot phases", phases.join(", "));
    for w in &s.warnings {
        line("warning", w.clone());
    }
    o
}

/// The `api` line of `osctl status`: the remote API listener and the node key's
/// fingerprint (what a client pins for a self-signed node).
pub fn format_api_status(a: &berth_api::ApiStatus) -> String {
    let mut v = vec![a.state.clone()];
    if !a.listen.is_empty() && a.state != "off" {
        v[0] = format!("{} on {}", a.state, a.listen);
    }
    if !a.fingerprint.is_empty() {
        v.push(format!("fingerprint {}", a.fingerprint));
    }
    if !a.cert_source.is_empty() {
        v.push(format!(
            "certificate {}{}",
            a.cert_source,
            if a.cert_not_after > 0 {
                format!(
                    " until {}",
                    berth_remote::pki::format_time(a.cert_not_after)
                )
            } else {
                String::new()
            }
        ));
    }
    if a.can_issue {
        v.push("issues client files".into());
    }
    if a.state == "listening" {
        v.push(format!("{} connections", a.connections));
    }
    let mut o = format!("{:<14} {}\n", "api", v.join(", "));
    if !a.error.is_empty() {
        o.push_str(&format!("{:<14} {}\n", "api error", a.error));
    }
    o
}

/// One context of the client file, as `osctl config contexts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContextRow {
    pub name: String,
    pub current: bool,
    pub endpoints: Vec<String>,
    /// `ca` or `fingerprint`.
    pub trust: String,
    /// The certificate's Subject O (empty when unreadable or not a role).
    pub role: String,
    pub common_name: String,
    pub serial: String,
    /// RFC 3339, or `unreadable`.
    pub expires: String,
    pub expired: bool,
}

/// The rows of `osctl config contexts`, sorted by name.
pub fn context_rows(f: &berth_remote::ClientFile) -> Vec<ContextRow> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    f.contexts
        .iter()
        .map(|(name, c)| {
            let id = berth_remote::pki::identity_pem(&c.cert).ok();
            ContextRow {
                name: name.clone(),
                current: f.context.as_deref() == Some(name.as_str()),
                endpoints: c.endpoints.clone(),
                trust: if c.ca.is_some() { "ca" } else { "fingerprint" }.into(),
                role: id
                    .as_ref()
                    .and_then(|i| i.role)
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                common_name: id
                    .as_ref()
                    .map(|i| i.common_name.clone())
                    .unwrap_or_default(),
                serial: id.as_ref().map(|i| i.serial.clone()).unwrap_or_default(),
                expires: id
                    .as_ref()
                    .map(|i| berth_remote::pki::format_time(i.not_after))
                    .unwrap_or_else(|| "unreadable".into()),
                expired: id.as_ref().is_some_and(|i| i.not_after < now),
            }
        })
        .collect()
}

/// `osctl config contexts` as text.
pub fn format_contexts(rows: &[ContextRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.current { "*" } else { "" }.into(),
                r.name.clone(),
                if r.endpoints.is_empty() {
                    "-".into()
                } else {
                    r.endpoints.join(",")
                },
                r.trust.clone(),
                if r.role.is_empty() {
                    "-".into()
                } else {
                    r.role.clone()
                },
                r.common_name.clone(),
                if r.expired {
                    format!("{} (expired)", r.expires)
                } else {
                    r.expires.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "CURRENT",
            "NAME",
            "ENDPOINTS",
            "TRUST",
            "ROLE",
            "SUBJECT",
            "EXPIRES",
        ],
        &rows,
    )
}

/// A table with a header row; columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut o = String::new();
    let mut put = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    put(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        put(r.clone());
    }
    o
}

fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `osctl ps`.
pub fn format_ps(v: &[ContainerInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.kind.clone(),
                c.image.clone(),
                c.state.clone(),
                c.health.clone(),
                c.restarts.to_string(),
                if c.pid > 0 {
                    c.pid.to_string()
                } else {
                    "-".into()
                },
                if c.uptime_seconds > 0.0 {
                    human_secs(c.uptime_seconds)
                } else {
                    "-".into()
                },
                match (c.address.is_empty(), c.network.as_str()) {
                    (false, _) => c.address.clone(),
                    (true, "host") => "host".into(),
                    _ => "-".into(),
                },
                if c.ports.is_empty() {
                    "-".into()
                } else {
                    c.ports.join(",")
                },
                c.message.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "KIND", "IMAGE", "STATE", "HEALTH", "RESTARTS", "PID", "UP", "ADDRESS",
            "PORTS", "MESSAGE",
        ],
        &rows,
    )
}

/// `osctl stats`.
pub fn format_stats(v: &[ContainerStats]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                human_bytes(s.memory_bytes),
                if s.memory_max > 0 {
                    human_bytes(s.memory_max)
                } else {
                    "-".into()
                },
                format!("{:.2}s", s.cpu_usec as f64 / 1e6),
                s.pids.to_string(),
                if s.pids_max > 0 {
                    s.pids_max.to_string()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &["NAME", "MEMORY", "MEM LIMIT", "CPU", "PIDS", "PID LIMIT"],
        &rows,
    )
}

/// `osctl images`.
pub fn format_images(v: &[ImageInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                short(i.digest.trim_start_matches("sha256:")).to_string(),
                human_bytes(i.size),
                if i.in_use { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    table(&["IMAGE", "DIGEST", "SIZE", "IN USE"], &rows)
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:path=/tmp/x.sock").unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Address::parse("/run/berth/osctl.sock").unwrap(),
            Address::Unix("/run/berth/osctl.sock".into())
        );
        assert!(Address::parse("tcp:host=1.2.3.4").is_err());
        assert!(Address::parse("unix:abstract=x").is_err());
    }

    #[test]
    fn resolve_precedence() {
        use berth_remote::{Ca, ClientFile, Context};
        let d = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86400);
        let ca = Ca::generate("ca", day).unwrap();
        let ck = ca.issue_client("a", berth_api::Role::Admin, day).unwrap();
        let mut f = ClientFile::default();
        let ctx = |endpoints: Vec<String>| Context {
            endpoints,
            ca: Some(ca.cert_pem().into()),
            node_fingerprint: None,
            cert: ck.cert_pem.clone(),
            key: ck.key_pem.clone(),
        };
        f.contexts
            .insert("a".into(), ctx(vec!["10.0.0.1:7443".into()]));
        f.contexts.insert("b".into(), ctx(vec![]));
        f.context = Some("a".into());
        let cfg = d.path().join("osctl.toml");
        f.save(&cfg).unwrap();
        let local_missing = d.path().join("no.sock");
        let local_present = d.path().join("osctl.toml"); // any existing path
        let t = |connect, node, context, local| Target {
            connect,
            node,
            context,
            config: Some(cfg.as_path()),
            local,
        };
        let tls = |a: Address| match a {
            Address::Tls(r) => (
                r.context.clone(),
                r.endpoint.clone(),
                r.host.clone(),
                r.port,
            ),
            other => panic!("{other:?}"),
        };
        // --connect wins.
        assert_eq!(
            resolve(&t(Some("/x.sock"), Some("h:1"), Some("a"), &local_missing)).unwrap(),
            Address::Unix("/x.sock".into())
        );
        // --context, --node.
        assert_eq!(
            tls(resolve(&t(None, None, Some("a"), &local_present)).unwrap()),
            ("a".into(), "10.0.0.1:7443".into(), "10.0.0.1".into(), 7443)
        );
        assert_eq!(
            tls(resolve(&t(None, Some("node2"), None, &local_present)).unwrap()).1,
            "node2:7443"
        );
        assert_eq!(
            tls(resolve(&t(None, Some("fd00::2"), Some("b"), &local_present)).unwrap()),
            ("b".into(), "[fd00::2]:7443".into(), "fd00::2".into(), 7443)
        );
        assert!(matches!(
            resolve(&t(None, None, Some("b"), &local_present)),
            Err(ConnectError::NoEndpoint { .. })
        ));
        assert!(matches!(
            resolve(&t(None, None, Some("zz"), &local_present)),
            Err(ConnectError::Context(_))
        ));
        // Neither: the local socket when it exists, else the current context.
        assert_eq!(
            resolve(&t(None, None, None, &local_present)).unwrap(),
            Address::Unix(local_present.clone())
        );
        assert_eq!(
            tls(resolve(&t(None, None, None, &local_missing)).unwrap()).0,
            "a"
        );
        // No client file: the local socket, and --context says what is missing.
        let none = Target {
            connect: None,
            node: None,
            context: None,
            config: Some(Path::new("/nonexistent/osctl.toml")),
            local: &local_missing,
        };
        assert_eq!(
            resolve(&none).unwrap(),
            Address::Unix(local_missing.clone())
        );
        let e = resolve(&Target {
            context: Some("a"),
            ..none
        })
        .unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("osctl pki client"),
            "{e}"
        );
    }

    #[test]
    fn expired_client_certificate_is_named() {
        let ca = berth_remote::Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let ck = ca
            .issue_client("a", berth_api::Role::Reader, Duration::from_secs(3600))
            .unwrap();
        let id = berth_remote::pki::identity_pem(&ck.cert_pem).unwrap();
        let r = Remote {
            context: "a".into(),
            endpoint: "h:1".into(),
            host: "h".into(),
            port: 1,
            trust: berth_remote::ServerTrust::Ca(ca.cert_pem().into()),
            client: ck,
        };
        assert!(check_client_cert(&r, id.not_after - 1).is_ok());
        let e = check_client_cert(&r, id.not_after + 1)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "client certificate {} expired at {}: ask an admin for a new one (osctl pki issue)",
                id.serial,
                berth_remote::pki::format_time(id.not_after)
            )
        );
    }

    #[test]
    fn status_text_mentions_verity_and_warnings() {
        let s = berth_api::Status {
            os: "Berth 0.2.0".into(),
            version: "0.2.0".into(),
            arch: "arm64".into(),
            build_id: "abc".into(),
            root: berth_api::MountStatus {
                target: "/".into(),
                source: "/dev/dm-0".into(),
                fstype: "erofs".into(),
                read_only: true,
            },
            root_dm_name: "berth-root-a".into(),
            root_dm_uuid: "BERTH-VERITY-a".into(),
            verity_root_hash: "0123456789abcdef".into(),
            warnings: vec!["disk on fire".into()],
            ..Default::default()
        };
        let t = format_status(&s);
        assert!(
            t.contains("erofs /dev/dm-0 (ro), dm berth-root-a verity 0123456789ab"),
            "{t}"
        );
        assert!(
            t.contains("os             Berth 0.2.0 arm64 (build abc)\n"),
            "{t}"
        );
        assert!(t.contains("warning        disk on fire"), "{t}");
    }

    #[test]
    fn ps_table_aligns_columns() {
        let v = vec![
            ContainerInfo {
                name: "admin".into(),
                kind: "system".into(),
                image: "admin".into(),
                state: "running".into(),
                health: "none".into(),
                pid: 42,
                uptime_seconds: 75.0,
                ..Default::default()
            },
            ContainerInfo {
                name: "web-server".into(),
                kind: "workload".into(),
                image: "10.0.2.100:5000/web:1".into(),
                state: "crash-loop".into(),
                health: "none".into(),
                restarts: 4,
                message: "exited 4 times".into(),
                network: "bridge".into(),
                address: "10.88.0.2".into(),
                ports: vec!["8080:80/tcp".into(), "127.0.0.1:5353:53/udp".into()],
                ..Default::default()
            },
        ];
        let t = format_ps(&v);
        assert!(
            t.lines().nth(2).is_some_and(|l| l
                .contains("10.88.0.2  8080:80/tcp,127.0.0.1:5353:53/udp  exited")),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME        KIND"), "{t}");
        assert!(
            lines[1].contains("running") && lines[1].contains("1m15s"),
            "{t}"
        );
        assert!(lines[2].ends_with("exited 4 times"), "{t}");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
