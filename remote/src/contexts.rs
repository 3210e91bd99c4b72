//! osctl's client file, like talosconfig or kubeconfig: named contexts, each one credential
//! (the node's CA or key fingerprint, the client certificate and key, PEMs inline) and the
//! endpoints to reach.
//!
//! ```toml
//! context = "admin"
//! [contexts.admin]
//! endpoints = ["127.0.0.1:7443"]
//! ca = "-----BEGIN CERTIFICATE-----..."   # trust the node by CA, or
//! node_fingerprint = "ab12..."            # pin a self-signed node's SPKI sha256
//! cert = "-----BEGIN CERTIFICATE-----..."
//! key = "-----BEGIN PRIVATE KEY-----..."
//! ```
//!
//! The file is `$BERTH_CONFIG`, else `~/.config/berth/osctl.toml`; it holds private keys,
//! so it is written 0600, atomically.

use crate::pki::CertKey;
use crate::tls::ServerTrust;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable naming the client file.
pub const CONFIG_ENV: &str = "BERTH_CONFIG";

/// The whole client file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One credential and where to use it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `HOST:PORT` of the node(s); the first is used.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The CA that signed the node's certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// SHA-256 of a self-signed node's SubjectPublicKeyInfo (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_fingerprint: Option<String>,
    /// Client certificate (PEM).
    pub cert: String,
    /// Client key (PEM, PKCS#8).
    pub key: String,
}

/// Errors reading or writing the client file; each names the file, and the key when one
/// is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no context named {name:?} (contexts: {known})")]
    UnknownContext {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("{path}: no context chosen: name one with --context, or set one with osctl config use-context")]
    NoContext { path: PathBuf },
}

/// Where the client file is: `$BERTH_CONFIG`, else `~/.config/berth/osctl.toml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".config/berth/osctl.toml"))
}

const TEXT: &str = "(text)";

impl ClientFile {
    /// Read and check the file.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let s = std::fs::read_to_string(path).map_err(|source| ContextError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&s, path)
    }

    /// Parse and check a client file's text.
    pub fn from_toml(s: &str) -> Result<Self, ContextError> {
        Self::parse(s, Path::new(TEXT))
    }

    fn parse(s: &str, path: &Path) -> Result<Self, ContextError> {
        let f: ClientFile = toml::from_str(s).map_err(|source| ContextError::Parse {
            path: path.into(),
            source,
        })?;
        f.check(path)?;
        Ok(f)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        // Plain strings and tables: serialization cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Write the file atomically (a new file, fsync, rename, fsync of the directory),
    /// mode 0600; creates the directory (0700) if needed.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let err = |source| ContextError::Write {
            path: path.into(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(err)?;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.as_deref().unwrap_or("osctl.toml"),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_toml().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }

    /// Add `other`'s contexts (a context of the same name is replaced); `other`'s current
    /// context, if it names one, becomes current.
    pub fn merge(&mut self, other: ClientFile) {
        self.contexts.extend(other.contexts);
        if other.context.is_some() {
            self.context = other.context;
        }
    }

    /// The context to use: `name` if given, else the file's current one.
    pub fn select(
        &self,
        name: Option<&str>,
        path: &Path,
    ) -> Result<(&str, &Context), ContextError> {
        let name = match name.or(self.context.as_deref()) {
            Some(n) => n,
            None if self.contexts.len() == 1 => {
                let (n, c) = self
                    .contexts
                    .iter()
                    .next()
                    .ok_or(ContextError::NoContext { path: path.into() })?;
                return Ok((n, c));
            }
            None => return Err(ContextError::NoContext { path: path.into() }),
        };
        self.contexts
            .get_key_value(name)
            .map(|(n, c)| (n.as_str(), c))
            .ok_or_else(|| ContextError::UnknownContext {
                path: path.into(),
                name: name.into(),
                known: self.known(),
            })
    }

    fn known(&self) -> String {
        if self.contexts.is_empty() {
            "none".into()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    fn check(&self, path: &Path) -> Result<(), ContextError> {
        let invalid = |key: String, reason| ContextError::Invalid {
            path: path.into(),
            key,
            reason,
        };
        if let Some(c) = &self.context {
            if !self.contexts.contains_key(c) {
                return Err(ContextError::UnknownContext {
                    path: path.into(),
                    name: c.clone(),
                    known: self.known(),
                });
            }
        }
        for (name, c) in &self.contexts {
            let k = |f: &str| format!("contexts.{name}.{f}");
            if name.is_empty() {
                return Err(invalid("contexts".into(), "a context needs a name"));
            }
            match (&c.ca, &c.node_fingerprint) {
                (None, None) => {
                    return Err(invalid(
                        k("ca"),
                        "missing: the node is trusted by ca (PEM) or node_fingerprint",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        k("node_fingerprint"),
                        "give ca or node_fingerprint, not both",
                    ))
                }
                (Some(ca), None) if !ca.contains("-----BEGIN CERTIFICATE-----") => {
                    return Err(invalid(k("ca"), "not a PEM certificate"))
                }
                (None, Some(f)) if !is_fingerprint(f) => {
                    return Err(invalid(
                        k("node_fingerprint"),
                        "not a SHA-256 in hex (64 hex digits)",
                    ))
                }
                _ => {}
            }
            if !c.cert.contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid(k("cert"), "not a PEM certificate"));
            }
            if !c.key.contains("PRIVATE KEY-----") {
                return Err(invalid(k("key"), "not a PEM private key"));
            }
            for e in &c.endpoints {
                if split_endpoint(e).is_none() {
                    return Err(invalid(k("endpoints"), "an endpoint is HOST:PORT"));
                }
            }
        }
        Ok(())
    }
}

impl Context {
    /// How to recognize the node.
    pub fn trust(&self) -> ServerTrust {
        match (&self.ca, &self.node_fingerprint) {
            (Some(ca), _) => ServerTrust::Ca(ca.clone()),
            (None, Some(f)) => ServerTrust::Fingerprint(f.clone()),
            (None, None) => ServerTrust::Ca(String::new()),
        }
    }

    /// The client certificate and key.
    pub fn cert_key(&self) -> CertKey {
        CertKey {
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }
}

fn is_fingerprint(f: &str) -> bool {
    let f = f.replace(':', "");
    f.len() == 64 && f.chars().all(|c| c.is_ascii_hexdigit())
}

/// Split `HOST:PORT` (`[v6]:PORT` for IPv6) into host and port.
pub fn split_endpoint(e: &str) -> Option<(&str, u16)> {
    let (host, port) = e.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = if let Some(h) = host.strip_prefix('[') {
        h.strip_suffix(']')?
    } else if host.contains(':') {
        return None;
    } else {
        host
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    fn ctx() -> Context {
        Context {
            endpoints: vec!["127.0.0.1:7443".into()],
            ca: Some(CERT.into()),
            node_fingerprint: None,
            cert: CERT.into(),
            key: KEY.into(),
        }
    }

    fn file() -> ClientFile {
        let mut f = ClientFile {
            context: Some("admin".into()),
            ..Default::default()
        };
        f.contexts.insert("admin".into(), ctx());
        f.contexts.insert(
            "edge".into(),
            Context {
                ca: None,
                node_fingerprint: Some("ab".repeat(32)),
                endpoints: vec!["[fd00::1]:7443".into(), "edge.example:7443".into()],
                ..ctx()
            },
        );
        f
    }

    #[test]
    fn round_trip() {
        let f = file();
        let t = f.to_toml();
        assert!(t.starts_with("context = \"admin\""), "{t}");
        assert_eq!(ClientFile::from_toml(&t).unwrap(), f);
        let (n, c) = f.select(None, Path::new("x")).unwrap();
        assert_eq!((n, c), ("admin", &ctx()));
        assert_eq!(
            f.select(Some("edge"), Path::new("x")).unwrap().1.trust(),
            ServerTrust::Fingerprint("ab".repeat(32))
        );
    }

    #[test]
    fn save_is_0600_and_atomic() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/osctl.toml");
        file().save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(ClientFile::load(&p).unwrap(), file());
        // Overwrite: still 0600, no temporary file left behind.
        let mut g = file();
        g.context = Some("edge".into());
        g.save(&p).unwrap();
        assert_eq!(
            ClientFile::load(&p).unwrap().context.as_deref(),
            Some("edge")
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("osctl.toml")]);
        // Saving over a file that is not writable as a rename target fails with the path.
        let e = g.save(d.path()).unwrap_err();
        assert!(
            e.to_string().contains(&d.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("/etc/x/osctl.toml");
        let bad = |t: &str| ClientFile::parse(t, p).unwrap_err().to_string();
        let e = bad("context = \"admin\"\n");
        assert!(
            e.contains("/etc/x/osctl.toml") && e.contains("\"admin\""),
            "{e}"
        );
        let e = bad("[contexts.a]\ncert = \"x\"\nkey = \"y\"\n");
        assert!(
            e.contains("contexts.a.ca") && e.contains(p.to_str().unwrap()),
            "{e}"
        );
        let mut f = file();
        f.contexts.get_mut("admin").unwrap().key = "nope".into();
        let e = bad(&f.to_toml());
        assert!(e.contains("contexts.admin.key"), "{e}");
        let mut f = file();
        f.contexts.get_mut("admin").unwrap().endpoints = vec!["host".into()];
        assert!(bad(&f.to_toml()).contains("contexts.admin.endpoints"));
        let mut f = file();
        f.contexts.get_mut("admin").unwrap().node_fingerprint = Some("zz".into());
        assert!(bad(&f.to_toml()).contains("contexts.admin.node_fingerprint"));
        let e = ClientFile::load(Path::new("/nonexistent/osctl.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/osctl.toml"), "{e}");
        let e = file().select(Some("prod"), p).unwrap_err().to_string();
        assert!(e.contains("\"prod\"") && e.contains("admin, edge"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut t = file().to_toml();
        t.push_str("\n[contexts.extra]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\npassword = \"x\"\n");
        let e = ClientFile::from_toml(&t).unwrap_err().to_string();
        assert!(e.contains("password"), "{e}");
        let e = ClientFile::from_toml("contxt = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("contxt"), "{e}");
    }

    #[test]
    fn merge_replaces_and_switches() {
        let mut a = file();
        let mut b = ClientFile {
            context: Some("new".into()),
            ..Default::default()
        };
        let mut c = ctx();
        c.endpoints = vec!["10.0.0.9:7443".into()];
        b.contexts.insert("new".into(), c.clone());
        b.contexts.insert("admin".into(), c.clone());
        a.merge(b);
        assert_eq!(a.context.as_deref(), Some("new"));
        assert_eq!(a.contexts.len(), 3);
        assert_eq!(a.contexts["admin"], c);
        a.merge(ClientFile::default());
        assert_eq!(a.context.as_deref(), Some("new"));
    }

    #[test]
    fn endpoints() {
        assert_eq!(split_endpoint("10.0.0.1:7443"), Some(("10.0.0.1", 7443)));
        assert_eq!(split_endpoint("[fd00::1]:7443"), Some(("fd00::1", 7443)));
        assert_eq!(split_endpoint("node.example:1"), Some(("node.example", 1)));
        assert_eq!(split_endpoint("fd00::1:7443"), None);
        assert_eq!(split_endpoint("host"), None);
        assert_eq!(split_endpoint(":7443"), None);
        assert_eq!(split_endpoint("h:0"), None);
        assert_eq!(split_endpoint("h:99999"), None);
    }
}
