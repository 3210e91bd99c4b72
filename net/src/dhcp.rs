//! A DHCPv4 client (RFC 2131): DISCOVER -> OFFER -> REQUEST -> ACK, then RENEWING at T1
//! (unicast to the server), REBINDING at T2 (broadcast), and a new DISCOVER when the lease
//! expires or the server NAKs.
//!
//! It uses one UDP socket on port 68 bound to the interface (`SO_BINDTODEVICE`) with the
//! broadcast flag set in requests, so replies reach it before the interface has an address;
//! no raw sockets, no external binaries. Packets are built and parsed with `dhcproto`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use berth_config::Cidr;

use crate::netlink::{Link, Netlink, NetlinkError};

/// DHCP client failures.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Creating or binding the socket failed.
    #[error("cannot open the DHCP socket on {ifname}")]
    Socket {
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("cannot send a DHCP {what} on {ifname}")]
    Send {
        /// Message kind.
        what: &'static str,
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed (a bug).
    #[error("cannot encode a DHCP message")]
    Encode(#[source] dhcproto::error::EncodeError),
    /// No usable answer in time.
    #[error("no DHCP {what} on {ifname} within {secs} s")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Interface.
        ifname: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The server refused.
    #[error("the DHCP server refused the request on {0} (NAK)")]
    Nak(String),
    /// Configuring the interface failed.
    #[error("cannot configure the lease")]
    Netlink(#[from] Box<NetlinkError>),
}

/// An acquired lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Our address and the subnet's prefix length.
    pub address: Cidr,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// Routers, preferred first.
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Search domains (option 119, else the domain name, option 15).
    pub search: Vec<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// Renewal time T1 in seconds.
    pub t1_secs: u32,
    /// Rebinding time T2 in seconds.
    pub t2_secs: u32,
}

impl Lease {
    /// Reads a lease from an ACK.
    pub fn from_ack(m: &Message, from: Ipv4Addr) -> Option<Lease> {
        if m.opts().msg_type() != Some(MessageType::Ack) || m.yiaddr().is_unspecified() {
            return None;
        }
        let o = m.opts();
        let prefix = match o.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).leading_ones() as u8,
            _ => class_prefix(m.yiaddr()),
        };
        let server = match o.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => from,
        };
        let list = |code| match o.get(code) {
            Some(DhcpOption::Router(v)) | Some(DhcpOption::DomainNameServer(v)) => v.clone(),
            _ => Vec::new(),
        };
        let mut search: Vec<String> = match o.get(OptionCode::DomainSearch) {
            Some(DhcpOption::DomainSearch(names)) => names
                .iter()
                .map(|n| n.to_string().trim_end_matches('.').to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        if search.is_empty() {
            if let Some(DhcpOption::DomainName(d)) = o.get(OptionCode::DomainName) {
                let d = d.trim_end_matches('.').trim();
                if !d.is_empty() {
                    search.push(d.to_string());
                }
            }
        }
        search.retain(|d| berth_config::render::valid_domain(d));
        let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => (*t).max(10),
            _ => 3600,
        };
        let t2_secs = match o.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(t)) if *t < lease_secs => *t,
            _ => (u64::from(lease_secs) * 7 / 8) as u32,
        };
        let t1_secs = match o.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(t)) if *t < t2_secs => *t,
            _ => (lease_secs / 2).min(t2_secs),
        };
        let mtu = match o.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
            _ => None,
        };
        Some(Lease {
            address: Cidr {
                addr: IpAddr::V4(m.yiaddr()),
                prefix,
            },
            server,
            routers: list(OptionCode::Router),
            dns: list(OptionCode::DomainNameServer),
            search,
            mtu,
            lease_secs,
            t1_secs,
            t2_secs,
        })
    }
}

fn class_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// The last thing that happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DhcpEvent {
    /// Still looking for a server.
    Searching,
    /// A new lease.
    Bound,
    /// T1 passed: asking the granting server to extend (unicast).
    Renewing,
    /// Extended by the granting server (T1).
    Renewed,
    /// T2 passed: asking any server to extend (broadcast).
    Rebinding,
    /// Extended by any server after T2.
    Rebound,
    /// Expired without renewal; address removed.
    Expired,
    /// The server refused; address removed.
    Nak,
}

/// What a DHCP task publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpState {
    /// Interface.
    pub ifname: String,
    /// The lease in force.
    pub lease: Option<Lease>,
    /// The last event.
    pub event: DhcpEvent,
    /// Renewals so far (T1, unicast).
    pub renewals: u32,
    /// Rebinds so far (T2, broadcast).
    pub rebinds: u32,
    /// The last error, if the last attempt failed.
    pub error: Option<String>,
}

/// Client timing.
#[derive(Debug, Clone)]
pub struct DhcpOptions {
    /// How long to wait for an answer before resending in the first exchange (doubles to
    /// 64 s with jitter, RFC 2131 4.1).
    pub initial_retry: Duration,
    /// Shortest wait between retransmissions while renewing or rebinding (RFC 2131: 60 s).
    pub min_renew_retry: Duration,
    /// Longest wait between retransmissions while renewing or rebinding (default: an
    /// hour, i.e. RFC 2131's "half the remaining time").
    pub max_renew_retry: Duration,
    /// Hostname sent to the server (option 12).
    pub hostname: Option<String>,
    /// Metric of the default route from the lease.
    pub route_metric: u32,
}

impl Default for DhcpOptions {
    fn default() -> Self {
        DhcpOptions {
            initial_retry: Duration::from_secs(4),
            min_renew_retry: Duration::from_secs(60),
            max_renew_retry: Duration::from_secs(3600),
            hostname: None,
            route_metric: 1024,
        }
    }
}

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// A DHCP client on one interface.
pub struct DhcpClient {
    link: Link,
    socket: UdpSocket,
    opts: DhcpOptions,
    xid: u32,
}

fn open_socket(ifname: &str) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT)).into())?;
    UdpSocket::from_std(s.into())
}

impl DhcpClient {
    /// Opens the client socket on `link` (create it in the runtime and namespace it runs in).
    pub fn new(link: Link, opts: DhcpOptions) -> Result<Self, DhcpError> {
        let socket = open_socket(&link.name).map_err(|source| DhcpError::Socket {
            ifname: link.name.clone(),
            source,
        })?;
        Ok(DhcpClient {
            link,
            socket,
            opts,
            xid: rand::random(),
        })
    }

    fn chaddr(&self) -> Vec<u8> {
        let mut c = self.link.mac.clone();
        c.truncate(16);
        c
    }

    fn base(&self, kind: MessageType, broadcast: bool) -> Message {
        let mut m = Message::default();
        m.set_opcode(v4::Opcode::BootRequest)
            .set_htype(v4::HType::Eth)
            .set_xid(self.xid)
            .set_chaddr(&self.chaddr());
        if broadcast {
            m.set_flags(v4::Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.link.mac);
        o.insert(DhcpOption::ClientIdentifier(id));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::DomainSearch,
            OptionCode::InterfaceMtu,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        o.insert(DhcpOption::MaxMessageSize(1500));
        if let Some(h) = &self.opts.hostname {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        m
    }

    async fn send(&self, m: &Message, to: Ipv4Addr, what: &'static str) -> Result<(), DhcpError> {
        let mut buf = Vec::with_capacity(576);
        m.encode(&mut Encoder::new(&mut buf))
            .map_err(DhcpError::Encode)?;
        tracing::debug!(ifname = %self.link.name, what, %to, "DHCP send");
        self.socket
            .send_to(&buf, SocketAddrV4::new(to, SERVER_PORT))
            .await
            .map(|_| ())
            .map_err(|source| DhcpError::Send {
                what,
                ifname: self.link.name.clone(),
                source,
            })
    }

    /// Waits until `deadline` for a reply to our xid whose type is in `want`.
    async fn receive(
        &self,
        deadline: Instant,
        want: &[MessageType],
    ) -> Option<(Message, Ipv4Addr)> {
        let mut buf = vec![0u8; 4096];
        loop {
            let r = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
            let (n, from) = match r {
                Err(_) => return None,
                Ok(Err(e)) => {
                    tracing::debug!(ifname = %self.link.name, error = %e, "DHCP receive");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if m.opcode() != v4::Opcode::BootReply
                || m.xid() != self.xid
                || m.chaddr() != self.chaddr().as_slice()
            {
                continue;
            }
            let from = match from.ip() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => continue,
            };
            match m.opts().msg_type() {
                Some(t) if want.contains(&t) => return Some((m, from)),
                _ => continue,
            }
        }
    }

    /// DISCOVER -> OFFER -> REQUEST -> ACK, retransmitting with backoff until `within` ends.
    pub async fn acquire(&mut self, within: Duration) -> Result<Lease, DhcpError> {
        let end = Instant::now() + within;
        let mut wait = self.opts.initial_retry;
        'discover: loop {
            self.xid = rand::random();
            let discover = self.base(MessageType::Discover, true);
            self.send(&discover, Ipv4Addr::BROADCAST, "DISCOVER")
                .await?;
            let slot = (Instant::now() + jitter(wait)).min(end);
            let Some((offer, from)) = self.receive(slot, &[MessageType::Offer]).await else {
                if Instant::now() >= end {
                    return Err(self.timeout("OFFER", within));
                }
                wait = (wait * 2).min(Duration::from_secs(64));
                continue;
            };
            let server = match offer.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s,
                _ => from,
            };
            tracing::debug!(ifname = %self.link.name, offered = %offer.yiaddr(), %server, "DHCP offer");
            let mut req = self.base(MessageType::Request, true);
            req.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            for _ in 0..4 {
                self.send(&req, Ipv4Addr::BROADCAST, "REQUEST").await?;
                let slot = (Instant::now() + jitter(wait)).min(end);
                match self
                    .receive(slot, &[MessageType::Ack, MessageType::Nak])
                    .await
                {
                    Some((m, from)) if m.opts().msg_type() == Some(MessageType::Ack) => {
                        if let Some(l) = Lease::from_ack(&m, from) {
                            return Ok(l);
                        }
                        continue 'discover;
                    }
                    Some(_) => continue 'discover, // NAK: start over
                    None if Instant::now() >= end => return Err(self.timeout("ACK", within)),
                    None => {}
                }
            }
        }
    }

    fn timeout(&self, what: &'static str, within: Duration) -> DhcpError {
        DhcpError::Timeout {
            what,
            ifname: self.link.name.clone(),
            secs: within.as_secs(),
        }
    }

    /// One RENEWING (unicast to the server) or REBINDING (broadcast) exchange for `lease`,
    /// waiting until `deadline`. `Ok(None)` when nobody answered.
    pub async fn extend(
        &mut self,
        lease: &Lease,
        rebinding: bool,
        deadline: Instant,
    ) -> Result<Option<Lease>, DhcpError> {
        self.xid = rand::random();
        let IpAddr::V4(ours) = lease.address.addr else {
            return Ok(None);
        };
        let mut req = self.base(MessageType::Request, false);
        req.set_ciaddr(ours);
        let to = if rebinding {
            Ipv4Addr::BROADCAST
        } else {
            lease.server
        };
        self.send(
            &req,
            to,
            if rebinding {
                "REQUEST (rebinding)"
            } else {
                "REQUEST (renewing)"
            },
        )
        .await?;
        match self
            .receive(deadline, &[MessageType::Ack, MessageType::Nak])
            .await
        {
            None => Ok(None),
            Some((m, from)) if m.opts().msg_type() == Some(MessageType::Ack) => {
                Ok(Lease::from_ack(&m, from))
            }
            Some(_) => Err(DhcpError::Nak(self.link.name.clone())),
        }
    }

    /// Gives the lease back (best effort).
    pub async fn release(&mut self, lease: &Lease) -> Result<(), DhcpError> {
        let IpAddr::V4(ours) = lease.address.addr else {
            return Ok(());
        };
        let mut m = self.base(MessageType::Release, false);
        m.set_ciaddr(ours);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        self.send(&m, lease.server, "RELEASE").await
    }

    /// Runs the client forever: acquires a lease, puts it on the interface (address and
    /// default route), renews at T1, rebinds at T2, starts over on expiry or NAK, and
    /// publishes every change on `state`.
    pub async fn run(mut self, nl: Netlink, state: watch::Sender<DhcpState>) {
        let ifname = self.link.name.clone();
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut lease = match self.acquire(Duration::from_secs(60)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%ifname, error = %e, "DHCP: no lease yet");
                    state.send_modify(|s| s.error = Some(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_secs(1);
            if let Err(e) = self.configure(&nl, None, &lease).await.map_err(Box::new) {
                tracing::warn!(%ifname, error = %e, "DHCP: cannot configure the lease");
                state.send_modify(|s| s.error = Some(e.to_string()));
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            tracing::info!(%ifname, address = %lease.address, server = %lease.server, "DHCP: bound");
            state.send_modify(|s| {
                s.lease = Some(lease.clone());
                s.event = DhcpEvent::Bound;
                s.error = None;
            });
            // BOUND -> RENEWING -> REBINDING.
            let mut start = Instant::now();
            let event = 'bound: loop {
                let t1 = start + Duration::from_secs(lease.t1_secs.into());
                let t2 = start + Duration::from_secs(lease.t2_secs.into());
                let expiry = start + Duration::from_secs(lease.lease_secs.into());
                tokio::time::sleep_until(t1).await;
                let mut now = Instant::now();
                let mut phase = None;
                while now < expiry {
                    let rebinding = now >= t2;
                    if phase != Some(rebinding) {
                        phase = Some(rebinding);
                        let ev = if rebinding {
                            DhcpEvent::Rebinding
                        } else {
                            DhcpEvent::Renewing
                        };
                        tracing::info!(%ifname, ?ev, "DHCP: extending the lease");
                        state.send_modify(|s| s.event = ev);
                    }
                    let limit = if rebinding { expiry } else { t2 };
                    let retry = ((limit - now) / 2)
                        .min(self.opts.max_renew_retry)
                        .max(self.opts.min_renew_retry);
                    let deadline = (now + retry).min(limit);
                    match self.extend(&lease, rebinding, deadline).await {
                        Ok(Some(new)) => {
                            if let Err(e) = self.configure(&nl, Some(&lease), &new).await {
                                tracing::warn!(%ifname, error = %e, "DHCP: cannot refresh the lease");
                            }
                            tracing::info!(%ifname, address = %new.address, rebinding, "DHCP: lease extended");
                            lease = new;
                            start = Instant::now();
                            state.send_modify(|s| {
                                s.lease = Some(lease.clone());
                                if rebinding {
                                    s.rebinds += 1;
                                    s.event = DhcpEvent::Rebound;
                                } else {
                                    s.renewals += 1;
                                    s.event = DhcpEvent::Renewed;
                                }
                                s.error = None;
                            });
                            continue 'bound;
                        }
                        Ok(None) => {}
                        Err(DhcpError::Nak(_)) => break 'bound DhcpEvent::Nak,
                        Err(e) => {
                            tracing::debug!(%ifname, error = %e, "DHCP: extend failed");
                            tokio::time::sleep_until(deadline).await;
                        }
                    }
                    now = Instant::now();
                }
                break DhcpEvent::Expired;
            };
            tracing::warn!(%ifname, ?event, "DHCP: lease lost");
            if let Err(e) = self.deconfigure(&nl, &lease).await {
                tracing::warn!(%ifname, error = %e, "DHCP: cannot remove the old lease");
            }
            state.send_modify(|s| {
                s.lease = None;
                s.event = event;
            });
        }
    }

    async fn configure(
        &self,
        nl: &Netlink,
        old: Option<&Lease>,
        new: &Lease,
    ) -> Result<(), NetlinkError> {
        if let Some(old) = old {
            if old.address != new.address {
                self.deconfigure(nl, old).await?;
            }
        }
        if let Some(m) = new.mtu {
            nl.set_up(&self.link, Some(m.into())).await?;
        }
        nl.add_address(&self.link, new.address).await?;
        if let Some(gw) = new.routers.first() {
            let default = Cidr {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            };
            nl.add_route(
                &self.link,
                default,
                Some(IpAddr::V4(*gw)),
                Some(self.opts.route_metric),
            )
            .await?;
        }
        Ok(())
    }

    async fn deconfigure(&self, nl: &Netlink, old: &Lease) -> Result<(), NetlinkError> {
        if let Some(gw) = old.routers.first() {
            let default = Cidr {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            };
            nl.remove_route(
                &self.link,
                default,
                Some(IpAddr::V4(*gw)),
                Some(self.opts.route_metric),
            )
            .await?;
        }
        nl.remove_address(&self.link, old.address).await
    }
}

/// `d` plus or minus up to one second (RFC 2131 4.1), never below 100 ms.
fn jitter(d: Duration) -> Duration {
    let j: i64 = rand::random_range(-1000..=1000);
    let ms = (d.as_millis() as i64 + j).max(100);
    Duration::from_millis(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_opcode(v4::Opcode::BootReply)
            .set_yiaddr(Ipv4Addr::new(192, 0, 2, 50));
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o);
        }
        // Through the wire format, as a server would send it.
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        Message::decode(&mut Decoder::new(&buf)).unwrap()
    }

    #[test]
    fn lease_from_ack_with_every_option() {
        let m = ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(192, 0, 2, 1)]),
            DhcpOption::DomainNameServer(vec![
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(192, 0, 2, 54),
            ]),
            DhcpOption::DomainSearch(vec![
                "a.example.".parse().unwrap(),
                "b.example".parse().unwrap(),
            ]),
            DhcpOption::DomainName("ignored.example".into()),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 2)),
            DhcpOption::AddressLeaseTime(600),
            DhcpOption::Renewal(100),
            DhcpOption::Rebinding(400),
            DhcpOption::InterfaceMtu(1400),
        ]);
        let l = Lease::from_ack(&m, Ipv4Addr::new(192, 0, 2, 9)).unwrap();
        assert_eq!(l.address.to_string(), "192.0.2.50/24");
        assert_eq!(l.server, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(l.routers, [Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(l.dns.len(), 2);
        assert_eq!(l.search, ["a.example", "b.example"]);
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (600, 100, 400));
        assert_eq!(l.mtu, Some(1400));
    }

    #[test]
    fn lease_defaults_follow_rfc2131() {
        let m = ack(vec![
            DhcpOption::AddressLeaseTime(800),
            DhcpOption::DomainName("lan".into()),
        ]);
        let l = Lease::from_ack(&m, Ipv4Addr::new(192, 0, 2, 9)).unwrap();
        assert_eq!((l.t1_secs, l.t2_secs), (400, 700));
        assert_eq!(
            l.server,
            Ipv4Addr::new(192, 0, 2, 9),
            "no server id: the sender"
        );
        assert_eq!(l.address.prefix, 24, "no mask: class C default");
        assert_eq!(l.search, ["lan"]);
        // T1/T2 out of order are ignored.
        let m = ack(vec![
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(90),
            DhcpOption::Rebinding(50),
        ]);
        let l = Lease::from_ack(&m, Ipv4Addr::new(192, 0, 2, 9)).unwrap();
        assert_eq!((l.t1_secs, l.t2_secs), (50, 50));
        // Not an ACK: no lease.
        let mut nak = ack(vec![]);
        nak.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Nak));
        assert_eq!(Lease::from_ack(&nak, Ipv4Addr::LOCALHOST), None);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(4));
            assert!(j >= Duration::from_secs(3) && j <= Duration::from_secs(5));
            assert!(jitter(Duration::ZERO) >= Duration::from_millis(100));
        }
    }
}
