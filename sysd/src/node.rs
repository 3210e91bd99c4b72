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
/// DHCP leases. Runs for the life of sysd.
pub async fn run_network(config: Config) {
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
        if std::fs::read_to_string("/etc/resolv.conf").ok().as_deref() != Some(text.as_str()) {
            if let Err(e) =
                berth_config::store::write_atomic(Path::new("/etc/resolv.conf"), text.as_bytes())
            {
                tracing::warn!("cannot write /etc/resolv.conf: {e}");
            }
        }
    };
    write_resolv(&applied);
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
                    let state = if i.link.up && i.link.lower_up {
                        "up"
                    } else if i.link.up {
                        "no-carrier"
                    } else {
                        "down"
                    };
                    let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
                    format!("{} {} {}", i.link.name, state, addrs.join(" "))
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
