//! `osctl pki ...`: a CA, node certificates and client files, with no other tools.
//!
//! Files: `DIR/ca.crt` and `DIR/ca.key` (0600) from `pki init`, `DIR/node.crt` and
//! `DIR/node.key` (0600) from `pki node`, and a client file (one context, PEMs inline, 0600)
//! from `pki client`. Nothing is overwritten: an existing file is an error (a client file
//! may be merged into with `--merge`).

use berth_api::Role;
use berth_remote::contexts::{ClientFile, Context, ContextError};
use berth_remote::pki::{self, Ca, PkiError};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the `pki` commands; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiCmdError {
    #[error("{path} exists: refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path} exists: add --merge to add the new context to it")]
    ExistsMerge { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki {
        path: PathBuf,
        #[source]
        source: PkiError,
    },
    #[error("{0}")]
    Make(#[source] PkiError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("the node sent a client file osctl cannot read: {0}")]
    BadIssued(#[source] ContextError),
}

/// Parse a lifetime: a number and a unit, `s`, `m`, `h` or `d` (`30m`, `24h`, `7d`), or
/// several of them (`1h30m`). At least one second.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 30m, 24h, 7d or 8760h");
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Parse a role name for clap.
pub fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: use reader, operator or admin"))
}

/// What a command made, for the user: `serial ... expires ...`.
pub fn describe(cert_pem: &str) -> String {
    match pki::identity_pem(cert_pem) {
        Ok(id) => format!(
            "serial {}, expires {}",
            id.serial,
            pki::format_time(id.not_after)
        ),
        Err(e) => format!("(unreadable certificate: {e})"),
    }
}

/// Write a new file with `mode`; never replaces one.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiCmdError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PkiCmdError::Exists { path: path.into() },
            _ => PkiCmdError::Write {
                path: path.into(),
                source,
            },
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| PkiCmdError::Write {
            path: path.into(),
            source,
        })
}

fn make_dir(dir: &Path) -> Result<(), PkiCmdError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiCmdError::Write {
            path: dir.into(),
            source,
        })
}

/// Refuse before writing anything when any of `paths` exists.
fn refuse_existing(paths: &[&Path]) -> Result<(), PkiCmdError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(PkiCmdError::Exists {
            path: p.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// `pki init`: a new CA in `dir` (ca.crt, ca.key 0600). Returns the certificate PEM.
pub fn init(dir: &Path, name: &str, ttl: Duration) -> Result<String, PkiCmdError> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[&crt, &key])?;
    let ca = Ca::generate(name, ttl).map_err(PkiCmdError::Make)?;
    make_dir(dir)?;
    write_new(&key, ca.key_pem(), 0o600)?;
    write_new(&crt, ca.cert_pem(), 0o644)?;
    Ok(ca.cert_pem().to_string())
}

/// Load the CA from `dir` (ca.crt and ca.key).
pub fn load_ca(dir: &Path) -> Result<Ca, PkiCmdError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| PkiCmdError::Read { path: p, source })
    };
    let crt = read(dir.join("ca.crt"))?;
    let key = read(dir.join("ca.key"))?;
    Ca::from_pem(&crt, &key).map_err(|source| PkiCmdError::Pki {
        path: dir.join("ca.crt"),
        source,
    })
}

/// `pki node`: node.crt and node.key (0600) in `out`. Returns the certificate PEM.
pub fn node(
    ca_dir: &Path,
    names: &[String],
    ips: &[IpAddr],
    ttl: Duration,
    out: &Path,
) -> Result<String, PkiCmdError> {
    let (crt, key) = (out.join("node.crt"), out.join("node.key"));
    refuse_existing(&[&crt, &key])?;
    let ca = load_ca(ca_dir)?;
    let ck = ca
        .issue_server(names, ips, ttl, None)
        .map_err(PkiCmdError::Make)?;
    make_dir(out)?;
    write_new(&key, &ck.key_pem, 0o600)?;
    write_new(&crt, &ck.cert_pem, 0o644)?;
    Ok(ck.cert_pem)
}

/// What `pki client` makes.
pub struct ClientRequest<'a> {
    pub ca_dir: &'a Path,
    pub role: Role,
    pub ttl: Duration,
    pub common_name: Option<&'a str>,
    pub endpoints: Vec<String>,
    pub context: Option<&'a str>,
    pub out: &'a Path,
    pub merge: bool,
}

/// `pki client`: a client file with one context (the CA, the new certificate and key
/// inline), made current. Returns the context name and the certificate PEM.
pub fn client(req: &ClientRequest<'_>) -> Result<(String, String), PkiCmdError> {
    if req.out.exists() && !req.merge {
        return Err(PkiCmdError::ExistsMerge {
            path: req.out.into(),
        });
    }
    let ca = load_ca(req.ca_dir)?;
    let cn = req
        .common_name
        .map(str::to_string)
        .unwrap_or_else(|| format!("osctl-{}", req.role));
    let ck = ca
        .issue_client(&cn, req.role, req.ttl)
        .map_err(PkiCmdError::Make)?;
    let name = req
        .context
        .map(str::to_string)
        .unwrap_or_else(|| req.role.to_string());
    let mut file = ClientFile {
        context: Some(name.clone()),
        ..Default::default()
    };
    file.contexts.insert(
        name.clone(),
        Context {
            endpoints: req.endpoints.clone(),
            ca: Some(ca.cert_pem().to_string()),
            node_fingerprint: None,
            cert: ck.cert_pem.clone(),
            key: ck.key_pem,
        },
    );
    // Check what is written with the reader's own rules.
    let file = ClientFile::from_toml(&file.to_toml())?;
    save_client_file(file, req.out, req.merge)?;
    Ok((name, ck.cert_pem))
}

/// Write `file` to `out` (0600, atomically), merged into the existing one with `merge`.
pub fn save_client_file(file: ClientFile, out: &Path, merge: bool) -> Result<(), PkiCmdError> {
    let file = if merge && out.exists() {
        let mut old = ClientFile::load(out)?;
        old.merge(file);
        old
    } else if out.exists() {
        return Err(PkiCmdError::ExistsMerge { path: out.into() });
    } else {
        file
    };
    file.save(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_ttl("8760h"), Ok(Duration::from_secs(8760 * 3600)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("45s"), Ok(Duration::from_secs(45)));
        for bad in [
            "",
            "24",
            "h",
            "0h",
            "-1h",
            "1w",
            "1.5h",
            "99999999999999999999d",
            "1h 2",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert!(parse_ttl("1x").unwrap_err().contains("24h"));
    }

    #[test]
    fn init_node_client_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let ca_dir = d.path().join("ca");
        let ca_pem = init(&ca_dir, "test CA", Duration::from_secs(86400)).unwrap();
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(
            std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(),
            ca_pem
        );
        // Never overwritten.
        let e = init(&ca_dir, "again", Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("ca.crt exists"), "{e}");
        assert_eq!(
            std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(),
            ca_pem
        );

        let out = d.path().join("node1");
        let crt = node(
            &ca_dir,
            &["node1".into()],
            &["10.0.2.15".parse().unwrap()],
            Duration::from_secs(3600),
            &out,
        )
        .unwrap();
        assert_eq!(mode(&out.join("node.key")), 0o600);
        assert!(pki::identity_pem(&crt).unwrap().role.is_none());
        assert!(node(&ca_dir, &["n".into()], &[], Duration::from_secs(60), &out).is_err());
        // A missing CA names the file.
        let e = node(
            &d.path().join("nope"),
            &["n".into()],
            &[],
            Duration::from_secs(60),
            &d.path().join("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope/ca.crt"), "{e}");

        let file = d.path().join("osctl.toml");
        let mut req = ClientRequest {
            ca_dir: &ca_dir,
            role: Role::Reader,
            ttl: Duration::from_secs(86400),
            common_name: None,
            endpoints: vec!["127.0.0.1:7443".into()],
            context: None,
            out: &file,
            merge: false,
        };
        let (name, crt) = client(&req).unwrap();
        assert_eq!(name, "reader");
        assert_eq!(mode(&file), 0o600);
        let id = pki::identity_pem(&crt).unwrap();
        assert_eq!(
            (id.common_name.as_str(), id.role),
            ("osctl-reader", Some(Role::Reader))
        );
        let f = ClientFile::load(&file).unwrap();
        assert_eq!(f.context.as_deref(), Some("reader"));
        assert_eq!(f.contexts["reader"].ca.as_deref(), Some(ca_pem.as_str()));
        assert_eq!(f.contexts["reader"].endpoints, vec!["127.0.0.1:7443"]);
        // A second one needs --merge, and becomes current.
        req.role = Role::Admin;
        req.context = Some("prod");
        req.common_name = Some("alice");
        let e = client(&req).unwrap_err();
        assert!(e.to_string().contains("--merge"), "{e}");
        req.merge = true;
        client(&req).unwrap();
        let f = ClientFile::load(&file).unwrap();
        assert_eq!(f.context.as_deref(), Some("prod"));
        assert_eq!(f.contexts.len(), 2);
        assert_eq!(
            pki::identity_pem(&f.contexts["prod"].cert).unwrap().role,
            Some(Role::Admin)
        );
        // A bad endpoint is refused before anything is written.
        req.endpoints = vec!["no-port".into()];
        req.context = Some("bad");
        let e = client(&req).unwrap_err();
        assert!(e.to_string().contains("contexts.bad.endpoints"), "{e}");
        assert_eq!(ClientFile::load(&file).unwrap().contexts.len(), 2);
    }

    #[test]
    fn describe_names_serial_and_expiry() {
        let ca = Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let c = ca
            .issue_client("x", Role::Reader, Duration::from_secs(3600))
            .unwrap();
        let id = pki::identity_pem(&c.cert_pem).unwrap();
        let d = describe(&c.cert_pem);
        assert!(
            d.starts_with(&format!("serial {}, expires 20", id.serial)),
            "{d}"
        );
        assert!(d.ends_with('Z'), "{d}");
    }
}
