//! `berth-fleetlock`: a stateless FleetLock server (the reboot-lock protocol Zincati and
//! Berth nodes speak) whose semaphores live in etcd v3 in airlock's layout, so it can
//! serve a fleet next to airlock, on the same etcd. `docs/FLEET.md` tells how to run it.
//!
//! * [`semaphore`]: the JSON value of a group's semaphore and its recursive lock.
//! * [`store`]: the semaphores in etcd (compare-and-swap on the key's version), the
//!   optional holder TTL (side keys with an etcd lease), the operator's release.
//! * [`server`]: the HTTP API (`/v1/pre-reboot`, `/v1/steady-state`, `/metrics`).

pub mod semaphore;
pub mod server;
pub mod store;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The server's settings: from `--config FILE` (TOML, these field names) and the
/// command line, which wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on (`host:port`).
    pub listen: String,
    /// etcd v3 endpoints (`http://host:port`).
    pub etcd_endpoints: Vec<String>,
    /// Per-request etcd timeout, seconds.
    pub etcd_timeout_secs: u64,
    /// A holder's slot expires this many seconds after it took it (0: never).
    pub holder_ttl_secs: u64,
    /// Reboot groups and their slot counts (used when a group's semaphore is created).
    pub groups: BTreeMap<String, u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "0.0.0.0:3333".into(),
            etcd_endpoints: Vec::new(),
            etcd_timeout_secs: 3,
            holder_ttl_secs: 0,
            groups: BTreeMap::new(),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("reading {path}")]
    Read {
        /// Its path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Settings`].
    #[error("{path}: {source}")]
    Parse {
        /// Its path.
        path: String,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// Something is missing or wrong.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Reads a TOML config file.
    pub fn from_file(path: &str) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SettingsError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Parses `NAME=SLOTS` (a `--group` argument) into the groups.
    pub fn add_group(&mut self, arg: &str) -> Result<(), SettingsError> {
        let (name, slots) = arg.split_once('=').ok_or_else(|| {
            SettingsError::Invalid(format!(
                "--group {arg:?}: expected NAME=SLOTS, e.g. default=1"
            ))
        })?;
        let slots: u64 = slots.parse().map_err(|_| {
            SettingsError::Invalid(format!("--group {arg:?}: SLOTS must be a whole number"))
        })?;
        self.groups.insert(name.to_string(), slots);
        Ok(())
    }

    /// Checks everything; adds `default = 1` when no group is configured (as airlock).
    pub fn check(&mut self) -> Result<(), SettingsError> {
        if self.groups.is_empty() {
            self.groups.insert("default".into(), 1);
        }
        for (g, slots) in &self.groups {
            if !server::valid_group(g) {
                return Err(SettingsError::Invalid(format!(
                    "group {g:?}: names are letters, digits, '.' and '-' (at most 128)"
                )));
            }
            if *slots == 0 {
                return Err(SettingsError::Invalid(format!(
                    "group {g}: 0 slots would never let a node reboot"
                )));
            }
        }
        if self.etcd_endpoints.is_empty() {
            return Err(SettingsError::Invalid(
                "no etcd endpoint (--etcd http://HOST:2379, or etcd_endpoints in the config file)"
                    .into(),
            ));
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(SettingsError::Invalid(format!(
                    "etcd endpoint {e:?}: expected http://HOST:PORT"
                )));
            }
        }
        if self.etcd_timeout_secs == 0 || self.etcd_timeout_secs > 60 {
            return Err(SettingsError::Invalid(
                "the etcd timeout must be between 1 and 60 seconds".into(),
            ));
        }
        Ok(())
    }

    /// The per-request etcd timeout.
    pub fn etcd_timeout(&self) -> Duration {
        Duration::from_secs(self.etcd_timeout_secs)
    }

    /// The holder TTL, if any.
    pub fn holder_ttl(&self) -> Option<Duration> {
        (self.holder_ttl_secs > 0).then(|| Duration::from_secs(self.holder_ttl_secs))
    }
}

/// Serves the API on `listener` until `shutdown` completes. With a holder TTL, expired
/// holders are also removed every `min(TTL / 4, 30 s)`, not only when a group is full.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = store::Store::connect(
        &settings.etcd_endpoints,
        settings.etcd_timeout(),
        settings.holder_ttl(),
    )
    .await?;
    if let Some(ttl) = settings.holder_ttl() {
        let (store, groups) = (store.clone(), settings.groups.clone());
        let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                for g in groups.keys() {
                    if let Err(e) = store.reap(g).await {
                        tracing::warn!(
                            "group {g}: removing expired holders: {}",
                            berth_config::error_chain(&e)
                        );
                    }
                }
            }
        });
    }
    let app = std::sync::Arc::new(server::App {
        store,
        groups: settings.groups.clone(),
    });
    axum::serve(listener, server::router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let mut s: Settings = toml::from_str(
            "listen = \"127.0.0.1:3333\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n[groups]\ndefault = 2\nworkers = 1\n",
        )
        .unwrap();
        s.add_group("db=3").unwrap();
        s.check().unwrap();
        assert_eq!(s.groups.len(), 3);
        assert!(s.add_group("db").is_err());
        assert!(s.add_group("db=x").is_err());
        assert!(toml::from_str::<Settings>("listn = \"x\"").is_err());
        let mut bad = s.clone();
        bad.groups.insert("a/b".into(), 1);
        assert!(bad.check().unwrap_err().to_string().contains("a/b"));
        let mut bad = s.clone();
        bad.groups.insert("zero".into(), 0);
        assert!(bad.check().unwrap_err().to_string().contains("0 slots"));
        let mut bad = s.clone();
        bad.etcd_endpoints = vec!["127.0.0.1:2379".into()];
        assert!(bad.check().unwrap_err().to_string().contains("http://"));
        let mut none = Settings {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            ..Settings::default()
        };
        none.check().unwrap();
        assert_eq!(none.groups.get("default"), Some(&1));
    }
}
