//! Semantic validation: what types alone cannot say (hostname rules, paths, duplicates,
//! dependency cycles, ...). Every finding carries its key path and, with the text, its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{ConfigError, KeyPath, Locator};
use crate::render::{sysctl_path, valid_domain, valid_hostname};
use crate::schema::{AddressMode, Config, ContainerSpec, NetworkMode, RouteTarget};
use crate::types::{valid_registry_host, ImageRef};

pub(crate) struct Ctx<'a> {
    loc: &'a Locator<'a>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(loc: &'a Locator<'a>) -> Self {
        Ctx {
            loc,
            errors: Vec::new(),
        }
    }
    fn err(&mut self, path: KeyPath, msg: impl Into<String>) {
        self.errors.push(self.loc.error(path, msg));
    }
}

/// Whether `name` is a valid container / service / volume name: 1-63 lowercase letters,
/// digits and `-`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// Checks that `p` is absolute and normal (no `.`, `..`, `//`, trailing `/`).
fn normal_abs(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must be an absolute path");
    }
    if p.contains("//") || (p.len() > 1 && p.ends_with('/')) {
        return Err("must not contain empty components or a trailing '/'");
    }
    // Not `Path::components`: it drops a `.` in the middle (`/var/lib/./berth`).
    if p.split('/').any(|c| c == "." || c == "..") {
        return Err("must not contain '.' or '..'");
    }
    if p.bytes().any(|b| b == 0 || b == b'\n') {
        return Err("must not contain NUL or newline");
    }
    Ok(())
}

/// Whether `p` is strictly below one of `roots` (normal absolute path).
fn under(p: &str, roots: &[&str]) -> bool {
    roots.iter().any(|r| {
        p.strip_prefix(r)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    })
}

/// Validates a whole config.
pub(crate) fn config(c: &Config, cx: &mut Ctx<'_>) {
    let root = KeyPath::root();
    let host = root.key("host");
    if let Some(h) = &c.host.hostname {
        if !valid_hostname(h) {
            cx.err(
                host.key("hostname"),
                format!("invalid hostname {h:?} (letters, digits and '-' in dot-separated labels, at most 64 characters)"),
            );
        }
    }
    if let Some(tz) = &c.host.timezone {
        let ok = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.split('/').any(|p| p.is_empty() || p == ".." || p == ".")
            && tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !ok {
            cx.err(
                host.key("timezone"),
                format!("invalid time zone {tz:?} (expected e.g. \"Europe/Berlin\" or \"UTC\")"),
            );
        }
    }
    let ntp = host.key("ntp_servers");
    if c.host.ntp_servers.len() > 8 {
        cx.err(ntp.clone(), "at most 8 NTP servers".to_string());
    }
    for (i, n) in c.host.ntp_servers.iter().enumerate() {
        if n.parse::<std::net::IpAddr>().is_err() && !valid_domain(n) {
            cx.err(
                ntp.index(i),
                format!("invalid NTP server {n:?} (a host name such as \"time.example.com\" or an IP address)"),
            );
        } else if c.host.ntp_servers[..i].contains(n) {
            cx.err(ntp.index(i), format!("NTP server {n:?} is listed twice"));
        }
    }
    network(c, cx);
    let sys = root.key("sysctl");
    for k in c.sysctl.keys() {
        if let Err(e) = sysctl_path(Path::new("/proc/sys"), k) {
            cx.err(sys.key(k), e.to_string());
        }
    }
    files(c, cx);
    for (i, m) in c.kernel.modules.iter().enumerate() {
        if m.is_empty()
            || m.len() > 64
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            cx.err(
                root.key("kernel").key("modules").index(i),
                format!("invalid module name {m:?}"),
            );
        }
    }
    registries(c, cx);
    let cpath = root.key("containers");
    let mut seen = BTreeMap::new();
    for (i, s) in c.containers.iter().enumerate() {
        container(s, &cpath.index(i), Origin::Workload, cx);
        if let Some(first) = seen.insert(s.name.as_str(), i) {
            cx.err(
                cpath.index(i).key("name"),
                format!(
                    "duplicate container name {:?} (also containers[{first}])",
                    s.name
                ),
            );
        }
    }
    let entries: Vec<(KeyPath, &ContainerSpec)> = c
        .containers
        .iter()
        .enumerate()
        .map(|(i, s)| (cpath.index(i), s))
        .collect();
    cycles(&entries, cx);
    published_twice(&entries, cx);
    update(c, cx);
    api(c, cx);
    logging(c, cx);
    metrics(c, cx);
}

fn network(c: &Config, cx: &mut Ctx<'_>) {
    let net = KeyPath::root().key("network");
    let ifs = net.key("interfaces");
    let mut names = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for (i, itf) in c.network.interfaces.iter().enumerate() {
        let p = ifs.index(i);
        let n = &itf.name;
        let stem = n.strip_suffix('*').unwrap_or(n);
        let ok = n.len() <= 15
            && !n.is_empty()
            && stem
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
            && (stem != n || !stem.is_empty());
        if !ok {
            cx.err(
                p.key("name"),
                format!("invalid interface name {n:?} (at most 15 letters, digits, '-', '_', '.', optionally ending in '*')"),
            );
        }
        if let Some(first) = names.insert(n.as_str(), i) {
            cx.err(
                p.key("name"),
                format!("duplicate interface {n:?} (also network.interfaces[{first}])"),
            );
        }
        if itf.mode == AddressMode::Static && itf.addresses.is_empty() {
            cx.err(
                p.key("addresses"),
                "a static interface needs at least one address",
            );
        }
        if itf.name.ends_with('*') && itf.mode == AddressMode::Static {
            cx.err(
                p.key("mode"),
                "static addresses need an exact interface name, not a pattern",
            );
        }
        for (j, a) in itf.addresses.iter().enumerate() {
            if a.addr.is_unspecified() || a.addr.is_multicast() || a.addr.is_loopback() {
                cx.err(
                    p.key("addresses").index(j),
                    format!("{a} is not usable as an interface address"),
                );
            }
            if let Some(first) = addrs.insert(a.addr, (i, j)) {
                cx.err(
                    p.key("addresses").index(j),
                    format!(
                        "duplicate address {} (also network.interfaces[{}].addresses[{}])",
                        a.addr, first.0, first.1
                    ),
                );
            }
        }
        if let Some(m) = itf.mtu {
            if !(68..=65535).contains(&m) {
                cx.err(p.key("mtu"), format!("invalid MTU {m} (68 to 65535)"));
            }
        }
        for (j, r) in itf.routes.iter().enumerate() {
            let rp = p.key("routes").index(j);
            if let (RouteTarget::Net(n), Some(via)) = (&r.to, &r.via) {
                if n.addr.is_ipv4() != via.is_ipv4() {
                    cx.err(
                        rp.key("via"),
                        format!("gateway {via} and destination {n} are of different IP versions"),
                    );
                }
            }
            if let RouteTarget::Net(n) = &r.to {
                if n.network() != n.addr {
                    cx.err(
                        rp.key("to"),
                        format!(
                            "{n} has host bits set (did you mean {}/{}?)",
                            n.network(),
                            n.prefix
                        ),
                    );
                }
            }
            if r.to == RouteTarget::Default && r.via.is_none() && itf.mode == AddressMode::Static {
                cx.err(rp.key("via"), "a default route needs a gateway (via)");
            }
            if let Some(via) = r.via {
                if via.is_unspecified() || via.is_multicast() {
                    cx.err(rp.key("via"), format!("{via} is not a usable gateway"));
                }
            }
        }
    }
    let dns = net.key("dns");
    for (i, s) in c.network.dns.servers.iter().enumerate() {
        if s.is_unspecified() || s.is_multicast() {
            cx.err(
                dns.key("servers").index(i),
                format!("{s} is not a usable name server"),
            );
        }
    }
    for (i, d) in c.network.dns.search.iter().enumerate() {
        if !valid_domain(d) {
            cx.err(
                dns.key("search").index(i),
                format!("invalid search domain {d:?}"),
            );
        }
    }
    if c.network.dns.search.len() > 6 {
        cx.err(dns.key("search"), "at most 6 search domains");
    }
    bridge_subnet(c, &net.key("bridge").key("subnet"), cx);
}

/// `[network.bridge] subnet`: IPv4, /8 to /30, host bits clear, and no overlap with a
/// static interface address (addresses that only exist at run time, from DHCP, are
/// checked by sysd when it sets up the bridge).
fn bridge_subnet(c: &Config, p: &KeyPath, cx: &mut Ctx<'_>) {
    let s = c.network.bridge.subnet;
    if !s.addr.is_ipv4() || !(8..=30).contains(&s.prefix) {
        cx.err(
            p.clone(),
            format!("{s} is not usable for the workload bridge (an IPv4 network, prefix /8 to /30, e.g. \"10.88.0.0/16\")"),
        );
        return;
    }
    if s.network() != s.addr {
        cx.err(
            p.clone(),
            format!(
                "{s} has host bits set (did you mean {}/{}?)",
                s.network(),
                s.prefix
            ),
        );
    }
    for (i, itf) in c.network.interfaces.iter().enumerate() {
        for (j, a) in itf.addresses.iter().enumerate() {
            let common = s.prefix.min(a.prefix);
            let cut = |addr| {
                crate::types::Cidr {
                    addr,
                    prefix: common,
                }
                .network()
            };
            if a.addr.is_ipv4() && cut(a.addr) == cut(s.addr) {
                cx.err(
                    p.clone(),
                    format!(
                        "bridge subnet {s} overlaps address {a} of network.interfaces[{i}].addresses[{j}] ({}); choose another subnet",
                        itf.name
                    ),
                );
            }
        }
    }
}

/// Host ports published by two containers (or twice by one, which [`container`] reports).
fn published_twice(entries: &[(KeyPath, &ContainerSpec)], cx: &mut Ctx<'_>) {
    for (j, (pj, b)) in entries.iter().enumerate() {
        for (k, m) in b.ports.iter().enumerate() {
            let first = entries[..j].iter().find_map(|(_, a)| {
                a.ports
                    .iter()
                    .find(|o| o.conflicts_with(m))
                    .map(|o| (a.name.as_str(), o))
            });
            if let Some((owner, o)) = first {
                cx.err(
                    pj.key("ports").index(k),
                    format!("host port {m} conflicts with {o} of container {owner:?} (the same host port and protocol on the same address, or on every address)"),
                );
            }
        }
    }
}

fn files(c: &Config, cx: &mut Ctx<'_>) {
    let fp = KeyPath::root().key("files");
    let mut seen = BTreeMap::new();
    for (i, f) in c.files.iter().enumerate() {
        let p = fp.index(i);
        if let Err(why) = normal_abs(&f.path) {
            cx.err(p.key("path"), format!("{:?} {why}", f.path));
        } else if !under(&f.path, &["/etc", "/var"]) {
            cx.err(
                p.key("path"),
                format!(
                    "{:?} is outside /etc and /var (files may only be written there)",
                    f.path
                ),
            );
        }
        if let Some(first) = seen.insert(f.path.as_str(), i) {
            cx.err(
                p.key("path"),
                format!("duplicate file {:?} (also files[{first}])", f.path),
            );
        }
        if f.owner_ids().is_none() {
            cx.err(
                p.key("owner"),
                format!(
                    "invalid owner {:?} (expected numeric \"uid:gid\", e.g. \"0:0\")",
                    f.owner
                ),
            );
        }
        if f.content.len() > 1 << 20 {
            cx.err(p.key("content"), "content larger than 1 MiB");
        }
    }
}

fn registries(c: &Config, cx: &mut Ctx<'_>) {
    let rp = KeyPath::root().key("registries");
    for (host, r) in &c.registries {
        let p = rp.key(host);
        if !valid_registry_host(host) {
            cx.err(
                p.clone(),
                format!("invalid registry {host:?} (expected host[:port])"),
            );
        }
        for (i, m) in r.mirrors.iter().enumerate() {
            if !valid_registry_host(m) {
                cx.err(
                    p.key("mirrors").index(i),
                    format!("invalid mirror {m:?} (expected host[:port])"),
                );
            }
        }
        if let Some(ca) = &r.ca {
            if !ca.contains("-----BEGIN CERTIFICATE-----")
                || !ca.contains("-----END CERTIFICATE-----")
            {
                cx.err(
                    p.key("ca"),
                    "expected a PEM certificate (-----BEGIN CERTIFICATE----- ...)",
                );
            }
        }
        if r.password.is_some() != r.username.is_some() {
            cx.err(
                p.key(if r.username.is_some() {
                    "username"
                } else {
                    "password"
                }),
                "username and password go together",
            );
        }
    }
}

fn update(c: &Config, cx: &mut Ctx<'_>) {
    let up = KeyPath::root().key("update");
    let u = &c.update;
    if let Some(ImageRef::Shipped { .. }) = u.source {
        cx.err(up.key("source"), "the update source must be a registry reference (e.g. \"registry.example.com/berth/os:stable\")");
    }
    if u.policy != crate::schema::UpdatePolicy::Manual && u.source.is_none() {
        cx.err(up.key("policy"), "automatic updates need update.source");
    }
    if let Some(w) = &u.reboot_window {
        let wp = up.key("reboot_window");
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        for (i, d) in w.days.iter().enumerate() {
            if !DAYS.contains(&d.as_str()) {
                cx.err(
                    wp.key("days").index(i),
                    format!("invalid day {d:?} (mon, tue, wed, thu, fri, sat, sun)"),
                );
            }
        }
        let hm = w.start.split_once(':').and_then(|(h, m)| {
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && w.start.len() == 5).then_some(())
        });
        if hm.is_none() {
            cx.err(
                wp.key("start"),
                format!("invalid time {:?} (expected HH:MM, UTC)", w.start),
            );
        }
        let d = w.duration.get().as_secs();
        if !(60..=24 * 3600).contains(&d) {
            cx.err(
                wp.key("duration"),
                "the window must last between 1 minute and 24 hours",
            );
        }
    }
    let hd = u.health_deadline.get().as_secs();
    if !(10..=3600).contains(&hd) {
        cx.err(
            up.key("health_deadline"),
            "the health deadline must be between 10 seconds and 1 hour",
        );
    }
    for (i, k) in u.trusted_keys.iter().enumerate() {
        if !k.contains("-----BEGIN PUBLIC KEY-----") || !k.contains("-----END PUBLIC KEY-----") {
            cx.err(
                up.key("trusted_keys").index(i),
                "expected a PEM public key (-----BEGIN PUBLIC KEY----- ...)",
            );
        }
    }
    fleetlock(u, &up, cx);
}

/// `[update] strategy` and `[update.fleetlock]`.
fn fleetlock(u: &crate::schema::Update, up: &KeyPath, cx: &mut Ctx<'_>) {
    use crate::schema::{UpdateStrategy, Urls};
    let Some(f) = &u.fleetlock else {
        if u.strategy == UpdateStrategy::Fleetlock {
            cx.err(
                up.key("strategy"),
                "strategy = \"fleetlock\" needs [update.fleetlock] with url (the lock server, e.g. \"http://fleetlock.example.com:3333/\")",
            );
        }
        return;
    };
    let fp = up.key("fleetlock");
    let urls = f.url.list();
    if urls.is_empty() {
        cx.err(fp.key("url"), "at least one URL of a FleetLock server");
    }
    for (i, url) in urls.iter().enumerate() {
        let at = match f.url {
            Urls::One(_) => fp.key("url"),
            Urls::Many(_) => fp.key("url").index(i),
        };
        if let Err(why) = fleetlock_url(url) {
            cx.err(at, format!("invalid FleetLock URL {url:?}: {why}"));
        }
    }
    let g = &f.group;
    if g.is_empty()
        || g.len() > 128
        || !g
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        cx.err(
            fp.key("group"),
            format!("invalid group {g:?} (letters, digits, '.' and '-', at most 128)"),
        );
    }
    if u.strategy != UpdateStrategy::Fleetlock {
        cx.err(
            up.key("strategy"),
            "[update.fleetlock] is set but strategy is not \"fleetlock\" (set strategy = \"fleetlock\", or remove the table)",
        );
    }
}

/// An `http://` or `https://` base URL with a host, no user info, query or fragment.
fn fleetlock_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("the scheme must be http:// or https://")?;
    let (authority, _path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err("no host");
    }
    if authority.contains('@') {
        return Err("no user:password@ (FleetLock has no authentication of its own)");
    }
    if url.contains('?') || url.contains('#') {
        return Err("no query or fragment");
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("spaces or control characters");
    }
    // host, host:port, [v6], [v6]:port
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after {
            "" => (h, None),
            a => (h, Some(a.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            return Err("the port must be 1-65535");
        }
    }
    Ok(())
}

/// Checks that `text` is PEM with only blocks labelled as `labels` allows (at least one
/// block; each `-----BEGIN L-----` closed by its `-----END L-----`, base64 in between).
fn pem(text: &str, label_ok: impl Fn(&str) -> bool) -> Result<(), String> {
    let mut blocks = 0;
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        match open {
            None => {
                let label = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                    .ok_or_else(|| {
                        format!("expected -----BEGIN ...-----, found {:?}", cut(line))
                    })?;
                if !label_ok(label) {
                    return Err(format!("unexpected PEM block {label:?}"));
                }
                open = Some(label);
            }
            Some(label) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    if end != label {
                        return Err(format!(
                            "-----BEGIN {label}----- closed by -----END {end}-----"
                        ));
                    }
                    open = None;
                    blocks += 1;
                } else if !line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    return Err(format!("not base64 inside the PEM block: {:?}", cut(line)));
                }
            }
        }
    }
    match (open, blocks) {
        (Some(label), _) => Err(format!("-----BEGIN {label}----- is never closed")),
        (None, 0) => Err("empty".into()),
        _ => Ok(()),
    }
}

/// The first 40 characters of `s`, for an error message.
fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

fn api(c: &Config, cx: &mut Ctx<'_>) {
    let ap = KeyPath::root().key("api");
    let a = &c.api;
    if a.listen.port() == 0 {
        cx.err(ap.key("listen"), "the port must not be 0");
    }
    let is_cert = |l: &str| l == "CERTIFICATE";
    let is_key = |l: &str| matches!(l, "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY");
    for (name, value, cert) in [
        ("ca", &a.ca, true),
        ("ca_key", &a.ca_key, false),
        ("cert", &a.cert, true),
        ("key", &a.key, false),
    ] {
        let Some(v) = value else { continue };
        let (checked, what) = if cert {
            (pem(v, is_cert), "a PEM certificate")
        } else {
            (pem(v, is_key), "a PEM private key")
        };
        if let Err(why) = checked {
            cx.err(
                ap.key(name),
                format!("expected {what} (-----BEGIN ...): {why}"),
            );
        }
    }
    if a.cert.is_some() != a.key.is_some() {
        let (has, lacks) = if a.cert.is_some() {
            ("cert", "key")
        } else {
            ("key", "cert")
        };
        cx.err(
            ap.key(has),
            format!("needs api.{lacks}: the node certificate and its key go together"),
        );
    }
    if a.ca.is_none() {
        for (name, set) in [("ca_key", a.ca_key.is_some()), ("cert", a.cert.is_some())] {
            if set {
                cx.err(
                    ap.key(name),
                    "needs api.ca (the CA of the client certificates): without it the remote API is off",
                );
            }
        }
    }
    for (i, s) in a.allowed_sources.iter().enumerate() {
        if s.network() != s.addr {
            cx.err(
                ap.key("allowed_sources").index(i),
                format!(
                    "{s} has host bits set (did you mean {}/{}?)",
                    s.network(),
                    s.prefix
                ),
            );
        }
    }
    let ttl = a.cert_ttl.get().as_secs();
    if !(3600..=10 * 366 * 24 * 3600).contains(&ttl) {
        cx.err(
            ap.key("cert_ttl"),
            "the node certificate lifetime must be between 1 hour and 10 years",
        );
    }
}

/// Smallest and largest `[logging] spool_max`.
const SPOOL_MIN: u64 = 1 << 20;
const SPOOL_MAX: u64 = 64 << 30;

fn logging(c: &Config, cx: &mut Ctx<'_>) {
    let lp = KeyPath::root().key("logging");
    let l = &c.logging;
    let tls = l
        .forward
        .as_ref()
        .is_some_and(|f| f.proto == crate::types::ForwardProto::Tls);
    match &l.ca {
        Some(_) if !tls => cx.err(
            lp.key("ca"),
            "only used with forward = \"tcp+tls://...\" (remove it, or forward over TLS)",
        ),
        Some(ca) => {
            if let Err(why) = pem(ca, |l| l == "CERTIFICATE") {
                cx.err(
                    lp.key("ca"),
                    format!("expected a PEM certificate (-----BEGIN ...): {why}"),
                );
            }
        }
        None if tls => cx.err(
            lp.key("forward"),
            "tcp+tls needs logging.ca (the CA certificate that signs the collector's certificate, PEM)",
        ),
        None => {}
    }
    let max = l.spool_max.bytes();
    if l.forward.is_none() && l.spool_max != crate::schema::DEFAULT_SPOOL_MAX {
        cx.err(
            lp.key("spool_max"),
            "only used with logging.forward (nothing is spooled without a collector)",
        );
    } else if !(SPOOL_MIN..=SPOOL_MAX).contains(&max) {
        cx.err(lp.key("spool_max"), "the spool must be between 1M and 64G");
    }
}

fn metrics(c: &Config, cx: &mut Ctx<'_>) {
    let mp = KeyPath::root().key("metrics");
    let m = &c.metrics;
    let Some(listen) = m.listen else {
        if m.tls {
            cx.err(
                mp.key("tls"),
                "needs metrics.listen (the address of the metrics endpoint): without it metrics are off",
            );
        }
        return;
    };
    if listen.port() == 0 {
        cx.err(mp.key("listen"), "the port must not be 0");
    }
    let a = &c.api;
    let overlap = listen.ip() == a.listen.ip()
        || listen.ip().is_unspecified()
        || a.listen.ip().is_unspecified();
    if a.enabled() && listen.port() == a.listen.port() && overlap {
        cx.err(
            mp.key("listen"),
            format!(
                "{listen} is taken by the remote API (api.listen = \"{}\"): choose another port, e.g. 9101",
                a.listen
            ),
        );
    }
    if m.tls && !a.enabled() {
        cx.err(
            mp.key("tls"),
            "needs api.ca: metrics over TLS use the remote API's CA and node certificate",
        );
    }
}

/// Known Linux capability names (without `CAP_`).
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether `cap` names a Linux capability (`CAP_NET_ADMIN` or `NET_ADMIN`, any case).
pub fn valid_capability(cap: &str) -> bool {
    let up = cap.to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    CAPS.contains(&bare)
}

/// Who wrote a container definition: decides which host paths its mounts may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A system service shipped in the verified root image (`/usr/lib/berth/services`):
    /// it may bind files sysd renders for it under `/run/berth` (e.g. ntpd.conf).
    System,
    /// A workload: the machine config's `[[containers]]` or an `osctl run` request.
    Workload,
}

/// Host trees that hold Berth's own state, with what a container would get from them.
/// The ESP comes before `/run/berth` so that it is named as itself.
const PROTECTED: [(&str, &str); 4] = [
    (
        "/run/berth/esp",
        "is the EFI system partition (boot loader, kernels, boot entries)",
    ),
    (
        "/run/berth",
        "holds Berth's runtime state (the API socket, container state, the ESP)",
    ),
    (
        "/var/lib/berth",
        "holds Berth's own state (content store, credentials, other containers' data)",
    ),
    ("/var/log/berth", "holds every container's logs"),
];

/// Why `source` (a normal absolute path, see [`normal_abs`]) must not be bound into a
/// container, or `None` when it may. A source is refused when it is one of the
/// [`PROTECTED`] trees, lies below one, or contains one (`/var`, `/run`, `/var/lib`).
/// System services may bind files below `/run/berth` (not the directory itself, not the
/// ESP): sysd renders their configuration there.
fn protected_source(source: &str, origin: Origin) -> Option<String> {
    const HANDS_OVER: &str = "mounting it into a container would hand it the node";
    for (root, what) in PROTECTED {
        let below = under(source, &[root]);
        if origin == Origin::System && below && root == "/run/berth" {
            continue;
        }
        if source == root || below {
            return Some(format!("{source:?} {what}: {HANDS_OVER}"));
        }
    }
    PROTECTED.iter().find_map(|(root, what)| {
        under(root, &[source])
            .then(|| format!("{source:?} contains {root}, which {what}: {HANDS_OVER}"))
    })
}

/// Validates one container definition found at `p`.
pub(crate) fn container(s: &ContainerSpec, p: &KeyPath, origin: Origin, cx: &mut Ctx<'_>) {
    if !valid_name(&s.name) {
        cx.err(
            p.key("name"),
            format!(
                "invalid name {:?} (1-63 lowercase letters, digits and '-', not starting with '-')",
                s.name
            ),
        );
    }
    if s.command.first().is_some_and(|c| c.is_empty()) {
        cx.err(p.key("command").index(0), "the program must not be empty");
    }
    for k in s.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            cx.err(p.key("env").key(k), format!("invalid variable name {k:?}"));
        }
    }
    if let Some(w) = &s.workdir {
        if let Err(why) = normal_abs(w) {
            cx.err(p.key("workdir"), format!("{w:?} {why}"));
        }
    }
    if let Some(u) = &s.user {
        let ok = match u.split_once(':') {
            Some((a, b)) => a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok(),
            None => u.parse::<u32>().is_ok(),
        };
        if !ok {
            cx.err(
                p.key("user"),
                format!("invalid user {u:?} (expected numeric \"uid\" or \"uid:gid\")"),
            );
        }
    }
    let mut targets = BTreeSet::new();
    for (i, m) in s.mounts.iter().enumerate() {
        let mp = p.key("mounts").index(i);
        if let Err(why) = normal_abs(&m.source) {
            cx.err(mp.key("source"), format!("{:?} {why}", m.source));
        } else if let Some(why) = protected_source(&m.source, origin) {
            cx.err(mp.key("source"), why);
        } else if !under(&m.source, &["/var", "/etc", "/run"]) {
            cx.err(
                mp.key("source"),
                format!("{:?} is outside /var, /etc and /run", m.source),
            );
        }
        if let Err(why) = normal_abs(&m.target) {
            cx.err(mp.key("target"), format!("{:?} {why}", m.target));
        } else if !targets.insert(m.target.as_str()) {
            cx.err(mp.key("target"), format!("{:?} is mounted twice", m.target));
        }
    }
    let mut vols = BTreeSet::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let vp = p.key("volumes").index(i);
        if !valid_name(&v.name) {
            cx.err(vp.key("name"), format!("invalid volume name {:?}", v.name));
        }
        if !vols.insert(v.name.as_str()) {
            cx.err(vp.key("name"), format!("duplicate volume {:?}", v.name));
        }
        if let Err(why) = normal_abs(&v.target) {
            cx.err(vp.key("target"), format!("{:?} {why}", v.target));
        } else if !targets.insert(v.target.as_str()) {
            cx.err(vp.key("target"), format!("{:?} is mounted twice", v.target));
        }
    }
    ports(s, p, cx);
    for (i, c) in s.capabilities.iter().enumerate() {
        if !valid_capability(c) {
            cx.err(
                p.key("capabilities").index(i),
                format!("unknown capability {c:?}"),
            );
        }
    }
    let lp = p.key("limits");
    if let Some(m) = s.limits.memory {
        if m.bytes() < 4 << 20 {
            cx.err(lp.key("memory"), format!("{m} is too small (at least 4M)"));
        }
    }
    if s.limits.pids == Some(0) {
        cx.err(lp.key("pids"), "must be at least 1");
    }
    let r = &s.restart;
    if r.backoff > r.max_backoff {
        cx.err(
            p.key("restart").key("backoff"),
            "longer than restart.max_backoff",
        );
    }
    if let Some(h) = &s.health {
        let hp = p.key("health");
        let n = usize::from(h.exec.is_some())
            + usize::from(h.tcp.is_some())
            + usize::from(h.http.is_some());
        if n != 1 {
            cx.err(hp.clone(), "give exactly one of exec, tcp, http");
        }
        if h.exec
            .as_ref()
            .is_some_and(|e| e.first().is_none_or(|c| c.is_empty()))
        {
            cx.err(hp.key("exec"), "the command must not be empty");
        }
        if let Some(t) = &h.tcp {
            let ok = t.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                cx.err(
                    hp.key("tcp"),
                    format!("invalid address {t:?} (expected host:port, e.g. \"127.0.0.1:8080\")"),
                );
            }
        }
        if let Some(u) = &h.http {
            let ok = u.strip_prefix("http://").is_some_and(|rest| {
                !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
            });
            if !ok {
                cx.err(
                    hp.key("http"),
                    format!("invalid URL {u:?} (expected http://host:port/path)"),
                );
            }
        }
        if h.timeout.get().is_zero() || h.interval.get().is_zero() {
            cx.err(hp.clone(), "interval and timeout must be positive");
        }
    }
    for key in ["after", "requires"] {
        let list = if key == "after" {
            &s.after
        } else {
            &s.requires
        };
        for (i, d) in list.iter().enumerate() {
            if !valid_name(d) {
                cx.err(p.key(key).index(i), format!("invalid name {d:?}"));
            } else if *d == s.name {
                cx.err(p.key(key).index(i), "a container cannot depend on itself");
            }
        }
    }
}

/// `ports`: only on `bridge` containers, IPv4 host addresses, no host port twice.
fn ports(s: &ContainerSpec, p: &KeyPath, cx: &mut Ctx<'_>) {
    let pp = p.key("ports");
    if !s.ports.is_empty() && s.network != NetworkMode::Bridge {
        cx.err(
            pp.clone(),
            format!(
                "ports are published only from network = \"bridge\" containers (this one is {:?}; a host-network container listens on the host's ports itself)",
                s.network.as_str()
            ),
        );
    }
    for (i, m) in s.ports.iter().enumerate() {
        if m.host_ip.is_some_and(|ip| ip.is_ipv6()) {
            cx.err(
                pp.index(i),
                format!("{m}: IPv6 host addresses are not supported yet (the bridge is IPv4); leave the address out or give an IPv4 one"),
            );
        }
        if let Some(j) = s.ports[..i].iter().position(|o| o.conflicts_with(m)) {
            cx.err(
                pp.index(i),
                format!("host port {m} conflicts with ports[{j}] ({})", s.ports[j]),
            );
        }
    }
}

/// A problem in a set of container definitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// Two definitions share a name.
    #[error("duplicate container name {0:?}")]
    Duplicate(String),
    /// `requires` names a container that is not defined.
    #[error("{name:?} requires {missing:?}, which is not defined")]
    Missing {
        /// The dependent.
        name: String,
        /// The missing one.
        missing: String,
    },
    /// A dependency cycle, e.g. `["a", "b", "a"]`.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// Finds a cycle among `specs` following `after` and `requires` (names not in the set are
/// ignored). Returns the cycle as names, first repeated at the end.
pub fn find_cycle(specs: &[&ContainerSpec]) -> Option<Vec<String>> {
    let idx: BTreeMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let deps = |i: usize| -> Vec<usize> {
        specs[i]
            .after
            .iter()
            .chain(&specs[i].requires)
            .filter_map(|d| idx.get(d.as_str()).copied())
            .collect()
    };
    // 0 = unvisited, 1 = on the stack, 2 = done. Iterative DFS (definitions come from outside).
    let mut color = vec![0u8; specs.len()];
    for start in 0..specs.len() {
        if color[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, deps(start))];
        color[start] = 1;
        while let Some((node, rest)) = stack.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) if color[next] == 1 => {
                    let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut cyc: Vec<String> = stack[pos..]
                        .iter()
                        .map(|(n, _)| specs[*n].name.clone())
                        .collect();
                    cyc.push(specs[next].name.clone());
                    return Some(cyc);
                }
                Some(next) if color[next] == 0 => {
                    color[next] = 1;
                    let d = deps(next);
                    stack.push((next, d));
                }
                Some(_) => {}
                None => {
                    color[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    None
}

fn cycles(entries: &[(KeyPath, &ContainerSpec)], cx: &mut Ctx<'_>) {
    let specs: Vec<&ContainerSpec> = entries.iter().map(|(_, s)| *s).collect();
    if let Some(cyc) = find_cycle(&specs) {
        let first = &cyc[0];
        if let Some((p, s)) = entries.iter().find(|(_, s)| &s.name == first) {
            let key = if cyc.len() > 1 && s.requires.contains(&cyc[1]) {
                "requires"
            } else {
                "after"
            };
            cx.err(
                p.key(key),
                format!("dependency cycle: {}", cyc.join(" -> ")),
            );
        }
    }
}

/// Checks a full set of definitions (system services plus workloads) and returns the start
/// order as indices into `specs`: dependencies first, otherwise in the given order.
/// Every `requires` must be defined; `after` may name containers that are not.
pub fn start_order(specs: &[&ContainerSpec]) -> Result<Vec<usize>, DependencyError> {
    let mut idx = BTreeMap::new();
    for (i, s) in specs.iter().enumerate() {
        if idx.insert(s.name.as_str(), i).is_some() {
            return Err(DependencyError::Duplicate(s.name.clone()));
        }
    }
    for s in specs {
        if let Some(m) = s.requires.iter().find(|r| !idx.contains_key(r.as_str())) {
            return Err(DependencyError::Missing {
                name: s.name.clone(),
                missing: m.clone(),
            });
        }
    }
    if let Some(c) = find_cycle(specs) {
        return Err(DependencyError::Cycle(c));
    }
    // Kahn's algorithm, always taking the lowest ready index so the order is stable.
    let mut indeg = vec![0usize; specs.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    for (i, s) in specs.iter().enumerate() {
        let ds: BTreeSet<usize> = s
            .after
            .iter()
            .chain(&s.requires)
            .filter_map(|d| idx.get(d.as_str()).copied())
            .collect();
        indeg[i] = ds.len();
        for d in ds {
            users[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..specs.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(specs.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    Ok(order)
}
