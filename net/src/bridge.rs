//! The workload bridge and the per-container veth pairs, over rtnetlink.
//!
//! - [`ensure_bridge`]: bridge `berth0` exists, is up and has the gateway address (the first
//!   host of the subnet); refuses a subnet that overlaps an address of another interface.
//! - [`attach`]: a veth pair per container, the host end (`vb` + 12 hex digits of a hash of
//!   the container name, see [`veth_name`]) on the bridge, the other end moved into the
//!   container's network namespace and set up there as `eth0` with its address, `lo` up and
//!   a default route via the gateway.
//! - [`detach`]: deletes the host end (the kernel deletes the pair); [`sweep`] deletes the
//!   veths of containers that no longer exist (after a crash or a sysd restart).
//!
//! The in-namespace half runs on a thread of its own that enters the namespace
//! (`setns`) and opens its own rtnetlink socket there; the thread ends afterwards, so no
//! pooled thread is ever left in a container's namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use berth_config::Cidr;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::netlink::{Link, Netlink, NetlinkError};

/// The bridge's name.
pub const BRIDGE: &str = "berth0";
/// The default subnet.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// Name of the container end inside its namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Bridge and veth failures; each names what it was about.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An rtnetlink step failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The subnet is not a usable IPv4 network.
    #[error("bridge subnet {0} is not an IPv4 network of /8 to /30")]
    BadSubnet(Cidr),
    /// The subnet overlaps an address of another interface.
    #[error("bridge subnet {subnet} overlaps address {addr} on interface {ifname}; choose another [network.bridge] subnet")]
    Overlap {
        /// The bridge subnet.
        subnet: Cidr,
        /// The other interface's address.
        addr: Cidr,
        /// The other interface.
        ifname: String,
    },
    /// Creating a link failed.
    #[error("cannot create {kind} {ifname}")]
    Create {
        /// `bridge` or `veth pair`.
        kind: &'static str,
        /// Its name.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Changing a link (controller, namespace, name, state) failed.
    #[error("cannot {op} {ifname}")]
    Set {
        /// What was done.
        op: String,
        /// The link.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Deleting a link failed.
    #[error("cannot delete {ifname}")]
    Delete {
        /// The link.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The container's network namespace could not be opened or entered.
    #[error("cannot enter the network namespace of container {container} ({netns})")]
    Netns {
        /// The container.
        container: String,
        /// `pid N` or `fd N`.
        netns: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the container's end inside its namespace failed.
    #[error("cannot configure {CONTAINER_IFNAME} of container {container}")]
    Inside {
        /// The container.
        container: String,
        /// Cause.
        #[source]
        source: Box<BridgeError>,
    },
    /// The helper thread that enters the namespace died.
    #[error("the network namespace thread of container {0} died")]
    Thread(String),
}

/// The bridge's name and subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Interface name (`berth0`).
    pub name: String,
    /// The subnet, host bits cleared.
    pub subnet: Cidr,
}

impl BridgeConfig {
    /// Bridge `berth0` on `subnet` (host bits are cleared).
    pub fn new(subnet: Cidr) -> Result<Self, BridgeError> {
        Self::named(BRIDGE, subnet)
    }

    /// A bridge with another name (tests).
    pub fn named(name: &str, subnet: Cidr) -> Result<Self, BridgeError> {
        if !subnet.addr.is_ipv4() || !(8..=30).contains(&subnet.prefix) {
            return Err(BridgeError::BadSubnet(subnet));
        }
        Ok(BridgeConfig {
            name: name.into(),
            subnet: Cidr {
                addr: subnet.network(),
                prefix: subnet.prefix,
            },
        })
    }

    /// The gateway: the first host of the subnet, the bridge's own address.
    pub fn gateway(&self) -> Ipv4Addr {
        match self.subnet.addr {
            IpAddr::V4(n) => Ipv4Addr::from(u32::from(n) + 1),
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED, // refused by `named`
        }
    }

    /// The gateway with the subnet's prefix.
    pub fn gateway_cidr(&self) -> Cidr {
        Cidr {
            addr: IpAddr::V4(self.gateway()),
            prefix: self.subnet.prefix,
        }
    }
}

/// Whether two networks share an address.
pub fn overlaps(a: Cidr, b: Cidr) -> bool {
    a.addr.is_ipv4() == b.addr.is_ipv4() && {
        let p = a.prefix.min(b.prefix);
        let (x, y) = (
            Cidr {
                addr: a.addr,
                prefix: p,
            },
            Cidr {
                addr: b.addr,
                prefix: p,
            },
        );
        x.network() == y.network()
    }
}

/// A container's network namespace.
#[derive(Debug, Clone, Copy)]
pub enum Netns<'a> {
    /// Through `/proc/PID/ns/net` (the container's init).
    Pid(u32),
    /// An open `/proc/PID/ns/net` or bind-mounted namespace file.
    Fd(BorrowedFd<'a>),
}

impl std::fmt::Display for Netns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        match self {
            Netns::Pid(p) => write!(f, "pid {p}"),
            Netns::Fd(fd) => write!(f, "fd {}", fd.as_raw_fd()),
        }
    }
}

/// What [`attach`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Host end of the veth pair.
    pub host_ifname: String,
    /// The container's address with the subnet's prefix.
    pub addr: Cidr,
    /// Its default gateway.
    pub gateway: Ipv4Addr,
}

/// 64-bit FNV-1a: fixed forever, so a container's veth name never changes between versions.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host end of a container's veth pair: `vb` and 12 hex digits (14 characters; the
/// kernel allows 15). Deterministic, so sysd finds it again after a restart.
pub fn veth_name(container: &str) -> String {
    format!("vb{:012x}", fnv1a(container) >> 16)
}

/// The container end's name while it is still in the host namespace.
fn peer_name(container: &str) -> String {
    format!("vp{:012x}", fnv1a(container) >> 16)
}

/// Whether `name` is one of ours (`vb`/`vp` and 12 lowercase hex digits).
fn is_berth_veth(name: &str) -> bool {
    name.len() == 14
        && (name.starts_with("vb") || name.starts_with("vp"))
        && name[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn set_err(op: impl Into<String>, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> BridgeError {
    let op = op.into();
    let ifname = ifname.to_string();
    move |source| BridgeError::Set {
        op,
        ifname,
        source: Box::new(source),
    }
}

/// Makes sure the bridge exists, is up and carries exactly the gateway address. Refuses
/// (before changing anything) a subnet that overlaps an address on another interface.
pub async fn ensure_bridge(nl: &Netlink, cfg: &BridgeConfig) -> Result<Link, BridgeError> {
    let links = nl.links().await?;
    let bridge_index = links.iter().find(|l| l.name == cfg.name).map(|l| l.index);
    for (index, addr) in nl.addresses().await? {
        if Some(index) == bridge_index || !overlaps(addr, cfg.subnet) {
            continue;
        }
        let ifname = links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{index}"));
        return Err(BridgeError::Overlap {
            subnet: cfg.subnet,
            addr,
            ifname,
        });
    }
    if bridge_index.is_none() {
        // A fixed, locally administered MAC: otherwise the bridge takes the lowest MAC of
        // its ports and changes it as containers come and go.
        let mut mac = rand::random::<[u8; 6]>();
        mac[0] = (mac[0] & 0xfe) | 0x02;
        let msg = LinkBridge::new(&cfg.name).address(mac.to_vec()).build();
        match nl.handle().link().add(msg).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {} // EEXIST: raced
            Err(source) => {
                return Err(BridgeError::Create {
                    kind: "bridge",
                    ifname: cfg.name.clone(),
                    source: Box::new(source),
                })
            }
        }
    }
    let link = nl.link(&cfg.name).await?;
    nl.set_up(&link, None).await?;
    let gw = cfg.gateway_cidr();
    for (_, old) in nl
        .addresses()
        .await?
        .into_iter()
        .filter(|(i, a)| *i == link.index && a.addr.is_ipv4() && *a != gw)
    {
        nl.remove_address(&link, old).await?;
    }
    nl.add_address(&link, gw).await?;
    Ok(link)
}

/// Deletes link `name` if it exists. Returns whether it did.
async fn delete_link(nl: &Netlink, name: &str) -> Result<bool, BridgeError> {
    let Some(link) = nl.links().await?.into_iter().find(|l| l.name == name) else {
        return Ok(false);
    };
    match nl.handle().link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(false), // ENODEV
        Err(source) => Err(BridgeError::Delete {
            ifname: name.into(),
            source: Box::new(source),
        }),
    }
}

/// Connects `container` to the bridge: a veth pair, the host end on the bridge, the other
/// end moved into `netns` and configured there as `eth0` with `addr`, `lo` up, and a default
/// route via the gateway. A veth left from an earlier attach of the same container is
/// replaced. On failure nothing is left behind.
pub async fn attach(
    nl: &Netlink,
    cfg: &BridgeConfig,
    container: &str,
    netns: Netns<'_>,
    addr: Ipv4Addr,
) -> Result<Attachment, BridgeError> {
    let host = veth_name(container);
    let peer = peer_name(container);
    // Open the namespace first: a container that is gone fails before anything is made.
    let ns = open_netns(container, netns)?;
    delete_link(nl, &host).await?;
    delete_link(nl, &peer).await?;
    let bridge = nl.link(&cfg.name).await?;
    let msg = LinkVeth::new(&host, &peer)
        .append_extra_attribute(LinkAttribute::IfAlias(format!(
            "berth container {container}"
        )))
        .build();
    nl.handle()
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|source| BridgeError::Create {
            kind: "veth pair",
            ifname: host.clone(),
            source: Box::new(source),
        })?;
    let result = async {
        let links = nl.links().await?;
        let find = |n: &str| {
            links
                .iter()
                .find(|l| l.name == n)
                .cloned()
                .ok_or_else(|| NetlinkError::NoSuchLink(n.to_string()))
        };
        let (h, p) = (find(&host)?, find(&peer)?);
        nl.handle()
            .link()
            .set(
                LinkUnspec::new_with_index(h.index)
                    .controller(bridge.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(set_err(format!("attach to {} and set up", cfg.name), &host))?;
        use std::os::fd::AsRawFd;
        nl.handle()
            .link()
            .set(
                LinkUnspec::new_with_index(p.index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(set_err(
                format!("move into the network namespace of container {container}"),
                &peer,
            ))?;
        let addr = Cidr {
            addr: IpAddr::V4(addr),
            prefix: cfg.subnet.prefix,
        };
        configure_inside(container, ns, peer.clone(), addr, cfg.gateway()).await?;
        Ok(Attachment {
            host_ifname: host.clone(),
            addr,
            gateway: cfg.gateway(),
        })
    }
    .await;
    if result.is_err() {
        // Deleting the host end deletes the pair, wherever its other end is by now.
        let _ = delete_link(nl, &host).await;
        let _ = delete_link(nl, &peer).await;
    }
    result
}

fn open_netns(container: &str, netns: Netns<'_>) -> Result<OwnedFd, BridgeError> {
    let err = |source| BridgeError::Netns {
        container: container.to_string(),
        netns: netns.to_string(),
        source,
    };
    match netns {
        Netns::Pid(pid) => std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map(OwnedFd::from)
            .map_err(err),
        Netns::Fd(fd) => fd.try_clone_to_owned().map_err(err),
    }
}

/// Runs the in-namespace half on a fresh thread that enters `ns`.
async fn configure_inside(
    container: &str,
    ns: OwnedFd,
    peer: String,
    addr: Cidr,
    gateway: Ipv4Addr,
) -> Result<(), BridgeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = container.to_string();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let r = (|| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| BridgeError::Netns {
                    container: name.clone(),
                    netns: "setns".into(),
                    source: e.into(),
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| BridgeError::Netns {
                        container: name.clone(),
                        netns: "runtime".into(),
                        source: e,
                    })?;
                rt.block_on(inside(&peer, addr, gateway))
                    .map_err(|source| BridgeError::Inside {
                        container: name.clone(),
                        source: Box::new(source),
                    })
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| BridgeError::Netns {
            container: container.to_string(),
            netns: "thread".into(),
            source: e,
        })?;
    rx.await
        .map_err(|_| BridgeError::Thread(container.to_string()))?
}

/// The container end's MAC, derived from its address (`02:42:` and the four address bytes,
/// as Docker does): an address handed out again gets the same MAC, so the neighbour entries
/// the host and other containers still hold for it stay right.
pub fn mac_for(addr: Cidr) -> [u8; 6] {
    match addr.addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x02, 0x42, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [0x02, 0x42, o[12], o[13], o[14], o[15]]
        }
    }
}

/// Inside the container's namespace: rename and MAC, address, up, lo up, default route.
async fn inside(peer: &str, addr: Cidr, gateway: Ipv4Addr) -> Result<(), BridgeError> {
    let nl = Netlink::connect()?;
    let link = nl.link(peer).await?;
    nl.handle()
        .link()
        .set(
            LinkUnspec::new_with_index(link.index)
                .name(CONTAINER_IFNAME.to_string())
                .address(mac_for(addr).to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(set_err(format!("rename to {CONTAINER_IFNAME}"), peer))?;
    let link = Link {
        name: CONTAINER_IFNAME.into(),
        ..link
    };
    nl.add_address(&link, addr).await?;
    nl.set_up(&link, None).await?;
    let lo = nl.link("lo").await?;
    nl.set_up(&lo, None).await?;
    nl.add_route(
        &link,
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix: 0,
        },
        Some(IpAddr::V4(gateway)),
        None,
    )
    .await?;
    Ok(())
}

/// Disconnects `container`: deletes the host end of its veth pair (the kernel deletes the
/// other end with it). Returns whether there was one; nothing to do is not an error.
pub async fn detach(nl: &Netlink, container: &str) -> Result<bool, BridgeError> {
    let a = delete_link(nl, &veth_name(container)).await?;
    let b = delete_link(nl, &peer_name(container)).await?;
    Ok(a || b)
}

/// Deletes every Berth veth that belongs to none of `known` (containers that exist):
/// what a crash or a sysd restart left behind. Returns the names deleted.
pub async fn sweep(nl: &Netlink, known: &[&str]) -> Result<Vec<String>, BridgeError> {
    let keep: std::collections::HashSet<String> = known
        .iter()
        .flat_map(|c| [veth_name(c), peer_name(c)])
        .collect();
    let mut deleted = Vec::new();
    for l in nl.links().await? {
        if is_berth_veth(&l.name) && !keep.contains(&l.name) && delete_link(nl, &l.name).await? {
            tracing::info!(ifname = %l.name, "deleted the veth of a container that no longer exists");
            deleted.push(l.name);
        }
    }
    Ok(deleted)
}

/// Names of the Berth veths present (host ends and stray container ends).
pub async fn veths(nl: &Netlink) -> Result<Vec<String>, BridgeError> {
    Ok(nl
        .links()
        .await?
        .into_iter()
        .filter(|l| is_berth_veth(&l.name))
        .map(|l| l.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let a = veth_name("web");
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15);
        assert_eq!(a, veth_name("web"));
        // Fixed forever: a changed hash would orphan every veth on upgrade.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(a, veth_name("web2"));
        assert!(is_berth_veth(&a));
        assert!(is_berth_veth(&peer_name("web")));
        let long = "x".repeat(300);
        assert_eq!(veth_name(&long).len(), 14);
        for other in [
            "eth0",
            "berth0",
            "vbXYZ000000000",
            "vb0123456789abc",
            "vx0123456789ab",
        ] {
            assert!(!is_berth_veth(other), "{other}");
        }
    }

    #[test]
    fn subnets_gateways_and_overlaps() {
        let c = BridgeConfig::new("10.88.7.9/16".parse().unwrap()).unwrap();
        assert_eq!(c.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.gateway_cidr().to_string(), "10.88.0.1/16");
        for bad in ["fd00::/64", "10.0.0.0/31", "10.0.0.0/4"] {
            assert!(BridgeConfig::new(bad.parse().unwrap()).is_err(), "{bad}");
        }
        let o = |a: &str, b: &str| overlaps(a.parse().unwrap(), b.parse().unwrap());
        assert!(o("10.88.0.0/16", "10.88.3.4/24"));
        assert!(o("10.88.3.4/24", "10.88.0.0/16"));
        assert!(o("10.88.0.0/16", "10.0.0.1/8"));
        assert!(!o("10.88.0.0/16", "10.89.0.1/16"));
        assert!(!o("10.88.0.0/16", "192.168.1.2/24"));
        assert!(!o("10.88.0.0/16", "fd00::1/64"));
        assert_eq!(
            mac_for("10.88.0.2/16".parse().unwrap()),
            [0x02, 0x42, 10, 88, 0, 2]
        );
    }
}
