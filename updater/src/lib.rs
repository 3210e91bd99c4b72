//! Berth's A/B updater: signed OS artifacts from a registry, written to the inactive
//! slot, booted with systemd-boot's boot counting, blessed when healthy, rolled back
//! when not. `docs/UPDATES.md` describes the formats, the state machine and why every
//! step is crash safe; this page is the API sysd and osctl use.
//!
//! # Setting it up on a node
//!
//! ```no_run
//! # async fn demo(config: &berth_config::Config, client: berth_registry::Client)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use berth_updater::{load_trusted_keys, Running, Settings, SlotDevices, Updater};
//! use std::path::Path;
//! let (trusted_keys, key_problems) =
//!     load_trusted_keys(Path::new("/usr/lib/berth/keys"), &config.update.trusted_keys);
//! for p in key_problems { tracing::warn!("update key: {p}"); }
//! let settings = Settings {
//!     source: berth_updater::source_from_config(&config.update)?,
//!     trusted_keys,
//!     state_dir: "/var/lib/berth/update".into(),
//!     // The caller mounts the ESP (vfat) here first; any directory works.
//!     esp: "/run/berth/esp".into(),
//!     slots: SlotDevices::find(
//!         Path::new("/sys/class/block"),
//!         Path::new("/dev"),
//!         berth_api::BootInfo::recorded_boot_disk(Path::new(berth_api::BOOT_INFO_PATH)).as_deref(),
//!     )
//!     .ok_or("no berth-root-a/b partitions")?,
//!     running: Running::detect(
//!         Path::new(berth_api::BOOT_INFO_PATH),
//!         Path::new("/usr/lib/berth/os-release"),
//!     )?,
//! };
//! let updater = Updater::new(settings, client);
//! // Once per boot, before blessing:
//! let boot = updater.boot_check()?;
//! // ... once every required service is healthy:
//! updater.bless()?;
//! # let _ = boot; Ok(()) }
//! ```
//!
//! * [`Settings::source`]: `update.source` ([`source_from_config`]); every operation also
//!   takes an optional override.
//! * [`Settings::trusted_keys`]: [`load_trusted_keys`] reads `/usr/lib/berth/keys/*.pub`
//!   and `update.trusted_keys` (PEM PKIX P-256 public keys, like `cosign.pub`).
//! * The registry client (TLS, credentials, mirrors) is the same [`berth_registry::Client`]
//!   sysd builds from `[registries]`.
//! * [`Settings::esp`]: a directory holding `loader/entries/` and `berth/{a,b}/` — the ESP
//!   mounted (vfat) by the caller, normally at `/run/berth/esp`. The updater does not mount.
//! * [`Settings::slots`]: the two root partitions ([`SlotDevices::find`] looks them up by
//!   PARTLABEL like stage 1 does), or regular files in tests.
//! * [`Settings::running`]: [`Running::detect`] from `/run/berth/boot.json` and os-release.
//! * [`Settings::state_dir`]: persistent, on `/var` (`/var/lib/berth/update`): `state.json`
//!   (last check/apply/rollback, failed versions, the apply in progress), `staging/`
//!   (kernel and initrd while an apply runs), `lock`.
//!
//! # Operations
//!
//! * [`Updater::check`]: newest version for this arch, signature verified, compared with
//!   the running one ([`CheckResult`]). Recorded for the status.
//! * [`Updater::apply`]: the whole install, resumable (see below); progress through
//!   [`ApplyOptions::progress`] ([`ApplyEvent`]: steps, the registry client's download
//!   events, read-back bytes); [`ApplyOptions::cancel`] stops at the next checkpoint.
//!   It does not reboot: ask [`reboot_decision`] when the policy allows it.
//! * [`Updater::status`]: a serializable [`Status`].
//! * [`Updater::rollback`]: the other slot boots next and stays (its entry becomes the
//!   newest generation, blessed).
//! * [`Updater::bless`]: drop the running entry's boot counter (sysd, once every required
//!   service is healthy within its deadline). If sysd never blesses, the node must reboot
//!   (sysd's job) so systemd-boot counts the failed try.
//! * [`Updater::boot_check`]: once per boot; records the version as failed when
//!   systemd-boot fell back from it ([`BootCheck::FellBack`]).
//! * [`reboot_decision`]: pure function of `[update]` and the time.
//!
//! Operations that change the ESP or the slots take a lock file, so a second concurrent
//! apply/rollback/bless fails with [`UpdateError::Busy`].
//!
//! # Apply steps
//!
//! Resolve `repo:tag` to the index and this arch's manifest, verify a signature by a
//! trusted key on the index digest (or the arch manifest's), check the config's arch, that
//! the version is newer than the running one (unless `allow_downgrade`) and not recorded
//! as failed (unless `force`). Then, each step recorded in `state.json` once complete
//! ([`Step`]): remove every boot entry of the target slot; download kernel and initrd to
//! the staging directory (digest verified); stream the root image onto the slot with a
//! durable checkpoint every [`engine::CHECKPOINT`] bytes (a resumed apply re-hashes what is
//! on the slot and downloads only the rest with HTTP Range); read the slot back (page
//! cache dropped) and check its sha256 against the layer digest and its dm-verity tree
//! and root hash against the config ([`verity`]); install kernel and initrd to
//! `<esp>/berth/<slot>/`; write `loader/entries/berth-<next gen>-<slot>+3.conf` last. All
//! files are written to a temporary name, fsynced, renamed, and the directory fsynced.
//! Nothing of the running slot or its entry is touched, so a power cut at any point
//! leaves it bootable.

pub mod artifact;
pub mod bls;
pub mod engine;
pub mod fleetlock;
pub mod fsutil;
pub mod node;
pub mod policy;
pub mod signature;
pub mod state;
pub mod verity;
pub mod version;

pub use bls::Slot;
pub use engine::{
    ApplyEvent, ApplyOptions, ApplyOutcome, ApplyProgress, Blessed, BootCheck, CheckResult,
    EntryStatus, JobStatus, OtherSlotState, Settings, Status, UpdateError, Updater,
};
pub use node::{find_partition, load_trusted_keys, Running, SlotDevices};
pub use policy::{reboot_decision, RebootDecision};
pub use signature::PublicKey;
pub use state::{Step, Timings};

/// The update source from `[update]`: `None` when unset; an error when it is not a
/// registry reference.
pub fn source_from_config(
    u: &berth_config::Update,
) -> Result<Option<berth_registry::Reference>, berth_registry::reference::ReferenceError> {
    match &u.source {
        None => Ok(None),
        Some(r) => berth_registry::Reference::parse(&r.to_string()).map(Some),
    }
}
