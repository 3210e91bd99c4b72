//! The OS update artifact (see `docs/UPDATES.md`): an OCI image index with one image
//! manifest per architecture. Each manifest has a config blob ([`OsConfig`], media type
//! [`CONFIG_MEDIA_TYPE`]) and three layers, in this order: the root image (EROFS with its
//! dm-verity superblock and hash tree appended), the kernel, the initrd. The layers are
//! stored as they are (they are compressed already: EROFS lz4hc, a compressed kernel, a
//! gzip initramfs).

use berth_registry::manifest::{OCI_INDEX, OCI_MANIFEST};
use berth_registry::{
    Client, ClientError, Descriptor, Digest, ImageIndex, ImageManifest, Manifest, Platform,
    Reference,
};
use bytes::Bytes;
use std::collections::BTreeMap;

/// `artifactType` of a per-arch manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.berth.os.v1";
/// Config blob media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.berth.os.config.v1+json";
/// Root image layer (EROFS + dm-verity superblock and tree).
pub const ROOT_MEDIA_TYPE: &str = "application/vnd.berth.os.root.v1.erofs+verity";
/// Kernel layer.
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.berth.os.kernel.v1";
/// Initramfs layer (gzip newc cpio).
pub const INITRD_MEDIA_TYPE: &str = "application/vnd.berth.os.initrd.v1+gzip";
/// Annotation with the OS version, on index entries and manifests.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Registry access failed.
    #[error("registry request for {reference} failed")]
    Registry {
        /// Reference.
        reference: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The tag does not hold a Berth OS artifact.
    #[error("{reference} is not a Berth OS artifact: {why}")]
    NotOs {
        /// Reference.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// No manifest for this architecture.
    #[error("{reference} has no OS image for {arch} (it offers: {available})")]
    NoArch {
        /// Reference.
        reference: String,
        /// Wanted arch.
        arch: String,
        /// Offered platforms.
        available: String,
    },
    /// The config blob says another architecture than the index entry.
    #[error("{reference}: the OS image for {wanted} says it is for {found}; refusing it")]
    WrongArch {
        /// Reference.
        reference: String,
        /// Wanted arch.
        wanted: String,
        /// Arch in the config.
        found: String,
    },
    /// The config blob is malformed.
    #[error("config {digest} of {reference} is malformed")]
    Config {
        /// Reference.
        reference: String,
        /// Config digest.
        digest: Digest,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The config blob of an OS manifest: what the updater needs to install and check the
/// image without reading it first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsConfig {
    /// OS version (`VERSION_ID` in os-release).
    pub version: String,
    /// Berth architecture name: `x86_64` or `arm64`.
    pub arch: String,
    /// Build id the image was built from.
    #[serde(default)]
    pub build_id: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// dm-verity root hash (hex) of the root image.
    pub verity_root_hash: String,
    /// dm-verity salt (hex).
    pub verity_salt: String,
    /// Number of 4 KiB data blocks (the hash superblock and tree follow them).
    pub verity_data_blocks: u64,
    /// Base kernel command line (the updater adds `berth.slot=` and the verity arguments).
    pub cmdline: String,
    /// Root image size in bytes (data + verity).
    pub root_size: u64,
    /// Kernel size in bytes.
    pub kernel_size: u64,
    /// Initrd size in bytes.
    pub initrd_size: u64,
}

impl OsConfig {
    /// Serialize (stable field order, so the same build gives the same digest).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// OCI platform architecture for a Berth arch (`x86_64` -> `amd64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "amd64" => "amd64",
        "arm64" | "aarch64" => "arm64",
        other => other,
    }
}

/// Berth arch for an OCI one (`amd64` -> `x86_64`).
pub fn berth_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "amd64" => "x86_64",
        "arm64" | "aarch64" => "arm64",
        other => other,
    }
}

/// `linux/<oci arch>` for a Berth arch.
pub fn platform(arch: &str) -> Platform {
    Platform {
        architecture: oci_arch(arch).to_string(),
        os: "linux".into(),
        variant: None,
    }
}

/// The per-arch manifest for a config and its three layers.
pub fn os_manifest(
    config: &OsConfig,
    config_desc: Descriptor,
    root: Descriptor,
    kernel: Descriptor,
    initrd: Descriptor,
) -> ImageManifest {
    let mut annotations = BTreeMap::new();
    annotations.insert(VERSION_ANNOTATION.to_string(), config.version.clone());
    ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: config_desc,
        layers: vec![root, kernel, initrd],
        annotations,
    }
}

/// Serialize a manifest with `artifactType` (OCI 1.1) set.
pub fn manifest_bytes(m: &ImageManifest) -> Vec<u8> {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("artifactType".into(), ARTIFACT_TYPE.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Put `entry` into `index` (replacing the entry of the same platform, keeping others).
pub fn merge_index(index: Option<ImageIndex>, entry: Descriptor) -> ImageIndex {
    let mut idx = index.unwrap_or(ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    });
    idx.media_type = Some(OCI_INDEX.into());
    idx.manifests
        .retain(|d| d.platform.as_ref() != entry.platform.as_ref());
    idx.manifests.push(entry);
    idx.manifests.sort_by(|a, b| {
        let k = |d: &Descriptor| d.platform.as_ref().map(|p| p.to_string());
        k(a).cmp(&k(b))
    });
    idx
}

/// One architecture's OS image as found in a registry.
#[derive(Debug, Clone)]
pub struct OsImage {
    /// The reference asked for (repository and tag).
    pub reference: Reference,
    /// Digest of the tag's top manifest (the index; what signatures cover).
    pub top_digest: Digest,
    /// Digest of this arch's image manifest (equal to `top_digest` for a single manifest).
    pub manifest_digest: Digest,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// Parsed config.
    pub config: OsConfig,
    /// Root image layer.
    pub root: Descriptor,
    /// Kernel layer.
    pub kernel: Descriptor,
    /// Initrd layer.
    pub initrd: Descriptor,
}

/// The whole tag: the top manifest and every architecture in it.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Digest of the top manifest.
    pub top_digest: Digest,
    /// Raw top manifest.
    pub top_bytes: Bytes,
    /// (platform, manifest digest) for each entry (one entry for a plain manifest).
    pub entries: Vec<(Platform, Digest)>,
}

fn reg(r: &Reference) -> impl Fn(ClientError) -> ArtifactError + '_ {
    move |source| ArtifactError::Registry {
        reference: r.to_string(),
        source,
    }
}

/// The tag's top manifest and its entries.
pub async fn list(client: &Client, r: &Reference) -> Result<Listing, ArtifactError> {
    let (bytes, digest, m) = client.get_manifest(r).await.map_err(reg(r))?;
    let entries = match &m {
        Manifest::Index(i) => i
            .manifests
            .iter()
            .filter_map(|d| d.platform.clone().map(|p| (p, d.digest.clone())))
            .collect(),
        Manifest::Image(_) => Vec::new(),
    };
    Ok(Listing {
        top_digest: digest,
        top_bytes: bytes,
        entries,
    })
}

/// Find and check one architecture's OS image under `r` (a tag or a digest): the
/// manifest is fetched by the digest the index names (verified), its config blob by
/// digest (verified), and its shape and arch checked.
pub async fn resolve(client: &Client, r: &Reference, arch: &str) -> Result<OsImage, ArtifactError> {
    let (_, top_digest, m) = client.get_manifest(r).await.map_err(reg(r))?;
    let not_os = |why: String| ArtifactError::NotOs {
        reference: r.to_string(),
        why,
    };
    let (manifest_digest, manifest) = match m {
        Manifest::Image(m) => (top_digest.clone(), m),
        Manifest::Index(i) => {
            let want = platform(arch);
            let Some(d) = i.select(&want) else {
                return Err(ArtifactError::NoArch {
                    reference: r.to_string(),
                    arch: arch.to_string(),
                    available: i.platforms().join(", "),
                });
            };
            let child = r.with_digest(&d.digest);
            let (_, md, mm) = client.get_manifest(&child).await.map_err(reg(r))?;
            match mm {
                Manifest::Image(m) => (md, m),
                Manifest::Index(_) => return Err(not_os("an index entry is another index".into())),
            }
        }
    };
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(not_os(format!(
            "config media type {} (expected {CONFIG_MEDIA_TYPE})",
            manifest.config.media_type
        )));
    }
    let want = [ROOT_MEDIA_TYPE, KERNEL_MEDIA_TYPE, INITRD_MEDIA_TYPE];
    let got: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    if got != want {
        return Err(not_os(format!("layers {got:?} (expected {want:?})")));
    }
    let cfg_bytes = client
        .get_blob_bytes(r, &manifest.config)
        .await
        .map_err(reg(r))?;
    let config: OsConfig =
        serde_json::from_slice(&cfg_bytes).map_err(|source| ArtifactError::Config {
            reference: r.to_string(),
            digest: manifest.config.digest.clone(),
            source,
        })?;
    if berth_arch(&config.arch) != berth_arch(arch) {
        return Err(ArtifactError::WrongArch {
            reference: r.to_string(),
            wanted: arch.to_string(),
            found: config.arch.clone(),
        });
    }
    let (root, kernel, initrd) = (
        manifest.layers[0].clone(),
        manifest.layers[1].clone(),
        manifest.layers[2].clone(),
    );
    if root.size != config.root_size || config.verity_data_blocks.saturating_mul(4096) >= root.size
    {
        return Err(not_os(format!(
            "root layer of {} bytes does not match the config ({} bytes, {} data blocks)",
            root.size, config.root_size, config.verity_data_blocks
        )));
    }
    Ok(OsImage {
        reference: r.clone(),
        top_digest,
        manifest_digest,
        manifest,
        config,
        root,
        kernel,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_merge_keeps_other_arches() {
        let d = |arch: &str, n: u8| Descriptor {
            platform: Some(platform(arch)),
            ..Descriptor::new(OCI_MANIFEST, Digest::of(&[n]), 10)
        };
        let i = merge_index(None, d("x86_64", 1));
        let i = merge_index(Some(i), d("arm64", 2));
        let i = merge_index(Some(i), d("x86_64", 3));
        assert_eq!(i.manifests.len(), 2);
        assert_eq!(
            i.select(&platform("arm64")).unwrap().digest,
            Digest::of(&[2])
        );
        assert_eq!(
            i.select(&platform("x86_64")).unwrap().digest,
            Digest::of(&[3])
        );
        assert_eq!(i.media_type.as_deref(), Some(OCI_INDEX));
    }
}
