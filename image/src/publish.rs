//! `berth-image publish`: push a built image's OS update artifact (see `docs/UPDATES.md`):
//! the root image, kernel and initrd as layers of a per-arch manifest with an
//! [`OsConfig`] blob, listed in the tag's image index next to the other architectures.

use crate::build::BuildOutput;
use crate::tools::{self, ToolError};
use berth_registry::manifest::{OCI_INDEX, OCI_MANIFEST};
use berth_registry::{Client, ClientError, Descriptor, Digest, Manifest, Reference};
use berth_updater::artifact::{self, OsConfig};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Publish failures, each naming the file or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a build record (image.json from `berth-image build`)")]
    BuildRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("cannot read the boot entry from {path} (pass --cmdline FILE)")]
    Esp {
        path: PathBuf,
        #[source]
        source: ToolError,
    },
    #[error("root image {path} fails its own dm-verity check")]
    Verity {
        path: PathBuf,
        #[source]
        source: berth_updater::verity::VerityError,
    },
    #[error("registry request for {reference} failed")]
    Registry {
        reference: String,
        #[source]
        source: ClientError,
    },
}

/// What was published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// `repo:tag`.
    pub reference: String,
    /// Digest of the tag's index (what `berth-image sign` signs).
    pub index_digest: Digest,
    /// Digest of this arch's manifest.
    pub manifest_digest: Digest,
    /// The config pushed.
    pub config: OsConfig,
    /// Platforms now in the index.
    pub platforms: Vec<String>,
}

fn file_digest(path: &Path) -> Result<(Digest, u64), PublishError> {
    let ioe = |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(ioe)?;
    let mut h = berth_registry::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(ioe)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let len = h.len();
    Ok((h.finish(), len))
}

/// The base kernel command line of a build: the `options` of its ESP's boot entry with
/// Berth's own `berth.slot`/`berth.verity*` parameters removed.
pub fn cmdline_from_esp(esp: &Path) -> Result<String, PublishError> {
    let err = |source| PublishError::Esp {
        path: esp.to_path_buf(),
        source,
    };
    let listing =
        tools::run(tools::mtools("mdir", esp).args(["-b", "::/loader/entries"])).map_err(err)?;
    let entry = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or("").to_string())
        .find(|n| n.starts_with("berth-") && n.ends_with(".conf"))
        .ok_or_else(|| PublishError::Mismatch {
            path: esp.to_path_buf(),
            what: "no berth-*.conf boot entry in loader/entries".into(),
        })?;
    let text = tools::run(tools::mtools("mtype", esp).arg(format!("::/loader/entries/{entry}")))
        .map_err(err)?;
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or("");
    Ok(strip_berth_params(options))
}

/// Remove `berth.slot=` and `berth.verity*=` (the updater adds them per slot).
pub fn strip_berth_params(options: &str) -> String {
    options
        .split_whitespace()
        .filter(|w| !w.starts_with("berth.slot=") && !w.starts_with("berth.verity"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The files of a build directory and the config describing them.
pub struct BuildArtifact {
    pub config: OsConfig,
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Read `DIR/image.json`, find the root image, kernel and initrd, check the root image's
/// dm-verity tree, and make the config. `cmdline`: the base kernel command line (default:
/// from the build's ESP).
pub fn read_build(dir: &Path, cmdline: Option<String>) -> Result<BuildArtifact, PublishError> {
    let rec_path = dir.join("image.json");
    let text = std::fs::read(&rec_path).map_err(|source| PublishError::Io {
        path: rec_path.clone(),
        source,
    })?;
    let rec: BuildOutput =
        serde_json::from_slice(&text).map_err(|source| PublishError::BuildRecord {
            path: rec_path.clone(),
            source,
        })?;
    let pick = |local: PathBuf, recorded: &Path| {
        if local.is_file() {
            local
        } else {
            recorded.to_path_buf()
        }
    };
    let root = pick(dir.join("root.img"), &rec.root_image);
    let kernel = pick(dir.join("kernel/vmlinuz"), &rec.kernel_image);
    let initrd = pick(dir.join("initrd.img"), &rec.initrd);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| PublishError::Io {
                path: p.to_path_buf(),
                source,
            })
    };
    let (root_size, kernel_size, initrd_size) = (size(&root)?, size(&kernel)?, size(&initrd)?);
    if root_size != rec.root_bytes {
        return Err(PublishError::Mismatch {
            path: root,
            what: format!(
                "{root_size} bytes, but image.json says {}; rebuild",
                rec.root_bytes
            ),
        });
    }
    {
        let mut f = std::fs::File::open(&root).map_err(|source| PublishError::Io {
            path: root.clone(),
            source,
        })?;
        berth_updater::verity::verify_image(
            &mut f,
            rec.data_blocks,
            &rec.verity_salt,
            &rec.root_hash,
            &mut |_| {},
        )
        .map_err(|source| PublishError::Verity {
            path: root.clone(),
            source,
        })?;
    }
    let cmdline = match cmdline {
        Some(c) => strip_berth_params(c.lines().next().unwrap_or("")),
        None => cmdline_from_esp(&dir.join("esp.img"))?,
    };
    Ok(BuildArtifact {
        config: OsConfig {
            version: rec.version,
            arch: rec.arch,
            build_id: rec.build_id,
            kernel_release: rec.kernel,
            verity_root_hash: rec.root_hash,
            verity_salt: rec.verity_salt,
            verity_data_blocks: rec.data_blocks,
            cmdline,
            root_size,
            kernel_size,
            initrd_size,
        },
        root,
        kernel,
        initrd,
    })
}

async fn push_file(
    client: &Client,
    r: &Reference,
    path: &Path,
    media_type: &str,
    progress: &Option<berth_registry::Progress>,
) -> Result<Descriptor, PublishError> {
    let (digest, size) = file_digest(path)?;
    let d = Descriptor::new(media_type, digest, size);
    let reg = |source| PublishError::Registry {
        reference: r.to_string(),
        source,
    };
    if !client.blob_exists(r, &d.digest).await.map_err(reg)? {
        client
            .push_blob_file(r, &d, path, progress.clone())
            .await
            .map_err(reg)?;
    }
    Ok(d)
}

/// Push the artifact of `build` to `r` (a tag), keeping other architectures in its index.
pub async fn publish(
    client: &Client,
    r: &Reference,
    build: &BuildArtifact,
    progress: Option<berth_registry::Progress>,
) -> Result<Published, PublishError> {
    let reg = |source| PublishError::Registry {
        reference: r.to_string(),
        source,
    };
    let root = push_file(client, r, &build.root, artifact::ROOT_MEDIA_TYPE, &progress).await?;
    let kernel = push_file(
        client,
        r,
        &build.kernel,
        artifact::KERNEL_MEDIA_TYPE,
        &progress,
    )
    .await?;
    let initrd = push_file(
        client,
        r,
        &build.initrd,
        artifact::INITRD_MEDIA_TYPE,
        &progress,
    )
    .await?;
    let cfg = build.config.to_bytes();
    let scratch = tempfile::NamedTempFile::new().map_err(|source| PublishError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let cfg_desc = berth_updater::signature::push_bytes(client, r, &cfg, scratch.path())
        .await
        .map_err(reg)?;
    let cfg_desc = Descriptor::new(artifact::CONFIG_MEDIA_TYPE, cfg_desc.digest, cfg_desc.size);
    let m = artifact::os_manifest(&build.config, cfg_desc, root, kernel, initrd);
    let mbytes = artifact::manifest_bytes(&m);
    let mdigest = Digest::of(&mbytes);
    client
        .push_manifest(
            &r.with_digest(&mdigest),
            mbytes.clone().into(),
            OCI_MANIFEST,
        )
        .await
        .map_err(reg)?;
    // The index: what the tag holds now (if an index), with this arch's entry replaced.
    let existing = match client.get_manifest(r).await {
        Ok((_, _, Manifest::Index(i))) => Some(i),
        Ok((_, _, Manifest::Image(_))) => None,
        Err(ClientError::Status { status: 404, .. }) => None,
        Err(e) => return Err(reg(e)),
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        artifact::VERSION_ANNOTATION.to_string(),
        build.config.version.clone(),
    );
    let entry = Descriptor {
        platform: Some(artifact::platform(&build.config.arch)),
        annotations,
        ..Descriptor::new(OCI_MANIFEST, mdigest.clone(), mbytes.len() as u64)
    };
    let index = artifact::merge_index(existing, entry);
    let ibytes = serde_json::to_vec(&index).unwrap_or_default();
    let idigest = client
        .push_manifest(r, ibytes.into(), OCI_INDEX)
        .await
        .map_err(reg)?;
    Ok(Published {
        reference: r.to_string(),
        index_digest: idigest,
        manifest_digest: mdigest,
        config: build.config.clone(),
        platforms: index.platforms(),
    })
}
