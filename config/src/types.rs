//! Value types with their own syntax: sizes, CPU shares, durations, CIDRs, file modes and
//! image references. Each parses from the TOML form a person writes and serializes back to it,
//! so `osctl config show` prints what `parse` accepts.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte size: an integer (bytes) or a string like `"256M"`, `"1G"`, `"512KiB"` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?} (expected bytes or a number with K, M, G or T, e.g. \"256M\")"
            )
        };
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let unit = t[digits..].trim_start();
        let unit = unit.strip_suffix('B').unwrap_or(unit);
        let unit = unit.strip_suffix('i').unwrap_or(unit);
        let shift = match unit {
            "" => 0,
            "K" | "k" => 10,
            "M" | "m" => 20,
            "G" | "g" => 30,
            "T" | "t" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(bad)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// CPU quota in thousandths of a CPU: a number (`0.5`, `2`) or a string (`"0.5"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus(pub u32);

impl Cpus {
    /// Thousandths of a CPU (`0.5` = 500).
    pub fn millis(self) -> u32 {
        self.0
    }

    fn from_f64(v: f64) -> Result<Self, String> {
        if !v.is_finite() || !(0.001..=1024.0).contains(&v) {
            return Err(format!(
                "invalid cpus {v} (expected a number from 0.001 to 1024, e.g. 0.5)"
            ));
        }
        Ok(Cpus((v * 1000.0).round() as u32))
    }
}

impl FromStr for Cpus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("invalid cpus {s:?} (expected a number such as \"0.5\")"))?;
        Cpus::from_f64(v)
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, m) = (self.0 / 1000, self.0 % 1000);
        if m == 0 {
            write!(f, "{i}")
        } else {
            let frac = format!("{m:03}");
            write!(f, "{i}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// A duration: an integer (seconds) or a string like `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Shorthand for whole seconds.
    pub const fn secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    /// The std duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid duration {s:?} (expected e.g. \"500ms\", \"30s\", \"2m\", \"1h\")");
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let ms = match t[digits..].trim_start() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" | "min" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(bad()),
        };
        ms.map(|ms| Duration(std::time::Duration::from_millis(ms)))
            .ok_or_else(bad)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else if ms % 3_600_000 == 0 && ms != 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms != 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// An IP address with a prefix length, `"192.168.1.10/24"` or `"fd00::5/64"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address (host bits may be set: it is an interface address).
    pub addr: IpAddr,
    /// The prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// The network part, host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let other = Cidr {
            addr: ip,
            prefix: self.prefix,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && other.network() == self.network()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid CIDR {s:?} (expected an address with a prefix length, e.g. \"192.168.1.10/24\")")
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number (6 or 17).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A published port, `"[ip:]host:container[/tcp|udp]"`: `"8080:80"`, `"5353:53/udp"`,
/// `"127.0.0.1:9000:9000"`, `"[::1]:9000:9000"`. Without an address (or with `0.0.0.0`) the
/// port is published on every host address; `host_ip` is then `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// The host address it listens on; `None` for every address.
    pub host_ip: Option<IpAddr>,
    /// The port on the host (1-65535).
    pub host_port: u16,
    /// The port inside the container (1-65535).
    pub container_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl PortMapping {
    /// Whether both cannot be published at once: the same protocol and host port on the
    /// same address, or on any address when one of them listens on every address.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a == b,
            }
    }
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("invalid port mapping {s:?}: {why} (expected \"[ip:]host:container[/tcp|udp]\", e.g. \"8080:80\" or \"127.0.0.1:5353:53/udp\")")
        };
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some((_, other)) => {
                return Err(bad(&format!(
                    "protocol {other:?} is neither \"tcp\" nor \"udp\""
                )))
            }
            None => (s, Proto::Tcp),
        };
        let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (ip, ports) = rest
                .split_once(']')
                .ok_or_else(|| bad("the IPv6 address has no closing \"]\""))?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
            let ports = ports
                .strip_prefix(':')
                .ok_or_else(|| bad("a \":\" must follow the \"]\""))?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match spec.matches(':').count() {
                1 => (None, spec),
                2 => {
                    let (ip, ports) = spec.split_once(':').unwrap_or(("", spec));
                    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                        bad(&format!(
                            "{ip:?} is not an IPv4 address (write IPv6 addresses in brackets)"
                        ))
                    })?;
                    (Some(IpAddr::V4(ip)), ports)
                }
                0 => return Err(bad("both a host port and a container port are needed")),
                _ => return Err(bad("too many \":\" (write IPv6 addresses in brackets)")),
            }
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| bad("both a host port and a container port are needed"))?;
        if host_ip.is_none() && host.parse::<IpAddr>().is_ok() {
            return Err(bad(&format!(
                "after the address {host} come both a host port and a container port"
            )));
        }
        let port = |what: &str, p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(bad(&format!(
                    "{what} port {p:?} is not a number from 1 to 65535"
                ))),
            }
        };
        let host_port = port("host", host)?;
        let container_port = port("container", container)?;
        Ok(PortMapping {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified() || ip.is_ipv6()),
            host_port,
            container_port,
            proto,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}", self.host_port, self.container_port)?;
        if self.proto == Proto::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

/// A Unix file mode: an octal string `"0644"` or an integer (TOML `0o644`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    fn check(v: u64, shown: &str) -> Result<Self, String> {
        if v > 0o7777 {
            return Err(format!(
                "invalid mode {shown} (expected an octal mode up to 7777, e.g. \"0644\")"
            ));
        }
        Ok(FileMode(v as u32))
    }
}

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o644)
    }
}

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.strip_prefix("0o").unwrap_or(s);
        let v = u64::from_str_radix(t, 8)
            .map_err(|_| format!("invalid mode {s:?} (expected an octal mode, e.g. \"0644\")"))?;
        FileMode::check(v, &format!("{s:?}"))
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// Where a container image comes from.
///
/// A reference whose first component names a registry host (it contains a `.` or a `:`, or
/// is `localhost`) is pulled from that registry: `registry.example.com:5000/team/app:1.2`,
/// optionally pinned with `@sha256:<64 hex>`. Anything else (`ntpd`, `ntpd:1.0`) names an OCI
/// image layout shipped in the OS under `/usr/lib/berth/images/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image shipped with the OS.
    Shipped {
        /// Layout directory name under `/usr/lib/berth/images/`.
        name: String,
        /// Tag inside the layout (`org.opencontainers.image.ref.name`), if given.
        tag: Option<String>,
    },
    /// An image in a registry.
    Registry {
        /// `host[:port]`.
        registry: String,
        /// Repository path, e.g. `team/app`.
        repository: String,
        /// Tag, if given.
        tag: Option<String>,
        /// Digest `sha256:<hex>`, if given.
        digest: Option<String>,
    },
}

fn is_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

fn valid_path_component(c: &str) -> bool {
    // distribution/reference: [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    c.bytes()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
        && !c.contains("..")
        && !c.contains("___")
}

fn valid_tag(t: &str) -> bool {
    // [\w][\w.-]{0,127}
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Whether `s` is a registry host with optional port (`registry.example.com:5000`, `[::1]:5000`,
/// `localhost`).
pub fn valid_registry_host(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (
                    None,
                    p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() {
                        None
                    } else {
                        Some("x")
                    }),
                )
            }
            None => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
    }
}

impl FromStr for ImageRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid image reference {s:?}: {why}");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 512 {
            return Err(bad("longer than 512 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad("digest must be sha256:<64 hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(
                    "invalid tag (letters, digits, '_', '.', '-'; at most 128)",
                ));
            }
        }
        let tag = tag.map(str::to_string);
        let mut parts = name.split('/');
        let first = parts.next().unwrap_or_default();
        if name.contains('/') && is_host(first) {
            if !valid_registry_host(first) {
                return Err(bad("invalid registry host"));
            }
            let repository = &name[first.len() + 1..];
            if !repository.split('/').all(valid_path_component) {
                return Err(bad(
                    "repository components must be lowercase letters, digits and separators",
                ));
            }
            return Ok(ImageRef::Registry {
                registry: first.to_string(),
                repository: repository.to_string(),
                tag,
                digest,
            });
        }
        if name.contains('/') || !valid_path_component(name) {
            return Err(bad(
                "expected a shipped image name (e.g. \"ntpd\") or a registry reference starting with a host (e.g. \"registry.example.com/app:1\")",
            ));
        }
        if digest.is_some() {
            return Err(bad("a shipped image cannot be pinned by digest"));
        }
        Ok(ImageRef::Shipped {
            name: name.to_string(),
            tag,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Shipped { name, tag } => {
                write!(f, "{name}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            ImageRef::Registry {
                registry,
                repository,
                tag,
                digest,
            } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// Transport of `[logging] forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProto {
    /// `tcp://`: RFC 6587 octet-counted framing over plain TCP.
    Tcp,
    /// `tcp+tls://`: the same over TLS (RFC 5425).
    Tls,
    /// `udp://`: one message per datagram (RFC 5426); no delivery guarantee.
    Udp,
}

impl ForwardProto {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            ForwardProto::Tcp => "tcp",
            ForwardProto::Tls => "tcp+tls",
            ForwardProto::Udp => "udp",
        }
    }

    /// The port used when the URL names none (514 for syslog over TCP/UDP, 6514 over TLS).
    pub fn default_port(self) -> u16 {
        match self {
            ForwardProto::Tls => 6514,
            _ => 514,
        }
    }
}

/// Where `[logging] forward` sends: `tcp://host[:port]`, `tcp+tls://host[:port]` or
/// `udp://host[:port]`; the host a DNS name, an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Transport.
    pub proto: ForwardProto,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid forward address {:?}: {why} (expected tcp://, tcp+tls:// or udp:// and host[:port], e.g. \"tcp+tls://logs.example.com:6514\")",
                s.chars().take(80).collect::<String>()
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let proto = match scheme {
            "tcp" => ForwardProto::Tcp,
            "tcp+tls" => ForwardProto::Tls,
            "udp" => ForwardProto::Udp,
            _ => return Err(bad("unknown scheme")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only host and port are allowed"));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => proto.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad("the port must be 1-65535")),
            },
        };
        let ip_ok = host.parse::<IpAddr>().is_ok();
        if !ip_ok && !crate::render::valid_domain(host) {
            return Err(bad("not a host name or IP address"));
        }
        Ok(Forward {
            proto,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.proto.scheme(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.proto.scheme(), self.host, self.port)
        }
    }
}

/// Serde for types written as strings (and, for some, numbers).
macro_rules! string_serde {
    ($t:ty, $what:expr, $num:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        let f: fn(i64) -> Result<$t, String> = $num;
                        f(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        self.visit_i64(i64::try_from(v).map_err(E::custom)?)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        let _ = v;
                        Err(E::invalid_type(de::Unexpected::Float(v), &self))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_serde!(Size, "a size such as \"256M\"", |v| u64::try_from(v)
    .map(Size)
    .map_err(|_| format!("invalid size {v} (must not be negative)")));
string_serde!(Duration, "a duration such as \"30s\"", |v| u64::try_from(v)
    .map(Duration::secs)
    .map_err(|_| format!("invalid duration {v} (must not be negative)")));
string_serde!(
    Forward,
    "an address such as \"tcp+tls://logs.example.com:6514\"",
    |v| Err(format!(
        "invalid forward address {v} (expected a string such as \"tcp://logs:514\")"
    ))
);
string_serde!(Cidr, "a CIDR such as \"192.168.1.10/24\"", |v| Err(
    format!("invalid CIDR {v} (expected a string such as \"192.168.1.10/24\")")
));
string_serde!(PortMapping, "a port mapping such as \"8080:80\"", |v| Err(
    format!("invalid port mapping {v} (expected a string such as \"8080:80\")")
));
string_serde!(ImageRef, "an image reference", |v| Err(format!(
    "invalid image reference {v} (expected a string)"
)));

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode such as \"0644\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                let u = u64::try_from(v).map_err(|_| E::custom(format!("invalid mode {v}")))?;
                FileMode::check(u, &format!("{u:o}")).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs such as 0.5")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpus, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                Cpus::from_f64(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                Cpus::from_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_addresses() {
        let f: Forward = "tcp+tls://logs.example.com:6514".parse().unwrap();
        assert_eq!(
            (f.proto, f.host.as_str(), f.port),
            (ForwardProto::Tls, "logs.example.com", 6514)
        );
        let f: Forward = "tcp://10.0.0.5".parse().unwrap();
        assert_eq!((f.proto, f.port), (ForwardProto::Tcp, 514));
        assert_eq!(f.to_string(), "tcp://10.0.0.5:514");
        let f: Forward = "udp://[fd00::1]:5514".parse().unwrap();
        assert_eq!(
            (f.proto, f.host.as_str(), f.port),
            (ForwardProto::Udp, "fd00::1", 5514)
        );
        assert_eq!(f.to_string(), "udp://[fd00::1]:5514");
        assert_eq!(f.to_string().parse::<Forward>().unwrap(), f);
        assert_eq!("tcp+tls://c/".parse::<Forward>().unwrap().port, 6514);
        for (bad, why) in [
            ("logs:514", "no scheme"),
            ("http://logs", "unknown scheme"),
            ("tcp://logs:0", "port must be"),
            ("tcp://logs:65536", "port must be"),
            ("tcp://logs:+5", "port must be"),
            ("tcp://logs:", "port must be"),
            ("tcp://", "not a host name"),
            ("tcp://lo gs:1", "not a host name"),
            ("tcp://-x:1", "not a host name"),
            ("tcp://u@logs:1", "only host and port"),
            ("tcp://logs:1/path", "only host and port"),
            ("tcp://[fd00::1", "unclosed"),
            ("tcp://[logs]:1", "not an IPv6"),
            ("tcp://[fd00::1]x", "junk after"),
            ("tcp://fd00::1", "not a host name"),
        ] {
            let e = bad.parse::<Forward>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("256M".parse::<Size>().unwrap().bytes(), 256 << 20);
        assert_eq!("1GiB".parse::<Size>().unwrap().bytes(), 1 << 30);
        assert_eq!("512KB".parse::<Size>().unwrap().bytes(), 512 << 10);
        assert_eq!("100".parse::<Size>().unwrap().bytes(), 100);
        assert!("12X".parse::<Size>().is_err());
        assert!("M".parse::<Size>().is_err());
        assert!("-1M".parse::<Size>().is_err());
        assert!("99999999999999T".parse::<Size>().is_err());
        assert_eq!(Size(256 << 20).to_string(), "256M");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn cpus_and_durations() {
        assert_eq!("0.5".parse::<Cpus>().unwrap().millis(), 500);
        assert_eq!(Cpus(1500).to_string(), "1.5");
        assert_eq!(Cpus(2000).to_string(), "2");
        assert!("0".parse::<Cpus>().is_err());
        assert!("nan".parse::<Cpus>().is_err());
        assert_eq!("500ms".parse::<Duration>().unwrap().get().as_millis(), 500);
        assert_eq!("2m".parse::<Duration>().unwrap().get().as_secs(), 120);
        assert_eq!(Duration::secs(120).to_string(), "2m");
        assert_eq!(Duration::secs(90).to_string(), "90s");
        assert!("5 days".parse::<Duration>().is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "192.168.7.10/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "192.168.7.0");
        assert!(c.contains("192.168.7.1".parse().unwrap()));
        assert!(!c.contains("192.168.8.1".parse().unwrap()));
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        let c: Cidr = "fd00::5/64".parse().unwrap();
        assert_eq!(c.network().to_string(), "fd00::");
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().network().to_string(),
            "0.0.0.0"
        );
    }

    #[test]
    fn port_mappings() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        let p: PortMapping = "5353:53/udp".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (5353, 53, Proto::Udp)
        );
        let p: PortMapping = "127.0.0.1:9000:9001".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.container_port, 9001);
        let p: PortMapping = "[::1]:9000:9000/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p.to_string(), "[::1]:9000:9000");
        // 0.0.0.0 means every address, as no address does.
        assert_eq!(
            "0.0.0.0:80:80".parse::<PortMapping>().unwrap().host_ip,
            None
        );
        for s in [
            "8080:80",
            "5353:53/udp",
            "127.0.0.1:9000:9000",
            "[fd00::1]:1:2/udp",
        ] {
            assert_eq!(s.parse::<PortMapping>().unwrap().to_string(), s);
        }
        for (bad, why) in [
            ("80", "both a host port"),
            ("", "both a host port"),
            ("0:80", "host port \"0\""),
            ("80:0", "container port \"0\""),
            ("65536:80", "host port \"65536\""),
            ("+80:80", "host port \"+80\""),
            ("80:80/sctp", "protocol \"sctp\""),
            ("80:80/TCP", "protocol \"TCP\""),
            ("host:80:80", "\"host\" is not an IPv4 address"),
            ("::1:80:80", "too many"),
            ("[::1:80:80", "no closing"),
            ("[::1]80:80", "must follow"),
            ("[1.2.3.4]:80:80", "not an IPv6 address"),
            ("1.2.3.4:80", "after the address 1.2.3.4 come both"),
            ("80:80:", "not an IPv4 address"),
        ] {
            let e = bad.parse::<PortMapping>().unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!("1.2.3.4:80:".parse::<PortMapping>().is_err());
    }

    #[test]
    fn port_conflicts() {
        let p = |s: &str| s.parse::<PortMapping>().unwrap();
        assert!(p("8080:80").conflicts_with(&p("8080:81")));
        assert!(p("8080:80").conflicts_with(&p("127.0.0.1:8080:80")));
        assert!(p("127.0.0.1:8080:80").conflicts_with(&p("0.0.0.0:8080:90")));
        assert!(!p("127.0.0.1:8080:80").conflicts_with(&p("127.0.0.2:8080:80")));
        assert!(!p("8080:80").conflicts_with(&p("8080:80/udp")));
        assert!(!p("8080:80").conflicts_with(&p("8081:80")));
    }

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Ports {
        ports: Vec<PortMapping>,
    }

    #[test]
    fn port_mappings_in_toml() {
        let t: Ports = toml::from_str("ports = [\"8080:80\", \"5353:53/udp\"]").unwrap();
        assert_eq!(t.ports[1].proto, Proto::Udp);
        assert_eq!(
            toml::to_string(&t).unwrap().trim(),
            "ports = [\"8080:80\", \"5353:53/udp\"]"
        );
        let e = toml::from_str::<Ports>("ports = [80]")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expected a string"), "{e}");
        let e = toml::from_str::<Ports>("ports = [\"80\"]")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("both a host port"), "{e}");
    }

    #[test]
    fn modes() {
        assert_eq!("0644".parse::<FileMode>().unwrap().0, 0o644);
        assert_eq!(FileMode(0o600).to_string(), "0600");
        assert!("0999".parse::<FileMode>().is_err());
        assert!("17777".parse::<FileMode>().is_err());
    }

    #[test]
    fn image_refs() {
        let r: ImageRef = "registry.example.com:5000/team/app:1.2".parse().unwrap();
        assert_eq!(
            r,
            ImageRef::Registry {
                registry: "registry.example.com:5000".into(),
                repository: "team/app".into(),
                tag: Some("1.2".into()),
                digest: None
            }
        );
        let d = format!("localhost/app@sha256:{}", "a".repeat(64));
        assert!(matches!(
            d.parse::<ImageRef>().unwrap(),
            ImageRef::Registry {
                digest: Some(_),
                ..
            }
        ));
        assert_eq!(
            "ntpd:1.0".parse::<ImageRef>().unwrap(),
            ImageRef::Shipped {
                name: "ntpd".into(),
                tag: Some("1.0".into())
            }
        );
        for bad in [
            "",
            "Ntpd",
            "team/app",
            "reg.io/App",
            "reg.io/app:",
            "reg.io/app@sha256:12",
            "a..b",
            "reg.io:0/x",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
        for s in ["ntpd", "reg.io/a/b:c", "[::1]:5000/x"] {
            assert_eq!(s.parse::<ImageRef>().unwrap().to_string(), s);
        }
        assert!(valid_registry_host("registry.example.com:5000"));
        assert!(!valid_registry_host("bad_host:5000"));
        assert!(!valid_registry_host("host:99999"));
    }
}
