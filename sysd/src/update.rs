//! OS updates on the node: sysd's side of `berth_updater`. It mounts the ESP only while an
//! update operation needs it, checks at boot whether the boot loader fell back from a
//! new version, blesses a new version's boot entry once the node is healthy (or reboots
//! so the try counts as failed), runs the `osctl update` operations, and follows the
//! config's update policy.

use berth_api::ManagerError;
use berth_config::{Config, UpdatePolicy, UpdateStrategy};
use berth_updater::fleetlock;
use berth_updater::{
    ApplyEvent, ApplyOptions, ApplyOutcome, BootCheck, CheckResult, RebootDecision, Running,
    Settings, SlotDevices, Updater,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the ESP is mounted while the updater works on it.
pub const ESP_MOUNT: &str = "/run/berth/esp";
/// The updater's persistent state.
pub const STATE_DIR: &str = "/var/lib/berth/update";
/// Keys shipped in the image.
pub const KEYS_DIR: &str = "/usr/lib/berth/keys";
/// How often `policy = "download"` or `"auto"` looks for a new version.
pub const AUTO_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// The ESP mounted at [`ESP_MOUNT`] for as long as any [`EspGuard`] lives. It is not kept
/// mounted otherwise, so a power cut between updates cannot leave the FAT dirty.
static ESP_USERS: Mutex<usize> = Mutex::new(0);

/// Keeps the ESP mounted; the last one dropped unmounts it.
pub struct EspGuard(());

fn esp_device() -> Result<PathBuf, String> {
    berth_updater::find_partition(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        berth_api::BootInfo::recorded_boot_disk(Path::new(berth_api::BOOT_INFO_PATH)).as_deref(),
        "berth-esp",
    )
    .ok_or_else(|| "no partition labelled berth-esp".to_string())
}

/// Mount the ESP (vfat, no exec/suid/dev) unless it is mounted already.
pub fn mount_esp() -> Result<EspGuard, String> {
    use nix::mount::{mount, MsFlags};
    let mut users = ESP_USERS.lock().unwrap_or_else(|e| e.into_inner());
    if *users == 0 {
        let dev = esp_device()?;
        std::fs::create_dir_all(ESP_MOUNT).map_err(|e| format!("creating {ESP_MOUNT}: {e}"))?;
        mount(
            Some(&dev),
            ESP_MOUNT,
            Some("vfat"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("umask=0077,flush"),
        )
        .map_err(|e| format!("mounting the ESP {} on {ESP_MOUNT}: {e}", dev.display()))?;
        // Private: containers created while it is mounted get copies that do not tie
        // the unmount to them (a shared mount's unmount fails with EBUSY while a copy in a
        // container being set up is in use).
        if let Err(e) = mount(
            None::<&str>,
            ESP_MOUNT,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            tracing::warn!("making the ESP mount private: {e}");
        }
    }
    *users += 1;
    Ok(EspGuard(()))
}

impl Drop for EspGuard {
    fn drop(&mut self) {
        let mut users = ESP_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users == 0 {
            // The updater fsyncs what it writes; the unmount flushes the FAT itself. If
            // something still holds it, detach it now (it goes when released).
            if let Err(e) = nix::mount::umount(ESP_MOUNT) {
                tracing::warn!("unmounting the ESP from {ESP_MOUNT}: {e}; detaching it");
                reset_esp();
            }
        }
    }
}

/// At sysd start: an ESP left mounted by a sysd that died is unmounted (nothing uses it).
pub fn reset_esp() {
    let _ = nix::mount::umount2(ESP_MOUNT, nix::mount::MntFlags::MNT_DETACH);
}

/// The updater for the config in force: source, keys (image + config), registries, slots
/// and the running system. Built per operation, so a config change applies at once.
pub fn updater(config: &Config) -> Result<Updater, String> {
    let (trusted_keys, problems) =
        berth_updater::load_trusted_keys(Path::new(KEYS_DIR), &config.update.trusted_keys);
    for p in problems {
        tracing::warn!("update key not used: {p}");
    }
    let settings = Settings {
        source: berth_updater::source_from_config(&config.update)
            .map_err(|e| format!("update.source: {e}"))?,
        trusted_keys,
        state_dir: STATE_DIR.into(),
        esp: ESP_MOUNT.into(),
        slots: SlotDevices::find(
            Path::new("/sys/class/block"),
            Path::new("/dev"),
            berth_api::BootInfo::recorded_boot_disk(Path::new(berth_api::BOOT_INFO_PATH))
                .as_deref(),
        )
        .ok_or(
            "no berth-root-a/berth-root-b partitions on the boot disk: this node cannot be updated",
        )?,
        running: Running::detect(
            Path::new(berth_api::BOOT_INFO_PATH),
            Path::new(berth_api::OS_RELEASE_PATH),
        )
        .map_err(|e| format!("{e}"))?,
    };
    Ok(Updater::new(settings, crate::node::registry_client(config)))
}

/// What happened to this boot's entry, for `osctl update status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BootState {
    /// The boot check's result (`None`: not run, see `note`).
    pub check: Option<BootCheck>,
    /// In words: waiting for health, blessed after N s, rebooting, or why nothing ran.
    pub note: String,
}

/// sysd's update side: the boot state and the operations.
pub struct NodeUpdates {
    boot: Mutex<BootState>,
    /// One apply/rollback at a time from this sysd (the updater's lock file also guards
    /// against other processes).
    busy: tokio::sync::Mutex<()>,
    /// `strategy = "fleetlock"`: where this node stands with the lock server.
    fleet: Mutex<Option<fleetlock::SharedStatus>>,
    /// The task taking the lock and then rebooting, once an update is installed.
    fleet_reboot: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The FleetLock client for the config in force (`None` unless `strategy = "fleetlock"`).
fn fleet_client(config: &Config) -> Option<Result<fleetlock::Client, String>> {
    if config.update.strategy != UpdateStrategy::Fleetlock {
        return None;
    }
    let Some(f) = config.update.fleetlock.as_ref() else {
        // The validator refuses this; never treat it as "immediate".
        return Some(Err(
            "strategy = \"fleetlock\" without [update.fleetlock]".into()
        ));
    };
    Some(
        fleetlock::node_id(Path::new(fleetlock::MACHINE_ID_PATH))
            .map_err(|e| format!("machine id {}: {e}", fleetlock::MACHINE_ID_PATH))
            .and_then(|id| fleetlock::Client::from_config(f, &id).map_err(|e| e.to_string())),
    )
}

fn set_note(u: &NodeUpdates, note: String) {
    u.boot.lock().unwrap_or_else(|e| e.into_inner()).note = note;
}

fn failed(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Failed(e.to_string())
}

/// An updater error with its causes (`registry request for X failed: HTTP 404: ...`).
fn update_failed(e: berth_updater::UpdateError) -> ManagerError {
    ManagerError::Failed(crate::error_chain(&e))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, ManagerError> {
    serde_json::to_string(v).map_err(failed)
}

fn parse_source(source: &str) -> Result<Option<berth_registry::Reference>, ManagerError> {
    if source.is_empty() {
        return Ok(None);
    }
    berth_registry::Reference::parse(source)
        .map(Some)
        .map_err(|e| ManagerError::Invalid(format!("{source}: {e}")))
}

/// Ask PID 1 for an ordered reboot.
fn reboot(why: &str) {
    tracing::warn!("rebooting: {why}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(1),
        nix::sys::signal::Signal::SIGTERM,
    );
}

impl NodeUpdates {
    /// Nothing checked yet.
    pub fn new() -> Arc<Self> {
        Arc::new(NodeUpdates {
            boot: Mutex::new(BootState::default()),
            busy: tokio::sync::Mutex::new(()),
            fleet: Mutex::new(None),
            fleet_reboot: Mutex::new(None),
        })
    }

    /// The shared lock status for `client` (kept across operations of this sysd).
    fn fleet_status(&self, client: &fleetlock::Client) -> fleetlock::SharedStatus {
        let mut f = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        match &*f {
            Some(s) => {
                let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
                st.group = client.group().to_string();
                st.id = client.id().to_string();
                drop(st);
                s.clone()
            }
            None => {
                let s = client.new_status();
                *f = Some(s.clone());
                s
            }
        }
    }

    /// Once per boot: with `strategy = "fleetlock"`, give back any reboot slot this node
    /// holds as soon as it is healthy (whatever made it reboot), retrying until the lock
    /// server confirms.
    async fn release_fleet_lock(&self, node: &crate::node::Node) {
        let config = node.config();
        let client = match fleet_client(&config) {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::error!("fleet lock: {e}");
                return;
            }
        };
        let status = self.fleet_status(&client);
        while let Err(why) = node.healthy().await {
            tracing::debug!("fleet lock: not releasing yet: {why}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        client.release(&status).await;
    }

    /// The update state for the metrics: `applying` while an apply or rollback runs, else
    /// what this boot's check found (`normal`, `awaiting_bless`, `update_pending`,
    /// `fell_back`), `unknown` before it ran or when it could not.
    pub fn state(&self) -> &'static str {
        if self.busy.try_lock().is_err() {
            return "applying";
        }
        match &self.boot.lock().unwrap_or_else(|e| e.into_inner()).check {
            None => "unknown",
            Some(BootCheck::Normal) => "normal",
            Some(BootCheck::AwaitingBless { .. }) => "awaiting_bless",
            Some(BootCheck::UpdatePending { .. }) => "update_pending",
            Some(BootCheck::FellBack { .. }) => "fell_back",
        }
    }

    /// Once per boot, after the containers are launched: record a fallback, and bless a
    /// new version once `node` is healthy, or reboot when the config's health deadline
    /// passes first (the boot loader counts the try; after three it falls back).
    /// With `strategy = "fleetlock"`, any reboot slot held is then given back once the
    /// node is healthy (after the blessing, for a new version).
    /// An update installed but not yet booted (sysd restarted while its reboot waited for
    /// the lock) asks for the lock again instead.
    pub async fn at_boot(self: Arc<Self>, node: Arc<crate::node::Node>) {
        if !self.check_and_bless(&node).await {
            return;
        }
        let config = node.config();
        let pending = matches!(
            self.boot.lock().unwrap_or_else(|e| e.into_inner()).check,
            Some(BootCheck::UpdatePending { .. })
        );
        if pending && config.update.policy == UpdatePolicy::Auto && fleet_client(&config).is_some()
        {
            tracing::info!("fleet lock: an installed update still waits for its reboot");
            self.reboot_after_install(&config);
        } else {
            self.release_fleet_lock(&node).await;
        }
    }

    /// The boot check and blessing; `false` when this boot failed its health deadline
    /// (the node is rebooting).
    async fn check_and_bless(self: &Arc<Self>, node: &Arc<crate::node::Node>) -> bool {
        let config = node.config();
        let up = match updater(&config) {
            Ok(u) => u,
            Err(e) => {
                tracing::info!("updates: {e}");
                set_note(self, e);
                return true;
            }
        };
        let check = match mount_esp().and_then(|_esp| up.boot_check().map_err(|e| e.to_string())) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("update boot check: {e}");
                set_note(self, format!("boot check failed: {e}"));
                return true;
            }
        };
        self.boot.lock().unwrap_or_else(|e| e.into_inner()).check = Some(check.clone());
        match &check {
            BootCheck::FellBack {
                failed_version,
                slot,
            } => {
                tracing::error!(
                    "update: version {failed_version} on slot {slot} did not boot healthy; back on {} (slot {}), {failed_version} is recorded as failed",
                    up.settings().running.version,
                    up.settings().running.slot
                );
                set_note(self, format!("fell back from {failed_version}"));
                true
            }
            BootCheck::AwaitingBless { tries_left } => {
                let deadline = config.update.health_deadline.get();
                tracing::info!(
                    "update: running {} from slot {} on trial ({} tries left): blessed once healthy within {} s",
                    up.settings().running.version,
                    up.settings().running.slot,
                    tries_left.map(|t| t.to_string()).unwrap_or("?".into()),
                    deadline.as_secs()
                );
                self.bless_when_healthy(&up, node, deadline).await
            }
            BootCheck::UpdatePending { version } => {
                let v = version.as_deref().unwrap_or("?");
                set_note(self, format!("{v} is installed and boots next"));
                true
            }
            BootCheck::Normal => {
                set_note(self, "running the newest blessed install".into());
                true
            }
        }
    }

    /// `false` when the deadline passed (a reboot was asked for).
    async fn bless_when_healthy(
        &self,
        up: &Updater,
        node: &crate::node::Node,
        deadline: Duration,
    ) -> bool {
        let start = tokio::time::Instant::now();
        loop {
            let why = match node.healthy().await {
                Ok(()) => {
                    let r = mount_esp().and_then(|_esp| up.bless().map_err(|e| e.to_string()));
                    match r {
                        Ok(b) => {
                            let t = crate::status::uptime();
                            tracing::info!("update: healthy; boot entry blessed {t:.1} s after the kernel started ({b:?})");
                            set_note(self, format!("blessed {t:.1} s after boot"));
                        }
                        Err(e) => {
                            tracing::error!("update: cannot bless the boot entry: {e}");
                            set_note(self, format!("healthy, but blessing failed: {e}"));
                        }
                    }
                    return true;
                }
                Err(why) => why,
            };
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                let msg = format!(
                    "not healthy within {} s ({why}): this boot counts as failed",
                    deadline.as_secs()
                );
                tracing::error!("update: {msg}");
                set_note(self, format!("{msg}; rebooting"));
                reboot("the new OS version is not healthy");
                return false;
            }
            set_note(
                self,
                format!("waiting to bless: {why} ({} s left)", left.as_secs()),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `osctl update status`: the updater's status plus this boot's check and blessing,
    /// as JSON.
    pub fn status(&self, config: &Config) -> Result<String, ManagerError> {
        let up = updater(config).map_err(failed)?;
        let _esp = mount_esp().map_err(failed)?;
        let status = up.status().map_err(update_failed)?;
        let boot = self.boot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let fleet = match fleet_client(config) {
            None => serde_json::Value::Null,
            Some(Err(e)) => serde_json::json!({ "text": format!("fleet lock: {e}") }),
            Some(Ok(c)) => {
                let s = self
                    .fleet_status(&c)
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                serde_json::json!({ "text": s.describe(), "status": s })
            }
        };
        json(&serde_json::json!({
            "status": status,
            "boot": boot,
            "policy": config.update.policy,
            "strategy": config.update.strategy,
            "fleet_lock": fleet,
            "health_deadline_secs": config.update.health_deadline.get().as_secs(),
        }))
    }

    /// `osctl update check`, as JSON ([`CheckResult`]).
    pub async fn check(&self, config: &Config, source: &str) -> Result<String, ManagerError> {
        json(&self.check_result(config, source).await?)
    }

    async fn check_result(
        &self,
        config: &Config,
        source: &str,
    ) -> Result<CheckResult, ManagerError> {
        let up = updater(config).map_err(failed)?;
        let source = parse_source(source)?;
        let _esp = mount_esp().map_err(failed)?;
        up.check(source.as_ref()).await.map_err(update_failed)
    }

    /// `osctl update apply`: install on the other slot, reporting progress through
    /// `progress`; then reboot if the policy says so now (or schedule it). JSON: the
    /// [`ApplyOutcome`] and the reboot decision.
    pub async fn apply(
        self: &Arc<Self>,
        config: &Config,
        source: &str,
        allow_downgrade: bool,
        force: bool,
        progress: Option<berth_updater::ApplyProgress>,
    ) -> Result<String, ManagerError> {
        let _one = self
            .busy
            .try_lock()
            .map_err(|_| ManagerError::Failed("an update operation is already running".into()))?;
        let up = updater(config).map_err(failed)?;
        let source = parse_source(source)?;
        let _esp = mount_esp().map_err(failed)?;
        let opts = ApplyOptions {
            allow_downgrade,
            force,
            progress,
            ..Default::default()
        };
        let out: ApplyOutcome = up
            .apply(source.as_ref(), &opts)
            .await
            .map_err(update_failed)?;
        tracing::info!(
            "update: {} installed on slot {} ({:.1} s: download {:.1}, write {:.1}, verify {:.1})",
            out.version,
            out.slot,
            out.timings.total_secs,
            out.timings.download_secs,
            out.timings.write_secs,
            out.timings.verify_secs
        );
        let decision = self.reboot_after_install(config);
        let fleet = decision != RebootDecision::Manual && fleet_client(config).is_some();
        json(&serde_json::json!({ "outcome": out, "reboot": decision, "fleet_lock": fleet }))
    }

    /// What the policy says about rebooting into a freshly installed version; acts on it.
    /// With `strategy = "fleetlock"` a task first takes a reboot slot (retrying for as
    /// long as it takes), then waits for the window, then reboots.
    fn reboot_after_install(&self, config: &Config) -> RebootDecision {
        let now = berth_updater::fsutil::now_unix();
        let d = berth_updater::reboot_decision(&config.update, now);
        if d == RebootDecision::Manual {
            return d;
        }
        match fleet_client(config) {
            None => {}
            Some(Err(e)) => {
                // Never reboot without the lock the config asks for.
                tracing::error!("fleet lock: {e}; not rebooting into the update");
                return RebootDecision::Manual;
            }
            Some(Ok(client)) => {
                let status = self.fleet_status(&client);
                let update = config.update.clone();
                let task = tokio::spawn(async move {
                    // Let the caller get its reply first.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    fleetlock::lock_then_reboot(
                        &client,
                        &status,
                        &update,
                        berth_updater::fsutil::now_unix,
                        || reboot("update installed; fleet lock held; policy = \"auto\""),
                    )
                    .await;
                });
                let mut slot = self.fleet_reboot.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = slot.replace(task) {
                    old.abort();
                }
                return d;
            }
        }
        match d {
            RebootDecision::Manual => {}
            RebootDecision::Now => {
                tokio::spawn(async {
                    // Let the caller get its reply first.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    reboot("update installed; policy = \"auto\"");
                });
            }
            RebootDecision::At(t) => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(t.saturating_sub(now))).await;
                    reboot("update installed; the reboot window is open");
                });
            }
        }
        d
    }

    /// `osctl update rollback`: the other slot boots next and stays. JSON: its entry.
    pub async fn rollback(&self, config: &Config, force: bool) -> Result<String, ManagerError> {
        let _one = self
            .busy
            .try_lock()
            .map_err(|_| ManagerError::Failed("an update operation is already running".into()))?;
        let up = updater(config).map_err(failed)?;
        let _esp = mount_esp().map_err(failed)?;
        let e = up.rollback(force).map_err(update_failed)?;
        tracing::info!("update: rollback: {} boots next", e.file);
        json(&e)
    }

    /// `policy = "download"` or `"auto"`: look for a new version every [`AUTO_INTERVAL`]
    /// (first a minute after start), install it, and with `auto` reboot as the window
    /// allows. Runs for the life of sysd; reads the config in force each round.
    pub async fn auto(self: Arc<Self>, node: Arc<crate::node::Node>) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        loop {
            let config = node.config();
            if config.update.policy != UpdatePolicy::Manual && config.update.source.is_some() {
                match self.check_result(&config, "").await {
                    Ok(c) if c.update_available => {
                        tracing::info!("update: a new version is available; installing");
                        if let Err(e) = self.apply(&config, "", false, false, None).await {
                            tracing::error!("update: automatic install failed: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("update: automatic check failed: {e}"),
                }
            }
            tokio::time::sleep(AUTO_INTERVAL).await;
        }
    }
}

/// Turns apply events into a callback for D-Bus signals: (phase, detail, done, total),
/// byte counts at most five times a second plus the last of each phase.
pub fn progress_events(
    send: impl Fn(String, String, u64, u64) + Send + Sync + 'static,
) -> berth_updater::ApplyProgress {
    use berth_registry::ProgressEvent;
    struct St {
        phase: &'static str,
        done: u64,
        total: u64,
        last: std::time::Instant,
    }
    let state = Mutex::new(St {
        phase: "",
        done: 0,
        total: 0,
        last: std::time::Instant::now(),
    });
    Arc::new(move |ev| {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let (phase, n, total) = match ev {
            ApplyEvent::Step { step, detail } => {
                st.phase = "";
                send(step.to_string(), detail, 0, 0);
                return;
            }
            ApplyEvent::Download(ProgressEvent::BlobStart { size, .. }) => ("download", 0, size),
            ApplyEvent::Download(ProgressEvent::Bytes { n, .. }) => ("download", n, st.total),
            ApplyEvent::Download(_) => return,
            ApplyEvent::Verify { n, total } => ("verify", n, total),
        };
        if st.phase != phase || total != st.total {
            st.phase = phase;
            st.done = 0;
            st.total = total;
        }
        st.done += n;
        let now = std::time::Instant::now();
        if now.duration_since(st.last) >= Duration::from_millis(200) || st.done >= st.total {
            st.last = now;
            send(phase.into(), String::new(), st.done, st.total);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_sends_steps_and_throttled_bytes() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let p = progress_events(move |phase, detail, done, total| {
            g.lock().unwrap().push((phase, detail, done, total));
        });
        p(ApplyEvent::Step {
            step: berth_updater::Step::Writing,
            detail: "writing the root image".into(),
        });
        let digest = berth_registry::Digest::of(b"x");
        p(ApplyEvent::Download(
            berth_registry::ProgressEvent::BlobStart {
                digest: digest.clone(),
                size: 300,
            },
        ));
        for _ in 0..3 {
            p(ApplyEvent::Download(berth_registry::ProgressEvent::Bytes {
                digest: digest.clone(),
                n: 100,
            }));
        }
        p(ApplyEvent::Verify { n: 50, total: 100 });
        p(ApplyEvent::Verify { n: 50, total: 100 });
        let got = got.lock().unwrap().clone();
        assert_eq!(
            got[0],
            ("writing".into(), "writing the root image".into(), 0, 0)
        );
        // Calls within 200 ms are dropped, except the one that completes a phase.
        assert!(
            got.contains(&("download".into(), String::new(), 300, 300)),
            "{got:?}"
        );
        assert!(
            !got.contains(&("download".into(), String::new(), 200, 300)),
            "{got:?}"
        );
        assert_eq!(
            got.last(),
            Some(&("verify".into(), String::new(), 100, 100))
        );
    }

    #[test]
    fn errors_carry_their_causes() {
        let e = berth_updater::UpdateError::Io {
            what: "opening",
            path: "/dev/vda3".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        let ManagerError::Failed(m) = update_failed(e) else {
            panic!("not Failed")
        };
        assert!(m.starts_with("opening /dev/vda3: "), "{m}");
        assert!(m.contains("Input/output error"), "{m}");
    }
}
