//! NAT for the workload bridge in nf_tables, spoken over netlink (no `nft` binary, no
//! libnftnl): one table, `ip berth`, that Berth owns whole.
//!
//! ```text
//! table ip berth {
//!   chain guard       { type filter hook prerouting priority raw (-300)
//!                       iifname "berth0" ip daddr 127.0.0.0/8 drop }
//!   chain prerouting  { type nat hook prerouting priority dstnat (-100)
//!                       fib daddr type local jump ports }
//!   chain output      { type nat hook output priority dstnat (-100)
//!                       fib daddr type local jump ports }
//!   chain ports       { [ip daddr H] meta l4proto P th dport HP dnat to A:CP
//!                         comment "container NAME"      <- one rule per published port }
//!   chain postrouting { type nat hook postrouting priority srcnat (100)
//!                       oifname != "berth0" ip saddr SUBNET masquerade    <- egress
//!                       oifname "berth0" ip saddr 127.0.0.0/8 masquerade  <- host via 127.0.0.1
//!                       oifname "berth0" ip saddr SUBNET ct status dnat masquerade } <- hairpin
//! }
//! ```
//!
//! Every rule of a container carries the comment `container NAME` (nft's own user-data
//! format, so `nft list ruleset` shows it): [`Nft::unpublish`] deletes exactly those rules,
//! [`Nft::reset`] re-creates the whole table from the containers sysd knows, in one
//! transaction (sysd start, re-adoption). Reaching a published port through 127.0.0.1 needs
//! `route_localnet` on the bridge ([`enable_forwarding`]); the `guard` chain drops what that
//! would otherwise let in: packets from containers addressed to the host's loopback.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use berth_config::{Cidr, PortMapping};
use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, HookNumber, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage,
    Operator, Payload, Register, RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::{
    none::ControlMessage, NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// The table Berth owns (family `ip`).
pub const TABLE: &str = "berth";
/// The chain holding the per-container DNAT rules.
pub const PORTS_CHAIN: &str = "ports";
/// Comment of the table's own rules.
const BASE_TAG: &str = "berth base";
/// How long to wait for the kernel's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// NAT failures; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The netfilter netlink socket could not be opened.
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] io::Error),
    /// Sending to the kernel failed.
    #[error("cannot send nf_tables messages to {what}")]
    Send {
        /// What the messages were for.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading the kernel's answer failed (or timed out).
    #[error("no answer from nf_tables to {what}")]
    Receive {
        /// What the messages were for.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("cannot decode nf_tables' answer to {what}: {detail}")]
    Decode {
        /// What the messages were for.
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// The kernel refused the transaction (nothing of it was applied).
    #[error("nf_tables refused to {what}")]
    Kernel {
        /// What the transaction was for.
        what: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The table does not exist yet: [`Nft::reset`] creates it.
    #[error("nf_tables table ip {TABLE} does not exist (sysd creates it at start): cannot {what}")]
    NoTable {
        /// What was attempted.
        what: String,
    },
    /// Only IPv4 host addresses can be published (the table is `ip`).
    #[error("container {container}: port {mapping} has an IPv6 host address; only IPv4 ports can be published")]
    Ipv6HostIp {
        /// The container.
        container: String,
        /// The mapping.
        mapping: PortMapping,
    },
    /// The bridge subnet is not IPv4.
    #[error("bridge subnet {0} is not IPv4")]
    NotIpv4(Cidr),
    /// A container name too long for a rule comment.
    #[error("container name {0:?} is too long for an nf_tables rule comment (at most 200 bytes)")]
    NameTooLong(String),
    /// Writing a sysctl failed.
    #[error("cannot write {path}")]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The bridge the NAT rules are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The bridge interface (`berth0`).
    pub bridge: String,
    /// Its IPv4 subnet (`10.88.0.0/16`).
    pub subnet: Cidr,
}

/// A container's published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Container name (the rules' tag).
    pub container: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// Its mappings.
    pub ports: Vec<PortMapping>,
}

/// One rule of the table, as listed by [`Nft::rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Chain name.
    pub chain: String,
    /// Kernel handle.
    pub handle: u64,
    /// The container it belongs to (`None` for the table's own rules).
    pub container: Option<String>,
}

/// Turns on IPv4 forwarding, and `route_localnet` on `bridge` (so that 127.0.0.1:PORT can
/// be DNATed to a container). Writes the current network namespace's sysctls.
pub fn enable_forwarding(bridge: &str) -> Result<(), NatError> {
    for (path, value) in [
        (PathBuf::from("/proc/sys/net/ipv4/ip_forward"), "1"),
        (
            PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")),
            "1",
        ),
    ] {
        std::fs::write(&path, value).map_err(|source| NatError::Sysctl { path, source })?;
    }
    Ok(())
}

/// A netfilter netlink socket in the current network namespace. Blocking; calls from async
/// code belong in `spawn_blocking`.
pub struct Nft {
    sock: Socket,
    seq: u32,
}

impl Nft {
    /// Opens the socket.
    pub fn open() -> Result<Self, NatError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NatError::Socket)?;
        sock.bind_auto().map_err(NatError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NatError::Socket)?;
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(TIMEOUT),
        )
        .map_err(|e| NatError::Socket(e.into()))?;
        Ok(Nft { sock, seq: 1 })
    }

    /// Re-creates the whole table: base chains and rules, and the rules of every container
    /// in `containers`. One transaction: published ports never stop answering, and a failure
    /// leaves the previous table as it was.
    pub fn reset(&mut self, cfg: &NatConfig, containers: &[Published]) -> Result<(), NatError> {
        let subnet = ipv4_subnet(cfg.subnet)?;
        let mut batch = vec![
            new_table(),
            // Deleting a table that does not exist fails the transaction: add it first.
            msg(
                NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(TABLE.into())],
                }),
                0,
            ),
            new_table(),
        ];
        batch.extend(base(cfg, subnet));
        for c in containers {
            batch.extend(container_rules(c)?);
        }
        self.transact("re-create table ip berth", batch)
    }

    /// Publishes a container's ports, replacing any rules it had (idempotent).
    pub fn publish(&mut self, c: &Published) -> Result<(), NatError> {
        let what = format!("publish the ports of container {}", c.container);
        let mut batch = self.delete_of(&c.container)?;
        batch.extend(container_rules(c)?);
        self.transact(&what, batch).map_err(|e| match e {
            NatError::Kernel { source, .. } if source.raw_os_error() == Some(2) => {
                NatError::NoTable { what }
            }
            e => e,
        })
    }

    /// Removes exactly the rules of `container` (none: nothing to do).
    pub fn unpublish(&mut self, container: &str) -> Result<(), NatError> {
        let batch = self.delete_of(container)?;
        if batch.is_empty() {
            return Ok(());
        }
        self.transact(&format!("remove the ports of container {container}"), batch)
    }

    /// Deletes the table (nothing to do when it is absent).
    pub fn remove_table(&mut self) -> Result<(), NatError> {
        self.transact(
            "delete table ip berth",
            vec![
                new_table(),
                msg(
                    NfTablesMessage::DeleteTable(TableMessage {
                        attributes: vec![TableAttribute::Name(TABLE.into())],
                    }),
                    0,
                ),
            ],
        )
    }

    /// Every rule of the table (empty when the table is absent).
    pub fn rules(&mut self) -> Result<Vec<RuleInfo>, NatError> {
        let what = "list the rules of table ip berth";
        let mut m = msg(
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![RuleAttribute::Table(TABLE.into())],
            }),
            0,
        );
        m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let seq = self.next_seq();
        m.header.sequence_number = seq;
        self.send(what, &[m])?;
        let mut out = Vec::new();
        loop {
            for reply in self.recv(what)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        // No table of that name: nothing to list.
                        Some(c) if c.get() == -2 => return Ok(out),
                        Some(_) => {
                            return Err(NatError::Kernel {
                                what: what.into(),
                                source: e.to_io(),
                            })
                        }
                        None => return Ok(out),
                    },
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner:
                            netlink_packet_netfilter::NetfilterMessageInner::NfTables(
                                NfTablesMessage::NewRule(r),
                            ),
                        ..
                    }) => out.push(rule_info(&r)),
                    _ => {}
                }
            }
        }
    }

    /// Delete messages for the rules of `container`.
    fn delete_of(
        &mut self,
        container: &str,
    ) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, NatError> {
        Ok(self
            .rules()?
            .into_iter()
            .filter(|r| r.container.as_deref() == Some(container))
            .map(|r| {
                msg(
                    NfTablesMessage::DeleteRule(RuleMessage {
                        attributes: vec![
                            RuleAttribute::Table(TABLE.into()),
                            RuleAttribute::Chain(r.chain),
                            RuleAttribute::Handle(r.handle),
                        ],
                    }),
                    0,
                )
            })
            .collect())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `body` as one nf_tables transaction and waits for every acknowledgement.
    fn transact(
        &mut self,
        what: &str,
        body: Vec<NetlinkMessage<NetfilterMessage>>,
    ) -> Result<(), NatError> {
        let mut batch = Vec::with_capacity(body.len() + 2);
        batch.push(control(ControlMessage::BatchBegin));
        batch.extend(body);
        batch.push(control(ControlMessage::BatchEnd));
        let mut waiting = Vec::new();
        let mut ours = Vec::new();
        for m in &mut batch {
            let seq = self.next_seq();
            m.header.sequence_number = seq;
            ours.push(seq);
            if m.header.flags & NLM_F_ACK != 0 {
                waiting.push(seq);
            }
        }
        self.send(what, &batch)?;
        let mut first_error = None;
        while !waiting.is_empty() {
            for reply in self.recv(what)? {
                if let NetlinkPayload::Error(e) = reply.payload {
                    let seq = reply.header.sequence_number;
                    // A refused batch (no permission, say) is answered on the batch
                    // begin message, which asked for no acknowledgement.
                    if !ours.contains(&seq) {
                        continue;
                    }
                    waiting.retain(|s| *s != seq);
                    if e.code.is_some() && first_error.is_none() {
                        first_error = Some(e.to_io());
                    }
                }
            }
            if first_error.is_some() {
                // The kernel answers each message of a failed batch too, but do not wait
                // for answers that an aborted batch may never send.
                self.drain();
                break;
            }
        }
        match first_error {
            Some(source) => Err(NatError::Kernel {
                what: what.into(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn send(&self, what: &str, msgs: &[NetlinkMessage<NetfilterMessage>]) -> Result<(), NatError> {
        let mut buf = Vec::new();
        for m in msgs {
            let mut m = m.clone();
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.header.length as usize, 0);
            m.serialize(&mut buf[start..]);
        }
        let n = self.sock.send(&buf, 0).map_err(|source| NatError::Send {
            what: what.into(),
            source,
        })?;
        if n != buf.len() {
            return Err(NatError::Send {
                what: what.into(),
                source: io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            });
        }
        Ok(())
    }

    /// The messages of one datagram.
    fn recv(&self, what: &str) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, NatError> {
        let (buf, _) = self
            .sock
            .recv_from_full()
            .map_err(|source| NatError::Receive {
                what: what.into(),
                source,
            })?;
        parse_all(&buf).map_err(|detail| NatError::Decode {
            what: what.into(),
            detail,
        })
    }

    /// Reads whatever is still queued, without waiting.
    fn drain(&self) {
        if self.sock.set_non_blocking(true).is_ok() {
            while self.sock.recv_from_full().is_ok() {}
            let _ = self.sock.set_non_blocking(false);
        }
    }
}

/// Splits a datagram into netlink messages.
fn parse_all(buf: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len().saturating_sub(off) >= 16 {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(format!(
                "message of {len} bytes at offset {off} of {}",
                buf.len()
            ));
        }
        let m = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len])
            .map_err(|e| e.to_string())?;
        out.push(m);
        off += (len + 3) & !3;
    }
    Ok(out)
}

fn ipv4_subnet(c: Cidr) -> Result<(Ipv4Addr, u8), NatError> {
    match c.network() {
        IpAddr::V4(n) if c.prefix <= 32 => Ok((n, c.prefix)),
        _ => Err(NatError::NotIpv4(c)),
    }
}

fn msg(m: NfTablesMessage, extra_flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let mut nl = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        m,
    ));
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    nl
}

fn control(c: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    // res_id of a batch message is the subsystem it is for: NFNL_SUBSYS_NFTABLES.
    let mut nl = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 10),
        c,
    ));
    nl.header.flags = NLM_F_REQUEST;
    nl
}

fn new_table() -> NetlinkMessage<NetfilterMessage> {
    msg(
        NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
        NLM_F_CREATE,
    )
}

fn chain(
    name: &str,
    hook: Option<(&str, InetHookNumber, i32)>,
) -> NetlinkMessage<NetfilterMessage> {
    let mut attributes = vec![
        ChainAttribute::Table(TABLE.into()),
        ChainAttribute::Name(name.into()),
    ];
    if let Some((kind, number, priority)) = hook {
        attributes.push(ChainAttribute::Type(kind.into()));
        attributes.push(ChainAttribute::Hook(vec![
            Hook::Number(HookNumber::Inet(number)),
            Hook::Priority(priority as u32),
        ]));
        attributes.push(ChainAttribute::Policy(1)); // NF_ACCEPT
    }
    msg(
        NfTablesMessage::NewChain(ChainMessage { attributes }),
        NLM_F_CREATE,
    )
}

/// nft's rule user data: a TLV list, type 0 (`NFTNL_UDATA_RULE_COMMENT`) with a
/// NUL-terminated string.
fn comment(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 3);
    v.push(0);
    v.push((text.len() + 1) as u8);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// The comment of a rule's user data, if it has one.
fn comment_of(udata: &[u8]) -> Option<&str> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if kind == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(text).ok();
        }
        rest = &rest[2 + len..];
    }
    None
}

const CONTAINER_TAG: &str = "container ";

fn rule_info(r: &RuleMessage) -> RuleInfo {
    let mut info = RuleInfo {
        chain: String::new(),
        handle: 0,
        container: None,
    };
    for a in &r.attributes {
        match a {
            RuleAttribute::Chain(c) => info.chain = c.clone(),
            RuleAttribute::Handle(h) => info.handle = *h,
            RuleAttribute::UserData(u) => {
                info.container = comment_of(u)
                    .and_then(|c| c.strip_prefix(CONTAINER_TAG))
                    .map(str::to_string)
            }
            _ => {}
        }
    }
    info
}

fn rule(
    chain: &str,
    tag: &str,
    exprs: Vec<ListAttribute<ExpressionAttribute>>,
) -> NetlinkMessage<NetfilterMessage> {
    msg(
        NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(exprs),
                RuleAttribute::UserData(comment(tag)),
            ],
        }),
        NLM_F_CREATE | NLM_F_APPEND,
    )
}

type Expr = ListAttribute<ExpressionAttribute>;

fn u32_be(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

fn other(name: &str, attributes: Vec<DefaultNla>) -> Expr {
    Expressions::Other {
        expression_type: name.into(),
        attributes,
    }
    .into()
}

fn cmp(op: Operator, data: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

/// `ip saddr|daddr` into register 1 (`offset` 12 or 16 in the IPv4 header).
fn ip_field(offset: u32) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(1), // network header
        Payload::Offset(offset),
        Payload::Len(4),
    ])
    .into()
}

/// `ip saddr|daddr NET/PREFIX`.
fn ip_in(offset: u32, (net, prefix): (Ipv4Addr, u8)) -> Vec<Expr> {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    vec![
        ip_field(offset),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.to_be_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])
        .into(),
        cmp(
            Operator::Equal,
            (u32::from(net) & mask).to_be_bytes().to_vec(),
        ),
    ]
}

fn meta(key: MetaKey) -> Expr {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
    .into()
}

/// `iifname|oifname (==|!=) NAME`.
fn ifname(key: MetaKey, op: Operator, name: &str) -> Vec<Expr> {
    let mut data = name.as_bytes().to_vec();
    data.resize(16, 0); // IFNAMSIZ
    vec![meta(key), cmp(op, data)]
}

/// `fib daddr type local`.
fn daddr_is_local() -> Vec<Expr> {
    const NFTA_FIB_DREG: u16 = 1;
    const NFTA_FIB_RESULT: u16 = 2;
    const NFTA_FIB_FLAGS: u16 = 3;
    const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    const NFTA_FIB_F_DADDR: u32 = 1 << 1;
    const RTN_LOCAL: u32 = 2;
    vec![
        other(
            "fib",
            vec![
                u32_be(NFTA_FIB_DREG, Register::Reg1.into()),
                u32_be(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                u32_be(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
            ],
        ),
        // The address type lands in the register in host byte order.
        cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

/// `ct status dnat`.
fn ct_status_dnat() -> Vec<Expr> {
    const NFTA_CT_DREG: u16 = 1;
    const NFTA_CT_KEY: u16 = 2;
    const NFT_CT_STATUS: u32 = 2;
    const IPS_DST_NAT: u32 = 1 << 5;
    vec![
        other(
            "ct",
            vec![
                u32_be(NFTA_CT_DREG, Register::Reg1.into()),
                u32_be(NFTA_CT_KEY, NFT_CT_STATUS),
            ],
        ),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(IPS_DST_NAT.to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])
        .into(),
        cmp(Operator::NotEqual, vec![0; 4]),
    ]
}

fn verdict(code: Verdict, chain: Option<&str>) -> Expr {
    let mut v = vec![VerdictAttribute::Code(code)];
    if let Some(c) = chain {
        v.push(VerdictAttribute::Chain(c.into()));
    }
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(v)),
    ])
    .into()
}

fn masquerade() -> Expr {
    ListAttribute::Element(vec![ExpressionAttribute::Name("masq".into())])
}

/// The table's chains and own rules.
fn base(cfg: &NatConfig, subnet: (Ipv4Addr, u8)) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let loopback = (Ipv4Addr::new(127, 0, 0, 0), 8);
    let br = cfg.bridge.as_str();
    let mut v = vec![
        chain("guard", Some(("filter", InetHookNumber::PreRouting, -300))),
        chain(
            "prerouting",
            Some(("nat", InetHookNumber::PreRouting, -100)),
        ),
        chain("output", Some(("nat", InetHookNumber::LocalOut, -100))),
        chain(PORTS_CHAIN, None),
        chain(
            "postrouting",
            Some(("nat", InetHookNumber::PostRouting, 100)),
        ),
    ];
    let mut guard = ifname(MetaKey::Iifname, Operator::Equal, br);
    guard.extend(ip_in(16, loopback));
    guard.push(verdict(Verdict::Other(0), None)); // NF_DROP
    v.push(rule("guard", BASE_TAG, guard));
    for hook_chain in ["prerouting", "output"] {
        let mut r = daddr_is_local();
        r.push(verdict(Verdict::Jump, Some(PORTS_CHAIN)));
        v.push(rule(hook_chain, BASE_TAG, r));
    }
    let mut egress = ifname(MetaKey::Oifname, Operator::NotEqual, br);
    egress.extend(ip_in(12, subnet));
    egress.push(masquerade());
    v.push(rule("postrouting", BASE_TAG, egress));
    let mut local = ifname(MetaKey::Oifname, Operator::Equal, br);
    local.extend(ip_in(12, loopback));
    local.push(masquerade());
    v.push(rule("postrouting", BASE_TAG, local));
    let mut hairpin = ifname(MetaKey::Oifname, Operator::Equal, br);
    hairpin.extend(ip_in(12, subnet));
    hairpin.extend(ct_status_dnat());
    hairpin.push(masquerade());
    v.push(rule("postrouting", BASE_TAG, hairpin));
    v
}

/// One DNAT rule per mapping of `c`.
fn container_rules(c: &Published) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, NatError> {
    const NFTA_NAT_TYPE: u16 = 1;
    const NFTA_NAT_FAMILY: u16 = 2;
    const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
    const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
    const NFT_NAT_DNAT: u32 = 1;
    const NFPROTO_IPV4: u32 = 2;
    let tag = format!("{CONTAINER_TAG}{}", c.container);
    if tag.len() > 200 {
        return Err(NatError::NameTooLong(c.container.clone()));
    }
    let mut out = Vec::new();
    for p in &c.ports {
        let mut e = Vec::new();
        match p.host_ip {
            None => {}
            Some(IpAddr::V4(ip)) => {
                e.push(ip_field(16));
                e.push(cmp(Operator::Equal, ip.octets().to_vec()));
            }
            Some(IpAddr::V6(_)) => {
                return Err(NatError::Ipv6HostIp {
                    container: c.container.clone(),
                    mapping: *p,
                })
            }
        }
        e.push(meta(MetaKey::Other(16))); // NFT_META_L4PROTO
        e.push(cmp(Operator::Equal, vec![p.proto.number()]));
        e.push(
            Expressions::Payload(vec![
                Payload::DestinationRegister(Register::Reg1),
                Payload::Base(2), // transport header
                Payload::Offset(2),
                Payload::Len(2),
            ])
            .into(),
        );
        e.push(cmp(Operator::Equal, p.host_port.to_be_bytes().to_vec()));
        e.push(
            Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg1),
                Immediate::Data(DataAttribute::Value(c.addr.octets().to_vec())),
            ])
            .into(),
        );
        e.push(
            Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg2),
                Immediate::Data(DataAttribute::Value(
                    p.container_port.to_be_bytes().to_vec(),
                )),
            ])
            .into(),
        );
        e.push(other(
            "nat",
            vec![
                u32_be(NFTA_NAT_TYPE, NFT_NAT_DNAT),
                u32_be(NFTA_NAT_FAMILY, NFPROTO_IPV4),
                u32_be(NFTA_NAT_REG_ADDR_MIN, Register::Reg1.into()),
                u32_be(NFTA_NAT_REG_PROTO_MIN, Register::Reg2.into()),
            ],
        ));
        out.push(rule(PORTS_CHAIN, &tag, e));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_in_nft_format() {
        let u = comment("container web");
        assert_eq!(&u[..2], &[0, 14]);
        assert_eq!(comment_of(&u), Some("container web"));
        // Another TLV first (nft writes type 1 for other rule data) is skipped.
        let mut two = vec![1, 2, 9, 9];
        two.extend(&u);
        assert_eq!(comment_of(&two), Some("container web"));
        // Truncated or empty user data is no comment, not a panic.
        assert_eq!(comment_of(&[0, 40, b'x']), None);
        assert_eq!(comment_of(&[]), None);
        assert_eq!(comment_of(&[0]), None);
    }

    #[test]
    fn rules_of_a_container_are_tagged_and_refuse_ipv6() {
        let c = Published {
            container: "web".into(),
            addr: Ipv4Addr::new(10, 88, 0, 2),
            ports: vec![
                "8080:80".parse().unwrap(),
                "127.0.0.1:53:53/udp".parse().unwrap(),
            ],
        };
        let rules = container_rules(&c).unwrap();
        assert_eq!(rules.len(), 2);
        for r in &rules {
            let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner:
                    netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(
                        m,
                    )),
                ..
            }) = &r.payload
            else {
                panic!("not a rule: {r:?}");
            };
            assert_eq!(rule_info(m).container.as_deref(), Some("web"));
        }
        let v6 = Published {
            ports: vec!["[::1]:80:80".parse().unwrap()],
            ..c.clone()
        };
        assert!(matches!(
            container_rules(&v6),
            Err(NatError::Ipv6HostIp { .. })
        ));
        let long = Published {
            container: "x".repeat(250),
            ..c
        };
        assert!(matches!(
            container_rules(&long),
            Err(NatError::NameTooLong(_))
        ));
    }

    #[test]
    fn messages_serialize_and_parse_back() {
        let cfg = NatConfig {
            bridge: "berth0".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
        };
        let mut buf = Vec::new();
        for m in base(&cfg, ipv4_subnet(cfg.subnet).unwrap()) {
            let mut m = m.clone();
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.header.length as usize, 0);
            m.serialize(&mut buf[start..]);
        }
        assert_eq!(parse_all(&buf).unwrap().len(), 5 + 6);
        // A hostile length field is an error, not a panic.
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_all(&bad).is_err());
        assert!(parse_all(&buf[..10]).unwrap().is_empty());
        assert!(matches!(
            ipv4_subnet("fd00::/64".parse().unwrap()),
            Err(NatError::NotIpv4(_))
        ));
    }
}
