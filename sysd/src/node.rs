//! The machine config as sysd sees it, and what follows from it: the registry client
//! settings and the network.

use berth_config::Config;
use std::collections::HashMap;
use std::path::Path;

/// The config in force: `/var/lib/berth/config.toml` as PID 1 accepted and persisted it,
/// or the defaults when there is none or it does not parse (PID 1 has reported why).
pub fn load_config(var: &Path) -> (Config, Option<String>) {
    let store = berth_config::store::Store::new(var);
    match store.current() {
        Ok(Some(text)) => match berth_config::parse(&text) {
            Ok(c) => (c, None),
            Err(e) => (
                Config::default(),
                Some(format!(
                    "{}: {e}; using defaults",
                    store.current_path().display()
                )),
            ),
        },
        Ok(None) => (Config::default(), None),
        Err(e) => (Config::default(), Some(format!("{e}; using defaults"))),
    }
}

/// Registry client settings from `[registries."host:port"]`.
pub fn registry_client(c: &Config) -> berth_registry::Client {
    let mut m = HashMap::new();
    for (host, r) in &c.registries {
        m.insert(
            host.clone(),
            berth_registry::RegistryConfig {
                insecure: r.insecure,
                ca_pem: r.ca.as_ref().map(|s| s.as_bytes().to_vec()),
                credentials: match (&r.username, &r.password) {
                    (Some(u), Some(p)) => Some(berth_registry::Credentials::Basic {
                        username: u.clone(),
                        password: p.clone(),
                    }),
                    _ => None,
                },
                mirrors: r.mirrors.clone(),
            },
        );
    }
    berth_registry::Client::new(m, Default::default())
}

/// Brings up the network from `[network]` and keeps `/etc/resolv.conf` in step with the
/// DHCP leases. Runs for the life of sysd. `ready` fires once the config's addresses,
/// routes and DHCP clients are in place (or the fallback is), or when nothing could be.
pub async fn run_network(config: Config, ready: tokio::sync::oneshot::Sender<()>) {
    let nl = match berth_net::Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::error!("network: cannot open netlink: {e}");
            return;
        }
    };
    let applied = match berth_net::apply(&nl, &config.network, &Default::default()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("network: {e}; falling back to DHCP on every interface");
            match berth_net::apply(&nl, &Default::default(), &Default::default()).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("network: DHCP fallback failed too: {e}");
                    return;
                }
            }
        }
    };
    let write_resolv = |applied: &berth_net::Applied| {
        let (servers, search) = applied.dns();
        let text = config.resolv_conf(&servers, &search);
        if let Err(e) = write_if_changed(Path::new("/etc/resolv.conf"), &text) {
            tracing::warn!("cannot write /etc/resolv.conf: {e}");
        }
    };
    write_resolv(&applied);
    let _ = ready.send(());
    let mut watches: Vec<_> = applied.dhcp.iter().map(|h| h.state.clone()).collect();
    if watches.is_empty() {
        // Static only: nothing changes any more; keep `applied` alive.
        std::future::pending::<()>().await;
    }
    loop {
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        let (r, _, _) = futures_util::future::select_all(changes).await;
        if r.is_err() {
            return;
        }
        write_resolv(&applied);
    }
}

/// The ntpd system service's config, rendered from `host.ntp_servers` (the service mounts
/// it over `/etc/openntpd/ntpd.conf`).
pub const NTPD_CONF: &str = "/run/berth/ntpd.conf";

/// Write [`NTPD_CONF`] for `config`; `Ok(true)` when its content changed.
pub fn write_ntpd_conf(path: &Path, config: &Config) -> std::io::Result<bool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_if_changed(path, &config.ntpd_conf())
}

/// [`rewrite_in_place`] unless the file already says `text`; `Ok(true)` when written.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    rewrite_in_place(path, text.as_bytes())?;
    Ok(true)
}

/// Replace a file's content keeping its inode and mode (0644 when created): host-network
/// containers bind-mount `/etc/resolv.conf` as a single file, so a rename would leave them
/// reading the old one, and every user in them must be able to read it.
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// One line per interface and the default route, for `osctl status`.
pub async fn network_status() -> (Vec<String>, String) {
    let Ok(nl) = berth_net::Netlink::connect() else {
        return (Vec::new(), String::new());
    };
    match nl.status().await {
        Ok(s) => {
            let lines = s
                .interfaces
                .iter()
                .map(|i| {
                    let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
                    format!("{} {} {}", i.link.name, i.state(), addrs.join(" "))
                        .trim_end()
                        .to_string()
                })
                .collect();
            let route = s
                .default_routes
                .first()
                .map(|r| {
                    let mut t = String::new();
                    if let Some(g) = r.gateway {
                        t.push_str(&format!("via {g}"));
                    }
                    if let Some(d) = &r.ifname {
                        t.push_str(&format!(" dev {d}"));
                    }
                    t.trim().to_string()
                })
                .unwrap_or_default();
            (lines, route)
        }
        Err(e) => (
            vec![format!("cannot read the network state: {e}")],
            String::new(),
        ),
    }
}

/// The node-wide state sysd owns: the network task, the config trial, and the containers.
pub struct Node {
    /// The container manager, when containers can run.
    pub containers: Option<crate::containers::Manager>,
    network: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    store: berth_config::store::Store,
    boot: u64,
    /// The config in force; the remote API listener watches it.
    config: tokio::sync::watch::Sender<Config>,
    /// Where the config in force came from and what went wrong, when sysd knows better
    /// than PID 1's boot record (the `berth.config=` URL, which only sysd can fetch).
    source: std::sync::Mutex<Option<(String, String)>>,
}

/// The `berth.config=` URL that sysd must fetch at this boot: PID 1 found no datasource
/// (`config_source` is `defaults` with no error) and nothing is persisted yet. An
/// unusable `berth.config=` is an error for `osctl status`.
pub fn pending_config_url(
    persisted: bool,
    boot: &berth_api::BootInfo,
    cmdline: &str,
) -> Result<Option<String>, String> {
    if persisted || boot.config_source != "defaults" || !boot.config_error.is_empty() {
        return Ok(None);
    }
    berth_config::datasource::cmdline_url(cmdline)
}

/// GET a config over HTTP: a success status and at most 1 MiB of UTF-8 text.
async fn fetch_config(url: &str) -> Result<String, String> {
    const MAX: usize = 1 << 20;
    // hickory: the OS has no glibc resolver configuration to lean on.
    let client = reqwest::Client::builder()
        .hickory_dns(true)
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("the server answered {}", r.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX {
            return Err("larger than 1 MiB: not a config".into());
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8 text".into())
}

/// The last `osctl config apply`: the one source of `osctl status` ([`config_change`])
/// and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigTrial {
    /// `none` (no apply yet), `on_trial`, `applied` or `reverted`.
    pub state: &'static str,
    /// Seconds left of a trial (0 when none runs).
    pub seconds_left: u64,
    /// Why it was reverted.
    pub reason: String,
}

/// Read [`ConfigTrial`] from the config store under `var`.
pub fn config_trial(var: &Path) -> ConfigTrial {
    let store = berth_config::store::Store::new(var);
    if let Ok(Some(t)) = store.trial() {
        return ConfigTrial {
            state: "on_trial",
            seconds_left: t
                .started
                .saturating_add(t.deadline)
                .saturating_sub(unix_now()),
            reason: String::new(),
        };
    }
    match store.last_outcome() {
        Ok(Some(o)) => ConfigTrial {
            state: match o.result.as_str() {
                "applied" => "applied",
                "reverted" => "reverted",
                _ => "none",
            },
            seconds_left: 0,
            reason: o.reason,
        },
        _ => ConfigTrial {
            state: "none",
            ..Default::default()
        },
    }
}

/// What happened to the last `osctl config apply`, for `osctl status`.
pub fn config_change(var: &Path) -> String {
    let t = config_trial(var);
    match t.state {
        "on_trial" => format!("on trial ({} s left)", t.seconds_left),
        "none" => String::new(),
        s if t.reason.is_empty() => s.to_string(),
        s => format!("{s}: {}", t.reason),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// The node with `config` in force (boot number `boot`, from PID 1's boot record).
    pub fn new(
        config: Config,
        containers: Option<crate::containers::Manager>,
        boot: u64,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Node {
            containers,
            network: std::sync::Mutex::new(None),
            store: berth_config::store::Store::new(Path::new("/var")),
            boot,
            config: tokio::sync::watch::Sender::new(config),
            source: std::sync::Mutex::new(None),
        })
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.config.borrow().clone()
    }

    /// The config in force and its changes (a config apply, the first-boot fetch).
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<Config> {
        self.config.subscribe()
    }

    /// Where the config in force came from and its error, when sysd overrides PID 1's
    /// boot record (see [`Node::fetch_first_boot`]).
    pub fn config_source(&self) -> Option<(String, String)> {
        self.source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record where the config in force came from and what went wrong (logged).
    pub fn set_source(&self, source: &str, error: String) {
        if !error.is_empty() {
            tracing::warn!("config: {error}");
        }
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some((source.into(), error));
    }

    /// First boot with `berth.config=URL` and no other datasource: fetch the config once
    /// the network (DHCP, from the defaults) is up, retrying for 5 minutes. A valid one is
    /// persisted, put in force like a config PID 1 found, and kept as last known good once
    /// the node is healthy; an invalid or unreachable one leaves the safe defaults in
    /// force, and `osctl status` says why.
    pub async fn fetch_first_boot(self: std::sync::Arc<Self>, url: String) {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(300);
        let mut pause = std::time::Duration::from_secs(1);
        tracing::info!("config: fetching {url} (berth.config=)");
        let text = loop {
            match fetch_config(&url).await {
                Ok(t) => break t,
                Err(e) if std::time::Instant::now() < give_up => {
                    self.set_source(
                        "defaults",
                        format!("waiting for the config from {url}: {e}"),
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(15));
                }
                Err(e) => {
                    self.set_source(
                        "defaults",
                        format!("config from {url} unreachable for 5 min, running with safe defaults: {e}"),
                    );
                    return;
                }
            }
        };
        let config = match berth_config::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                self.set_source(
                    "defaults",
                    format!("config from {url} rejected, running with safe defaults: {e}"),
                );
                return;
            }
        };
        // An operator's `osctl config apply` during the wait wins over the URL.
        if !matches!(self.store.current(), Ok(None)) {
            tracing::warn!("config: a config was applied meanwhile; {url} is not used");
            *self.source.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        let mut problems = Vec::new();
        if let Err(e) = self.store.persist(&config) {
            problems.push(format!("accepted but not persisted: {e}"));
        }
        self.config.send_replace(config.clone());
        problems.extend(self.apply_live(&config).await);
        let error = if problems.is_empty() {
            String::new()
        } else {
            format!("config from {url}: {}", problems.join("; "))
        };
        tracing::info!("config from {url} in force");
        self.set_source(&url, error);
        self.keep_when_healthy().await;
    }

    /// Once the node is healthy, record the config in force as last known good. A trial
    /// begun meanwhile (`osctl config apply`) is left to its own watcher: a health check
    /// that started before it says nothing about the new config.
    async fn keep_when_healthy(self: std::sync::Arc<Self>) {
        loop {
            let checked = match (self.store.trial(), self.store.current()) {
                (Ok(None), Ok(text)) => text,
                _ => return,
            };
            if self.healthy().await.is_ok() {
                // No await between this check and the write: an apply cannot slip in.
                let unchanged = matches!(self.store.trial(), Ok(None))
                    && self.store.current().ok().flatten() == checked;
                if unchanged {
                    if let Err(e) = self.store.mark_good(unix_now()) {
                        tracing::warn!("cannot record the last known good config: {e}");
                    }
                }
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }

    /// Put `config` (already the one in force) into effect without a reboot: sysctls,
    /// files, hostname, network, registries and workloads. Returns what could not be done.
    async fn apply_live(&self, config: &Config) -> Vec<String> {
        let mut problems =
            berth_config::apply::apply(config, Path::new("/proc/sys"), Path::new("/"));
        if let Err(e) = nix::unistd::sethostname(config.host.hostname()) {
            problems.push(format!("host.hostname: {e}"));
        }
        // Answer once the network is as the config says (a DHCP lease may still be on its
        // way), so `osctl status` right after shows the new addresses.
        let network = self.start_network();
        if tokio::time::timeout(std::time::Duration::from_secs(30), network)
            .await
            .is_err()
        {
            problems.push("network: the new settings are not in place after 30 s".into());
        }
        if let Some(c) = &self.containers {
            c.set_client(registry_client(config));
            problems.extend(c.sync_config(config.containers.clone()).await);
        }
        match write_ntpd_conf(Path::new(NTPD_CONF), config) {
            Ok(false) => {}
            // ntpd reads its servers once: restart it (when the image has it).
            Ok(true) => match &self.containers {
                Some(c) if c.exists("ntpd") => {
                    if let Err(e) = c.restart("ntpd").await {
                        problems.push(format!("host.ntp_servers: restarting ntpd: {e}"));
                    }
                }
                _ => {}
            },
            Err(e) => problems.push(format!("host.ntp_servers: writing {NTPD_CONF}: {e}")),
        }
        problems
    }

    /// (Re)start the network from the config in force. The receiver fires once the new
    /// settings are in place; it is dropped unfired if netlink cannot be used.
    pub fn start_network(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run_network(self.config(), tx));
        if let Some(old) = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
        rx
    }

    /// Whether the node is healthy with the config in force: every required service is
    /// healthy, every interface the config manages (every non-loopback one when it names
    /// none) has an IPv4 address, a default route the config asks for exists, and every
    /// default gateway answers (its link-layer address resolves).
    pub async fn healthy(&self) -> Result<(), String> {
        if let Some(c) = &self.containers {
            let (req, ok) = c.required_health();
            if !ok {
                let bad: Vec<String> = req
                    .iter()
                    .filter(|(_, h)| h != "healthy")
                    .map(|(n, h)| format!("{n} {h}"))
                    .collect();
                return Err(format!("required services not healthy: {}", bad.join(", ")));
            }
        }
        let config = self.config();
        let nl = berth_net::Netlink::connect().map_err(|e| e.to_string())?;
        let st = nl.status().await.map_err(|e| e.to_string())?;
        let managed: Vec<_> = st
            .interfaces
            .iter()
            .filter(|i| berth_net::entry_for(&config.network, &i.link).is_some())
            .collect();
        if managed.is_empty() {
            return Err("no network interface is configured".into());
        }
        for i in managed {
            if !i.addresses.iter().any(|a| a.addr.is_ipv4()) {
                return Err(format!("{} has no IPv4 address", i.link.name));
            }
        }
        let wants_default = config.network.interfaces.iter().any(|i| {
            i.routes
                .iter()
                .any(|r| matches!(r.to, berth_config::RouteTarget::Default))
        });
        if wants_default && st.default_routes.is_empty() {
            return Err("the config has a default route but the node has none".into());
        }
        // A default gateway that does not answer means the node is cut off.
        for r in &st.default_routes {
            let (Some(gw), Some(dev)) = (r.gateway, r.ifname.as_deref()) else {
                continue;
            };
            let Some(i) = st.interfaces.iter().find(|i| i.link.name == dev) else {
                continue;
            };
            let answers = berth_net::gateway_reachable(
                &nl,
                i.link.index,
                gw,
                std::time::Duration::from_secs(8),
            )
            .await
            .map_err(|e| e.to_string())?;
            if !answers {
                return Err(format!("the default gateway {gw} on {dev} does not answer"));
            }
        }
        Ok(())
    }

    /// At sysd start: resume a trial begun in this boot (sysd restarted), or, with no
    /// trial open, record the config as last known good once the node is healthy.
    pub fn resume(self: &std::sync::Arc<Self>) {
        match self.store.trial() {
            Ok(Some(t)) if t.boot == self.boot => {
                tokio::spawn(self.clone().watch_trial(t));
            }
            Ok(_) => {
                tokio::spawn(self.clone().keep_when_healthy());
            }
            Err(e) => tracing::warn!("config trial state: {e}"),
        }
    }

    /// `osctl config apply`: validate with the node's rules, put the new config on trial,
    /// apply it live (hostname, sysctls, files, network, registries, workloads), and keep
    /// it only if the node is healthy within `deadline` seconds; otherwise revert to the
    /// last known good config and reboot into it.
    pub async fn apply(
        self: &std::sync::Arc<Self>,
        text: &str,
        deadline: u64,
    ) -> Result<String, berth_api::ManagerError> {
        use berth_api::ManagerError;
        let config = berth_config::parse(text).map_err(|e| {
            ManagerError::Invalid(format!("config rejected, nothing changed:\n{e}"))
        })?;
        let trial = self
            .store
            .begin_trial(&config, self.boot, unix_now(), deadline)
            .map_err(|e| ManagerError::Invalid(format!("{e}; wait for it to finish")))?;
        tracing::info!("config on trial for {deadline} s");
        self.config.send_replace(config.clone());
        let problems = self.apply_live(&config).await;
        for p in &problems {
            tracing::warn!("config apply: {p}");
        }
        tokio::spawn(self.clone().watch_trial(trial));
        let mut msg = format!(
            "config applied on trial: it is kept once the node is healthy, reverted after {deadline} s otherwise"
        );
        for p in problems {
            msg.push_str(&format!("\nwarning: {p}"));
        }
        Ok(msg)
    }

    async fn watch_trial(self: std::sync::Arc<Self>, trial: berth_config::store::Trial) {
        loop {
            let health = self.healthy().await;
            // Only this trial's outcome is ours to record.
            if !matches!(self.store.trial(), Ok(Some(t)) if t == trial) {
                tracing::warn!("config trial: closed by someone else; not watched any more");
                return;
            }
            match health {
                Ok(()) => {
                    match self.store.mark_good(unix_now()) {
                        Ok(()) => tracing::info!("config trial: healthy; kept as last known good"),
                        Err(e) => tracing::warn!("config trial: cannot record success: {e}"),
                    }
                    return;
                }
                Err(why) if trial.expired(unix_now()) => {
                    let reason = format!(
                        "not healthy within {} s ({why}); reverted to the last known good config",
                        trial.deadline
                    );
                    tracing::error!("config trial: {reason}; rebooting into it");
                    if let Err(e) = self.store.revert(&reason, unix_now()) {
                        tracing::error!("config trial: cannot revert: {e}");
                        return;
                    }
                    // PID 1 applies the restored config at boot, with nothing left over
                    // from the failed one.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(1),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_fetched_only_when_pid1_found_nothing() {
        let url = "ro berth.config=http://10.0.2.100:5000/berth.toml quiet";
        let nothing = berth_api::BootInfo {
            config_source: "defaults".into(),
            ..Default::default()
        };
        assert_eq!(
            pending_config_url(false, &nothing, url).unwrap().as_deref(),
            Some("http://10.0.2.100:5000/berth.toml")
        );
        assert_eq!(
            pending_config_url(false, &nothing, "ro quiet").unwrap(),
            None
        );
        // Already persisted (a later boot), or PID 1 found a datasource, or rejected one.
        assert_eq!(pending_config_url(true, &nothing, url).unwrap(), None);
        let fw_cfg = berth_api::BootInfo {
            config_source: "fw_cfg".into(),
            ..Default::default()
        };
        assert_eq!(pending_config_url(false, &fw_cfg, url).unwrap(), None);
        let rejected = berth_api::BootInfo {
            config_error: "config from fw_cfg rejected".into(),
            ..nothing.clone()
        };
        assert_eq!(pending_config_url(false, &rejected, url).unwrap(), None);
        let e = pending_config_url(false, &nothing, "berth.config=https://x/y").unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn ntpd_conf_is_written_only_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/berth/ntpd.conf");
        let mut c = Config::default();
        assert!(write_ntpd_conf(&p, &c).unwrap());
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("servers pool.ntp.org"));
        assert!(!write_ntpd_conf(&p, &c).unwrap());
        c.host.ntp_servers = vec!["10.0.2.2".into()];
        assert!(write_ntpd_conf(&p, &c).unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("servers 10.0.2.2\n") && !text.contains("pool"),
            "{text}"
        );
    }

    #[test]
    fn resolv_conf_is_rewritten_in_place_and_world_readable() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("resolv.conf");
        super::rewrite_in_place(&p, b"nameserver 10.0.2.3\n").unwrap();
        let first = std::fs::metadata(&p).unwrap();
        assert_eq!(first.permissions().mode() & 0o777, 0o644);
        super::rewrite_in_place(&p, b"nameserver 10.0.2.4\n").unwrap();
        let second = std::fs::metadata(&p).unwrap();
        assert_eq!(
            first.ino(),
            second.ino(),
            "a bind mount of the file would go stale"
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "nameserver 10.0.2.4\n"
        );
    }
}
