//! `berth-image inspect`: what an OS artifact tag holds (versions, arches, digests,
//! sizes) and whether it is signed.

use berth_registry::{Client, Digest, Reference};
use berth_updater::artifact::{self, ArtifactError};
use berth_updater::signature::{self, PublicKey, SignatureError};

/// One architecture.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchInfo {
    pub platform: String,
    pub manifest_digest: Digest,
    pub config: Option<artifact::OsConfig>,
    /// Why the entry is not a usable OS image, if it is not.
    pub error: Option<String>,
    /// Signatures on this manifest's own digest.
    pub signature: SignatureInfo,
}

/// Signature status of one digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureInfo {
    /// Signature layers found at `sha256-<hex>.sig`.
    pub count: usize,
    /// `verified`, `unverified` (no key given), `untrusted`, `unsigned`, or an error.
    pub status: String,
    /// Key id that verified, when one did.
    pub key_id: Option<String>,
}

/// The whole tag.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub reference: String,
    /// Digest of the tag's manifest (the index; what `berth-image sign` signs).
    pub digest: Digest,
    pub signature: SignatureInfo,
    pub arches: Vec<ArchInfo>,
}

async fn sig_info(
    client: &Client,
    r: &Reference,
    d: &Digest,
    key: Option<&PublicKey>,
) -> SignatureInfo {
    let count = match signature::fetch(client, r, d).await {
        Ok(Some((_, s))) => s.len(),
        Ok(None) => 0,
        Err(e) => {
            return SignatureInfo {
                count: 0,
                status: format!("error: {e}"),
                key_id: None,
            }
        }
    };
    let (status, key_id) = match (count, key) {
        (0, _) => ("unsigned".to_string(), None),
        (_, None) => ("unverified".to_string(), None),
        (_, Some(k)) => match signature::verify(client, r, d, std::slice::from_ref(k)).await {
            Ok(id) => ("verified".to_string(), Some(id)),
            Err(SignatureError::Untrusted { .. }) => ("untrusted".to_string(), None),
            Err(e) => (format!("error: {e}"), None),
        },
    };
    SignatureInfo {
        count,
        status,
        key_id,
    }
}

/// Inspect `r`; with `key`, signatures are verified against it.
pub async fn inspect(
    client: &Client,
    r: &Reference,
    key: Option<&PublicKey>,
) -> Result<Inspection, ArtifactError> {
    let listing = artifact::list(client, r).await?;
    let pinned = r.with_digest(&listing.top_digest);
    let mut arches = Vec::new();
    let entries = if listing.entries.is_empty() {
        // A single manifest: its config says the arch.
        vec![(None, listing.top_digest.clone())]
    } else {
        listing
            .entries
            .iter()
            .map(|(p, d)| (Some(p.clone()), d.clone()))
            .collect()
    };
    for (platform, d) in entries {
        let arch = platform
            .as_ref()
            .map(|p| artifact::berth_arch(&p.architecture).to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let (config, error) = match artifact::resolve(client, &pinned, &arch).await {
            Ok(os) => (Some(os.config), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let signature = if d == listing.top_digest {
            SignatureInfo {
                count: 0,
                status: "see the index".into(),
                key_id: None,
            }
        } else {
            sig_info(client, r, &d, key).await
        };
        arches.push(ArchInfo {
            platform: platform.map(|p| p.to_string()).unwrap_or_default(),
            manifest_digest: d,
            config,
            error,
            signature,
        });
    }
    Ok(Inspection {
        reference: r.to_string(),
        signature: sig_info(client, r, &listing.top_digest, key).await,
        digest: listing.top_digest,
        arches,
    })
}

/// Human-readable form.
pub fn render(i: &Inspection) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = format!(
        "{}\n  digest    {}\n  signature {} ({} found{})\n",
        i.reference,
        i.digest,
        i.signature.status,
        i.signature.count,
        i.signature
            .key_id
            .as_ref()
            .map(|k| format!(", key {k}"))
            .unwrap_or_default()
    );
    for a in &i.arches {
        s.push_str(&format!("  {}  {}\n", a.platform, a.manifest_digest));
        match (&a.config, &a.error) {
            (Some(c), _) => s.push_str(&format!(
                "    version {}  arch {}  kernel {}\n    root {:.1} MiB  kernel {:.1} MiB  initrd {:.1} MiB  total {:.1} MiB\n    verity {}\n",
                c.version,
                c.arch,
                c.kernel_release,
                mib(c.root_size),
                mib(c.kernel_size),
                mib(c.initrd_size),
                mib(c.root_size + c.kernel_size + c.initrd_size),
                c.verity_root_hash
            )),
            (None, Some(e)) => s.push_str(&format!("    not a Berth OS image: {e}\n")),
            (None, None) => {}
        }
        if a.signature.count > 0 {
            s.push_str(&format!(
                "    own signature {} ({} found)\n",
                a.signature.status, a.signature.count
            ));
        }
    }
    s
}
