//! `berth-image keygen | sign | verify`: cosign-compatible key-based signatures on OS
//! artifacts (format in `berth_updater::signature` and `docs/UPDATES.md`).

use berth_registry::{Client, ClientError, Digest, Reference};
use berth_updater::signature::{self, PublicKey, SignatureError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Signing failures.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("registry request for {reference} failed")]
    Registry {
        reference: String,
        #[source]
        source: ClientError,
    },
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Write `PREFIX.key` (PKCS#8 PEM, mode 0600) and `PREFIX.pub` (PKIX PEM). Returns both paths.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), SigningError> {
    let (key_path, pub_path) = (with_ext(prefix, "key"), with_ext(prefix, "pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(SigningError::Exists { path: p.clone() });
        }
    }
    let (private, public) = signature::generate()?;
    let write = |p: &Path, data: &str, mode: u32| -> Result<(), SigningError> {
        let ioe = |source| SigningError::Io {
            what: "write",
            path: p.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(ioe)?;
        f.write_all(data.as_bytes()).map_err(ioe)?;
        f.sync_all().map_err(ioe)
    };
    write(&key_path, &private, 0o600)?;
    write(&pub_path, &public, 0o644)?;
    Ok((key_path, pub_path))
}

fn read(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// The digest a tag points at now (the index, for an OS artifact).
pub async fn top_digest(client: &Client, r: &Reference) -> Result<Digest, SigningError> {
    let (_, d, _) = client
        .get_manifest(r)
        .await
        .map_err(|source| SigningError::Registry {
            reference: r.to_string(),
            source,
        })?;
    Ok(d)
}

/// Sign what `r` points at with the private key in `key`, for the repository `identity`
/// (default: `r`'s). Returns (signed digest, signature reference).
pub async fn sign(
    client: &Client,
    r: &Reference,
    key: &Path,
    identity: Option<&str>,
) -> Result<(Digest, Reference), SigningError> {
    let sk = signature::private_key_from_pem(&read(key)?, &key.display().to_string())?;
    let d = top_digest(client, r).await?;
    let identity = identity.map_or_else(|| signature::identity(r), str::to_string);
    let sig = signature::sign_as(client, r, &d, &sk, &identity).await?;
    Ok((d, sig))
}

/// Verify that what `r` points at is signed by the public key in `key`. Returns (digest,
/// key id).
pub async fn verify(
    client: &Client,
    r: &Reference,
    key: &Path,
) -> Result<(Digest, String), SigningError> {
    let pk = PublicKey::from_pem(&read(key)?, &key.display().to_string())?;
    let d = top_digest(client, r).await?;
    let id = signature::verify(client, r, &d, &[pk]).await?;
    Ok((d, id))
}
