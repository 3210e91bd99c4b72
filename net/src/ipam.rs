//! Persistent IPv4 address allocation on the workload bridge: a container keeps its address
//! across restarts and reboots, until [`Ipam::release`] (on `osctl rm`).
//!
//! The state is one JSON file (sysd passes `/var/lib/berth/net/ipam.json`), rewritten
//! atomically on every change: write a new file, fsync it, rename it over the old one, fsync
//! the directory. The network address, the gateway (the first host) and the broadcast
//! address are never handed out.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use berth_config::Cidr;
use serde::{Deserialize, Serialize};

/// Allocation failures; each names the file or the subnet.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The subnet cannot hold containers.
    #[error("subnet {0} cannot hold containers (an IPv4 network of /8 to /30 is needed)")]
    BadSubnet(Cidr),
    /// Reading the state file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not what this module writes.
    #[error("{path} is corrupt ({detail}); move it away to start over (containers then get new addresses)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Writing the state file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Every address is taken.
    #[error("no free address left in {subnet} for container {container} ({used} in use); remove containers or choose a larger [network.bridge] subnet")]
    Full {
        /// The subnet.
        subnet: Cidr,
        /// Who asked.
        container: String,
        /// How many are taken.
        used: usize,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Subnet the addresses are from.
    subnet: Option<String>,
    /// Container name -> address.
    addresses: BTreeMap<String, Ipv4Addr>,
}

/// The allocator. Each call reads and rewrites the file, so two handles on the same file
/// (or a sysd restart) see each other's changes; callers serialise their calls.
#[derive(Debug, Clone)]
pub struct Ipam {
    path: PathBuf,
    subnet: Cidr,
    net: u32,
    size: u32,
}

impl Ipam {
    /// An allocator for `subnet` keeping its state in `path` (created on first use, with its
    /// directory).
    pub fn new(path: impl Into<PathBuf>, subnet: Cidr) -> Result<Self, IpamError> {
        let IpAddr::V4(net) = subnet.network() else {
            return Err(IpamError::BadSubnet(subnet));
        };
        if !(8..=30).contains(&subnet.prefix) {
            return Err(IpamError::BadSubnet(subnet));
        }
        Ok(Ipam {
            path: path.into(),
            subnet,
            net: u32::from(net),
            size: 1u32 << (32 - u32::from(subnet.prefix)),
        })
    }

    /// The gateway: the first host address (the bridge's own).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net + 1)
    }

    /// The subnet.
    pub fn subnet(&self) -> Cidr {
        self.subnet
    }

    /// The address of `container`: the one it had, or the lowest free one (recorded before
    /// it is returned).
    pub fn allocate(&self, container: &str) -> Result<Ipv4Addr, IpamError> {
        let mut st = self.load()?;
        if let Some(a) = st.addresses.get(container) {
            if self.usable(*a) {
                return Ok(*a);
            }
        }
        let used: std::collections::BTreeSet<Ipv4Addr> = st
            .addresses
            .iter()
            .filter(|(n, _)| n.as_str() != container)
            .map(|(_, a)| *a)
            .collect();
        let free = (2..self.size - 1)
            .map(|i| Ipv4Addr::from(self.net + i))
            .find(|a| !used.contains(a))
            .ok_or_else(|| IpamError::Full {
                subnet: self.subnet,
                container: container.to_string(),
                used: used.len(),
            })?;
        st.addresses.insert(container.to_string(), free);
        self.store(&mut st)?;
        Ok(free)
    }

    /// Forgets `container`'s address (nothing to do when it has none).
    pub fn release(&self, container: &str) -> Result<(), IpamError> {
        let mut st = self.load()?;
        if st.addresses.remove(container).is_some() {
            self.store(&mut st)?;
        }
        Ok(())
    }

    /// The recorded addresses, by container.
    pub fn list(&self) -> Result<BTreeMap<String, Ipv4Addr>, IpamError> {
        Ok(self.load()?.addresses)
    }

    fn usable(&self, a: Ipv4Addr) -> bool {
        let i = u32::from(a).wrapping_sub(self.net);
        (2..self.size - 1).contains(&i)
    }

    fn load(&self) -> Result<State, IpamError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(IpamError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let corrupt = |detail: String| IpamError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let st: State = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        // The same address twice would hand one address to two containers.
        let mut seen = std::collections::BTreeMap::new();
        for (name, a) in &st.addresses {
            if let Some(other) = seen.insert(*a, name) {
                return Err(corrupt(format!(
                    "address {a} is recorded for both {other:?} and {name:?}"
                )));
            }
        }
        Ok(st)
    }

    fn store(&self, st: &mut State) -> Result<(), IpamError> {
        st.subnet = Some(self.subnet.to_string());
        let werr = |source| IpamError::Write {
            path: self.path.clone(),
            source,
        };
        let data = serde_json::to_vec_pretty(st).map_err(|e| werr(std::io::Error::other(e)))?;
        write_atomic(&self.path, &data).map_err(werr)
    }
}

/// Write-new, fsync, rename, fsync-directory.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, subnet: &str) -> Ipam {
        Ipam::new(dir.join("net/ipam.json"), subnet.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_container_keeps_its_address_across_handles() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "10.88.0.0/16");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        let web = a.allocate("web").unwrap();
        assert_eq!(web, Ipv4Addr::new(10, 88, 0, 2));
        let db = a.allocate("db").unwrap();
        assert_eq!(db, Ipv4Addr::new(10, 88, 0, 3));
        // A second handle on the same file (a sysd restart, a reboot).
        let b = ipam(d.path(), "10.88.0.0/16");
        assert_eq!(b.allocate("web").unwrap(), web);
        assert_eq!(b.allocate("db").unwrap(), db);
        b.release("web").unwrap();
        b.release("web").unwrap(); // idempotent
        assert_eq!(
            a.allocate("cache").unwrap(),
            web,
            "the freed address is reused"
        );
        assert_eq!(a.list().unwrap().len(), 2);
        assert!(!d.path().join("net/ipam.json.new").exists());
    }

    #[test]
    fn network_gateway_and_broadcast_are_never_given_and_full_is_clear() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "192.0.2.0/29"); // .0 net, .1 gw, .2-.6 hosts, .7 broadcast
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.allocate(&format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(192, 0, 2, 6)));
        let e = a.allocate("one-too-many").unwrap_err();
        assert!(matches!(e, IpamError::Full { used: 5, .. }), "{e}");
        assert!(e.to_string().contains("192.0.2.0/29"), "{e}");
        // An existing container still gets its address when the subnet is full.
        assert_eq!(a.allocate("c0").unwrap(), got[0]);
    }

    #[test]
    fn a_changed_subnet_moves_containers_into_it() {
        let d = tempfile::tempdir().unwrap();
        ipam(d.path(), "10.88.0.0/16").allocate("web").unwrap();
        let b = ipam(d.path(), "10.99.0.0/24");
        assert_eq!(b.allocate("web").unwrap(), Ipv4Addr::new(10, 99, 0, 2));
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "10.88.0.0/16");
        let path = d.path().join("net/ipam.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for bad in [
            &b"{not json"[..],
            b"",
            b"{\"addresses\":{\"web\":\"10.88.0.300\"}}",
            b"{\"addresses\":{\"web\":17}}",
            b"{\"addresses\":{},\"extra\":1}",
            b"{\"addresses\":{\"a\":\"10.88.0.2\",\"b\":\"10.88.0.2\"}}",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = a.allocate("x").unwrap_err();
            assert!(matches!(e, IpamError::Corrupt { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("ipam.json"), "{e}");
            assert!(a.release("x").is_err());
        }
    }

    #[test]
    fn subnets_that_cannot_hold_containers_are_refused() {
        for s in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/7", "fd00::/64"] {
            assert!(
                Ipam::new("/nonexistent", s.parse().unwrap()).is_err(),
                "{s}"
            );
        }
    }
}
