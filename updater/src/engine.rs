//! The update operations: check, apply, status, bless, rollback, boot check.

use crate::artifact::{self, ArtifactError, OsImage};
use crate::bls::{self, BlsError, EntryName, Slot};
use crate::fsutil;
use crate::node::{Running, SlotDevices};
use crate::signature::{self, PublicKey, SignatureError};
use crate::state::{
    ApplyRecord, CheckRecord, FailedVersion, Job, RollbackRecord, State, StateError, Step, Target,
    Timings, VersionFloor,
};
use crate::verity::{self, VerityError};
use crate::version;
use berth_registry::digest::Hasher;
use berth_registry::{Client, ClientError, Descriptor, Digest, ProgressEvent, Reference};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Bytes written between durable checkpoints of the slot write. Root images are 12-14 MiB
/// today, so a checkpoint every 4 MiB lets an interrupted apply resume; one fdatasync and
/// a small state file write per 4 MiB cost little next to the download.
pub const CHECKPOINT: u64 = 4 << 20;

/// Everything the updater needs; see the crate docs for where each part comes from on a
/// node.
#[derive(Clone)]
pub struct Settings {
    /// Repository and tag to update from (`update.source`).
    pub source: Option<Reference>,
    /// Trusted public keys.
    pub trusted_keys: Vec<PublicKey>,
    /// Persistent state directory (normally `/var/lib/berth/update`).
    pub state_dir: PathBuf,
    /// Where the ESP is mounted (normally `/run/berth/esp`); any directory works.
    pub esp: PathBuf,
    /// Slot partitions (block devices, or files in tests).
    pub slots: SlotDevices,
    /// The running system.
    pub running: Running,
}

/// Errors of the update operations. Each says what failed and on what.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// No `update.source` configured and none given.
    #[error("no update source: set update.source in the config (e.g. \"registry.example.com/berth/os:stable\")")]
    NoSource,
    /// Artifact lookup failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// Signature check failed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The offered version is not newer.
    #[error("{reference} offers {offered}, which is not newer than the running {running}; use allow-downgrade to install it anyway")]
    NotNewer {
        /// Reference.
        reference: String,
        /// Version offered.
        offered: String,
        /// Version running.
        running: String,
    },
    /// The offered version is below the highest version this node ever installed.
    #[error("{reference} offers {offered}, which is below this node's version floor {floor} (the highest version it ever installed; a rollback does not lower it); use allow-downgrade (`osctl update apply --allow-downgrade`) to install it anyway")]
    BelowFloor {
        /// Reference.
        reference: String,
        /// Version offered.
        offered: String,
        /// The floor.
        floor: String,
    },
    /// The offered version failed before.
    #[error(
        "version {version} failed to boot healthy before ({reason}); use force to try it again"
    )]
    FailedBefore {
        /// Version.
        version: String,
        /// Why it was recorded.
        reason: String,
    },
    /// Another update operation holds the lock.
    #[error("another update operation is running (lock {path})")]
    Busy {
        /// Lock file.
        path: PathBuf,
    },
    /// The apply was cancelled; it resumes from where it stopped.
    #[error("the update was cancelled during {step}; apply again to resume")]
    Cancelled {
        /// Last completed step.
        step: Step,
    },
    /// Local file or device I/O failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Boot entry handling failed.
    #[error(transparent)]
    Bls(#[from] BlsError),
    /// State file handling failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A download failed.
    #[error("downloading {what} of {version} failed")]
    Download {
        /// Which part.
        what: &'static str,
        /// Version.
        version: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The slot partition is too small.
    #[error("slot {slot} ({path}) has {size} bytes; the root image needs {need}")]
    SlotTooSmall {
        /// Slot.
        slot: Slot,
        /// Device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Needed.
        need: u64,
    },
    /// What was read back from the slot is not what was downloaded.
    #[error("slot {slot} ({path}) reads back as {actual}, not the root image {expected}: the disk did not keep what was written")]
    ReadBack {
        /// Slot.
        slot: Slot,
        /// Device.
        path: PathBuf,
        /// Layer digest.
        expected: Digest,
        /// Digest read back.
        actual: Digest,
    },
    /// The dm-verity check of the written slot failed.
    #[error("slot {slot} ({path}) failed the dm-verity check")]
    Verity {
        /// Slot.
        slot: Slot,
        /// Device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: VerityError,
    },
    /// The target partition is the running root.
    #[error("slot {slot}'s partition {path} is the running root; refusing to write it")]
    RunningRoot {
        /// Slot.
        slot: Slot,
        /// Device.
        path: PathBuf,
    },
    /// The running slot has no boot entry, so an interrupted update could leave nothing
    /// to boot.
    #[error("the running slot {slot} has no boot entry in {dir}; refusing to update (is the ESP mounted there?)")]
    NoRunningEntry {
        /// Slot.
        slot: Slot,
        /// Entries directory.
        dir: PathBuf,
    },
    /// Nothing to roll back to.
    #[error("slot {slot} has no bootable install to roll back to ({why})")]
    NoRollbackTarget {
        /// Slot.
        slot: Slot,
        /// Why.
        why: String,
    },
    /// A worker thread died.
    #[error("the {what} worker failed")]
    Worker {
        /// Which.
        what: &'static str,
    },
}

fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, UpdateError> {
    r.map_err(|source| UpdateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Events of an apply, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyEvent {
    /// A step starts (`detail` says what it does).
    Step {
        /// Step being worked on (it is recorded as done once complete).
        step: Step,
        /// What it does, in words.
        detail: String,
    },
    /// Download progress (the registry client's events).
    Download(ProgressEvent),
    /// Bytes read back from the slot while verifying.
    Verify {
        /// Bytes in this step.
        n: u64,
        /// Total to read.
        total: u64,
    },
}

/// Progress callback for [`Updater::apply`].
pub type ApplyProgress = Arc<dyn Fn(ApplyEvent) + Send + Sync>;

/// Options of [`Updater::apply`].
#[derive(Clone, Default)]
pub struct ApplyOptions {
    /// Install even if the version is not newer than the running one.
    pub allow_downgrade: bool,
    /// Install even if the version is recorded as failed.
    pub force: bool,
    /// Progress events.
    pub progress: Option<ApplyProgress>,
    /// Set to stop the apply at the next checkpoint (it resumes on the next apply).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Bytes between durable checkpoints of the slot write; 0 means [`CHECKPOINT`].
    pub checkpoint_bytes: u64,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// Reference checked.
    pub reference: String,
    /// Version offered for this arch.
    pub version: String,
    /// Arch.
    pub arch: String,
    /// Running version.
    pub running_version: String,
    /// Offered version is newer than the running one.
    pub newer: bool,
    /// Offered version is recorded as failed.
    pub failed_before: bool,
    /// Offered version is below the node's version floor (the highest it ever installed).
    #[serde(default)]
    pub below_floor: bool,
    /// The version floor, if one is recorded.
    #[serde(default)]
    pub version_floor: Option<String>,
    /// It is already installed on the other slot, waiting for a reboot.
    pub already_installed: bool,
    /// Whether `apply` (without options) would install it.
    pub update_available: bool,
    /// Digest of the tag's top manifest.
    pub top_digest: Digest,
    /// Digest of this arch's manifest.
    pub manifest_digest: Digest,
    /// Id of the trusted key that signed it.
    pub signed_by: String,
    /// Root image, kernel, initrd sizes (bytes).
    pub root_bytes: u64,
    /// Kernel size.
    pub kernel_bytes: u64,
    /// Initrd size.
    pub initrd_bytes: u64,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplyOutcome {
    /// Version installed.
    pub version: String,
    /// Slot written.
    pub slot: Slot,
    /// Boot entry written (file name), which boots next.
    pub entry: String,
    /// Nothing was done: it was already installed.
    pub already_installed: bool,
    /// Timings.
    pub timings: Timings,
}

/// State of the slot that is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtherSlotState {
    /// No boot entry: empty, or being written.
    Empty,
    /// An apply is in progress on it.
    Installing,
    /// Newly installed with boot counting: it boots next.
    Pending,
    /// Blessed and newest: it boots next and stays (after a rollback).
    Next,
    /// Older, bootable: the fallback if the running slot fails.
    Fallback,
    /// Its tries ran out: it failed to boot healthy.
    Failed,
}

/// One entry, as shown in the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryStatus {
    /// File name.
    pub file: String,
    /// Slot.
    pub slot: Slot,
    /// Version line.
    pub version: Option<String>,
    /// Generation.
    pub generation: u64,
    /// Tries left (None = blessed).
    pub tries_left: Option<u32>,
    /// Tries done.
    pub tries_done: Option<u32>,
}

impl From<&bls::Entry> for EntryStatus {
    fn from(e: &bls::Entry) -> Self {
        Self {
            file: e.file.clone(),
            slot: e.name.slot,
            version: e.version.clone(),
            generation: e.name.generation,
            tries_left: e.name.tries_left,
            tries_done: e.name.tries_done,
        }
    }
}

/// The apply in progress, as shown in the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobStatus {
    /// Version.
    pub version: String,
    /// Slot.
    pub slot: Slot,
    /// Last completed step.
    pub step: Step,
    /// Root bytes written.
    pub written: u64,
    /// Root size.
    pub total: u64,
}

/// `osctl update status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Configured source.
    pub source: Option<String>,
    /// Running slot.
    pub running_slot: Slot,
    /// Running version.
    pub running_version: String,
    /// The running slot's newest entry.
    pub running_entry: Option<EntryStatus>,
    /// Whether the running entry is blessed (no counter).
    pub blessed: bool,
    /// The other slot.
    pub other_slot: Slot,
    /// Its version (from its entry), if it has one.
    pub other_version: Option<String>,
    /// Its state.
    pub other_state: OtherSlotState,
    /// Its newest entry.
    pub other_entry: Option<EntryStatus>,
    /// The entry systemd-boot picks next.
    pub next_boot: Option<EntryStatus>,
    /// Apply in progress.
    pub in_progress: Option<JobStatus>,
    /// Last check.
    pub last_check: Option<CheckRecord>,
    /// Last apply.
    pub last_apply: Option<ApplyRecord>,
    /// Last rollback.
    pub last_rollback: Option<RollbackRecord>,
    /// Versions that failed to boot healthy.
    pub failed_versions: Vec<FailedVersion>,
    /// The highest version this node ever installed: updates below it are refused
    /// unless a downgrade is allowed. `None`: no install recorded (or the file is
    /// unreadable, which the log says and an apply refuses).
    #[serde(default)]
    pub version_floor: Option<VersionFloor>,
}

/// What [`Updater::boot_check`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BootCheck {
    /// Running the newest blessed install.
    Normal,
    /// Running a new install that is not blessed yet: sysd blesses it once healthy.
    AwaitingBless {
        /// Tries left on its entry.
        tries_left: Option<u32>,
    },
    /// An install on the other slot waits for a reboot.
    UpdatePending {
        /// Its version.
        version: Option<String>,
    },
    /// The newest install ran out of tries and systemd-boot fell back to this slot; its
    /// version is now recorded as failed.
    FellBack {
        /// Version that failed.
        failed_version: String,
        /// Slot it was on.
        slot: Slot,
    },
}

/// What [`Updater::bless`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Blessed {
    /// Renamed `from` to `to`.
    Blessed {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// The running entry had no counter.
    AlreadyBlessed {
        /// Its name.
        entry: String,
    },
    /// The running slot has no entry (nothing to bless).
    NoEntry,
}

struct Lock {
    _f: fs::File,
}

/// The updater of one node.
pub struct Updater {
    settings: Settings,
    client: Client,
}

fn emit(p: &Option<ApplyProgress>, ev: ApplyEvent) {
    if let Some(p) = p {
        p(ev)
    }
}

impl Updater {
    /// An updater with these settings, talking to registries through `client`.
    pub fn new(settings: Settings, client: Client) -> Self {
        Self { settings, client }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> Result<Lock, UpdateError> {
        let dir = &self.settings.state_dir;
        io("creating", dir, fs::create_dir_all(dir))?;
        let p = dir.join("lock");
        let f = io(
            "opening",
            &p,
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p),
        )?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Lock { _f: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(UpdateError::Busy { path: p }),
            Err(e) => Err(UpdateError::Io {
                what: "locking",
                path: p,
                source: e.into(),
            }),
        }
    }

    fn source(&self, r: Option<&Reference>) -> Result<Reference, UpdateError> {
        r.or(self.settings.source.as_ref())
            .cloned()
            .ok_or(UpdateError::NoSource)
    }

    /// Resolve the source for this arch and verify its signature (top manifest first,
    /// then the arch's manifest).
    async fn resolve_verified(&self, r: &Reference) -> Result<(OsImage, String), UpdateError> {
        let os = artifact::resolve(&self.client, r, &self.settings.running.arch).await?;
        let keys = &self.settings.trusted_keys;
        match signature::verify(&self.client, r, &os.top_digest, keys).await {
            Ok(id) => Ok((os, id)),
            Err(e) if os.manifest_digest != os.top_digest => {
                match signature::verify(&self.client, r, &os.manifest_digest, keys).await {
                    Ok(id) => Ok((os, id)),
                    Err(_) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn installed_on_other(&self, os: &OsImage) -> Result<bool, UpdateError> {
        let other = self.settings.running.slot.other();
        let needle = format!("berth.verity={} ", os.config.verity_root_hash);
        Ok(bls::list(&self.settings.esp)?.iter().any(|e| {
            e.name.slot == other
                && !e.name.exhausted()
                && e.options
                    .as_deref()
                    .is_some_and(|o| format!("{o} ").contains(&needle))
        }))
    }

    /// Newest version in the source for this arch, signature verified, compared with the
    /// running one. `source` overrides the configured one. The result (or error) is
    /// recorded for [`Updater::status`].
    pub async fn check(&self, source: Option<&Reference>) -> Result<CheckResult, UpdateError> {
        let r = self.source(source)?;
        let res = self.check_inner(&r).await;
        let rec = match &res {
            Ok(c) => CheckRecord {
                at: fsutil::now_unix(),
                offered: Some(c.version.clone()),
                update_available: c.update_available,
                error: None,
            },
            Err(e) => CheckRecord {
                at: fsutil::now_unix(),
                offered: None,
                update_available: false,
                error: Some(e.to_string()),
            },
        };
        State::modify(&self.settings.state_dir, |st| st.last_check = Some(rec))?;
        res
    }

    async fn check_inner(&self, r: &Reference) -> Result<CheckResult, UpdateError> {
        let (os, signed_by) = self.resolve_verified(r).await?;
        let st = State::load(&self.settings.state_dir);
        let running = &self.settings.running;
        let newer = version::is_newer(&os.config.version, &running.version);
        let floor = VersionFloor::load(&self.settings.state_dir)?;
        let below_floor = floor
            .as_ref()
            .is_some_and(|f| f.refuses(&os.config.version));
        let failed_before = st.is_failed(&os.config.version, &os.config.verity_root_hash);
        let already_installed = self.installed_on_other(&os)?;
        Ok(CheckResult {
            reference: r.to_string(),
            version: os.config.version.clone(),
            arch: os.config.arch.clone(),
            running_version: running.version.clone(),
            newer,
            failed_before,
            below_floor,
            version_floor: floor.map(|f| f.version),
            already_installed,
            update_available: newer && !below_floor && !failed_before && !already_installed,
            top_digest: os.top_digest.clone(),
            manifest_digest: os.manifest_digest.clone(),
            signed_by,
            root_bytes: os.root.size,
            kernel_bytes: os.kernel.size,
            initrd_bytes: os.initrd.size,
        })
    }

    /// Install the newest version from the source on the other slot and make it boot
    /// next (with boot counting). See the crate docs for the steps and their crash
    /// safety. Resumes an interrupted apply of the same image.
    pub async fn apply(
        &self,
        source: Option<&Reference>,
        opts: &ApplyOptions,
    ) -> Result<ApplyOutcome, UpdateError> {
        let _lock = self.lock()?;
        let r = self.source(source)?;
        let started = Instant::now();
        let res = self.apply_inner(&r, opts, started).await;
        State::modify(&self.settings.state_dir, |st| self.record_apply(st, &res))?;
        res
    }

    fn record_apply(&self, st: &mut State, res: &Result<ApplyOutcome, UpdateError>) {
        let (version, slot) = match &st.job {
            Some(j) => (Some(j.target.config.version.clone()), Some(j.slot)),
            None => (None, None),
        };
        st.last_apply = Some(match res {
            Ok(o) => ApplyRecord {
                at: fsutil::now_unix(),
                version: Some(o.version.clone()),
                slot: Some(o.slot),
                ok: true,
                message: if o.already_installed {
                    format!("{} was already installed on slot {}", o.version, o.slot)
                } else {
                    format!(
                        "installed {} on slot {}; it boots next ({})",
                        o.version, o.slot, o.entry
                    )
                },
                timings: Some(o.timings.clone()),
            },
            Err(e) => ApplyRecord {
                at: fsutil::now_unix(),
                version,
                slot,
                ok: false,
                message: e.to_string(),
                timings: None,
            },
        });
        if res.is_ok() {
            st.job = None;
        }
    }

    fn save_job(&self, job: &Job) -> Result<(), UpdateError> {
        State::modify(&self.settings.state_dir, |st| st.job = Some(job.clone()))?;
        Ok(())
    }

    fn cancelled(opts: &ApplyOptions) -> bool {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    async fn apply_inner(
        &self,
        r: &Reference,
        opts: &ApplyOptions,
        started: Instant,
    ) -> Result<ApplyOutcome, UpdateError> {
        let s = &self.settings;
        let running = &s.running;
        let slot = running.slot.other();
        let dev = s.slots.get(slot).to_path_buf();
        if let Some(rp) = &running.root_partition {
            if *rp == dev {
                return Err(UpdateError::RunningRoot { slot, path: dev });
            }
        }
        let entries = bls::list(&s.esp)?;
        if !entries.iter().any(|e| e.name.slot == running.slot) {
            return Err(UpdateError::NoRunningEntry {
                slot: running.slot,
                dir: bls::entries_dir(&s.esp),
            });
        }
        emit(
            &opts.progress,
            ApplyEvent::Step {
                step: Step::Checked,
                detail: format!("resolving {r} and checking its signature"),
            },
        );
        let (os, signed_by) = self.resolve_verified(r).await?;
        let cfg = &os.config;
        let st = State::load(&s.state_dir);
        if !opts.force && st.is_failed(&cfg.version, &cfg.verity_root_hash) {
            let reason = st
                .failed
                .iter()
                .find(|f| f.version == cfg.version)
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            return Err(UpdateError::FailedBefore {
                version: cfg.version.clone(),
                reason,
            });
        }
        let floor = VersionFloor::load(&s.state_dir)?;
        version_gate(
            r,
            &cfg.version,
            &running.version,
            floor.as_ref(),
            opts.allow_downgrade,
        )?;
        let target = Target {
            reference: r.to_string(),
            top_digest: os.top_digest.clone(),
            manifest_digest: os.manifest_digest.clone(),
            config: cfg.clone(),
            root: os.root.clone(),
            kernel: os.kernel.clone(),
            initrd: os.initrd.clone(),
            signed_by,
        };
        // Resume the job for the very same target and slot; anything else starts afresh.
        let mut job = match resume(st.job, slot, &target) {
            Ok(j) => {
                tracing::info!(version = %cfg.version, %slot, step = %j.step, written = j.written, "resuming the interrupted apply");
                j
            }
            Err(discarded) => {
                if let Some(why) = discarded {
                    tracing::warn!("{why}; starting over");
                    // Kernel/initrd staged for the other target: not ours.
                    let _ = fs::remove_dir_all(s.state_dir.join("staging"));
                }
                if !opts.force && self.installed_on_other(&os)? {
                    let entry = bls::list(&s.esp)?
                        .into_iter()
                        .find(|e| e.name.slot == slot)
                        .map(|e| e.file)
                        .unwrap_or_default();
                    return Ok(ApplyOutcome {
                        version: cfg.version.clone(),
                        slot,
                        entry,
                        already_installed: true,
                        timings: Timings::default(),
                    });
                }
                Job {
                    target,
                    slot,
                    step: Step::Checked,
                    written: 0,
                    started: fsutil::now_unix(),
                }
            }
        };
        self.save_job(&job)?;
        let mut t = Timings::default();
        let staging = s.state_dir.join("staging");

        if job.step < Step::SlotReleased {
            emit(
                &opts.progress,
                ApplyEvent::Step {
                    step: Step::SlotReleased,
                    detail: format!("removing slot {slot}'s boot entries"),
                },
            );
            let removed = bls::remove_slot(&s.esp, slot)?;
            tracing::info!(?removed, %slot, "released the slot's boot entries");
            job.step = Step::SlotReleased;
            self.save_job(&job)?;
        }
        if Self::cancelled(opts) {
            return Err(UpdateError::Cancelled { step: job.step });
        }

        if job.step < Step::BootFilesStaged {
            emit(
                &opts.progress,
                ApplyEvent::Step {
                    step: Step::BootFilesStaged,
                    detail: "downloading the kernel and initrd".into(),
                },
            );
            let t0 = Instant::now();
            io("creating", &staging, fs::create_dir_all(&staging))?;
            for (what, d) in [
                ("kernel", &job.target.kernel),
                ("initrd", &job.target.initrd),
            ] {
                self.download_file(r, d, &staging, what, &job.target.config.version, opts)
                    .await?;
            }
            t.boot_files_secs += t0.elapsed().as_secs_f64();
            job.step = Step::BootFilesStaged;
            self.save_job(&job)?;
        }
        if Self::cancelled(opts) {
            return Err(UpdateError::Cancelled { step: job.step });
        }

        if job.step < Step::Written {
            emit(
                &opts.progress,
                ApplyEvent::Step {
                    step: Step::Writing,
                    detail: format!("writing the root image to slot {slot} ({})", dev.display()),
                },
            );
            job.step = Step::Writing;
            self.save_job(&job)?;
            self.write_root(r, &mut job, &dev, opts, &mut t).await?;
            job.step = Step::Written;
            self.save_job(&job)?;
        }

        if job.step < Step::Verified {
            emit(
                &opts.progress,
                ApplyEvent::Step {
                    step: Step::Verified,
                    detail: format!("reading slot {slot} back: sha256 and dm-verity"),
                },
            );
            let t0 = Instant::now();
            let res = self.verify_slot(&job, &dev, opts).await;
            t.verify_secs = t0.elapsed().as_secs_f64();
            if let Err(e) = res {
                // Start the write again next time: what is on the slot is not trusted.
                job.step = Step::BootFilesStaged;
                job.written = 0;
                self.save_job(&job)?;
                return Err(e);
            }
            job.step = Step::Verified;
            self.save_job(&job)?;
        }
        if Self::cancelled(opts) {
            return Err(UpdateError::Cancelled { step: job.step });
        }

        if job.step < Step::BootFilesInstalled {
            emit(
                &opts.progress,
                ApplyEvent::Step {
                    step: Step::BootFilesInstalled,
                    detail: format!("installing the kernel and initrd to the ESP (berth/{slot})"),
                },
            );
            let t0 = Instant::now();
            self.install_boot_files(&job, &staging)?;
            t.boot_files_secs += t0.elapsed().as_secs_f64();
            job.step = Step::BootFilesInstalled;
            self.save_job(&job)?;
        }
        if Self::cancelled(opts) {
            return Err(UpdateError::Cancelled { step: job.step });
        }

        emit(
            &opts.progress,
            ApplyEvent::Step {
                step: Step::EntryWritten,
                detail: format!("writing slot {slot}'s boot entry"),
            },
        );
        // The install is committed here: the slot is written and verified and its boot
        // files are in place, and the entry comes next. The floor is raised now, before
        // the entry, so no entry ever exists for a version above the floor (a power cut
        // in between leaves a floor equal to the job's version, which the resumed apply
        // of the same target passes). Raised at install, not at blessing: between the
        // install and a healthy reboot (days, with policy manual) a replayed older signed
        // image, newer than the running one, could otherwise replace the pending install.
        // The cost: a version that fails to boot healthy keeps the floor, so the fix must
        // be a higher version (or installed with allow-downgrade). Rollback is not an
        // install and never looks at the floor.
        let floor = VersionFloor::raise(
            &s.state_dir,
            &job.target.config.version,
            &job.target.config.verity_root_hash,
        )?;
        tracing::info!(floor = %floor.version, "version floor");
        let entry = self.write_entry(&job)?;
        job.step = Step::EntryWritten;
        self.save_job(&job)?;
        let _ = fs::remove_dir_all(&staging);
        t.total_secs = started.elapsed().as_secs_f64();
        Ok(ApplyOutcome {
            version: job.target.config.version.clone(),
            slot,
            entry,
            already_installed: false,
            timings: t,
        })
    }

    /// Download a small blob (kernel, initrd) into `dir/<hex>`, verified; kept if present.
    async fn download_file(
        &self,
        r: &Reference,
        d: &Descriptor,
        dir: &Path,
        what: &'static str,
        version: &str,
        opts: &ApplyOptions,
    ) -> Result<PathBuf, UpdateError> {
        let dst = dir.join(d.digest.hex());
        if let Ok(existing) = fs::read(&dst) {
            if Digest::of(&existing) == d.digest {
                return Ok(dst);
            }
        }
        let part = dir.join(format!("{}.part", d.digest.hex()));
        let progress = opts.progress.clone().map(|p| {
            let f: berth_registry::Progress = Arc::new(move |e| p(ApplyEvent::Download(e)));
            f
        });
        if let Some(p) = &progress {
            p(ProgressEvent::BlobStart {
                digest: d.digest.clone(),
                size: d.size,
            });
        }
        let mut stream = self.client.blob_stream_with(r, d, progress.clone());
        let mut f = io("creating", &part, fs::File::create(&part))?;
        loop {
            match stream.next_chunk().await {
                Ok(Some(c)) => io("writing", &part, f.write_all(&c))?,
                Ok(None) => break,
                Err(source) => {
                    let _ = fs::remove_file(&part);
                    return Err(UpdateError::Download {
                        what,
                        version: version.to_string(),
                        source,
                    });
                }
            }
        }
        io("syncing", &part, f.sync_all())?;
        io("renaming", &part, fs::rename(&part, &dst))?;
        if let Some(p) = &progress {
            p(ProgressEvent::BlobDone {
                digest: d.digest.clone(),
                cached: false,
            });
        }
        Ok(dst)
    }

    /// Stream the root image onto the slot, resuming after `job.written` bytes.
    async fn write_root(
        &self,
        r: &Reference,
        job: &mut Job,
        dev: &Path,
        opts: &ApplyOptions,
        t: &mut Timings,
    ) -> Result<(), UpdateError> {
        let root = job.target.root.clone();
        let slot = job.slot;
        let mut f = io(
            "opening the slot partition",
            dev,
            fs::OpenOptions::new().read(true).write(true).open(dev),
        )?;
        let size = io("sizing", dev, f.seek(SeekFrom::End(0)))?;
        if size < root.size {
            return Err(UpdateError::SlotTooSmall {
                slot,
                path: dev.to_path_buf(),
                size,
                need: root.size,
            });
        }
        // Resume: hash what is already on the slot, download the rest.
        let start = job.written.min(root.size);
        let dev2 = dev.to_path_buf();
        let (f, prefix) = tokio::task::spawn_blocking(move || -> Result<_, UpdateError> {
            let mut h = Hasher::new();
            io("seeking", &dev2, f.seek(SeekFrom::Start(0)))?;
            let mut left = start;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                io("reading back", &dev2, f.read_exact(&mut buf[..n]))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            Ok((f, h))
        })
        .await
        .map_err(|_| UpdateError::Worker { what: "read-back" })??;
        t.resumed_from = start;
        if start > 0 {
            tracing::info!(%slot, start, "resuming the root image write");
        }
        let progress = opts.progress.clone().map(|p| {
            let f: berth_registry::Progress = Arc::new(move |e| p(ApplyEvent::Download(e)));
            f
        });
        if let Some(p) = &progress {
            p(ProgressEvent::BlobStart {
                digest: root.digest.clone(),
                size: root.size,
            });
            if start > 0 {
                p(ProgressEvent::Bytes {
                    digest: root.digest.clone(),
                    n: start,
                });
            }
        }
        let stream = self
            .client
            .blob_stream_from(r, &root, prefix, progress.clone());
        let dev2 = dev.to_path_buf();
        let mut job2 = job.clone();
        let cancel = opts.cancel.clone();
        let every = if opts.checkpoint_bytes == 0 {
            CHECKPOINT
        } else {
            opts.checkpoint_bytes
        };
        let state_dir = self.settings.state_dir.clone();
        let version = job.target.config.version.clone();
        let (res, job2, tt) = tokio::task::spawn_blocking(move || {
            let mut tt = Timings::default();
            let res = write_loop(
                stream, f, &dev2, &mut job2, cancel, every, &state_dir, &version, &mut tt,
            );
            (res, job2, tt)
        })
        .await
        .map_err(|_| UpdateError::Worker { what: "slot write" })?;
        *job = job2;
        t.download_secs += tt.download_secs;
        t.write_secs += tt.write_secs;
        t.downloaded_bytes += tt.downloaded_bytes;
        if let Err(UpdateError::Download {
            source: ClientError::DigestMismatch { .. },
            ..
        }) = &res
        {
            // What is on the slot does not add up: start from zero next time.
            job.written = 0;
            self.save_job(job)?;
        }
        res?;
        if let Some(p) = &progress {
            p(ProgressEvent::BlobDone {
                digest: root.digest.clone(),
                cached: false,
            });
        }
        Ok(())
    }

    async fn verify_slot(
        &self,
        job: &Job,
        dev: &Path,
        opts: &ApplyOptions,
    ) -> Result<(), UpdateError> {
        let dev = dev.to_path_buf();
        let root = job.target.root.clone();
        let cfg = job.target.config.clone();
        let slot = job.slot;
        let progress = opts.progress.clone();
        tokio::task::spawn_blocking(move || verify_written(&dev, slot, &root, &cfg, progress))
            .await
            .map_err(|_| UpdateError::Worker { what: "verify" })?
    }

    fn install_boot_files(&self, job: &Job, staging: &Path) -> Result<(), UpdateError> {
        let dir = self.settings.esp.join(job.slot.esp_dir());
        io("creating", &dir, fs::create_dir_all(&dir))?;
        for (name, d) in [
            ("vmlinuz", &job.target.kernel),
            ("initrd", &job.target.initrd),
        ] {
            let src = staging.join(d.digest.hex());
            let dst = dir.join(name);
            io("installing", &dst, fsutil::copy_atomic(&src, &dst))?;
            let back = io("reading back", &dst, fs::read(&dst))?;
            let actual = Digest::of(&back);
            if actual != d.digest {
                return Err(UpdateError::Io {
                    what: "verifying",
                    path: dst,
                    source: std::io::Error::other(format!(
                        "reads back as {actual}, expected {}",
                        d.digest
                    )),
                });
            }
        }
        Ok(())
    }

    /// Write the new slot's entry with the next generation and `+3` tries, unless an entry
    /// for exactly this install is already there (a resumed apply).
    fn write_entry(&self, job: &Job) -> Result<String, UpdateError> {
        let s = &self.settings;
        let cfg = &job.target.config;
        let options = bls::options(
            &cfg.cmdline,
            job.slot,
            &cfg.verity_root_hash,
            &cfg.verity_salt,
            cfg.verity_data_blocks,
        );
        let entries = bls::list(&s.esp)?;
        if let Some(e) = entries.iter().find(|e| {
            e.name.slot == job.slot && !e.name.exhausted() && e.options.as_deref() == Some(&options)
        }) {
            return Ok(e.file.clone());
        }
        bls::remove_slot(&s.esp, job.slot)?;
        let name = EntryName {
            generation: bls::next_generation(&entries),
            slot: job.slot,
            tries_left: Some(bls::TRIES),
            tries_done: None,
        };
        bls::write(
            &s.esp,
            &name,
            &bls::render(job.slot, &cfg.version, &options),
        )?;
        Ok(name.file_name())
    }

    /// Bless the running slot's entry (sysd calls this once every required service is
    /// healthy): `berth-<gen>-<slot>+<left>[-<done>].conf` becomes `berth-<gen>-<slot>.conf`.
    pub fn bless(&self) -> Result<Blessed, UpdateError> {
        let _lock = self.lock()?;
        let s = &self.settings;
        let slot = s.running.slot;
        let Some(e) = bls::list(&s.esp)?
            .into_iter()
            .filter(|e| e.name.slot == slot)
            .max_by_key(|e| e.name.generation)
        else {
            return Ok(Blessed::NoEntry);
        };
        if e.name.tries_left.is_none() {
            return Ok(Blessed::AlreadyBlessed { entry: e.file });
        }
        let to = e.name.blessed();
        bls::rename(&s.esp, &e.file, &to)?;
        tracing::info!(from = %e.file, to = %to.file_name(), "blessed the boot entry");
        Ok(Blessed::Blessed {
            from: e.file,
            to: to.file_name(),
        })
    }

    /// Make the other slot boot next and stay: its entry is rewritten with the newest
    /// generation and no counter. Refuses when the other slot has no complete install, or
    /// holds a version recorded as failed (unless `force`).
    pub fn rollback(&self, force: bool) -> Result<EntryStatus, UpdateError> {
        let _lock = self.lock()?;
        let s = &self.settings;
        let slot = s.running.slot.other();
        let st = State::load(&s.state_dir);
        if st.job.as_ref().is_some_and(|j| j.slot == slot) {
            return Err(UpdateError::NoRollbackTarget {
                slot,
                why: "an update is being installed there".into(),
            });
        }
        let entries = bls::list(&s.esp)?;
        let Some(e) = entries
            .iter()
            .filter(|e| e.name.slot == slot)
            .max_by_key(|e| e.name.generation)
        else {
            return Err(UpdateError::NoRollbackTarget {
                slot,
                why: "it has no boot entry".into(),
            });
        };
        let version = e.version.clone().unwrap_or_default();
        if !force && e.name.exhausted() {
            return Err(UpdateError::NoRollbackTarget {
                slot,
                why: format!("{version} ran out of boot tries; use force to boot it anyway"),
            });
        }
        if !force
            && st
                .failed
                .iter()
                .any(|f| f.version == version && f.slot == slot)
        {
            return Err(UpdateError::NoRollbackTarget {
                slot,
                why: format!("{version} is recorded as failed; use force to boot it anyway"),
            });
        }
        for f in ["vmlinuz", "initrd"] {
            let p = s.esp.join(slot.esp_dir()).join(f);
            if !p.is_file() {
                return Err(UpdateError::NoRollbackTarget {
                    slot,
                    why: format!("{} is missing", p.display()),
                });
            }
        }
        let dir = bls::entries_dir(&s.esp);
        let old = dir.join(&e.file);
        let text = io("reading", &old, fs::read_to_string(&old))?;
        let name = EntryName {
            generation: bls::next_generation(&entries),
            slot,
            tries_left: None,
            tries_done: None,
        };
        // New entry first, then the old one goes: at every moment an entry for the slot
        // exists, and the newest one sorts first.
        bls::write(&s.esp, &name, &text)?;
        io("removing", &old, fsutil::remove_synced(&old))?;
        let new = bls::Entry {
            name: name.clone(),
            file: name.file_name(),
            version: e.version.clone(),
            options: e.options.clone(),
        };
        let rec = RollbackRecord {
            at: fsutil::now_unix(),
            to_slot: slot,
            version: e.version.clone(),
            entry: name.file_name(),
        };
        State::modify(&s.state_dir, |st| st.last_rollback = Some(rec))?;
        Ok(EntryStatus::from(&new))
    }

    /// Run once per boot (before blessing): notices that systemd-boot fell back from a new
    /// install whose tries ran out, and records its version as failed; finishes the
    /// record of an apply whose slot is now running.
    pub fn boot_check(&self) -> Result<BootCheck, UpdateError> {
        let s = &self.settings;
        let running = &s.running;
        let entries = bls::list(&s.esp)?;
        Ok(State::modify(&s.state_dir, |st| {
            Self::boot_check_state(running, &entries, st)
        })?)
    }

    fn boot_check_state(running: &Running, entries: &[bls::Entry], st: &mut State) -> BootCheck {
        if st.job.as_ref().is_some_and(|j| j.slot == running.slot) {
            // The apply finished writing the entry (or we would not boot this slot).
            if let Some(j) = st.job.take() {
                if j.step >= Step::BootFilesInstalled
                    && st.last_apply.as_ref().is_none_or(|a| !a.ok)
                {
                    st.last_apply = Some(ApplyRecord {
                        at: fsutil::now_unix(),
                        version: Some(j.target.config.version.clone()),
                        slot: Some(j.slot),
                        ok: true,
                        message: format!(
                            "installed {} on slot {} (the apply was interrupted after writing its boot entry)",
                            j.target.config.version, j.slot
                        ),
                        timings: None,
                    });
                }
            }
        }
        let newest = entries.iter().max_by_key(|e| e.name.generation);
        match newest {
            Some(e) if e.name.slot != running.slot && e.name.exhausted() => {
                let version = e.version.clone().unwrap_or_else(|| "unknown".into());
                let root_hash = e.options.as_deref().and_then(|o| {
                    o.split_whitespace()
                        .find_map(|w| w.strip_prefix("berth.verity="))
                        .map(str::to_string)
                });
                if !st
                    .failed
                    .iter()
                    .any(|f| f.version == version && f.slot == e.name.slot)
                {
                    tracing::warn!(%version, slot = %e.name.slot, "the new install ran out of boot tries; fell back");
                    st.failed.push(FailedVersion {
                        version: version.clone(),
                        root_hash,
                        slot: e.name.slot,
                        at: fsutil::now_unix(),
                        reason: format!(
                            "its boot entry {} ran out of tries and the node fell back to slot {} ({})",
                            e.file, running.slot, running.version
                        ),
                    });
                }
                BootCheck::FellBack {
                    failed_version: version,
                    slot: e.name.slot,
                }
            }
            Some(e) if e.name.slot == running.slot && e.name.tries_left.is_some() => {
                BootCheck::AwaitingBless {
                    tries_left: e.name.tries_left,
                }
            }
            Some(e) if e.name.slot != running.slot && !e.name.exhausted() => {
                BootCheck::UpdatePending {
                    version: e.version.clone(),
                }
            }
            _ => BootCheck::Normal,
        }
    }

    /// Everything `osctl update status` shows.
    pub fn status(&self) -> Result<Status, UpdateError> {
        let s = &self.settings;
        let running = &s.running;
        let other = running.slot.other();
        let entries = bls::list(&s.esp)?;
        let st = State::load(&s.state_dir);
        let newest_of = |slot: Slot| {
            entries
                .iter()
                .filter(|e| e.name.slot == slot)
                .max_by_key(|e| e.name.generation)
        };
        let run_e = newest_of(running.slot);
        let oth_e = newest_of(other);
        let newest = entries.iter().max_by_key(|e| e.name.generation);
        let job = st.job.as_ref().filter(|j| j.slot == other);
        let other_state = match (job, oth_e) {
            (Some(j), _) if j.step < Step::EntryWritten => OtherSlotState::Installing,
            (_, None) => OtherSlotState::Empty,
            (_, Some(e)) if e.name.exhausted() => OtherSlotState::Failed,
            (_, Some(e)) if newest.is_some_and(|n| n.file == e.file) => {
                if e.name.tries_left.is_some() {
                    OtherSlotState::Pending
                } else {
                    OtherSlotState::Next
                }
            }
            (_, Some(_)) => OtherSlotState::Fallback,
        };
        Ok(Status {
            source: s.source.as_ref().map(|r| r.to_string()),
            running_slot: running.slot,
            running_version: running.version.clone(),
            running_entry: run_e.map(EntryStatus::from),
            blessed: run_e.is_some_and(|e| e.name.tries_left.is_none()),
            other_slot: other,
            other_version: oth_e.and_then(|e| e.version.clone()),
            other_state,
            other_entry: oth_e.map(EntryStatus::from),
            next_boot: entries.first().map(EntryStatus::from),
            in_progress: job.map(|j| JobStatus {
                version: j.target.config.version.clone(),
                slot: j.slot,
                step: j.step,
                written: j.written,
                total: j.target.root.size,
            }),
            last_check: st.last_check.clone(),
            last_apply: st.last_apply.clone(),
            last_rollback: st.last_rollback.clone(),
            failed_versions: st.failed.clone(),
            version_floor: VersionFloor::load(&s.state_dir).unwrap_or_else(|e| {
                tracing::warn!("{e}");
                None
            }),
        })
    }
}

/// Whether `offered` may be installed on a node running `running` with `floor`: below the
/// floor is refused first (it names the floor and the override), then not newer than the
/// running version. `allow_downgrade` lifts both.
fn version_gate(
    r: &Reference,
    offered: &str,
    running: &str,
    floor: Option<&VersionFloor>,
    allow_downgrade: bool,
) -> Result<(), UpdateError> {
    if allow_downgrade {
        return Ok(());
    }
    if let Some(f) = floor.filter(|f| f.refuses(offered)) {
        return Err(UpdateError::BelowFloor {
            reference: r.to_string(),
            offered: offered.to_string(),
            floor: f.version.clone(),
        });
    }
    if !version::is_newer(offered, running) {
        return Err(UpdateError::NotNewer {
            reference: r.to_string(),
            offered: offered.to_string(),
            running: running.to_string(),
        });
    }
    Ok(())
}

/// The stored job, if it is an interrupted apply of exactly `target` on `slot`; else
/// `Err` with why it is discarded (`None`: there was none). A resumed apply trusts the
/// bytes already on the slot and the files already staged, so every field of the stored
/// target must equal the one just verified: same digests, version, arch, root hash, salt,
/// sizes, kernel and initrd, signer and reference.
fn resume(stored: Option<Job>, slot: Slot, target: &Target) -> Result<Job, Option<String>> {
    let Some(j) = stored else {
        return Err(None);
    };
    let was = format!(
        "discarding the interrupted apply of {} on slot {} (step {}, {} bytes written)",
        j.target.config.version, j.slot, j.step, j.written
    );
    if j.slot != slot {
        return Err(Some(format!("{was}: it was for the other slot")));
    }
    let diff = j.target.differences(target);
    if !diff.is_empty() {
        return Err(Some(format!(
            "{was}: the verified target {} ({}) differs in {}",
            target.config.version,
            target.manifest_digest,
            diff.join(", ")
        )));
    }
    Ok(j)
}

/// The blocking half of the slot write: chunks from the stream to the device, a durable
/// checkpoint (fdatasync, then `written` in the state file) every [`CHECKPOINT`] bytes.
#[allow(clippy::too_many_arguments)]
fn write_loop(
    mut stream: berth_registry::BlobStream,
    mut f: fs::File,
    dev: &Path,
    job: &mut Job,
    cancel: Option<Arc<AtomicBool>>,
    every: u64,
    state_dir: &Path,
    version: &str,
    t: &mut Timings,
) -> Result<(), UpdateError> {
    let checkpoint = |f: &fs::File, job: &Job, t: &mut Timings| -> Result<(), UpdateError> {
        let t0 = Instant::now();
        io("syncing", dev, f.sync_data())?;
        t.write_secs += t0.elapsed().as_secs_f64();
        State::modify(state_dir, |st| st.job = Some(job.clone()))?;
        Ok(())
    };
    io("seeking", dev, f.seek(SeekFrom::Start(job.written)))?;
    let mut since = 0u64;
    let mut pos = job.written;
    loop {
        let t0 = Instant::now();
        let chunk = stream.blocking_next_chunk();
        t.download_secs += t0.elapsed().as_secs_f64();
        let chunk = match chunk {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(source) => {
                // Keep what is durable for the next attempt.
                let _ = checkpoint(&f, job, t);
                return Err(UpdateError::Download {
                    what: "root image",
                    version: version.to_string(),
                    source,
                });
            }
        };
        let t0 = Instant::now();
        io("writing the slot", dev, f.write_all(&chunk))?;
        t.write_secs += t0.elapsed().as_secs_f64();
        pos += chunk.len() as u64;
        since += chunk.len() as u64;
        t.downloaded_bytes += chunk.len() as u64;
        if since >= every {
            job.written = pos;
            checkpoint(&f, job, t)?;
            since = 0;
            if cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(UpdateError::Cancelled {
                    step: Step::Writing,
                });
            }
        }
    }
    job.written = pos;
    checkpoint(&f, job, t)?;
    Ok(())
}

/// Read the slot back: sha256 of the root image bytes must equal the layer digest, and
/// the dm-verity tree recomputed from the data must match the stored tree and the root
/// hash in the config. The page cache is dropped first so the device is really read.
fn verify_written(
    dev: &Path,
    slot: Slot,
    root: &Descriptor,
    cfg: &crate::artifact::OsConfig,
    progress: Option<ApplyProgress>,
) -> Result<(), UpdateError> {
    let f = io("opening", dev, fs::File::open(dev))?;
    // Best effort: a regular file or a block device both accept it.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    struct HashingReader<'a> {
        inner: std::io::Take<fs::File>,
        h: &'a mut Hasher,
        total: u64,
        progress: Option<ApplyProgress>,
    }
    impl Read for HashingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.h.update(&buf[..n]);
            if let Some(p) = &self.progress {
                p(ApplyEvent::Verify {
                    n: n as u64,
                    total: self.total,
                });
            }
            Ok(n)
        }
    }
    let mut h = Hasher::new();
    let mut rd = HashingReader {
        inner: f.take(root.size),
        h: &mut h,
        total: root.size,
        progress,
    };
    let verified = verity::verify_image(
        &mut rd,
        cfg.verity_data_blocks,
        &cfg.verity_salt,
        &cfg.verity_root_hash,
        &mut |_| {},
    );
    let verified = verified.map_err(|source| UpdateError::Verity {
        slot,
        path: dev.to_path_buf(),
        source,
    })?;
    tracing::debug!(root_hash = %verified.root_hash, "dm-verity tree verified");
    io(
        "reading back",
        dev,
        std::io::copy(&mut rd, &mut std::io::sink()),
    )?;
    let (len, actual) = (h.len(), h.finish());
    if len != root.size || actual != root.digest {
        return Err(UpdateError::ReadBack {
            slot,
            path: dev.to_path_buf(),
            expected: root.digest.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sysd runs these on tokio tasks (D-Bus handlers): the futures must be Send.
    #[allow(dead_code)]
    fn futures_are_send(u: &Updater, o: &ApplyOptions) {
        fn send<T: Send>(_: T) {}
        send(u.apply(None, o));
        send(u.check(None));
    }

    fn target(version: &str) -> Target {
        let d = |b: &[u8]| Descriptor::new("application/octet-stream", Digest::of(b), 10);
        Target {
            reference: "127.0.0.1:5000/berth/os:stable".into(),
            top_digest: Digest::of(b"index"),
            manifest_digest: Digest::of(b"manifest"),
            config: crate::artifact::OsConfig {
                version: version.into(),
                arch: "x86_64".into(),
                build_id: "b".into(),
                kernel_release: "6.1".into(),
                verity_root_hash: "11".repeat(32),
                verity_salt: "22".repeat(32),
                verity_data_blocks: 100,
                cmdline: "quiet".into(),
                root_size: 10,
                kernel_size: 10,
                initrd_size: 10,
            },
            root: d(b"root"),
            kernel: d(b"kernel"),
            initrd: d(b"initrd"),
            signed_by: "0123456789abcdef".into(),
        }
    }

    /// An interrupted apply resumes only for the very same target on the same slot; any
    /// other field starts over, and the reason names the field.
    #[test]
    fn resume_only_the_same_target() {
        let t = target("0.2.0");
        let job = Job {
            target: t.clone(),
            slot: Slot::B,
            step: Step::Writing,
            written: 4 << 20,
            started: 1,
        };
        assert_eq!(resume(None, Slot::B, &t), Err(None));
        assert_eq!(resume(Some(job.clone()), Slot::B, &t), Ok(job.clone()));
        let why = resume(Some(job.clone()), Slot::A, &t).unwrap_err().unwrap();
        assert!(why.contains("other slot"), "{why}");
        // Same manifest digest (what the old rule compared) but any other field changed.
        type Change = fn(&mut Target);
        let changes: [(&str, Change); 10] = [
            ("version", |t| t.config.version = "0.2.1".into()),
            ("arch", |t| t.config.arch = "arm64".into()),
            ("verity_root_hash", |t| {
                t.config.verity_root_hash = "33".repeat(32)
            }),
            ("verity_salt", |t| t.config.verity_salt = "44".repeat(32)),
            ("root_size", |t| t.config.root_size = 11),
            ("root", |t| t.root.digest = Digest::of(b"other root")),
            ("kernel", |t| t.kernel.digest = Digest::of(b"other kernel")),
            ("initrd", |t| t.initrd.size = 11),
            ("top_digest", |t| t.top_digest = Digest::of(b"other index")),
            ("signed_by", |t| t.signed_by = "fedcba9876543210".into()),
        ];
        for (field, change) in changes {
            let mut fresh = t.clone();
            change(&mut fresh);
            assert_eq!(fresh.manifest_digest, t.manifest_digest);
            let why = resume(Some(job.clone()), Slot::B, &fresh)
                .unwrap_err()
                .unwrap_or_else(|| panic!("{field}: no reason"));
            assert!(
                why.contains(&format!("differs in {field}")),
                "{field}: {why}"
            );
            assert!(why.contains("4194304 bytes written"), "{why}");
        }
    }

    fn floor(v: &str) -> VersionFloor {
        VersionFloor {
            version: v.into(),
            root_hash: String::new(),
            at: 0,
        }
    }

    #[test]
    fn version_gate_floor_then_running() {
        let r = Reference::parse("127.0.0.1:5000/berth/os:stable").unwrap();
        let f = floor("0.2.0");
        // Running 0.1.0 after a rollback from 0.2.0.
        assert!(version_gate(&r, "0.2.0", "0.1.0", Some(&f), false).is_ok());
        assert!(version_gate(&r, "0.3.0", "0.1.0", Some(&f), false).is_ok());
        let e = version_gate(&r, "0.1.5", "0.1.0", Some(&f), false).unwrap_err();
        assert!(matches!(e, UpdateError::BelowFloor { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("0.1.5") && m.contains("version floor 0.2.0"),
            "{m}"
        );
        assert!(m.contains("--allow-downgrade"), "{m}");
        assert!(version_gate(&r, "0.1.5", "0.1.0", Some(&f), true).is_ok());
        // Without a floor, or above it, the running version still rules.
        assert!(matches!(
            version_gate(&r, "0.1.0", "0.1.0", None, false),
            Err(UpdateError::NotNewer { .. })
        ));
        assert!(matches!(
            version_gate(&r, "0.2.0", "0.2.0", Some(&f), false),
            Err(UpdateError::NotNewer { .. })
        ));
        assert!(version_gate(&r, "0.1.5", "0.1.0", None, false).is_ok());
    }

    /// v2 installed (floor raised) on slot B, booted, rolled back to v1 on slot A: the
    /// rollback works and does not lower the floor; v2 offered again is allowed, v1.5 is
    /// refused; status shows the floor.
    #[test]
    fn floor_survives_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        let state_dir = dir.path().join("state");
        for s in ["a", "b"] {
            fs::create_dir_all(esp.join("berth").join(s)).unwrap();
            for f in ["vmlinuz", "initrd"] {
                fs::write(esp.join("berth").join(s).join(f), f).unwrap();
            }
        }
        fs::create_dir_all(bls::entries_dir(&esp)).unwrap();
        let opts = |slot| bls::options("quiet", slot, &"11".repeat(32), "22", 1);
        fs::write(
            bls::entries_dir(&esp).join("berth-00000001-a.conf"),
            bls::render(Slot::A, "0.1.0", &opts(Slot::A)),
        )
        .unwrap();
        // What the apply of v2 leaves: the floor, then the entry (blessed after a boot).
        assert_eq!(VersionFloor::load(&state_dir).unwrap(), None);
        let f = VersionFloor::raise(&state_dir, "0.2.0", "ab").unwrap();
        assert_eq!(f.version, "0.2.0");
        fs::write(
            bls::entries_dir(&esp).join("berth-00000002-b.conf"),
            bls::render(Slot::B, "0.2.0", &opts(Slot::B)),
        )
        .unwrap();
        let on = |slot, version: &str| {
            Updater::new(
                Settings {
                    source: None,
                    trusted_keys: Vec::new(),
                    state_dir: state_dir.clone(),
                    esp: esp.clone(),
                    slots: SlotDevices {
                        a: dir.path().join("a.img"),
                        b: dir.path().join("b.img"),
                    },
                    running: Running {
                        slot,
                        version: version.into(),
                        arch: "x86_64".into(),
                        root_hash: String::new(),
                        root_partition: None,
                    },
                },
                Client::new(Default::default(), Default::default()),
            )
        };
        let rb = on(Slot::B, "0.2.0").rollback(false).unwrap();
        assert_eq!(rb.file, "berth-00000003-a.conf");
        let on_a = on(Slot::A, "0.1.0");
        let st = on_a.status().unwrap();
        assert_eq!(st.version_floor.as_ref().unwrap().version, "0.2.0");
        let floor = VersionFloor::load(&state_dir).unwrap();
        let r = Reference::parse("127.0.0.1:5000/berth/os:stable").unwrap();
        assert!(version_gate(&r, "0.2.0", "0.1.0", floor.as_ref(), false).is_ok());
        assert!(matches!(
            version_gate(&r, "0.1.5", "0.1.0", floor.as_ref(), false),
            Err(UpdateError::BelowFloor { .. })
        ));
        // A deliberate downgrade to 0.1.5 does not lower it; 0.3.0 raises it.
        assert_eq!(
            VersionFloor::raise(&state_dir, "0.1.5", "cd")
                .unwrap()
                .version,
            "0.2.0"
        );
        assert_eq!(
            VersionFloor::raise(&state_dir, "0.3.0", "ef")
                .unwrap()
                .version,
            "0.3.0"
        );
        assert_eq!(
            VersionFloor::load(&state_dir).unwrap().unwrap().root_hash,
            "ef"
        );
        // A corrupt floor file is an error, not "no floor".
        fs::write(VersionFloor::path(&state_dir), b"{").unwrap();
        assert!(matches!(
            VersionFloor::load(&state_dir),
            Err(StateError::FloorCorrupt { .. })
        ));
        assert!(on_a.status().unwrap().version_floor.is_none());
    }
}
