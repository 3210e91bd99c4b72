//! Berth networking for sysd: links up, static addresses and routes over rtnetlink, a
//! DHCPv4 client, DNS from the config and the leases, and a status readout for
//! `osctl status`. No external binaries, no C libraries.
//!
//! ```no_run
//! # async fn f(config: berth_config::Config) -> Result<(), berth_net::NetError> {
//! let nl = berth_net::Netlink::connect()?;
//! let applied = berth_net::apply(&nl, &config.network, &berth_net::DhcpOptions::default()).await?;
//! let (servers, search) = applied.dns();
//! let resolv_conf = config.resolv_conf(&servers, &search);
//! println!("{}", nl.status().await?);
//! # let _ = resolv_conf; Ok(()) }
//! ```
//!
//! The workload bridge (`network = "bridge"`, see `docs/NETWORK.md`) is four modules that
//! sysd drives: [`bridge`] (bridge `berth0`, a veth pair per container), [`ipam`] (the
//! persistent address of each container), [`ports`] (published ports and their conflicts)
//! and [`nat`] (the nf_tables table `ip berth`: masquerade and the published ports).

pub mod bridge;
pub mod dhcp;
pub mod ipam;
pub mod nat;
pub mod netlink;
pub mod ports;

use std::net::IpAddr;

use berth_config::{AddressMode, Cidr, Interface, Network, RouteTarget};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use bridge::{
    attach, detach, ensure_bridge, sweep, Attachment, BridgeConfig, BridgeError, Netns,
};
pub use dhcp::{DhcpClient, DhcpError, DhcpEvent, DhcpOptions, DhcpState, Lease};
pub use ipam::{Ipam, IpamError};
pub use nat::{NatConfig, NatError, Nft, Published};
pub use netlink::{InterfaceStatus, Link, NetStatus, Netlink, NetlinkError, RouteInfo};
pub use ports::{PortConflict, PortMapping, Proto};

/// Failures of [`apply`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink step failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A DHCP client could not start.
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    /// An interface named in the config does not exist.
    #[error("network.interfaces[{index}]: no interface {name:?} on this machine")]
    MissingInterface {
        /// Index in `network.interfaces`.
        index: usize,
        /// Its name.
        name: String,
    },
}

/// A running DHCP client.
pub struct DhcpHandle {
    /// Interface.
    pub ifname: String,
    /// Its state; changes on every lease event.
    pub state: watch::Receiver<DhcpState>,
    task: JoinHandle<()>,
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`apply`] set up. Dropping it stops the DHCP clients (their addresses stay until
/// the lease would have been renewed; call [`apply`] again to reconfigure).
#[derive(Default)]
pub struct Applied {
    /// One per DHCP interface.
    pub dhcp: Vec<DhcpHandle>,
    /// Interfaces configured statically.
    pub static_interfaces: Vec<String>,
}

impl Applied {
    /// DNS servers and search domains from the current leases (append them after the
    /// config's own: [`berth_config::Config::resolv_conf`]).
    pub fn dns(&self) -> (Vec<IpAddr>, Vec<String>) {
        let mut servers = Vec::new();
        let mut search = Vec::new();
        for h in &self.dhcp {
            if let Some(l) = &h.state.borrow().lease {
                servers.extend(l.dns.iter().map(|a| IpAddr::V4(*a)));
                search.extend(l.search.iter().cloned());
            }
        }
        (servers, search)
    }
}

/// Whether `gateway` answers on link `index`: a datagram to its discard port makes the
/// kernel resolve (or re-confirm) its link-layer address, then the neighbour table says
/// whether that worked. Waits up to `timeout` (the kernel re-confirms a stale entry within
/// about 6 s).
pub async fn gateway_reachable(
    nl: &Netlink,
    index: u32,
    gateway: IpAddr,
    timeout: std::time::Duration,
) -> Result<bool, NetError> {
    let start = tokio::time::Instant::now();
    loop {
        let bind: std::net::SocketAddr = match gateway {
            IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        if let Ok(sock) = tokio::net::UdpSocket::bind(bind).await {
            let _ = sock.send_to(b"berth", (gateway, 9)).await;
        }
        match nl.neighbour_confirmed(index, gateway).await? {
            Some(answer) => return Ok(answer),
            None if start.elapsed() >= timeout => return Ok(false),
            None => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// IPv6 link-local (`fe80::/10`): the kernel's own, never removed.
fn is_link_local(a: &Cidr) -> bool {
    matches!(a.addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The config entry for `link`: the first that matches, or DHCP for every interface when
/// the config lists none (the safe default). Loopback never gets an entry.
pub fn entry_for<'a>(net: &'a Network, link: &Link) -> Option<std::borrow::Cow<'a, Interface>> {
    if link.is_loopback() {
        return None;
    }
    if net.interfaces.is_empty() {
        return Some(std::borrow::Cow::Owned(Interface {
            name: link.name.clone(),
            mode: AddressMode::Dhcp,
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: None,
        }));
    }
    net.interfaces
        .iter()
        .find(|i| i.matches(&link.name))
        .map(std::borrow::Cow::Borrowed)
}

/// Applies `[network]`: loopback up; every configured interface up with its MTU, static
/// addresses and routes (a `static` interface loses every other address but IPv6
/// link-local, e.g. an earlier DHCP lease); a DHCP client on each `dhcp` interface.
/// Interfaces the config does not mention are left alone. Returns the DHCP clients (keep the value alive).
///
/// An interface named exactly in the config but absent on the machine is an error found
/// before anything is changed, so the caller can fall back to the safe defaults (or revert
/// a config on trial). Links are listed once: call it after the NIC drivers are loaded.
pub async fn apply(nl: &Netlink, net: &Network, opts: &DhcpOptions) -> Result<Applied, NetError> {
    let links = nl.links().await?;
    for (index, i) in net.interfaces.iter().enumerate() {
        if !i.name.ends_with('*') && !links.iter().any(|l| l.name == i.name) {
            return Err(NetError::MissingInterface {
                index,
                name: i.name.clone(),
            });
        }
    }
    let mut applied = Applied::default();
    let present = nl.addresses().await?;
    for link in &links {
        if link.is_loopback() {
            nl.set_up(link, None).await?;
            continue;
        }
        let Some(entry) = entry_for(net, link) else {
            continue;
        };
        tracing::info!(ifname = %link.name, mode = ?entry.mode, "configuring interface");
        nl.set_up(link, entry.mtu).await?;
        if entry.mode == AddressMode::Static {
            // The config is the whole truth for a static interface: addresses from an
            // earlier config or a DHCP lease go (and the routes through them with them).
            for (_, old) in present.iter().filter(|(i, a)| {
                *i == link.index && !is_link_local(a) && !entry.addresses.contains(a)
            }) {
                tracing::info!(ifname = %link.name, address = %old, "removing an address the config does not list");
                nl.remove_address(link, *old).await?;
            }
        }
        for a in &entry.addresses {
            nl.add_address(link, *a).await?;
        }
        for r in &entry.routes {
            let dst = match r.to {
                RouteTarget::Net(n) => n,
                RouteTarget::Default => Cidr {
                    addr: match r.via {
                        Some(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    },
                    prefix: 0,
                },
            };
            nl.add_route(link, dst, r.via, r.metric).await?;
        }
        match entry.mode {
            AddressMode::Static => applied.static_interfaces.push(link.name.clone()),
            AddressMode::Dhcp => {
                let client = DhcpClient::new(link.clone(), opts.clone())?;
                let (tx, rx) = watch::channel(DhcpState {
                    ifname: link.name.clone(),
                    lease: None,
                    event: DhcpEvent::Searching,
                    renewals: 0,
                    rebinds: 0,
                    error: None,
                });
                let task = tokio::spawn(client.run(nl.clone(), tx));
                applied.dhcp.push(DhcpHandle {
                    ifname: link.name.clone(),
                    state: rx,
                    task,
                });
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, 1],
            up: false,
            lower_up: false,
            mtu: Some(1500),
        }
    }

    #[test]
    fn default_config_means_dhcp_everywhere_but_loopback() {
        let net = Network::default();
        assert_eq!(
            entry_for(&net, &link("eth0")).unwrap().mode,
            AddressMode::Dhcp
        );
        assert!(entry_for(&net, &link("lo")).is_none());
    }

    #[test]
    fn first_matching_entry_wins() {
        let c = berth_config::parse(
            "[[network.interfaces]]\nname = \"eth0\"\nmode = \"static\"\naddresses = [\"192.0.2.2/24\"]\n\n[[network.interfaces]]\nname = \"e*\"\n",
        )
        .unwrap();
        assert_eq!(
            entry_for(&c.network, &link("eth0")).unwrap().mode,
            AddressMode::Static
        );
        assert_eq!(
            entry_for(&c.network, &link("ens3")).unwrap().mode,
            AddressMode::Dhcp
        );
        assert!(entry_for(&c.network, &link("wlan0")).is_none());
    }
}
