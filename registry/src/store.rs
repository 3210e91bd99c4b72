//! Content-addressed image store under a root directory (`/var/lib/berth/images` on the OS):
//!
//! ```text
//! ROOT/blobs/sha256/<hex>     verified blobs (manifests, configs, layers), immutable
//! ROOT/layers/sha256/<hex>/   unpacked layer (keyed by the layer blob digest), read-only lower dir
//! ROOT/refs.json              name -> manifest (or index) digest
//! ROOT/tmp/                   downloads and unpacks in progress; emptied on open
//! ROOT/lock                   flock: shared for pulls/imports, exclusive for gc
//! ```
//!
//! Everything appears by rename after verification (temp file, fsync, rename, fsync dir),
//! so a crash or a failed download never leaves a half-written blob or layer visible.

use crate::client::{Client, ClientError};
use crate::digest::{Digest, Hasher};
use crate::manifest::{
    Compression, Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest, ManifestError,
    Platform,
};
use crate::progress::{Progress, ProgressEvent};
use crate::reference::Reference;
use crate::unpack::{self, UnpackError, UnpackOptions};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Errors of the store. Each names the reference, digest or path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Talking to the registry failed.
    #[error("{op} {reference} failed")]
    Registry {
        /// pull / push.
        op: &'static str,
        /// Reference.
        reference: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The disk is full.
    #[error("disk full while writing {path}: free space (remove unused images and run gc) and retry; nothing half-written was kept")]
    DiskFull {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another filesystem error.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A layer could not be unpacked (unsafe, malformed or corrupt); it was discarded.
    #[error("layer {digest} could not be unpacked and was discarded")]
    Unpack {
        /// Layer digest.
        digest: Digest,
        /// Cause.
        #[source]
        source: UnpackError,
    },
    /// A blob's content does not match its digest.
    #[error("blob {expected} is corrupt (content hashes to {actual}); it was discarded")]
    Corrupt {
        /// Expected digest.
        expected: Digest,
        /// Actual digest.
        actual: Digest,
    },
    /// A blob the image needs is not in the store (or the layout).
    #[error("blob {digest} needed by {what} is missing")]
    MissingBlob {
        /// Digest.
        digest: Digest,
        /// Who needs it.
        what: String,
    },
    /// No such ref.
    #[error("no image named {0} in the store; pull or import it first")]
    NoRef(String),
    /// A stored manifest or config is invalid.
    #[error("{what} {digest} is invalid")]
    Manifest {
        /// manifest / config / index.
        what: &'static str,
        /// Digest.
        digest: Digest,
        /// Cause.
        #[source]
        source: ManifestError,
    },
    /// Image for another platform.
    #[error("{reference} is an image for {found}, not {wanted}; use an image built for {wanted}")]
    WrongPlatform {
        /// Reference.
        reference: String,
        /// Wanted.
        wanted: String,
        /// Found.
        found: String,
    },
    /// An index in the store or a layout has no entry for the platform.
    #[error("{reference} has no image for {wanted} (it offers: {available})")]
    NoPlatform {
        /// Reference.
        reference: String,
        /// Wanted.
        wanted: String,
        /// Offered.
        available: String,
    },
    /// An OCI image layout is unusable.
    #[error("OCI layout {dir}: {reason}")]
    Layout {
        /// Layout directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            StoreError::DiskFull {
                path: path.to_path_buf(),
                source,
            }
        } else {
            StoreError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// An image in the store, ready to run.
#[derive(Clone, Debug)]
pub struct Image {
    /// The name it was pulled or imported as.
    pub name: String,
    /// Digest of its (platform) manifest.
    pub digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
    /// Unpacked layer directories, base layer first (empty if not unpacked).
    pub layers: Vec<PathBuf>,
}

/// Options for [`Store::pull`].
#[derive(Clone)]
pub struct PullOptions {
    /// Platform to select from an index.
    pub platform: Platform,
    /// Unpack layers (in the same pass as the download).
    pub unpack: bool,
    /// Unpack settings.
    pub unpack_options: UnpackOptions,
    /// Layers downloaded at once.
    pub parallel: usize,
    /// Progress callback.
    pub progress: Progress,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: Platform::host(),
            unpack: true,
            unpack_options: UnpackOptions::default(),
            parallel: 4,
            progress: crate::progress::none(),
        }
    }
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs removed.
    pub blobs: usize,
    /// Bytes of blobs removed.
    pub bytes: u64,
    /// Unpacked layer directories removed.
    pub layers: usize,
}

type Locks = Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

/// The store. Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    locks: Arc<Locks>,
    refs_lock: Arc<Mutex<()>>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Store {
    /// Open (creating if needed) the store at `root`; removes leftovers in `tmp/`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let s = Self {
            root,
            locks: Arc::default(),
            refs_lock: Arc::default(),
        };
        // Leftovers from a crash: nobody else may use them unless a pull is running in
        // another process, so only remove them while holding the exclusive lock.
        if let Ok(Some(_l)) = s.try_lock_exclusive() {
            if let Ok(rd) = fs::read_dir(s.root.join("tmp")) {
                for e in rd.flatten() {
                    let p = e.path();
                    let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                }
            }
        }
        Ok(s)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `d` lives (it may not exist).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where the unpacked layer of blob `d` lives (it may not exist).
    pub fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(d.hex())
    }

    /// Whether blob `d` is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    fn lock_file(&self) -> Result<File, StoreError> {
        let p = self.root.join("lock");
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))
    }

    fn lock_shared(&self) -> Result<File, StoreError> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io_err("lock", &self.root)(e.into()))?;
        Ok(f)
    }

    fn lock_exclusive(&self) -> Result<File, StoreError> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &self.root)(e.into()))?;
        Ok(f)
    }

    fn try_lock_exclusive(&self) -> Result<Option<File>, StoreError> {
        let f = self.lock_file()?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(f)),
            Err(_) => Ok(None),
        }
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Read a blob fully (manifests, configs), verifying it.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let data = fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob {
                    digest: d.clone(),
                    what: "the store".into(),
                }
            } else {
                io_err("read", &p)(e)
            }
        })?;
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Store bytes as a blob after checking their digest (atomic, durable).
    pub fn write_blob(&self, d: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(data);
        if actual != *d {
            return Err(StoreError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        if self.has_blob(d) {
            return Ok(());
        }
        let tmp = self.tmp();
        let mut f =
            tempfile::NamedTempFile::new_in(&tmp).map_err(io_err("create a file in", &tmp))?;
        f.write_all(data).map_err(io_err("write", f.path()))?;
        self.commit_blob(f, d)
    }

    fn commit_blob(&self, f: tempfile::NamedTempFile, d: &Digest) -> Result<(), StoreError> {
        f.as_file().sync_all().map_err(io_err("sync", f.path()))?;
        let dst = self.blob_path(d);
        f.persist(&dst)
            .map_err(|e| io_err("rename into", &dst)(e.error))?;
        sync_dir(dst.parent().unwrap_or(&self.root))
    }

    /// Store a blob from a reader (verified while copying).
    pub fn write_blob_from(&self, d: &Digest, r: &mut dyn Read) -> Result<u64, StoreError> {
        let tmp = self.tmp();
        let mut f =
            tempfile::NamedTempFile::new_in(&tmp).map_err(io_err("create a file in", &tmp))?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read the source of", &self.blob_path(d))(e)),
            };
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(io_err("write", f.path()))?;
        }
        let len = h.len();
        let actual = h.finish();
        if actual != *d {
            return Err(StoreError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        self.commit_blob(f, d)?;
        Ok(len)
    }

    // ----- refs -----

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    /// All refs: name -> manifest (or index) digest.
    pub fn refs(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Io {
                op: "parse",
                path: p.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    fn update_refs(&self, f: impl FnOnce(&mut BTreeMap<String, Digest>)) -> Result<(), StoreError> {
        let _g = self.refs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let _l = self.lock_shared()?;
        let mut refs = self.refs()?;
        f(&mut refs);
        let data = serde_json::to_vec_pretty(&refs).map_err(|e| StoreError::Io {
            op: "encode",
            path: self.refs_path(),
            source: io::Error::other(e),
        })?;
        let tmp = self.tmp();
        let mut t =
            tempfile::NamedTempFile::new_in(&tmp).map_err(io_err("create a file in", &tmp))?;
        t.write_all(&data).map_err(io_err("write", t.path()))?;
        t.as_file().sync_all().map_err(io_err("sync", t.path()))?;
        let dst = self.refs_path();
        t.persist(&dst)
            .map_err(|e| io_err("rename into", &dst)(e.error))?;
        sync_dir(&self.root)
    }

    /// Point `name` at `digest`.
    pub fn set_ref(&self, name: &str, digest: &Digest) -> Result<(), StoreError> {
        self.update_refs(|r| {
            r.insert(name.to_string(), digest.clone());
        })
    }

    /// Remove a ref (its blobs go at the next [`Store::gc`]).
    pub fn remove_ref(&self, name: &str) -> Result<bool, StoreError> {
        let mut had = false;
        self.update_refs(|r| had = r.remove(name).is_some())?;
        Ok(had)
    }

    /// The digest `name` points at.
    pub fn resolve_ref(&self, name: &str) -> Result<Digest, StoreError> {
        self.refs()?
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoRef(name.to_string()))
    }

    fn parse_manifest(&self, d: &Digest) -> Result<Manifest, StoreError> {
        let b = self.read_blob(d)?;
        Manifest::parse(&b, None).map_err(|source| StoreError::Manifest {
            what: "manifest",
            digest: d.clone(),
            source,
        })
    }

    /// The image `name` (a ref) for `platform`, with its unpacked layer dirs (those present).
    pub fn image(&self, name: &str, platform: &Platform) -> Result<Image, StoreError> {
        let root = self.resolve_ref(name)?;
        let (digest, manifest) = match self.parse_manifest(&root)? {
            Manifest::Image(m) => (root, m),
            Manifest::Index(i) => {
                let d = i.select(platform).ok_or_else(|| StoreError::NoPlatform {
                    reference: name.to_string(),
                    wanted: platform.to_string(),
                    available: i.platforms().join(", "),
                })?;
                match self.parse_manifest(&d.digest)? {
                    Manifest::Image(m) => (d.digest.clone(), m),
                    Manifest::Index(_) => {
                        return Err(StoreError::Manifest {
                            what: "index",
                            digest: d.digest.clone(),
                            source: ManifestError::Invalid("nested index"),
                        })
                    }
                }
            }
        };
        let cb = self.read_blob(&manifest.config.digest)?;
        let config = ImageConfig::parse(&cb).map_err(|source| StoreError::Manifest {
            what: "config",
            digest: manifest.config.digest.clone(),
            source,
        })?;
        if !config.architecture.is_empty() && !platform.matches(&config.platform()) {
            return Err(StoreError::WrongPlatform {
                reference: name.to_string(),
                wanted: platform.to_string(),
                found: config.platform().to_string(),
            });
        }
        let layers = manifest
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.digest))
            .filter(|p| p.is_dir())
            .collect();
        Ok(Image {
            name: name.to_string(),
            digest,
            manifest,
            config,
            layers,
        })
    }

    /// The image `name` with every layer unpacked, unpacking from the stored blobs (each
    /// verified again while it is read) what is not unpacked yet. Used for images that
    /// arrived by [`Store::import_layout`], e.g. the system images shipped with the OS.
    pub fn unpack_image(
        &self,
        name: &str,
        platform: &Platform,
        uo: &UnpackOptions,
    ) -> Result<Image, StoreError> {
        let _l = self.lock_shared()?;
        let mut image = self.image(name, platform)?;
        for d in &image.manifest.layers {
            let Some(c) = Compression::from_media_type(&d.media_type) else {
                continue;
            };
            if self.layer_dir(&d.digest).is_dir() {
                continue;
            }
            let p = self.blob_path(&d.digest);
            let f = File::open(&p).map_err(io_err("open", &p))?;
            let mut src =
                HashingReader::new(io::BufReader::with_capacity(1 << 20, f), d.digest.clone());
            self.unpack_to_store(&mut src, d, c, uo, None)?;
        }
        image.layers = image
            .manifest
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.digest))
            .filter(|p| p.is_dir())
            .collect();
        Ok(image)
    }

    // ----- pull -----

    /// Pull `r` (manifest, config, layers; layers unpacked in the same pass when
    /// `opts.unpack`) and point the ref `r.to_string()` at the platform manifest.
    pub async fn pull(
        &self,
        client: &Client,
        r: &Reference,
        opts: &PullOptions,
    ) -> Result<Image, StoreError> {
        let reg = |source| StoreError::Registry {
            op: "pull of",
            reference: r.to_string(),
            source,
        };
        let _lock = {
            let s = self.clone();
            tokio::task::spawn_blocking(move || s.lock_shared())
                .await
                .map_err(|e| io_err("lock", &self.root)(io::Error::other(e)))??
        };
        let res = client.resolve(r, &opts.platform).await.map_err(reg)?;
        let m = &res.manifest;
        let total = m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        (opts.progress)(ProgressEvent::Resolved {
            manifest: res.manifest_digest.clone(),
            layers: m.layers.len(),
            total_bytes: total,
        });
        // Config first: a wrong-platform image fails before any layer is fetched.
        let cfg_bytes = if self.has_blob(&m.config.digest) {
            Bytes::from(self.read_blob(&m.config.digest)?)
        } else {
            let b = client.get_blob_bytes(r, &m.config).await.map_err(reg)?;
            self.write_blob(&m.config.digest, &b)?;
            b
        };
        let config = ImageConfig::parse(&cfg_bytes).map_err(|source| StoreError::Manifest {
            what: "config",
            digest: m.config.digest.clone(),
            source,
        })?;
        if !config.architecture.is_empty() && !opts.platform.matches(&config.platform()) {
            return Err(StoreError::WrongPlatform {
                reference: r.to_string(),
                wanted: opts.platform.to_string(),
                found: config.platform().to_string(),
            });
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
        let mut set = tokio::task::JoinSet::new();
        // On the first failure the other layers stop at their next read; we wait for
        // them so nothing is still writing when pull returns.
        let cancel = Arc::new(AtomicBool::new(false));
        for layer in m.layers.clone() {
            let cancel = cancel.clone();
            let (s, c, r2, o, sem) = (
                self.clone(),
                client.clone(),
                r.clone(),
                opts.clone(),
                sem.clone(),
            );
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                if cancel.load(Ordering::SeqCst) {
                    return Ok(());
                }
                s.fetch_layer(&c, &r2, &layer, &o, cancel).await
            });
        }
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            let res = res.unwrap_or_else(|e| {
                Err(StoreError::Io {
                    op: "run a layer task for",
                    path: self.root.clone(),
                    source: io::Error::other(e),
                })
            });
            if let Err(e) = res {
                if first_err.is_none() {
                    first_err = Some(e);
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Manifests last: a stored manifest means all its blobs are there.
        if let Some((b, d)) = &res.index {
            self.write_blob(d, b)?;
        }
        self.write_blob(&res.manifest_digest, &res.manifest_bytes)?;
        // The ref names what was asked for: the index when there is one (other platforms
        // can be pulled under the same name later), else the manifest.
        let name = r.to_string();
        let top = res.index.as_ref().map_or(&res.manifest_digest, |(_, d)| d);
        self.set_ref(&name, top)?;
        let layers = if opts.unpack {
            m.layers.iter().map(|l| self.layer_dir(&l.digest)).collect()
        } else {
            Vec::new()
        };
        Ok(Image {
            name,
            digest: res.manifest_digest.clone(),
            manifest: res.manifest,
            config,
            layers,
        })
    }

    fn digest_lock(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(d.clone())
            .or_default()
            .clone()
    }

    async fn fetch_layer(
        &self,
        client: &Client,
        r: &Reference,
        d: &Descriptor,
        o: &PullOptions,
        cancel: Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        // One download per digest in this process; later callers find it done.
        let lock = self.digest_lock(&d.digest);
        let _g = lock.lock().await;
        let compression = Compression::from_media_type(&d.media_type);
        let want_unpack = o.unpack && compression.is_some();
        let have_blob = self.has_blob(&d.digest);
        let have_layer = self.layer_dir(&d.digest).is_dir();
        if have_blob && (!want_unpack || have_layer) {
            (o.progress)(ProgressEvent::BlobDone {
                digest: d.digest.clone(),
                cached: true,
            });
            return Ok(());
        }
        (o.progress)(ProgressEvent::BlobStart {
            digest: d.digest.clone(),
            size: d.size,
        });
        let s = self.clone();
        let d2 = d.clone();
        let uo = o.unpack_options.clone();
        if have_blob {
            // Blob present, layer not unpacked yet: unpack from disk, verifying again.
            tokio::task::spawn_blocking(move || {
                let p = s.blob_path(&d2.digest);
                let f = File::open(&p).map_err(io_err("open", &p))?;
                let mut src =
                    HashingReader::new(io::BufReader::with_capacity(1 << 20, f), d2.digest.clone());
                s.unpack_to_store(
                    &mut src,
                    &d2,
                    compression.unwrap_or(Compression::None),
                    &uo,
                    None,
                )
            })
            .await
            .map_err(|e| io_err("unpack", &self.root)(io::Error::other(e)))??;
        } else {
            let stream = client.blob_stream_with(r, d, Some(o.progress.clone()));
            let rs = r.to_string();
            tokio::task::spawn_blocking(move || {
                let mut reader = stream.into_reader();
                let tmp = s.tmp();
                let file = tempfile::NamedTempFile::new_in(&tmp)
                    .map_err(io_err("create a file in", &tmp))?;
                let mut tee = Tee {
                    src: &mut reader,
                    file: io::BufWriter::with_capacity(1 << 20, file),
                    werr: None,
                    cancel,
                };
                let res = if want_unpack {
                    s.unpack_to_store(
                        &mut tee,
                        &d2,
                        compression.unwrap_or(Compression::None),
                        &uo,
                        Some(()),
                    )
                } else {
                    io::copy(&mut tee, &mut io::sink())
                        .map(|_| ())
                        .map_err(|e| map_read_err(e, &rs, &d2.digest, &s.blob_path(&d2.digest)))
                };
                if let Some(e) = tee.werr.take() {
                    return Err(io_err("write", &s.blob_path(&d2.digest))(e));
                }
                res.map_err(|e| match e {
                    // A transfer or digest failure surfaces as a read error inside the
                    // archive reader: report it as what it is.
                    StoreError::Unpack {
                        source: UnpackError::Archive(ioe),
                        digest,
                    } if ioe
                        .get_ref()
                        .is_some_and(|i| i.is::<ClientError>() || i.is::<CorruptBlob>()) =>
                    {
                        map_read_err(ioe, &rs, &digest, &s.blob_path(&digest))
                    }
                    e => e,
                })?;
                let file = tee
                    .file
                    .into_inner()
                    .map_err(|e| io_err("write", &s.blob_path(&d2.digest))(e.into_error()))?;
                s.commit_blob(file, &d2.digest)
            })
            .await
            .map_err(|e| io_err("download", &self.root)(io::Error::other(e)))??;
        }
        (o.progress)(ProgressEvent::BlobDone {
            digest: d.digest.clone(),
            cached: false,
        });
        Ok(())
    }

    /// Unpack `src` into a temp dir, drain and verify the source, then rename into place.
    /// `src` must fail (io error) at its end if its digest does not match.
    fn unpack_to_store<R: Read>(
        &self,
        src: &mut R,
        d: &Descriptor,
        c: Compression,
        uo: &UnpackOptions,
        _download: Option<()>,
    ) -> Result<(), StoreError> {
        let tmp = self.tmp();
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&tmp)
            .map_err(io_err("create a directory in", &tmp))?;
        if let Err(e) = unpack::unpack(src, c, dir.path(), uo) {
            if matches!(e, UnpackError::Archive(_)) {
                // A damaged archive is usually a damaged blob: if the rest of the stream
                // shows a digest or transfer error, report that instead.
                if let Err(drain) = io::copy(src, &mut io::sink()) {
                    if drain
                        .get_ref()
                        .is_some_and(|i| i.is::<ClientError>() || i.is::<CorruptBlob>())
                    {
                        return Err(StoreError::Unpack {
                            digest: d.digest.clone(),
                            source: UnpackError::Archive(drain),
                        });
                    }
                }
            }
            return Err(match e {
                UnpackError::Io { path, source, .. }
                    if source.kind() == io::ErrorKind::StorageFull
                        || source.raw_os_error() == Some(28) =>
                {
                    StoreError::DiskFull { path, source }
                }
                e => StoreError::Unpack {
                    digest: d.digest.clone(),
                    source: e,
                },
            });
        }
        // Whatever follows the tar end still counts for the digest.
        io::copy(src, &mut io::sink()).map_err(|e| StoreError::Unpack {
            digest: d.digest.clone(),
            source: UnpackError::Archive(e),
        })?;
        // Durable before it becomes visible.
        let f = File::open(dir.path()).map_err(io_err("open", dir.path()))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err("sync", dir.path())(e.into()))?;
        let dst = self.layer_dir(&d.digest);
        let kept = dir.keep();
        if let Err(e) = fs::rename(&kept, &dst) {
            let _ = fs::remove_dir_all(&kept);
            if dst.is_dir() {
                return Ok(()); // another process won the race with the same content
            }
            return Err(io_err("rename into", &dst)(e));
        }
        sync_dir(dst.parent().unwrap_or(&self.root))
    }

    /// A verified reader over a stored blob.
    pub fn open_blob(&self, d: &Digest) -> Result<impl Read, StoreError> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob {
                    digest: d.clone(),
                    what: "the store".into(),
                }
            } else {
                io_err("open", &p)(e)
            }
        })?;
        Ok(HashingReader::new(
            io::BufReader::with_capacity(1 << 20, f),
            d.clone(),
        ))
    }

    // ----- push -----

    /// Push the image `name` (manifest or index with all its children) to `dst`.
    /// `mount_from`: a repository on the same registry to cross-mount blobs from.
    pub async fn push(
        &self,
        client: &Client,
        name: &str,
        dst: &Reference,
        mount_from: Option<&str>,
        progress: &Progress,
    ) -> Result<Digest, StoreError> {
        let root = self.resolve_ref(name)?;
        let reg = |source| StoreError::Registry {
            op: "push to",
            reference: dst.to_string(),
            source,
        };
        let bytes = Bytes::from(self.read_blob(&root)?);
        match self.parse_manifest(&root)? {
            Manifest::Image(m) => {
                self.push_image(client, &m, dst, mount_from, progress)
                    .await?;
            }
            Manifest::Index(i) => {
                for child in &i.manifests {
                    let Manifest::Image(m) = self.parse_manifest(&child.digest)? else {
                        return Err(StoreError::Manifest {
                            what: "index",
                            digest: root.clone(),
                            source: ManifestError::Invalid("nested index"),
                        });
                    };
                    self.push_image(client, &m, dst, mount_from, progress)
                        .await?;
                    let cb = Bytes::from(self.read_blob(&child.digest)?);
                    client
                        .push_manifest(&dst.with_digest(&child.digest), cb, &child.media_type)
                        .await
                        .map_err(reg)?;
                }
            }
        }
        let mt = Manifest::parse(&bytes, None)
            .map(|m| m.media_type().to_string())
            .unwrap_or_default();
        client.push_manifest(dst, bytes, &mt).await.map_err(reg)
    }

    async fn push_image(
        &self,
        client: &Client,
        m: &ImageManifest,
        dst: &Reference,
        mount_from: Option<&str>,
        progress: &Progress,
    ) -> Result<(), StoreError> {
        let reg = |source| StoreError::Registry {
            op: "push to",
            reference: dst.to_string(),
            source,
        };
        for d in std::iter::once(&m.config).chain(&m.layers) {
            if !self.has_blob(&d.digest) {
                return Err(StoreError::MissingBlob {
                    digest: d.digest.clone(),
                    what: format!("the push to {dst}"),
                });
            }
            if client.blob_exists(dst, &d.digest).await.map_err(reg)? {
                progress(ProgressEvent::BlobDone {
                    digest: d.digest.clone(),
                    cached: true,
                });
                continue;
            }
            if let Some(from) = mount_from {
                if client.mount_blob(dst, &d.digest, from).await.map_err(reg)? {
                    progress(ProgressEvent::BlobDone {
                        digest: d.digest.clone(),
                        cached: true,
                    });
                    continue;
                }
            }
            progress(ProgressEvent::BlobStart {
                digest: d.digest.clone(),
                size: d.size,
            });
            client
                .push_blob_file(dst, d, &self.blob_path(&d.digest), Some(progress.clone()))
                .await
                .map_err(reg)?;
            progress(ProgressEvent::BlobDone {
                digest: d.digest.clone(),
                cached: false,
            });
        }
        Ok(())
    }

    // ----- OCI image layouts -----

    /// Import `tag` from the OCI image layout at `dir` (every blob verified) as `name`.
    pub fn import_layout(&self, dir: &Path, tag: &str, name: &str) -> Result<Digest, StoreError> {
        let _l = self.lock_shared()?;
        let lay = |reason: String| StoreError::Layout {
            dir: dir.to_path_buf(),
            reason,
        };
        let ip = dir.join("index.json");
        let b = fs::read(&ip).map_err(|e| lay(format!("cannot read index.json: {e}")))?;
        let index: ImageIndex =
            serde_json::from_slice(&b).map_err(|e| lay(format!("bad index.json: {e}")))?;
        let desc = index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .ok_or_else(|| lay(format!("no image tagged {tag:?}")))?
            .clone();
        let copy = |d: &Digest| -> Result<(), StoreError> {
            if self.has_blob(d) {
                return Ok(());
            }
            let p = dir.join("blobs/sha256").join(d.hex());
            let mut f = File::open(&p).map_err(|_| StoreError::MissingBlob {
                digest: d.clone(),
                what: format!("layout {}", dir.display()),
            })?;
            self.write_blob_from(d, &mut f).map(|_| ())
        };
        // Children before parents, so a stored manifest always has its blobs.
        let mut stack = vec![(desc.digest.clone(), false)];
        while let Some((d, expanded)) = stack.pop() {
            if expanded {
                copy(&d)?;
                continue;
            }
            let p = dir.join("blobs/sha256").join(d.hex());
            let mb = fs::read(&p).map_err(|_| StoreError::MissingBlob {
                digest: d.clone(),
                what: format!("layout {}", dir.display()),
            })?;
            let m = Manifest::parse(&mb, None).map_err(|source| StoreError::Manifest {
                what: "manifest",
                digest: d.clone(),
                source,
            })?;
            stack.push((d.clone(), true));
            for c in m.children() {
                match &m {
                    Manifest::Index(_) => stack.push((c.digest.clone(), false)),
                    Manifest::Image(_) => copy(&c.digest)?,
                }
            }
        }
        self.set_ref(name, &desc.digest)?;
        Ok(desc.digest)
    }

    /// Export the image `name` (and everything it references) into the OCI image layout
    /// at `dir` under `tag`, creating the layout if needed.
    pub fn export_layout(&self, name: &str, dir: &Path, tag: &str) -> Result<Digest, StoreError> {
        let root = self.resolve_ref(name)?;
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        let lp = dir.join("oci-layout");
        fs::write(&lp, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("write", &lp))?;
        let mut todo = vec![root.clone()];
        let mut root_mt = String::new();
        let mut root_platform = None;
        while let Some(d) = todo.pop() {
            let m = self.parse_manifest(&d)?;
            if d == root {
                root_mt = m.media_type().to_string();
            }
            for c in m.children() {
                match &m {
                    Manifest::Index(_) => todo.push(c.digest.clone()),
                    Manifest::Image(_) => self.export_blob(&c.digest, &blobs)?,
                }
                if d == root && root_platform.is_none() {
                    root_platform = c.platform.clone();
                }
            }
            self.export_blob(&d, &blobs)?;
        }
        let ip = dir.join("index.json");
        let mut index = match fs::read(&ip) {
            Ok(b) => serde_json::from_slice::<ImageIndex>(&b).map_err(|e| StoreError::Layout {
                dir: dir.to_path_buf(),
                reason: format!("bad index.json: {e}"),
            })?,
            Err(_) => ImageIndex {
                schema_version: 2,
                media_type: Some(crate::manifest::OCI_INDEX.into()),
                manifests: Vec::new(),
                annotations: BTreeMap::new(),
            },
        };
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
        let size = fs::metadata(self.blob_path(&root))
            .map_err(io_err("stat", &self.blob_path(&root)))?
            .len();
        let mut desc = Descriptor::new(&root_mt, root.clone(), size);
        desc.annotations.insert(REF_NAME.into(), tag.into());
        index.manifests.push(desc);
        let data =
            serde_json::to_vec(&index).map_err(|e| io_err("encode", &ip)(io::Error::other(e)))?;
        let mut t =
            tempfile::NamedTempFile::new_in(dir).map_err(io_err("create a file in", dir))?;
        t.write_all(&data).map_err(io_err("write", &ip))?;
        t.as_file().sync_all().map_err(io_err("sync", &ip))?;
        t.persist(&ip)
            .map_err(|e| io_err("rename into", &ip)(e.error))?;
        Ok(root)
    }

    fn export_blob(&self, d: &Digest, blobs: &Path) -> Result<(), StoreError> {
        let dst = blobs.join(d.hex());
        if dst.exists() {
            return Ok(());
        }
        let src = self.blob_path(d);
        if !src.exists() {
            return Err(StoreError::MissingBlob {
                digest: d.clone(),
                what: "the export".into(),
            });
        }
        if fs::hard_link(&src, &dst).is_ok() {
            return Ok(());
        }
        let tmp = dst.with_extension("part");
        fs::copy(&src, &tmp).map_err(io_err("copy", &dst))?;
        fs::rename(&tmp, &dst).map_err(io_err("rename into", &dst))
    }

    // ----- garbage collection -----

    /// Remove blobs and unpacked layers no ref reaches, and leftovers in `tmp/`.
    /// Takes the store's exclusive lock (waits for pulls in other processes).
    /// Callers must keep a ref for every image a running container uses.
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let _l = self.lock_exclusive()?;
        let mut live: HashSet<Digest> = HashSet::new();
        let mut layers: HashSet<Digest> = HashSet::new();
        let mut todo: Vec<Digest> = self.refs()?.into_values().collect();
        while let Some(d) = todo.pop() {
            if !live.insert(d.clone()) || !self.has_blob(&d) {
                continue;
            }
            let Ok(b) = fs::read(self.blob_path(&d)) else {
                continue;
            };
            match Manifest::parse(&b, None) {
                Ok(Manifest::Index(i)) => todo.extend(i.manifests.into_iter().map(|m| m.digest)),
                Ok(Manifest::Image(m)) => {
                    live.insert(m.config.digest.clone());
                    for l in m.layers {
                        live.insert(l.digest.clone());
                        layers.insert(l.digest);
                    }
                }
                Err(_) => {}
            }
        }
        let mut st = GcStats::default();
        let bdir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&bdir)
            .map_err(io_err("list", &bdir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| live.contains(&d));
            if !keep {
                st.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
                st.blobs += 1;
            }
        }
        let ldir = self.root.join("layers/sha256");
        for e in fs::read_dir(&ldir)
            .map_err(io_err("list", &ldir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| layers.contains(&d));
            if !keep {
                fs::remove_dir_all(e.path()).map_err(io_err("remove", &e.path()))?;
                st.layers += 1;
            }
        }
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))?.flatten() {
            let p = e.path();
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        sync_dir(&bdir)?;
        Ok(st)
    }
}

fn map_read_err(e: io::Error, reference: &str, digest: &Digest, path: &Path) -> StoreError {
    // A ClientError travels inside the io::Error from the blob reader.
    if e.get_ref().is_some_and(|i| i.is::<ClientError>()) {
        if let Ok(inner) = e
            .into_inner()
            .expect("checked above")
            .downcast::<ClientError>()
        {
            return StoreError::Registry {
                op: "pull of",
                reference: reference.to_string(),
                source: *inner,
            };
        }
        unreachable!("type checked above");
    }
    if e.get_ref().is_some_and(|i| i.is::<CorruptBlob>()) {
        return StoreError::Corrupt {
            expected: digest.clone(),
            actual: digest.clone(),
        };
    }
    io_err("download", path)(e)
}

/// Copies everything read from `src` into `file` (write errors kept for later, so the
/// reader side reports the read error and the caller the write error).
struct Tee<'a, R: Read> {
    src: &'a mut R,
    file: io::BufWriter<tempfile::NamedTempFile>,
    werr: Option<io::Error>,
    cancel: Arc<AtomicBool>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "cancelled: another layer of this image failed",
            ));
        }
        let n = self.src.read(buf)?;
        if self.werr.is_none() {
            if let Err(e) = self.file.write_all(&buf[..n]) {
                let msg = e.to_string();
                self.werr = Some(e);
                return Err(io::Error::other(msg));
            }
        } else {
            return Err(io::Error::other("write failed"));
        }
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("blob content does not match its digest")]
struct CorruptBlob;

/// Hashes what passes through; fails at EOF when the digest does not match.
struct HashingReader<R> {
    inner: R,
    h: Hasher,
    want: Digest,
}

impl<R> HashingReader<R> {
    fn new(inner: R, want: Digest) -> Self {
        Self {
            inner,
            h: Hasher::new(),
            want,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let got = std::mem::take(&mut self.h).finish();
            if got != self.want {
                return Err(io::Error::new(io::ErrorKind::InvalidData, CorruptBlob));
            }
            self.h = Hasher::new(); // later reads at EOF: check again against empty
            self.want = Digest::of(b"");
            return Ok(0);
        }
        self.h.update(&buf[..n]);
        Ok(n)
    }
}

fn sync_dir(p: &Path) -> Result<(), StoreError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", p))
}
