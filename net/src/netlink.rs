//! Links, addresses and routes over rtnetlink (no `ip` binary), and the status readout.

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use berth_config::Cidr;

/// Netlink failures; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    /// Listing links failed.
    #[error("cannot list network interfaces")]
    ListLinks(#[source] Box<rtnetlink::Error>),
    /// No interface by that name.
    #[error("no network interface {0:?}")]
    NoSuchLink(String),
    /// Setting a link up or its MTU failed.
    #[error("cannot configure interface {ifname}")]
    SetLink {
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Adding or removing an address failed.
    #[error("cannot {op} address {addr} on {ifname}")]
    Address {
        /// `add` or `remove`.
        op: &'static str,
        /// The address.
        addr: Cidr,
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Listing addresses failed.
    #[error("cannot list addresses")]
    ListAddresses(#[source] Box<rtnetlink::Error>),
    /// Adding or removing a route failed.
    #[error("cannot {op} route {route} on {ifname}")]
    Route {
        /// `add` or `remove`.
        op: &'static str,
        /// The route, as text.
        route: String,
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Listing routes failed.
    #[error("cannot list routes")]
    ListRoutes(#[source] Box<rtnetlink::Error>),
    /// Listing neighbours (ARP / NDP entries) failed.
    #[error("cannot list neighbours")]
    ListNeighbours(#[source] Box<rtnetlink::Error>),
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Kernel index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address (6 bytes for Ethernet; empty for loopback).
    pub mac: Vec<u8>,
    /// Administratively up.
    pub up: bool,
    /// Carrier present.
    pub lower_up: bool,
    /// MTU.
    pub mtu: Option<u32>,
}

impl Link {
    /// Whether this is the loopback interface.
    pub fn is_loopback(&self) -> bool {
        self.name == "lo"
    }

    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            up: m.header.flags.contains(LinkFlags::Up),
            lower_up: m.header.flags.contains(LinkFlags::LowerUp),
            mtu: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(a) => l.mac = a.clone(),
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                _ => {}
            }
        }
        l
    }
}

/// A route as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Destination network (`0.0.0.0/0` for the default route).
    pub destination: Cidr,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface.
    pub ifname: Option<String>,
    /// Metric.
    pub metric: Option<u32>,
}

/// Interface state for `osctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// The link.
    pub link: Link,
    /// Its addresses.
    pub addresses: Vec<Cidr>,
}

impl InterfaceStatus {
    /// `up`, `no-carrier` (administratively up, no link) or `down`.
    pub fn state(&self) -> &'static str {
        if self.link.up && self.link.lower_up {
            "up"
        } else if self.link.up {
            "no-carrier"
        } else {
            "down"
        }
    }
}

/// Addresses and default routes, for `osctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStatus {
    /// Every interface with its addresses.
    pub interfaces: Vec<InterfaceStatus>,
    /// Default routes (IPv4 first), lowest metric first.
    pub default_routes: Vec<RouteInfo>,
}

impl fmt::Display for NetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.interfaces {
            let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
            writeln!(
                f,
                "{:<10} {:<10} {}",
                i.link.name,
                i.state(),
                addrs.join(" ")
            )?;
        }
        match self.default_routes.first() {
            Some(r) => {
                write!(f, "default route:")?;
                if let Some(g) = r.gateway {
                    write!(f, " via {g}")?;
                }
                if let Some(d) = &r.ifname {
                    write!(f, " dev {d}")?;
                }
                writeln!(f)
            }
            None => writeln!(f, "default route: none"),
        }
    }
}

/// An rtnetlink connection. Create it inside the tokio runtime (and, for tests, inside the
/// network namespace) it will be used in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the bridge module.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| NetlinkError::ListLinks(Box::new(e)))?
        {
            out.push(Link::from_message(&m));
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// The link called `name`.
    pub async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// Sets a link up, and its MTU if given.
    pub async fn set_up(&self, link: &Link, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut b = LinkUnspec::new_with_index(link.index).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|source| NetlinkError::SetLink {
                ifname: link.name.clone(),
                source: Box::new(source),
            })
    }

    /// Adds (or refreshes) an address.
    pub async fn add_address(&self, link: &Link, addr: Cidr) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(link.index, addr.addr, addr.prefix)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Address {
                op: "add",
                addr,
                ifname: link.name.clone(),
                source: Box::new(source),
            })
    }

    /// Removes an address if present.
    pub async fn remove_address(&self, link: &Link, addr: Cidr) -> Result<(), NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(addr.addr)
            .execute();
        let err = |source| NetlinkError::Address {
            op: "remove",
            addr,
            ifname: link.name.clone(),
            source: Box::new(source),
        };
        while let Some(m) = s.try_next().await.map_err(err)? {
            if m.header.prefix_len == addr.prefix {
                self.handle.address().del(m).execute().await.map_err(err)?;
            }
        }
        Ok(())
    }

    /// Addresses of every link, by link index.
    pub async fn addresses(&self) -> Result<Vec<(u32, Cidr)>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| NetlinkError::ListAddresses(Box::new(e)))?
        {
            // IPv4 carries the interface address in Local (Address is the peer on p2p links).
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                out.push((
                    m.header.index,
                    Cidr {
                        addr: ip,
                        prefix: m.header.prefix_len,
                    },
                ));
            }
        }
        Ok(out)
    }

    fn route_message(
        dst: Cidr,
        gateway: Option<IpAddr>,
        oif: u32,
        metric: Option<u32>,
    ) -> RouteMessage {
        let net = dst.network();
        let mut m = match (net, gateway) {
            (IpAddr::V4(n), g) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(n, dst.prefix)
                    .output_interface(oif);
                if let Some(IpAddr::V4(g)) = g {
                    b = b.gateway(g);
                }
                b.build()
            }
            (IpAddr::V6(n), g) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(n, dst.prefix)
                    .output_interface(oif);
                if let Some(IpAddr::V6(g)) = g {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        if let Some(p) = metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        m
    }

    /// Adds (or replaces) a route through `link`.
    pub async fn add_route(
        &self,
        link: &Link,
        dst: Cidr,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let m = Self::route_message(dst, gateway, link.index, metric);
        self.handle
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Route {
                op: "add",
                route: route_text(dst, gateway),
                ifname: link.name.clone(),
                source: Box::new(source),
            })
    }

    /// Removes a route through `link` (no error if it is gone).
    pub async fn remove_route(
        &self,
        link: &Link,
        dst: Cidr,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let m = Self::route_message(dst, gateway, link.index, metric);
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => Ok(()), // ESRCH
            Err(source) => Err(NetlinkError::Route {
                op: "remove",
                route: route_text(dst, gateway),
                ifname: link.name.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// Routes in the main table.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, NetlinkError> {
        let links = self.links().await?;
        let mut out = Vec::new();
        for v6 in [false, true] {
            let q = if v6 {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            };
            let mut s = self.handle.route().get(q).execute();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| NetlinkError::ListRoutes(Box::new(e)))?
            {
                if m.header.table != 254 {
                    continue; // RT_TABLE_MAIN only
                }
                let mut dst = None;
                let mut r = RouteInfo {
                    destination: Cidr {
                        addr: if v6 {
                            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                        } else {
                            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                        },
                        prefix: m.header.destination_prefix_length,
                    },
                    gateway: None,
                    ifname: None,
                    metric: None,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = ip_of(d),
                        RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
                        RouteAttribute::Oif(i) => {
                            r.ifname = links.iter().find(|l| l.index == *i).map(|l| l.name.clone())
                        }
                        RouteAttribute::Priority(p) => r.metric = Some(*p),
                        _ => {}
                    }
                }
                if let Some(d) = dst {
                    r.destination.addr = d;
                }
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whether the neighbour table has answered for `addr` on link `index`: `Some(true)`
    /// once it is confirmed (reachable, or static), `Some(false)` when resolution failed,
    /// `None` while unknown or being checked (incomplete, stale, delay, probe, absent).
    pub async fn neighbour_confirmed(
        &self,
        index: u32,
        addr: IpAddr,
    ) -> Result<Option<bool>, NetlinkError> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourState,
        };
        let mut s = self.handle.neighbours().get().execute();
        let mut found = None;
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| NetlinkError::ListNeighbours(Box::new(e)))?
        {
            if m.header.ifindex != index {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    Some(IpAddr::V6(*v6))
                }
                _ => None,
            });
            if dst != Some(addr) {
                continue;
            }
            found = match m.header.state {
                NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp => {
                    Some(true)
                }
                NeighbourState::Failed => Some(false),
                _ => None,
            };
        }
        Ok(found)
    }

    /// Interfaces, addresses and default routes.
    pub async fn status(&self) -> Result<NetStatus, NetlinkError> {
        let links = self.links().await?;
        let addrs = self.addresses().await?;
        let interfaces = links
            .into_iter()
            .map(|link| InterfaceStatus {
                addresses: addrs
                    .iter()
                    .filter(|(i, _)| *i == link.index)
                    .map(|(_, a)| *a)
                    .collect(),
                link,
            })
            .collect();
        let mut default_routes: Vec<RouteInfo> = self
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.destination.prefix == 0)
            .collect();
        default_routes.sort_by_key(|r| (r.destination.addr.is_ipv6(), r.metric.unwrap_or(0)));
        Ok(NetStatus {
            interfaces,
            default_routes,
        })
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_text(dst: Cidr, gateway: Option<IpAddr>) -> String {
    match gateway {
        Some(g) => format!("{}/{} via {g}", dst.network(), dst.prefix),
        None => format!("{}/{}", dst.network(), dst.prefix),
    }
}
