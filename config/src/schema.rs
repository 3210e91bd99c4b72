//! The config schema. Every table denies unknown keys, so a typo is an error rather than a
//! silently ignored setting. `docs/CONFIG.md` documents every key; keep the two in step.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::types::{Cidr, Cpus, Duration, FileMode, Forward, ImageRef, PortMapping, Size};

/// The whole machine config (`berth.toml`, `/var/lib/berth/config.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host identity.
    pub host: Host,
    /// Interfaces, routes, DNS.
    pub network: Network,
    /// Kernel parameters, `key = value` (`net.ipv4.ip_forward = 1`).
    pub sysctl: BTreeMap<String, SysctlValue>,
    /// Files written under /etc or /var at every boot.
    pub files: Vec<FileSpec>,
    /// Kernel modules.
    pub kernel: Kernel,
    /// Per-registry settings keyed by `host[:port]`.
    pub registries: BTreeMap<String, Registry>,
    /// Workload containers.
    pub containers: Vec<ContainerSpec>,
    /// OS updates.
    pub update: Update,
    /// The remote API (osctl over mutual TLS).
    #[serde(skip_serializing_if = "Api::is_default")]
    pub api: Api,
    /// Log forwarding to a syslog collector.
    #[serde(skip_serializing_if = "Logging::is_default")]
    pub logging: Logging,
    /// Prometheus metrics of the node and its containers.
    #[serde(skip_serializing_if = "Metrics::is_default")]
    pub metrics: Metrics,
    /// `[admin]` of older configs: refused with a pointer to `[api]` (it never did anything).
    #[serde(rename = "admin", skip_serializing)]
    removed_admin: RemovedAdmin,
}

/// `[host]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Host {
    /// Hostname (RFC 1123, at most 64 characters). Default: `berth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// IANA time zone name, e.g. `Europe/Berlin`. Default: `UTC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// NTP servers (names or addresses) for the `ntpd` system service. Empty (the
    /// default): the NTP pool, `pool.ntp.org`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
}

/// Hostname used when the config names none.
pub const DEFAULT_HOSTNAME: &str = "berth";

impl Host {
    /// The hostname to set.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME)
    }
}

/// `[network]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Interface settings. Empty (the default): DHCP on every interface except loopback.
    pub interfaces: Vec<Interface>,
    /// Static DNS settings, merged with what DHCP hands out (static first).
    pub dns: Dns,
    /// The workload bridge `berth0` (`network = "bridge"` containers).
    #[serde(skip_serializing_if = "WorkloadBridge::is_default")]
    pub bridge: WorkloadBridge,
}

/// Default `[network.bridge] subnet`.
pub const DEFAULT_BRIDGE_SUBNET: &str = "10.88.0.0/16";

/// `[network.bridge]`: the workload bridge `berth0`; the host is the subnet's first address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadBridge {
    /// IPv4 subnet, prefix /8 to /30. Default `10.88.0.0/16`.
    pub subnet: Cidr,
}

impl Default for WorkloadBridge {
    fn default() -> Self {
        WorkloadBridge {
            subnet: Cidr {
                addr: std::net::Ipv4Addr::new(10, 88, 0, 0).into(),
                prefix: 16,
            },
        }
    }
}

impl WorkloadBridge {
    fn is_default(&self) -> bool {
        *self == WorkloadBridge::default()
    }
}

/// How an interface gets its address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    /// DHCPv4 (plus any static `addresses`).
    #[default]
    Dhcp,
    /// Only the static `addresses`.
    Static,
}

/// `[[network.interfaces]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Interface name (`eth0`), or a prefix pattern ending in `*` (`en*`).
    pub name: String,
    /// `dhcp` (default) or `static`.
    #[serde(default)]
    pub mode: AddressMode,
    /// Static addresses with prefix length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// Static routes through this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// MTU in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Interface {
    /// Whether this entry applies to the interface called `ifname`.
    pub fn matches(&self, ifname: &str) -> bool {
        match self.name.strip_suffix('*') {
            Some(prefix) => ifname.starts_with(prefix),
            None => self.name == ifname,
        }
    }
}

/// A route: `to = "default"` or a CIDR, through `via` (gateway) if given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination: `default` or a network in CIDR form.
    pub to: RouteTarget,
    /// Gateway address; none for an on-link route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Route metric (lower wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// A route destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// `0.0.0.0/0` (or `::/0` when `via` is IPv6).
    Default,
    /// A network.
    Net(Cidr),
}

impl serde::Serialize for RouteTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteTarget::Default => s.serialize_str("default"),
            RouteTarget::Net(c) => s.collect_str(c),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RouteTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "default" {
            return Ok(RouteTarget::Default);
        }
        s.parse()
            .map(RouteTarget::Net)
            .map_err(serde::de::Error::custom)
    }
}

/// `[network.dns]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
}

/// A sysctl value: written as given (booleans as 1/0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SysctlValue {
    /// `vm.swappiness = 10`
    Int(i64),
    /// `net.ipv4.ip_forward = true`
    Bool(bool),
    /// `net.ipv4.ip_local_port_range = "32768 60999"`
    Str(String),
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer, a boolean or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Int(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Bool(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl SysctlValue {
    /// The text written to `/proc/sys/...`.
    pub fn as_text(&self) -> String {
        match self {
            SysctlValue::Int(i) => i.to_string(),
            SysctlValue::Bool(b) => u8::from(*b).to_string(),
            SysctlValue::Str(s) => s.clone(),
        }
    }
}

/// `[[files]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path under /etc or /var.
    pub path: String,
    /// The file's contents (UTF-8 text).
    #[serde(default)]
    pub content: String,
    /// Mode, default `0644`.
    #[serde(default)]
    pub mode: FileMode,
    /// Owner as numeric `uid:gid` (no user database on Berth), default `0:0`.
    #[serde(default = "default_owner")]
    pub owner: String,
}

fn default_owner() -> String {
    "0:0".into()
}

impl FileSpec {
    /// The owner as numbers, if `owner` is well formed.
    pub fn owner_ids(&self) -> Option<(u32, u32)> {
        let (u, g) = self.owner.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    }
}

/// `[kernel]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kernel {
    /// Extra modules to load at boot (names as in `modprobe`).
    pub modules: Vec<String>,
}

/// `[registries."host:port"]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    /// Plain HTTP or unverified TLS.
    pub insecure: bool,
    /// Extra CA certificate(s), PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// User name for basic / token auth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Mirrors tried in order before the registry itself (`host[:port]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

/// `[update]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Update {
    /// The OS image repository, e.g. `registry.example.com/berth/os:stable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageRef>,
    /// `manual`, `download` or `auto`.
    pub policy: UpdatePolicy,
    /// When `auto` may reboot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<RebootWindow>,
    /// Extra trusted signing keys (PEM public keys), added to those shipped in the image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// How long a newly installed OS version has, from sysd's start, to become healthy
    /// (every required service healthy, managed interfaces addressed, default gateways
    /// answering). Healthy in time: its boot entry is blessed. Not: the node reboots, the
    /// try counts as failed, and after three failed tries the boot loader falls back to
    /// the previous version.
    pub health_deadline: Duration,
    /// `immediate` (reboot as the policy and window allow) or `fleetlock` (first take a
    /// reboot slot from a FleetLock server, `[update.fleetlock]`).
    pub strategy: UpdateStrategy,
    /// The FleetLock server(s) and this node's reboot group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleetlock: Option<FleetLock>,
}

impl Default for Update {
    fn default() -> Self {
        Update {
            source: None,
            policy: UpdatePolicy::Manual,
            reboot_window: None,
            trusted_keys: Vec::new(),
            health_deadline: Duration::secs(300),
            strategy: UpdateStrategy::Immediate,
            fleetlock: None,
        }
    }
}

/// How a node coordinates its reboots into installed updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateStrategy {
    /// On its own, as `policy` and `reboot_window` allow.
    #[default]
    Immediate,
    /// Only while holding a reboot slot of a FleetLock server (Zincati's protocol).
    Fleetlock,
}

/// `[update.fleetlock]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetLock {
    /// Base URL of the FleetLock server (`http://host:3333/`), or several: a failed
    /// request moves on to the next.
    pub url: Urls,
    /// Reboot group (`[a-zA-Z0-9.-]+`).
    #[serde(default = "default_group")]
    pub group: String,
}

fn default_group() -> String {
    "default".into()
}

/// One URL or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    /// `url = "http://..."`
    One(String),
    /// `url = ["http://...", "http://..."]`
    Many(Vec<String>),
}

impl Urls {
    /// The URLs, in order.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Urls::One(u) => vec![u.as_str()],
            Urls::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// What the updater does by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdatePolicy {
    /// Only when told (`osctl update`).
    #[default]
    Manual,
    /// Check and download, install when told.
    Download,
    /// Check, download, install and reboot in the reboot window.
    Auto,
}

/// A weekly reboot window (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootWindow {
    /// Days: `mon` .. `sun`; empty = every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Start time `HH:MM`.
    pub start: String,
    /// Length of the window.
    pub duration: Duration,
}

/// `[api]`: the remote API, `org.berth.Manager1` over TLS 1.3 with mandatory client
/// certificates. Off unless `ca` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Address and port to listen on.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The CA that signs client certificates (PEM). None: no remote API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The CA's private key (PEM): the node signs its own certificate with it (and renews
    /// it), and an admin can mint client certificates on the node (`osctl pki issue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    /// The node's certificate (PEM), with `key`. None: the node makes its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The private key of `cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Networks that may connect; empty = any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_sources: Vec<Cidr>,
    /// Serial numbers of client certificates refused from now on (hex; any case, colons
    /// allowed; kept normalized: lower case, no colons, no leading zeros).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<Serial>,
    /// Lifetime of the certificate the node makes for itself (renewed when a third is left).
    pub cert_ttl: Duration,
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {s:?} (expected address:port, e.g. \"0.0.0.0:7443\" or \"[::]:7443\")"
        ))
    })
}

/// Default `[api] listen`.
pub const DEFAULT_API_LISTEN: &str = "0.0.0.0:7443";

/// Default `[api] cert_ttl`: 90 days.
pub const DEFAULT_API_CERT_TTL: Duration = Duration::secs(90 * 24 * 3600);

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            ca: None,
            ca_key: None,
            cert: None,
            key: None,
            allowed_sources: Vec::new(),
            revoked_serials: Vec::new(),
            cert_ttl: DEFAULT_API_CERT_TTL,
        }
    }
}

/// `[metrics]`: sysd serves Prometheus metrics of the node and its containers at
/// `/metrics` over HTTP. Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address and port to listen on (`"0.0.0.0:9101"`). None: no metrics endpoint.
    #[serde(
        deserialize_with = "some_socket_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    /// Serve over mutual TLS like the remote API: the node certificate of `[api]`, and a
    /// client certificate signed by `[api] ca` with any role (`reader` is enough).
    #[serde(skip_serializing_if = "is_false")]
    pub tls: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn some_socket_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

impl Metrics {
    fn is_default(&self) -> bool {
        *self == Metrics::default()
    }
}

impl Api {
    fn is_default(&self) -> bool {
        *self == Api::default()
    }

    /// Whether the remote API is on (it needs `ca`).
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether the certificate with serial `serial` (any form [`Serial`] accepts) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        Serial::normalize(serial).is_some_and(|s| self.revoked_serials.iter().any(|r| r.0 == s))
    }

    /// Whether a client at `ip` may connect (`allowed_sources`; an IPv4-mapped IPv6
    /// address counts as the IPv4 address).
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|c| c.contains(ip))
    }
}

/// `[logging]`: ship every container's output and sysd's own log to a syslog collector
/// (RFC 5424 messages, RFC 6587 octet-counted framing over TCP or TLS). Off unless
/// `forward` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// The collector: `tcp://host:port`, `tcp+tls://host:port` or `udp://host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// The CA certificate(s) (PEM) that sign the collector's certificate (`tcp+tls` only,
    /// and required there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Largest size of the on-disk spool of lines not yet sent; the oldest are dropped
    /// beyond it.
    pub spool_max: Size,
}

/// Default `[logging] spool_max`: 64 MiB.
pub const DEFAULT_SPOOL_MAX: Size = Size(64 << 20);

impl Default for Logging {
    fn default() -> Self {
        Logging {
            forward: None,
            ca: None,
            spool_max: DEFAULT_SPOOL_MAX,
        }
    }
}

impl Logging {
    fn is_default(&self) -> bool {
        *self == Logging::default()
    }
}

/// A certificate serial number, normalized: lower-case hex, no colons, no leading zeros
/// (`"0A:1B"` is `"a1b"`). At most 20 bytes (RFC 5280).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(String);

impl Serial {
    /// Normalizes `s` (hex digits in any case, optionally separated by `:`), or `None`
    /// when it is not a serial number.
    pub fn normalize(s: &str) -> Option<String> {
        let t = s.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if t.is_empty() || t.starts_with(':') || t.ends_with(':') || t.contains("::") {
            return None;
        }
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let trimmed = hex.trim_start_matches('0').to_ascii_lowercase();
        let out = if trimmed.is_empty() {
            "0".to_string()
        } else {
            trimmed
        };
        (out.len() <= 40).then_some(out)
    }

    /// The normalized form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Serial {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Serial::normalize(s).map(Serial).ok_or_else(|| {
            format!("invalid certificate serial {s:?} (expected hex, e.g. \"3f:a2:01\" or \"3fa201\", at most 20 bytes)")
        })
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The removed `[admin]` table: any value is an error that says what replaced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RemovedAdmin;

impl<'de> Deserialize<'de> for RemovedAdmin {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "[admin] was removed (its keys never granted access): remote access is the [api] section, with client certificates (see docs/CONFIG.md)",
        ))
    }
}

/// What replaces a secret in [`Config::redacted`].
pub const REDACTED: &str = "(redacted)";

impl Config {
    /// The config with its secrets replaced by [`REDACTED`]: `[api] ca_key` and `key`, and
    /// registry passwords. What a caller below `admin` sees.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for s in [&mut c.api.ca_key, &mut c.api.key] {
            if s.is_some() {
                *s = Some(REDACTED.into());
            }
        }
        for r in c.registries.values_mut() {
            if r.password.is_some() {
                r.password = Some(REDACTED.into());
            }
        }
        c
    }
}

/// A container definition: a workload (`[[containers]]`) or a system service
/// (`/usr/lib/berth/services/*.toml`, where these keys are the top level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Unique name: lowercase letters, digits, `-`; at most 63.
    pub name: String,
    /// Shipped image name or registry reference (see [`ImageRef`]).
    pub image: ImageRef,
    /// Command, replacing the image's entrypoint and cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Numeric `uid[:gid]` to run as; default: the image's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Bind mounts of host directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Named persistent volumes (`/var/lib/berth/volumes/<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// `bridge` (default for workloads), `host` (default for system services) or `none`.
    #[serde(default)]
    pub network: NetworkMode,
    /// Published ports of a `bridge` container: `"[ip:]host:container[/tcp|udp]"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Capabilities added to the default set (`CAP_NET_ADMIN` or `NET_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Restart policy.
    #[serde(default)]
    pub restart: Restart,
    /// Start after these (if they are defined).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Start after these and only if they are running; stop when they fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The boot counts as good only once this container is healthy.
    #[serde(default)]
    pub required_for_boot: bool,
    /// Run in a user namespace of its own: container ids 0-65535 map to a subordinate
    /// range of host ids that sysd allocates for this container (100000 + k*65536), so
    /// its root is no one on the host. Default off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_namespace: bool,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Host path under /var, /etc or /run.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A named persistent volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Volume name: the directory `/var/lib/berth/volumes/<name>`.
    pub name: String,
    /// Absolute path inside the container.
    pub target: String,
}

/// Root of named volumes.
pub const VOLUMES_DIR: &str = "/var/lib/berth/volumes";

impl Volume {
    /// The host directory of this volume.
    pub fn host_path(&self) -> std::path::PathBuf {
        std::path::Path::new(VOLUMES_DIR).join(&self.name)
    }
}

/// Container network mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network namespace (system services that name no network get it).
    Host,
    /// A namespace with only loopback.
    None,
    /// A namespace of its own on the workload bridge `berth0`: an address from
    /// `[network.bridge] subnet`, egress through masquerade, `ports` published. The
    /// default for workloads (the config's `[[containers]]` and `osctl run`).
    #[default]
    Bridge,
}

impl NetworkMode {
    /// `host`, `none` or `bridge`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit (`memory.max`), e.g. `"256M"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// CPU quota in CPUs (`cpu.max`), e.g. `0.5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Process limit (`pids.max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// When to restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whenever it exits.
    #[default]
    Always,
    /// When it exits non-zero or is killed.
    OnFailure,
    /// Never.
    Never,
}

/// Restart policy with backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    /// `always` (default), `on-failure`, `never`.
    pub policy: RestartPolicy,
    /// First delay; doubles after each quick failure.
    pub backoff: Duration,
    /// Longest delay.
    pub max_backoff: Duration,
    /// Give up after this many restarts in a row (none = never give up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::Always,
            backoff: Duration(std::time::Duration::from_millis(500)),
            max_backoff: Duration::secs(60),
            limit: None,
        }
    }
}

/// A health check: exactly one of `exec`, `tcp`, `http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Command run inside the container; healthy if it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// `host:port` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `http://` URL that must answer 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Time between checks.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Time one check may take.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Failures in a row before the container counts as unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Grace period after start during which failures do not count.
    #[serde(default = "default_start_period")]
    pub start_period: Duration,
}

fn default_interval() -> Duration {
    Duration::secs(10)
}
fn default_timeout() -> Duration {
    Duration::secs(5)
}
fn default_retries() -> u32 {
    3
}
fn default_start_period() -> Duration {
    Duration::secs(0)
}

/// Which kind of health check a [`Health`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck<'a> {
    /// Run a command.
    Exec(&'a [String]),
    /// Connect to `host:port`.
    Tcp(&'a str),
    /// GET a URL.
    Http(&'a str),
}

impl Health {
    /// The check to run (the first given; validation ensures exactly one).
    pub fn check(&self) -> Option<HealthCheck<'_>> {
        if let Some(e) = &self.exec {
            return Some(HealthCheck::Exec(e));
        }
        if let Some(t) = &self.tcp {
            return Some(HealthCheck::Tcp(t));
        }
        self.http.as_deref().map(HealthCheck::Http)
    }
}
