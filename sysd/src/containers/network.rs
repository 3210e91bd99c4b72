//! `network = "bridge"` containers: sysd's side of the workload bridge (`docs/NETWORK.md`).
//!
//! [`Bridge::setup`] (at sysd start, or when the first bridged container starts) makes sure
//! `berth0` is up with the gateway address, turns on forwarding, re-creates the NAT table
//! with the ports of the containers a previous sysd left running (so they never stop
//! answering) and deletes veths of containers that are gone. For each bridged container:
//! [`Bridge::prepare`] (before the runtime creates it) checks its host ports against the
//! running containers, gives it its address (kept across restarts and reboots) and writes
//! its `/etc/hosts` and `/etc/resolv.conf`; [`Bridge::attach`] (created, not yet started)
//! plugs its namespace into the bridge and publishes its ports; [`Bridge::detach`] (it
//! stopped) takes both back and keeps the address; [`Bridge::release`] (`osctl rm`) gives
//! the address back.
//!
//! The two files live in `/run/berth/net/<name>/` and are bind-mounted read-only. Every
//! attach and detach rewrites them in place for every bridged container (a bind mount of a
//! single file follows its inode, so a rename would go unseen), so `/etc/hosts` always names
//! each running bridged container with its address.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_config::{Cidr, PortMapping};
use berth_net::{
    bridge, ports, BridgeConfig, BridgeError, Ipam, IpamError, NatConfig, NatError, Netlink,
    NetlinkError, Netns, Nft, PortConflict, Published,
};

/// Failures of the bridge, each naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Netlink could not be opened.
    #[error("cannot open netlink for the workload bridge")]
    Netlink(#[source] NetlinkError),
    /// `berth0` could not be set up, or a veth not attached or detached.
    #[error("workload bridge")]
    Bridge(#[source] BridgeError),
    /// Forwarding or the NAT table.
    #[error("workload bridge NAT")]
    Nat(#[source] NatError),
    /// The address allocator.
    #[error("workload bridge addresses")]
    Ipam(#[source] IpamError),
    /// A host port another running container has published.
    #[error("host port taken")]
    PortTaken(#[source] PortConflict),
    /// `/etc/hosts` or `/etc/resolv.conf` of a container.
    #[error("cannot write {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A blocking step's thread died.
    #[error("the NAT thread of container {0} died")]
    Thread(String),
}

/// Where the bridge keeps its state and what it reads.
#[derive(Debug, Clone)]
pub struct NetPaths {
    /// The address allocator's file (`/var/lib/berth/net/ipam.json`).
    pub ipam: PathBuf,
    /// Per-container `hosts` and `resolv.conf` (`/run/berth/net`).
    pub files: PathBuf,
    /// The node's resolver config (`/etc/resolv.conf`), source of the containers' one.
    pub host_resolv: PathBuf,
}

impl NetPaths {
    /// The paths on a Berth node.
    pub fn node() -> Self {
        NetPaths {
            ipam: "/var/lib/berth/net/ipam.json".into(),
            files: "/run/berth/net".into(),
            host_resolv: "/etc/resolv.conf".into(),
        }
    }
}

/// A bridged container that is plugged in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    addr: Ipv4Addr,
    ports: Vec<PortMapping>,
}

/// The workload bridge as sysd runs it. Shared (`Arc`); the NAT socket is blocking and is
/// used from `spawn_blocking`.
pub struct Bridge {
    /// One rtnetlink socket, one user at a time: the kernel answers a second dump on a
    /// socket whose dump is still running with EBUSY (seen when containers start in
    /// parallel at boot).
    nl: tokio::sync::Mutex<Netlink>,
    cfg: BridgeConfig,
    ipam: Ipam,
    nft: Mutex<Nft>,
    paths: NetPaths,
    attached: Mutex<BTreeMap<String, Attached>>,
    /// Host ports of the containers that are plugged in or about to be (from
    /// [`Bridge::prepare`] to [`Bridge::detach`]): two starting at once cannot both win.
    claims: Mutex<BTreeMap<String, Vec<PortMapping>>>,
}

/// A container the bridge should know at setup: running, left by a previous sysd.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// Its name.
    pub name: String,
    /// Its published ports.
    pub ports: Vec<PortMapping>,
}

impl Bridge {
    /// Sets up bridge `bridge_name` on `subnet` in the current network namespace, with
    /// `adopted` (running containers) re-published and every other Berth veth deleted.
    /// The netlink and NAT sockets belong to the namespace of the calling thread.
    pub async fn setup(
        bridge_name: &str,
        subnet: Cidr,
        paths: NetPaths,
        adopted: &[Adopted],
    ) -> Result<Arc<Self>, NetworkError> {
        let cfg = BridgeConfig::named(bridge_name, subnet).map_err(NetworkError::Bridge)?;
        let nl = Netlink::connect().map_err(NetworkError::Netlink)?;
        bridge::ensure_bridge(&nl, &cfg)
            .await
            .map_err(NetworkError::Bridge)?;
        berth_net::nat::enable_forwarding(&cfg.name).map_err(NetworkError::Nat)?;
        let ipam = Ipam::new(&paths.ipam, cfg.subnet).map_err(NetworkError::Ipam)?;
        let mut attached = BTreeMap::new();
        let mut published = Vec::new();
        for a in adopted {
            let addr = ipam.allocate(&a.name).map_err(NetworkError::Ipam)?;
            published.push(Published {
                container: a.name.clone(),
                addr,
                ports: a.ports.clone(),
            });
            attached.insert(
                a.name.clone(),
                Attached {
                    addr,
                    ports: a.ports.clone(),
                },
            );
        }
        let mut nft = Nft::open().map_err(NetworkError::Nat)?;
        nft.reset(
            &NatConfig {
                bridge: cfg.name.clone(),
                subnet: cfg.subnet,
            },
            &published,
        )
        .map_err(NetworkError::Nat)?;
        let known: Vec<&str> = adopted.iter().map(|a| a.name.as_str()).collect();
        let swept = bridge::sweep(&nl, &known)
            .await
            .map_err(NetworkError::Bridge)?;
        if !swept.is_empty() {
            tracing::info!("workload bridge: deleted stale veths {}", swept.join(", "));
        }
        let claims = adopted
            .iter()
            .map(|a| (a.name.clone(), a.ports.clone()))
            .collect();
        let b = Arc::new(Bridge {
            nl: tokio::sync::Mutex::new(nl),
            cfg,
            ipam,
            nft: Mutex::new(nft),
            paths,
            attached: Mutex::new(attached),
            claims: Mutex::new(claims),
        });
        b.rewrite_files(None)?;
        tracing::info!(
            bridge = %b.cfg.name,
            subnet = %b.cfg.subnet,
            adopted = known.len(),
            "workload bridge up"
        );
        Ok(b)
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attached>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host files of `name`: (`hosts`, `resolv.conf`), for the bundle's bind mounts.
    pub fn files_of(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.paths.files.join(name);
        (d.join("hosts"), d.join("resolv.conf"))
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<PortMapping>>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before `name` is created: its ports must be free among the running (and starting)
    /// containers, and are claimed until [`Bridge::detach`]; it gets its address and its
    /// `hosts` and `resolv.conf`.
    pub fn prepare(&self, name: &str, ports: &[PortMapping]) -> Result<Ipv4Addr, NetworkError> {
        {
            let mut claims = self.claims();
            let others = claims
                .iter()
                .filter(|(n, _)| n.as_str() != name)
                .flat_map(|(n, p)| p.iter().map(move |p| (n.as_str(), p)));
            ports::check(others.chain(ports.iter().map(|p| (name, p))))
                .map_err(NetworkError::PortTaken)?;
            claims.insert(name.into(), ports.to_vec());
        }
        let addr = match self.ipam.allocate(name) {
            Ok(a) => a,
            Err(e) => {
                self.claims().remove(name);
                return Err(NetworkError::Ipam(e));
            }
        };
        self.rewrite_files(Some((name, addr)))?;
        Ok(addr)
    }

    /// `name` is created (its init, `pid`, waits to be started): plug its network
    /// namespace into the bridge as `eth0` with `addr` and publish its ports. On failure
    /// nothing of it is left plugged in.
    pub async fn attach(
        self: &Arc<Self>,
        name: &str,
        pid: u32,
        addr: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<(), NetworkError> {
        bridge::attach(
            &*self.nl.lock().await,
            &self.cfg,
            name,
            Netns::Pid(pid),
            addr,
        )
        .await
        .map_err(NetworkError::Bridge)?;
        let p = Published {
            container: name.into(),
            addr,
            ports: ports.to_vec(),
        };
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            me.nft.lock().unwrap_or_else(|e| e.into_inner()).publish(&p)
        })
        .await
        .map_err(|_| NetworkError::Thread(name.into()))
        .and_then(|r| r.map_err(NetworkError::Nat));
        if let Err(e) = r {
            let _ = bridge::detach(&*self.nl.lock().await, name).await;
            return Err(e);
        }
        self.attached().insert(
            name.into(),
            Attached {
                addr,
                ports: ports.to_vec(),
            },
        );
        self.rewrite_files(None)
    }

    /// `name` stopped: its ports and veth go, its address stays. Idempotent.
    pub async fn detach(self: &Arc<Self>, name: &str) -> Result<(), NetworkError> {
        let was = self.attached().remove(name);
        self.claims().remove(name);
        let me = self.clone();
        let n = name.to_string();
        let unpublished = tokio::task::spawn_blocking(move || {
            me.nft
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unpublish(&n)
        })
        .await
        .map_err(|_| NetworkError::Thread(name.into()))
        .and_then(|r| r.map_err(NetworkError::Nat));
        let detached = bridge::detach(&*self.nl.lock().await, name)
            .await
            .map(|_| ())
            .map_err(NetworkError::Bridge);
        if was.is_some() {
            self.rewrite_files(None)?;
        }
        unpublished.and(detached)
    }

    /// `name` is removed (`osctl rm`): its address is free again, its files go.
    pub fn release(&self, name: &str) -> Result<(), NetworkError> {
        self.attached().remove(name);
        self.claims().remove(name);
        self.ipam.release(name).map_err(NetworkError::Ipam)?;
        let _ = std::fs::remove_dir_all(self.paths.files.join(name));
        Ok(())
    }

    /// The address of `name` while it is plugged in.
    pub fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.attached().get(name).map(|a| a.addr)
    }

    /// Rewrites `hosts` and `resolv.conf` of every plugged-in container, and of `extra`
    /// (one about to start), each naming all of them.
    fn rewrite_files(&self, extra: Option<(&str, Ipv4Addr)>) -> Result<(), NetworkError> {
        let mut names: BTreeMap<String, Ipv4Addr> = self
            .attached()
            .iter()
            .map(|(n, a)| (n.clone(), a.addr))
            .collect();
        if let Some((n, a)) = extra {
            names.insert(n.into(), a);
        }
        let resolv = container_resolv_conf(
            &std::fs::read_to_string(&self.paths.host_resolv).unwrap_or_default(),
        );
        for (name, addr) in &names {
            let dir = self.paths.files.join(name);
            std::fs::create_dir_all(&dir).map_err(|source| NetworkError::File {
                path: dir.clone(),
                source,
            })?;
            let (hosts, rc) = self.files_of(name);
            write_in_place(&hosts, hosts_file(name, *addr, &names).as_bytes())?;
            write_in_place(&rc, resolv.as_bytes())?;
        }
        Ok(())
    }
}

/// A bridged container's `/etc/hosts`: loopback, itself, then every other bridged
/// container by name.
pub fn hosts_file(me: &str, addr: Ipv4Addr, all: &BTreeMap<String, Ipv4Addr>) -> String {
    let mut s = format!(
        "# written by sysd: the containers on the workload bridge\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{addr}\t{me}\n"
    );
    for (n, a) in all.iter().filter(|(n, _)| n.as_str() != me) {
        s.push_str(&format!("{a}\t{n}\n"));
    }
    s
}

/// A bridged container's `/etc/resolv.conf` from the node's: the same servers, search
/// domains and options, less loopback name servers (the container's loopback is its own,
/// and the bridge refuses traffic to the host's).
pub fn container_resolv_conf(host: &str) -> String {
    let mut out = String::from("# written by sysd from the node's /etc/resolv.conf\n");
    for line in host.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(ns) = t.strip_prefix("nameserver") {
            match ns.trim().parse::<IpAddr>() {
                Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => {}
                _ => continue,
            }
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// Replaces a file's content keeping its inode (bind-mounted as a single file), mode 0644.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), NetworkError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let err = |source| NetworkError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_itself_and_every_other_bridged_container() {
        let mut all = BTreeMap::new();
        all.insert("web".to_string(), Ipv4Addr::new(10, 88, 0, 2));
        all.insert("db".to_string(), Ipv4Addr::new(10, 88, 0, 3));
        let h = hosts_file("web", Ipv4Addr::new(10, 88, 0, 2), &all);
        assert!(h.contains("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("10.88.0.2\tweb\n10.88.0.3\tdb\n"), "{h}");
        assert_eq!(h.matches("\tweb\n").count(), 1, "{h}");
    }

    #[test]
    fn resolv_conf_keeps_servers_a_container_can_reach() {
        let r = container_resolv_conf(
            "# from DHCP\nnameserver 127.0.0.53\nnameserver 10.0.2.3\nnameserver ::1\nnameserver bogus\nsearch example.com\noptions edns0\n",
        );
        assert_eq!(
            r,
            "# written by sysd from the node's /etc/resolv.conf\nnameserver 10.0.2.3\nsearch example.com\noptions edns0\n"
        );
    }
}
