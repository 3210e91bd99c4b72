//! The updater's persistent record (`<state dir>/state.json`), written atomically after
//! every step so an interrupted apply resumes where it stopped.

use crate::bls::Slot;
use crate::fsutil;
use berth_registry::{Descriptor, Digest};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the state file failed.
    #[error("{what} the update state {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The version floor file exists but cannot be understood. The updater refuses to
    /// guess (no floor would let any old signed version back in).
    #[error("the version floor {path} is corrupt; remove it to start from the running version, or install with allow-downgrade")]
    FloorCorrupt {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Steps of an apply, in order. Each is recorded once it is complete.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Artifact resolved, signature, arch and version checked; nothing changed yet.
    Checked,
    /// The target slot's old boot entries are gone (nothing boots it any more).
    SlotReleased,
    /// Kernel and initrd downloaded and verified into the staging directory.
    BootFilesStaged,
    /// The root image is being streamed onto the slot (`written` bytes are durable).
    Writing,
    /// The whole root image is on the slot and its download digest matched.
    Written,
    /// Read back: sha256 and dm-verity root hash match.
    Verified,
    /// Kernel and initrd are on the ESP.
    BootFilesInstalled,
    /// The boot entry (`+3`) is written: the next boot tries the new slot.
    EntryWritten,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What is being installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// Reference it came from (repository:tag).
    pub reference: String,
    /// Digest of the tag's top manifest (what was signed).
    pub top_digest: Digest,
    /// Digest of the arch's manifest.
    pub manifest_digest: Digest,
    /// OS config of the image.
    pub config: crate::artifact::OsConfig,
    /// Root image layer.
    pub root: Descriptor,
    /// Kernel layer.
    pub kernel: Descriptor,
    /// Initrd layer.
    pub initrd: Descriptor,
    /// Key id that verified the signature.
    pub signed_by: String,
}

/// An apply in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// What is installed.
    pub target: Target,
    /// Slot being written.
    pub slot: Slot,
    /// Last completed step.
    pub step: Step,
    /// Root image bytes known to be on the slot (during [`Step::Writing`]).
    pub written: u64,
    /// When the job started (Unix seconds).
    pub started: u64,
}

/// The last check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckRecord {
    /// When (Unix seconds).
    pub at: u64,
    /// Version offered by the repository, when the check got that far.
    pub offered: Option<String>,
    /// Whether it is an update for this node.
    pub update_available: bool,
    /// The error, when the check failed.
    pub error: Option<String>,
}

/// How long an apply took, by part.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// Waiting for root image bytes from the registry.
    pub download_secs: f64,
    /// Writing (and syncing) them to the slot.
    pub write_secs: f64,
    /// Reading the slot back: sha256 and dm-verity tree.
    pub verify_secs: f64,
    /// Kernel and initrd download and install, entries.
    pub boot_files_secs: f64,
    /// Whole apply.
    pub total_secs: f64,
    /// Root image bytes downloaded by this run.
    pub downloaded_bytes: u64,
    /// Where this run resumed the root image (0 = from the start).
    pub resumed_from: u64,
}

/// The last apply.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplyRecord {
    /// When it ended (Unix seconds).
    pub at: u64,
    /// Version installed or attempted.
    pub version: Option<String>,
    /// Slot.
    pub slot: Option<Slot>,
    /// Whether it completed.
    pub ok: bool,
    /// What happened, in a sentence.
    pub message: String,
    /// Timings, when it completed.
    pub timings: Option<Timings>,
}

/// A version that did not boot healthy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedVersion {
    /// OS version.
    pub version: String,
    /// dm-verity root hash of that install (identifies the exact image).
    pub root_hash: Option<String>,
    /// Slot it was installed on.
    pub slot: Slot,
    /// When recorded (Unix seconds).
    pub at: u64,
    /// Why.
    pub reason: String,
}

/// The last rollback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollbackRecord {
    /// When (Unix seconds).
    pub at: u64,
    /// Slot made the default.
    pub to_slot: Slot,
    /// Its version.
    pub version: Option<String>,
    /// Entry written.
    pub entry: String,
}

/// Everything in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Last check.
    #[serde(default)]
    pub last_check: Option<CheckRecord>,
    /// Last apply.
    #[serde(default)]
    pub last_apply: Option<ApplyRecord>,
    /// Last rollback.
    #[serde(default)]
    pub last_rollback: Option<RollbackRecord>,
    /// Apply in progress.
    #[serde(default)]
    pub job: Option<Job>,
    /// Versions that failed to boot healthy.
    #[serde(default)]
    pub failed: Vec<FailedVersion>,
}

impl State {
    /// Path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Load (a missing or unreadable file is an empty state; a corrupt one is logged).
    pub fn load(dir: &Path) -> Self {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    "update state {} is corrupt, starting afresh: {e}",
                    p.display()
                );
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    /// Save atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let p = Self::path(dir);
        let io = |what, source| StateError::Io {
            what,
            path: p.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        fsutil::write_atomic(&p, &json).map_err(|e| io("writing", e))
    }

    /// Load, change and save under an exclusive lock (`<dir>/state.lock`), so concurrent
    /// writers (a check during an apply) do not lose each other's updates.
    pub fn modify<T>(dir: &Path, f: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        let lock_path = dir.join("state.lock");
        let io = |what, source| StateError::Io {
            what,
            path: lock_path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("opening the lock of", e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("locking", e.into()))?;
        let mut st = State::load(dir);
        let out = f(&mut st);
        st.save(dir)?;
        Ok(out)
    }

    /// Whether `version` (or the image with `root_hash`) is recorded as failed.
    pub fn is_failed(&self, version: &str, root_hash: &str) -> bool {
        self.failed
            .iter()
            .any(|f| f.version == version || f.root_hash.as_deref().is_some_and(|h| h == root_hash))
    }
}

/// The highest OS version this node ever installed (`<state dir>/version-floor.json`).
///
/// An update below the floor is refused (unless the operator allows a downgrade), not only
/// one below the running version: after a rollback from v2 to v1, an older signed image
/// (say a v1.5 with a known hole, replayed by whoever controls the registry) must not be
/// installable just because it is newer than v1. A rollback is not an install and never
/// looks at the floor.
///
/// It lives in a file of its own, not in `state.json`: that file is rewritten at every
/// write checkpoint and read leniently (a corrupt one starts afresh), which is fine for a
/// record of progress but not for a security boundary. A missing floor file means "none
/// recorded" (a node that never installed an update); a corrupt one is an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionFloor {
    /// OS version.
    pub version: String,
    /// dm-verity root hash of the install that set it.
    pub root_hash: String,
    /// When it was raised (Unix seconds).
    pub at: u64,
}

impl VersionFloor {
    /// Path of the floor file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("version-floor.json")
    }

    /// The recorded floor: `None` when none was ever recorded.
    pub fn load(dir: &Path) -> Result<Option<Self>, StateError> {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::FloorCorrupt { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                what: "reading",
                path: p,
                source,
            }),
        }
    }

    /// Raise the floor to `version` (write-new, fsync, rename, fsync the directory); a
    /// version at or below the recorded floor leaves it as it is (a deliberate downgrade
    /// does not lower it). Returns the floor now in force.
    pub fn raise(dir: &Path, version: &str, root_hash: &str) -> Result<Self, StateError> {
        let current = Self::load(dir)?;
        if let Some(f) = current {
            if !crate::version::is_newer(version, &f.version) {
                return Ok(f);
            }
        }
        let p = Self::path(dir);
        let io = |what, source| StateError::Io {
            what,
            path: p.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
        let f = Self {
            version: version.to_string(),
            root_hash: root_hash.to_string(),
            at: fsutil::now_unix(),
        };
        let json = serde_json::to_vec_pretty(&f).unwrap_or_default();
        fsutil::write_atomic(&p, &json).map_err(|e| io("writing", e))?;
        tracing::info!(floor = %version, "raised the OS version floor");
        Ok(f)
    }

    /// Whether `offered` is below this floor.
    pub fn refuses(&self, offered: &str) -> bool {
        crate::version::compare(offered, &self.version) == std::cmp::Ordering::Less
    }
}

impl Target {
    /// The fields in which `self` (a stored job's target) differs from `other` (the
    /// target just verified), by name; empty when it is the very same install.
    pub fn differences(&self, other: &Target) -> Vec<&'static str> {
        let (a, b) = (&self.config, &other.config);
        let mut d = Vec::new();
        let mut diff = |name, differ: bool| {
            if differ {
                d.push(name)
            }
        };
        diff("reference", self.reference != other.reference);
        diff("top_digest", self.top_digest != other.top_digest);
        diff(
            "manifest_digest",
            self.manifest_digest != other.manifest_digest,
        );
        diff("signed_by", self.signed_by != other.signed_by);
        diff("root", self.root != other.root);
        diff("kernel", self.kernel != other.kernel);
        diff("initrd", self.initrd != other.initrd);
        diff("version", a.version != b.version);
        diff("arch", a.arch != b.arch);
        diff("build_id", a.build_id != b.build_id);
        diff("kernel_release", a.kernel_release != b.kernel_release);
        diff("verity_root_hash", a.verity_root_hash != b.verity_root_hash);
        diff("verity_salt", a.verity_salt != b.verity_salt);
        diff(
            "verity_data_blocks",
            a.verity_data_blocks != b.verity_data_blocks,
        );
        diff("cmdline", a.cmdline != b.cmdline);
        diff("root_size", a.root_size != b.root_size);
        diff("kernel_size", a.kernel_size != b.kernel_size);
        diff("initrd_size", a.initrd_size != b.initrd_size);
        // Anything a later field adds is still compared, just not named.
        if d.is_empty() && self != other {
            d.push("other fields");
        }
        d
    }
}
