//! Privileged host tests (root): two network namespaces joined by a veth pair, Debian's
//! dnsmasq (package `dnsmasq-base`) as the DHCP server in one, our client in the other.
//! Every address used lives only inside these namespaces; they are deleted afterwards,
//! also when a test fails.

mod common;
use common::ip;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use berth_net::{apply, DhcpEvent, DhcpOptions, DhcpState, Netlink};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Two namespaces `srv` and `cli` joined by veth `srv_if` <-> `cli_if`.
struct Pair {
    srv: String,
    cli: String,
    srv_if: String,
    cli_if: String,
    dir: tempfile::TempDir,
    dnsmasq: Mutex<Option<Child>>,
}

impl Pair {
    fn new() -> Pair {
        let n = format!(
            "{}{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let p = Pair {
            srv: format!("berth-t{n}-s"),
            cli: format!("berth-t{n}-c"),
            srv_if: format!("bs{n}"),
            cli_if: format!("bc{n}"),
            dir: tempfile::tempdir().unwrap(),
            dnsmasq: Mutex::new(None),
        };
        ip(&["netns", "add", &p.srv]);
        ip(&["netns", "add", &p.cli]);
        ip(&[
            "link", "add", &p.srv_if, "netns", &p.srv, "type", "veth", "peer", "name", &p.cli_if,
            "netns", &p.cli,
        ]);
        ip(&["-n", &p.srv, "link", "set", "lo", "up"]);
        ip(&["-n", &p.srv, "link", "set", &p.srv_if, "up"]);
        p
    }

    fn server_address(&self, cidr: &str) {
        ip(&["-n", &self.srv, "addr", "add", cidr, "dev", &self.srv_if]);
    }

    fn start_dnsmasq(&self) {
        self.start_dnsmasq_with("10.213.7.50,10.213.7.60", &[]);
    }

    fn start_dnsmasq_with(&self, range: &str, extra: &[&str]) {
        let d = self.dir.path();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.srv,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
            ])
            .arg(format!("--interface={}", self.srv_if))
            .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
            .args(extra)
            .arg("--dhcp-option=option:router,10.213.7.1")
            .arg("--dhcp-option=option:dns-server,10.213.7.1")
            .arg("--dhcp-option=option:domain-search,test.berth")
            .arg("--dhcp-option=option:T1,3")
            .arg("--dhcp-option=option:T2,6")
            .arg(format!("--dhcp-leasefile={}", d.join("leases").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-facility={}", d.join("log").display()))
            .arg("--log-dhcp")
            .stdin(Stdio::null())
            .spawn()
            .expect("dnsmasq (package dnsmasq-base) is needed");
        *self.dnsmasq.lock().unwrap() = Some(child);
        // Wait until it listens on the DHCP port.
        for _ in 0..50 {
            if ip(&["netns", "exec", &self.srv, "cat", "/proc/net/udp"]).contains(":0043 ") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not start: {}", self.log());
    }

    fn stop_dnsmasq(&self) {
        if let Some(mut c) = self.dnsmasq.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leases")).unwrap_or_default()
    }

    /// Runs `f` on a thread inside the client namespace, with a current-thread runtime.
    fn in_client<T: Send>(&self, f: impl AsyncFnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.cli);
        std::thread::scope(|s| {
            s.spawn(move || {
                let ns = File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(f())
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<DhcpState>,
    what: &str,
    secs: u64,
    pred: impl Fn(&DhcpState) -> bool,
) -> DhcpState {
    let r = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match r {
        Ok(Ok(s)) => s,
        _ => panic!(
            "timed out after {secs} s waiting for {what}; state: {:?}",
            *rx.borrow()
        ),
    }
}

#[test]
fn dhcp_lease_dns_renewal_and_rebinding() {
    let pair = Pair::new();
    pair.server_address("10.213.7.1/24");
    pair.start_dnsmasq();
    let cli_if = pair.cli_if.clone();
    pair.in_client(async || {
        let nl = Netlink::connect().unwrap();
        let opts = DhcpOptions {
            initial_retry: Duration::from_secs(1),
            min_renew_retry: Duration::from_secs(1),
            max_renew_retry: Duration::from_secs(1),
            hostname: Some("berth-test".into()),
            ..Default::default()
        };
        // The default config: DHCP on every interface except loopback.
        let applied = apply(&nl, &berth_config::Network::default(), &opts)
            .await
            .unwrap();
        assert_eq!(applied.dhcp.len(), 1);
        assert_eq!(applied.dhcp[0].ifname, cli_if);
        let mut rx = applied.dhcp[0].state.clone();
        let s = wait_for(&mut rx, "a lease", 30, |s| s.lease.is_some()).await;
        let lease = s.lease.unwrap();
        assert_eq!(s.event, DhcpEvent::Bound);
        let IpAddr::V4(a) = lease.address.addr else {
            panic!("not IPv4")
        };
        assert!(
            (50..=60).contains(&a.octets()[3]) && a.octets()[..3] == [10, 213, 7],
            "{a}"
        );
        assert_eq!(lease.address.prefix, 24);
        assert_eq!(lease.server, Ipv4Addr::new(10, 213, 7, 1));
        assert_eq!(lease.routers, [Ipv4Addr::new(10, 213, 7, 1)]);
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 213, 7, 1)]);
        assert_eq!(lease.search, ["test.berth"]);
        assert_eq!(
            (lease.lease_secs, lease.t1_secs, lease.t2_secs),
            (120, 3, 6)
        );

        // The kernel has the address and the default route; our status shows both.
        let st = nl.status().await.unwrap();
        let itf = st
            .interfaces
            .iter()
            .find(|i| i.link.name == cli_if)
            .unwrap();
        assert!(
            itf.link.up && itf.addresses.contains(&lease.address),
            "{st:?}"
        );
        let lo = st.interfaces.iter().find(|i| i.link.name == "lo").unwrap();
        assert!(lo.link.up, "loopback is brought up");
        let def = &st.default_routes[0];
        assert_eq!(def.gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 213, 7, 1))));
        assert_eq!(def.ifname.as_deref(), Some(cli_if.as_str()));
        let shown = st.to_string();
        assert!(
            shown.contains(&format!("default route: via 10.213.7.1 dev {cli_if}")),
            "{shown}"
        );
        assert!(shown.contains(&lease.address.to_string()), "{shown}");

        // DNS from the lease, after the config's own servers.
        let (servers, search) = applied.dns();
        let mut cfg = berth_config::Config::default();
        cfg.network.dns.servers = vec!["192.0.2.53".parse().unwrap()];
        let resolv = cfg.resolv_conf(&servers, &search);
        assert!(
            resolv.ends_with("nameserver 192.0.2.53\nnameserver 10.213.7.1\nsearch test.berth\n"),
            "{resolv}"
        );

        // T1 = 3 s: renewed by unicast to the server.
        let s = wait_for(&mut rx, "a renewal", 15, |s| s.renewals >= 1).await;
        assert_eq!(s.lease.as_ref().unwrap().address, lease.address);

        // Server gone: renewing fails until T2, then the client broadcasts (rebinding); a
        // server that comes back answers that and the lease (same address) goes on.
        pair.stop_dnsmasq();
        wait_for(&mut rx, "the renewing phase", 15, |s| {
            s.event == DhcpEvent::Renewing
        })
        .await;
        wait_for(&mut rx, "the rebinding phase", 15, |s| {
            s.event == DhcpEvent::Rebinding
        })
        .await;
        pair.start_dnsmasq();
        let s = wait_for(&mut rx, "a rebind", 15, |s| s.rebinds >= 1).await;
        assert_eq!(s.event, DhcpEvent::Rebound);
        assert_eq!(s.lease.unwrap().address, lease.address);
        // The address never left the interface.
        let st = nl.status().await.unwrap();
        assert!(st
            .interfaces
            .iter()
            .any(|i| i.addresses.contains(&lease.address)));
    });
    // The server saw our hostname and recorded the lease.
    assert!(
        pair.leases().contains("berth-test"),
        "leases: {}\nlog: {}",
        pair.leases(),
        pair.log()
    );
    let log = pair.log();
    assert!(
        log.contains("DHCPDISCOVER") && log.contains("DHCPACK"),
        "{log}"
    );
}

#[test]
fn static_addresses_routes_and_mtu() {
    let pair = Pair::new();
    pair.server_address("10.213.9.1/24");
    let cli_if = pair.cli_if.clone();
    let cfg = berth_config::parse(&format!(
        "[[network.interfaces]]\nname = \"{cli_if}\"\nmode = \"static\"\n\
         addresses = [\"10.213.9.2/24\", \"fd00:213:9::2/64\"]\nmtu = 1400\n\
         routes = [{{ to = \"default\", via = \"10.213.9.1\" }}, {{ to = \"10.99.0.0/16\", via = \"10.213.9.254\", metric = 100 }}]\n"
    ))
    .unwrap();
    let st = pair.in_client(async || {
        let nl = Netlink::connect().unwrap();
        let applied = apply(&nl, &cfg.network, &DhcpOptions::default())
            .await
            .unwrap();
        assert!(applied.dhcp.is_empty());
        assert_eq!(applied.static_interfaces, std::slice::from_ref(&cli_if));
        // Applying again is idempotent.
        apply(&nl, &cfg.network, &DhcpOptions::default())
            .await
            .unwrap();
        // An address from elsewhere (an earlier config, a DHCP lease) is removed by the
        // next apply of a static config; the kernel's IPv6 link-local stays.
        let link = nl.link(&cli_if).await.unwrap();
        nl.add_address(&link, "10.213.10.7/24".parse().unwrap())
            .await
            .unwrap();
        apply(&nl, &cfg.network, &DhcpOptions::default())
            .await
            .unwrap();
        // A config naming a missing interface is refused with its key path.
        let bad = berth_config::parse("[[network.interfaces]]\nname = \"nope0\"\n").unwrap();
        let e = apply(&nl, &bad.network, &DhcpOptions::default())
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "network.interfaces[0]: no interface \"nope0\" on this machine"
        );
        nl.status().await.unwrap()
    });
    // Check with iproute2, independently of our own readout.
    let addrs = ip(&["-n", &pair.cli, "addr", "show", "dev", &pair.cli_if]);
    assert!(
        addrs.contains("inet 10.213.9.2/24") && addrs.contains("inet6 fd00:213:9::2/64"),
        "{addrs}"
    );
    assert!(
        addrs.contains("mtu 1400") && addrs.contains(",UP"),
        "{addrs}"
    );
    assert!(!addrs.contains("10.213.10.7"), "{addrs}");
    assert!(addrs.contains("inet6 fe80::"), "{addrs}");
    let routes = ip(&["-n", &pair.cli, "-4", "route", "show"]);
    assert!(
        routes.contains(&format!("default via 10.213.9.1 dev {}", pair.cli_if)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "10.99.0.0/16 via 10.213.9.254 dev {} proto static metric 100",
            pair.cli_if
        )),
        "{routes}"
    );
    // And our readout agrees.
    let itf = st
        .interfaces
        .iter()
        .find(|i| i.link.name == pair.cli_if)
        .unwrap();
    assert_eq!(itf.link.mtu, Some(1400));
    assert!(itf
        .addresses
        .iter()
        .any(|a| a.to_string() == "10.213.9.2/24"));
    assert_eq!(
        st.default_routes[0].gateway,
        Some("10.213.9.1".parse().unwrap())
    );
}

#[test]
fn nak_on_renewal_drops_the_address_and_starts_over() {
    let pair = Pair::new();
    pair.server_address("10.213.7.1/24");
    pair.start_dnsmasq();
    let cli_if = pair.cli_if.clone();
    pair.in_client(async || {
        let nl = Netlink::connect().unwrap();
        let opts = DhcpOptions {
            initial_retry: Duration::from_secs(1),
            min_renew_retry: Duration::from_secs(1),
            max_renew_retry: Duration::from_secs(1),
            ..Default::default()
        };
        let applied = apply(&nl, &berth_config::Network::default(), &opts)
            .await
            .unwrap();
        let mut rx = applied.dhcp[0].state.clone();
        let first = wait_for(&mut rx, "a lease", 30, |s| s.lease.is_some())
            .await
            .lease
            .unwrap();
        // The server is renumbered: it refuses the old address (NAK) at renewal, and the
        // client drops it and gets a new one.
        pair.stop_dnsmasq();
        pair.start_dnsmasq_with("10.213.7.100,10.213.7.110", &["--dhcp-authoritative"]);
        let s = wait_for(&mut rx, "a lease from the new range", 20, |s| {
            s.lease.as_ref().is_some_and(|l| l.address != first.address)
        })
        .await;
        let new = s.lease.unwrap();
        let IpAddr::V4(a) = new.address.addr else {
            panic!("not IPv4")
        };
        assert!((100..=110).contains(&a.octets()[3]), "{a}");
        let st = nl.status().await.unwrap();
        let itf = st
            .interfaces
            .iter()
            .find(|i| i.link.name == cli_if)
            .unwrap();
        assert!(itf.addresses.contains(&new.address), "{st:?}");
        assert!(
            !itf.addresses.contains(&first.address),
            "old address still there: {st:?}"
        );
        assert_eq!(st.default_routes.len(), 1, "{st:?}");
        assert_eq!(
            st.default_routes[0].gateway,
            Some(IpAddr::V4(Ipv4Addr::new(10, 213, 7, 1)))
        );
    });
    assert!(pair.log().contains("DHCPNAK"), "{}", pair.log());
}
