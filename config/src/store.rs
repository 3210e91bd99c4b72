//! The applied config on the state partition and its last known good copy.
//!
//! Files under `<var>/lib/berth/`:
//! - `config.toml`: the config in force (read at every boot after the first);
//! - `config.good.toml`: the last config the node was healthy with;
//! - `config.trial.toml`: present while a new config is on trial (`osctl config apply`);
//! - `config.outcome.toml`: what happened to the last apply (for `osctl status`).
//!
//! Every write is write-new, fsync, rename, fsync-directory, so a power cut leaves either
//! the old or the new file. A trial that is still open at the next boot means the node went
//! down before the new config proved healthy: [`Store::check_at_boot`] reverts it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::Config;

/// Store failures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading a file failed.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file does not parse.
    #[error("{} is damaged", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// The config could not be serialized.
    #[error("cannot serialize the config")]
    Serialize(#[source] toml::ser::Error),
    /// `begin_trial` while another trial is open.
    #[error("a config is already on trial")]
    TrialOpen,
}

/// A config on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Boot counter value when the trial began.
    pub boot: u64,
    /// Unix time (seconds) when it began.
    pub started: u64,
    /// Seconds the node has to become healthy.
    pub deadline: u64,
}

impl Trial {
    /// Whether the deadline has passed at unix time `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.started.saturating_add(self.deadline)
    }
}

/// What happened to the last apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `applied` or `reverted`.
    pub result: String,
    /// Why (for `reverted`).
    pub reason: String,
    /// Unix time.
    pub at: u64,
}

/// What [`Store::check_at_boot`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCheck {
    /// No trial open.
    Clean,
    /// A trial begun in this boot is still running (e.g. sysd restarted).
    TrialRunning(Trial),
    /// A trial from an earlier boot was reverted.
    Reverted,
}

/// Default deadline for a new config to become healthy.
pub const DEFAULT_DEADLINE_SECS: u64 = 120;

/// The config files under `<var>/lib/berth`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Writes `bytes` to `path` atomically and durably (mode 0600: configs may hold secrets).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

impl Store {
    /// The store for a `/var` mounted at `var_root`.
    pub fn new(var_root: &Path) -> Self {
        Store {
            dir: var_root.join("lib/berth"),
        }
    }

    /// `config.toml`.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// `config.good.toml`.
    pub fn good_path(&self) -> PathBuf {
        self.dir.join("config.good.toml")
    }
    fn trial_path(&self) -> PathBuf {
        self.dir.join("config.trial.toml")
    }
    fn outcome_path(&self) -> PathBuf {
        self.dir.join("config.outcome.toml")
    }

    fn read(&self, path: PathBuf) -> Result<Option<String>, StoreError> {
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    fn write(&self, path: PathBuf, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomic(&path, bytes).map_err(|source| StoreError::Write { path, source })
    }

    fn remove(&self, path: PathBuf) -> Result<(), StoreError> {
        match fs::remove_file(&path) {
            Ok(()) => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Write { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write { path, source }),
        }
    }

    fn read_toml<T: for<'de> Deserialize<'de>>(
        &self,
        path: PathBuf,
    ) -> Result<Option<T>, StoreError> {
        match self.read(path.clone())? {
            None => Ok(None),
            Some(s) => toml::from_str(&s)
                .map(Some)
                .map_err(|source| StoreError::Damaged { path, source }),
        }
    }

    fn write_toml<T: Serialize>(&self, path: PathBuf, v: &T) -> Result<(), StoreError> {
        let s = toml::to_string(v).map_err(StoreError::Serialize)?;
        self.write(path, s.as_bytes())
    }

    /// The text of the config in force, if any (validate it with [`crate::parse`]).
    pub fn current(&self) -> Result<Option<String>, StoreError> {
        self.read(self.current_path())
    }

    /// The text of the last known good config, if any.
    pub fn last_good(&self) -> Result<Option<String>, StoreError> {
        self.read(self.good_path())
    }

    /// Persists an accepted config as the one in force (first boot). It becomes the last
    /// known good one only after the node is healthy ([`Store::mark_good`]).
    pub fn persist(&self, config: &Config) -> Result<(), StoreError> {
        let text = config.to_toml().map_err(StoreError::Serialize)?;
        self.write(self.current_path(), text.as_bytes())
    }

    /// The node is healthy with the config in force: keep it as last known good and close
    /// any open trial.
    pub fn mark_good(&self, now: u64) -> Result<(), StoreError> {
        let Some(cur) = self.current()? else {
            return Ok(());
        };
        self.write(self.good_path(), cur.as_bytes())?;
        if self.trial()?.is_some() {
            self.write_toml(
                self.outcome_path(),
                &Outcome {
                    result: "applied".into(),
                    reason: String::new(),
                    at: now,
                },
            )?;
            self.remove(self.trial_path())?;
        }
        Ok(())
    }

    /// Puts `config` in force on trial: the node must call [`Store::mark_good`] within
    /// `deadline` seconds, or [`Store::revert`] restores the last known good config.
    pub fn begin_trial(
        &self,
        config: &Config,
        boot: u64,
        now: u64,
        deadline: u64,
    ) -> Result<Trial, StoreError> {
        if self.trial()?.is_some() {
            return Err(StoreError::TrialOpen);
        }
        // The config in force is the fallback (it is what the node runs on right now).
        if let Some(cur) = self.current()? {
            if self.last_good()?.as_deref() != Some(cur.as_str()) {
                self.write(self.good_path(), cur.as_bytes())?;
            }
        }
        let trial = Trial {
            boot,
            started: now,
            deadline,
        };
        // Marker first: a crash between the two writes leaves a trial of the old config,
        // which reverts harmlessly.
        self.write_toml(self.trial_path(), &trial)?;
        self.persist(config)?;
        Ok(trial)
    }

    /// The open trial, if any.
    pub fn trial(&self) -> Result<Option<Trial>, StoreError> {
        self.read_toml(self.trial_path())
    }

    /// Restores the last known good config (or removes the config in force when there is
    /// none, which means safe defaults) and records why.
    pub fn revert(&self, reason: &str, now: u64) -> Result<(), StoreError> {
        match self.last_good()? {
            Some(good) => self.write(self.current_path(), good.as_bytes())?,
            None => self.remove(self.current_path())?,
        }
        self.write_toml(
            self.outcome_path(),
            &Outcome {
                result: "reverted".into(),
                reason: reason.into(),
                at: now,
            },
        )?;
        self.remove(self.trial_path())
    }

    /// Call once per boot before reading the config: a trial begun in an earlier boot never
    /// became healthy, so it is reverted.
    pub fn check_at_boot(&self, boot: u64, now: u64) -> Result<BootCheck, StoreError> {
        match self.trial()? {
            None => Ok(BootCheck::Clean),
            Some(t) if t.boot == boot => Ok(BootCheck::TrialRunning(t)),
            Some(t) => {
                tracing::warn!(
                    trial_boot = t.boot,
                    boot,
                    "new config did not become healthy before a reboot; reverting"
                );
                self.revert(
                    "the node rebooted before the new config became healthy",
                    now,
                )?;
                Ok(BootCheck::Reverted)
            }
        }
    }

    /// What happened to the last apply, for `osctl status`.
    pub fn last_outcome(&self) -> Result<Option<Outcome>, StoreError> {
        self.read_toml(self.outcome_path())
    }
}

/// Persists an accepted first-boot config under `var_root` (see [`Store::persist`]).
pub fn persist(config: &Config, var_root: &Path) -> Result<(), StoreError> {
    Store::new(var_root).persist(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(host: &str) -> Config {
        crate::parse(&format!("[host]\nhostname = \"{host}\"\n")).unwrap()
    }

    fn current_host(s: &Store) -> String {
        crate::parse(&s.current().unwrap().unwrap())
            .unwrap()
            .host
            .hostname()
            .to_string()
    }

    #[test]
    fn persist_writes_durably_and_privately() {
        let t = tempfile::tempdir().unwrap();
        persist(&cfg("one"), t.path()).unwrap();
        let s = Store::new(t.path());
        assert_eq!(current_host(&s), "one");
        let mode = fs::metadata(s.current_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!t.path().join("lib/berth/config.toml.new").exists());
        assert_eq!(s.last_good().unwrap(), None);
        s.mark_good(1).unwrap();
        assert_eq!(s.last_good().unwrap(), s.current().unwrap());
        assert_eq!(s.last_outcome().unwrap(), None);
    }

    #[test]
    fn trial_commit_and_revert() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        s.persist(&cfg("one")).unwrap();

        // Trial that succeeds.
        let tr = s.begin_trial(&cfg("two"), 5, 1000, 120).unwrap();
        assert!(!tr.expired(1119) && tr.expired(1120));
        assert!(matches!(
            s.begin_trial(&cfg("x"), 5, 1000, 120),
            Err(StoreError::TrialOpen)
        ));
        assert_eq!(current_host(&s), "two");
        assert_eq!(
            s.check_at_boot(5, 1001).unwrap(),
            BootCheck::TrialRunning(tr)
        );
        s.mark_good(1010).unwrap();
        assert_eq!(s.trial().unwrap(), None);
        assert_eq!(s.last_outcome().unwrap().unwrap().result, "applied");
        assert!(s.last_good().unwrap().unwrap().contains("two"));

        // Trial that times out.
        s.begin_trial(&cfg("three"), 5, 2000, 120).unwrap();
        s.revert("not healthy within 120 s", 2120).unwrap();
        assert_eq!(current_host(&s), "two");
        let o = s.last_outcome().unwrap().unwrap();
        assert_eq!(
            (o.result.as_str(), o.reason.as_str()),
            ("reverted", "not healthy within 120 s")
        );

        // Trial interrupted by a reboot: reverted at the next boot.
        s.begin_trial(&cfg("four"), 5, 3000, 120).unwrap();
        assert_eq!(current_host(&s), "four");
        assert_eq!(s.check_at_boot(6, 3050).unwrap(), BootCheck::Reverted);
        assert_eq!(current_host(&s), "two");
        assert!(s
            .last_outcome()
            .unwrap()
            .unwrap()
            .reason
            .contains("rebooted"));
        assert_eq!(s.check_at_boot(6, 3051).unwrap(), BootCheck::Clean);
    }

    #[test]
    fn revert_without_good_config_means_defaults() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        s.begin_trial(&cfg("first"), 1, 0, 120).unwrap();
        s.revert("no network", 200).unwrap();
        assert_eq!(s.current().unwrap(), None);
    }

    #[test]
    fn damaged_trial_marker_is_an_error_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        write_atomic(&t.path().join("lib/berth/config.trial.toml"), b"boot = [").unwrap();
        let e = s.check_at_boot(1, 0).unwrap_err();
        assert!(
            e.to_string().contains("config.trial.toml is damaged"),
            "{e}"
        );
    }
}
