//! Privileged host tests (root) of the workload bridge: every test makes its own network
//! namespaces (a "host", containers, an outside machine) and deletes them afterwards, also
//! when it fails; the machine's real interfaces and nf_tables rules are never touched. The
//! library runs on threads that entered the test's "host" namespace.

mod common;
use common::ip;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_net::bridge::{self, veth_name};
use berth_net::nat::{self, RuleInfo};
use berth_net::{BridgeConfig, BridgeError, Ipam, NatConfig, Netlink, Netns, Nft, Published};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Network namespaces made for one test, deleted on drop.
struct Namespaces {
    names: Vec<String>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
}

impl Namespaces {
    fn new(roles: &[&str]) -> Namespaces {
        let n = format!(
            "{}{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let names: Vec<String> = roles.iter().map(|r| format!("berth-br{n}-{r}")).collect();
        for ns in &names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Namespaces {
            names,
            children: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A process in namespace `i` (to reach it by pid).
    fn sleeper(&mut self, i: usize) -> u32 {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.names[i], "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        self.children.push(c);
        // `ip netns exec` enters the namespace, then execs sleep: wait until it did.
        let want = std::fs::read_link(format!("/run/netns/{}", self.names[i])).ok();
        let ns_file = std::fs::metadata(format!("/run/netns/{}", self.names[i])).unwrap();
        for _ in 0..100 {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if m.ino() == ns_file.ino() {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the sleeper did not enter {} ({want:?})", self.names[i]);
    }

    /// A TCP server in namespace `i` on `port` that answers every connection with `reply`
    /// and the peer address it saw.
    fn serve(&self, i: usize, port: u16, reply: &'static str) {
        let path = PathBuf::from("/run/netns").join(&self.names[i]);
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = writeln!(s, "{reply} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
    }

    /// Runs `f` on a thread inside namespace `i`.
    fn run<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.names[i]);
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path);
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Runs an async `f` on a thread inside namespace `i`, with a current-thread runtime.
    fn run_async<T: Send>(&self, i: usize, f: impl AsyncFnOnce() -> T + Send) -> T {
        self.run(i, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn enter(path: &std::path::Path) {
    let ns = File::open(path).unwrap();
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

/// Connects to `to` and returns the server's answer (first line), or the error.
fn fetch(to: &str) -> Result<String, std::io::Error> {
    let addr: SocketAddr = to.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

fn subnet() -> berth_config::Cidr {
    bridge::DEFAULT_SUBNET.parse().unwrap()
}

fn nat_config() -> NatConfig {
    NatConfig {
        bridge: bridge::BRIDGE.into(),
        subnet: subnet(),
    }
}

fn published(container: &str, addr: Ipv4Addr, ports: &[&str]) -> Published {
    Published {
        container: container.into(),
        addr,
        ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn of(rules: &[RuleInfo], container: &str) -> usize {
    rules
        .iter()
        .filter(|r| r.container.as_deref() == Some(container))
        .count()
}

/// Links and addresses of the namespace this thread is in.
async fn inventory(nl: &Netlink) -> (Vec<String>, Vec<String>) {
    let links = nl.links().await.unwrap();
    let mut names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    names.sort();
    let mut addrs: Vec<String> = nl
        .addresses()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, a)| a.addr.is_ipv4())
        .map(|(i, a)| {
            let n = links.iter().find(|l| l.index == i).map(|l| l.name.as_str());
            format!("{} {a}", n.unwrap_or("?"))
        })
        .collect();
    addrs.sort();
    (names, addrs)
}

const HOST: usize = 0;
const A: usize = 1;
const B: usize = 2;
const EXT: usize = 3;

#[test]
fn bridge_veths_and_published_ports_end_to_end() {
    let mut ns = Namespaces::new(&["h", "a", "b", "x"]);
    // The host's uplink: 192.0.2.10/24, with an outside machine at 192.0.2.20.
    ip(&[
        "link",
        "add",
        "up0",
        "netns",
        ns.ns(HOST),
        "type",
        "veth",
        "peer",
        "name",
        "x0",
        "netns",
        ns.ns(EXT),
    ]);
    ip(&[
        "-n",
        ns.ns(HOST),
        "addr",
        "add",
        "192.0.2.10/24",
        "dev",
        "up0",
    ]);
    ip(&["-n", ns.ns(HOST), "link", "set", "up0", "up"]);
    ip(&[
        "-n",
        ns.ns(EXT),
        "addr",
        "add",
        "192.0.2.20/24",
        "dev",
        "x0",
    ]);
    ip(&["-n", ns.ns(EXT), "link", "set", "x0", "up"]);
    ns.serve(A, 80, "A");
    ns.serve(B, 80, "B");
    ns.serve(EXT, 7000, "EXT");
    let pid_b = ns.sleeper(B);
    let a_file = File::open(PathBuf::from("/run/netns").join(ns.ns(A))).unwrap();
    let state = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(state.path().join("net/ipam.json"), subnet()).unwrap();
    let cfg = BridgeConfig::new(subnet()).unwrap();

    let (addr_a, addr_b) = ns.run_async(HOST, async || {
        let nl = Netlink::connect().unwrap();
        // A subnet on an address the host already has is refused, naming both.
        let clash = BridgeConfig::named("berthx", "192.0.2.0/24".parse().unwrap()).unwrap();
        let e = bridge::ensure_bridge(&nl, &clash).await.unwrap_err();
        assert!(matches!(e, BridgeError::Overlap { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("192.0.2.0/24") && text.contains("192.0.2.10/24 on interface up0"),
            "{text}"
        );
        assert!(nl.link("berthx").await.is_err(), "nothing was created");

        // Idempotent: twice gives one bridge with exactly the gateway address.
        bridge::ensure_bridge(&nl, &cfg).await.unwrap();
        let br = bridge::ensure_bridge(&nl, &cfg).await.unwrap();
        assert!(br.up);
        let (_, addrs) = inventory(&nl).await;
        assert_eq!(
            addrs
                .iter()
                .filter(|a| a.starts_with("berth0 "))
                .collect::<Vec<_>>(),
            ["berth0 10.88.0.1/16"]
        );

        let addr_a = ipam.allocate("a").unwrap();
        let addr_b = ipam.allocate("b").unwrap();
        let att = bridge::attach(&nl, &cfg, "a", Netns::Fd(a_file.as_fd()), addr_a)
            .await
            .unwrap();
        assert_eq!(att.host_ifname, veth_name("a"));
        assert_eq!(att.addr.to_string(), "10.88.0.2/16");
        bridge::attach(&nl, &cfg, "b", Netns::Pid(pid_b), addr_b)
            .await
            .unwrap();
        // Attaching again replaces the pair (a restarted container).
        bridge::attach(&nl, &cfg, "b", Netns::Pid(pid_b), addr_b)
            .await
            .unwrap();
        let mut veths = bridge::veths(&nl).await.unwrap();
        veths.sort();
        let mut want = vec![veth_name("a"), veth_name("b")];
        want.sort();
        assert_eq!(veths, want);
        // A namespace that does not exist fails before anything is made.
        let e = bridge::attach(&nl, &cfg, "ghost", Netns::Pid(u32::MAX - 1), addr_a)
            .await
            .unwrap_err();
        assert!(matches!(e, BridgeError::Netns { .. }), "{e}");
        assert_eq!(bridge::veths(&nl).await.unwrap().len(), 2);

        nat::enable_forwarding(bridge::BRIDGE).unwrap();
        let mut nft = Nft::open().unwrap();
        nft.reset(
            &nat_config(),
            &[
                published("a", addr_a, &["8080:80"]),
                published("b", addr_b, &["8081:80", "127.0.0.1:9090:80"]),
            ],
        )
        .unwrap();
        (addr_a, addr_b)
    });

    // Inside a container: eth0 with its address, lo, a default route via the gateway.
    let (links, addrs) = ns.run_async(A, async || inventory(&Netlink::connect().unwrap()).await);
    assert_eq!(links, ["eth0", "lo"]);
    assert_eq!(addrs, ["eth0 10.88.0.2/16", "lo 127.0.0.1/8"]);
    let routes = ns.run_async(A, async || {
        Netlink::connect().unwrap().routes().await.unwrap()
    });
    assert!(
        routes.iter().any(|r| r.destination.prefix == 0
            && r.gateway == Some("10.88.0.1".parse().unwrap())
            && r.ifname.as_deref() == Some("eth0")),
        "{routes:?}"
    );

    // From the host itself: 127.0.0.1 (output + route_localnet + masquerade), its own
    // uplink address and the gateway address (output).
    let host = ns.run(HOST, || {
        [
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "127.0.0.1:9090",
            "192.0.2.10:8080",
            "192.0.2.10:8081",
            "10.88.0.1:8081",
        ]
        .map(|to| fetch(to).map_err(|e| format!("{to}: {e}")))
    });
    let answers: Vec<String> = host.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        answers,
        [
            "A 10.88.0.1",
            "B 10.88.0.1",
            "B 10.88.0.1",
            "A 192.0.2.10",
            "B 192.0.2.10",
            "B 10.88.0.1"
        ]
    );
    // 9090 is published on 127.0.0.1 only.
    assert!(ns.run(HOST, || fetch("192.0.2.10:9090")).is_err());

    // The attack `route_localnet` opens: a container with CAP_NET_ADMIN in its own
    // namespace routes 127.0.0.0/8 out of eth0 to the gateway, to reach a service that
    // listens only on the host's loopback. The guard chain drops it; without the table
    // the same packets get in (so this test can fail).
    ns.serve(HOST, 9999, "HOSTLO");
    ip(&[
        "-n",
        ns.ns(A),
        "route",
        "del",
        "local",
        "127.0.0.0/8",
        "dev",
        "lo",
        "table",
        "local",
    ]);
    let localnet = [
        "netns",
        "exec",
        ns.ns(A),
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
    ];
    ip(&localnet);
    ip(&[
        "-n",
        ns.ns(A),
        "route",
        "add",
        "127.0.0.0/8",
        "via",
        "10.88.0.1",
        "dev",
        "eth0",
    ]);
    assert!(
        ns.run(A, || fetch("127.0.0.2:9999")).is_err(),
        "a container reached the host's loopback"
    );
    ns.run(HOST, || Nft::open().unwrap().remove_table().unwrap());
    assert_eq!(
        ns.run(A, || fetch("127.0.0.2:9999"))
            .map_err(|e| e.to_string()),
        Ok("HOSTLO 10.88.0.2".to_string()),
        "without the guard the attack should work, or this test proves nothing"
    );
    ns.run(HOST, || {
        Nft::open()
            .unwrap()
            .reset(
                &nat_config(),
                &[
                    published("a", addr_a, &["8080:80"]),
                    published("b", addr_b, &["8081:80", "127.0.0.1:9090:80"]),
                ],
            )
            .unwrap()
    });
    ip(&["-n", ns.ns(A), "route", "del", "127.0.0.0/8"]);
    ip(&[
        "-n",
        ns.ns(A),
        "route",
        "add",
        "local",
        "127.0.0.0/8",
        "dev",
        "lo",
        "table",
        "local",
    ]);

    // From the outside machine (prerouting): the client's own address reaches the container.
    let outside = ns.run(EXT, || [fetch("192.0.2.10:8080"), fetch("192.0.2.10:8081")]);
    let outside: Vec<String> = outside.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(outside, ["A 192.0.2.20", "B 192.0.2.20"]);

    // Container A reaches B by address, and through B's published port on the gateway
    // (hairpin: masqueraded to the gateway so the answer comes back the same way);
    // egress to the outside is masqueraded to the host's address.
    let from_a = ns.run(A, move || {
        [
            fetch(&format!("{addr_b}:80")),
            fetch("10.88.0.1:8081"),
            fetch("192.0.2.10:8081"),
            fetch("192.0.2.20:7000"),
        ]
    });
    let from_a: Vec<String> = from_a.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        from_a,
        [
            "B 10.88.0.2",
            "B 10.88.0.1",
            "B 10.88.0.1",
            "EXT 192.0.2.10"
        ]
    );

    ns.run_async(HOST, async || {
        let nl = Netlink::connect().unwrap();
        let mut nft = Nft::open().unwrap();
        let rules = nft.rules().unwrap();
        assert_eq!((of(&rules, "a"), of(&rules, "b")), (1, 2), "{rules:?}");
        let base = rules.iter().filter(|r| r.container.is_none()).count();
        assert_eq!(base, 6, "{rules:?}");

        // Unpublishing a removes exactly its rule; b keeps working.
        nft.unpublish("a").unwrap();
        nft.unpublish("a").unwrap(); // idempotent
        let rules = nft.rules().unwrap();
        assert_eq!((of(&rules, "a"), of(&rules, "b")), (0, 2), "{rules:?}");
        assert!(fetch("127.0.0.1:8080").is_err());
        assert_eq!(fetch("127.0.0.1:8081").unwrap(), "B 10.88.0.1");
        // Publishing twice replaces rather than duplicates.
        nft.publish(&published("a", addr_a, &["8080:80"])).unwrap();
        nft.publish(&published("a", addr_a, &["8080:80"])).unwrap();
        assert_eq!(of(&nft.rules().unwrap(), "a"), 1);
        assert_eq!(fetch("127.0.0.1:8080").unwrap(), "A 10.88.0.1");
        // Re-adoption (sysd restart): the table re-created from the known containers.
        nft.reset(&nat_config(), &[published("b", addr_b, &["8081:80"])])
            .unwrap();
        let rules = nft.rules().unwrap();
        assert_eq!((of(&rules, "a"), of(&rules, "b")), (0, 1), "{rules:?}");
        assert_eq!(rules.len(), 6 + 1);

        // Sweep: a crash left a's veth, and sysd knows only b now.
        assert_eq!(
            bridge::sweep(&nl, &["a", "b"]).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(bridge::sweep(&nl, &["b"]).await.unwrap(), [veth_name("a")]);
        assert_eq!(bridge::veths(&nl).await.unwrap(), [veth_name("b")]);

        // Teardown: no veth, no rule, no container address left.
        assert!(bridge::detach(&nl, "b").await.unwrap());
        assert!(!bridge::detach(&nl, "b").await.unwrap());
        nft.unpublish("b").unwrap();
        ipam.release("a").unwrap();
        ipam.release("b").unwrap();
        assert!(ipam.list().unwrap().is_empty());
        let (links, _) = inventory(&nl).await;
        assert_eq!(links, ["berth0", "lo", "up0"]);
        assert!(nft.rules().unwrap().iter().all(|r| r.container.is_none()));
        nft.remove_table().unwrap();
        nft.remove_table().unwrap(); // idempotent
        assert!(nft.rules().unwrap().is_empty());
        assert!(matches!(
            nft.publish(&published("b", addr_b, &["8081:80"])),
            Err(berth_net::NatError::NoTable { .. })
        ));
    });
    // The containers' ends went with the host ends.
    let (links, _) = ns.run_async(A, async || inventory(&Netlink::connect().unwrap()).await);
    assert_eq!(links, ["lo"]);
    let (links, _) = ns.run_async(B, async || inventory(&Netlink::connect().unwrap()).await);
    assert_eq!(links, ["lo"]);
}

#[test]
fn a_hundred_create_delete_cycles_leak_nothing() {
    let ns = Namespaces::new(&["h", "c"]);
    ns.serve(1, 80, "C");
    let c_file = File::open(PathBuf::from("/run/netns").join(ns.ns(1))).unwrap();
    let state = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(state.path().join("ipam.json"), subnet()).unwrap();
    let cfg = BridgeConfig::new(subnet()).unwrap();
    let inside_before = ns.run_async(1, async || inventory(&Netlink::connect().unwrap()).await);
    ns.run_async(HOST, async || {
        let nl = Netlink::connect().unwrap();
        bridge::ensure_bridge(&nl, &cfg).await.unwrap();
        nat::enable_forwarding(bridge::BRIDGE).unwrap();
        let mut nft = Nft::open().unwrap();
        nft.reset(&nat_config(), &[]).unwrap();
        let before = (inventory(&nl).await, nft.rules().unwrap());
        for i in 0..100 {
            let name = format!("cycle{}", i % 7);
            let addr = ipam.allocate(&name).unwrap();
            bridge::attach(&nl, &cfg, &name, Netns::Fd(c_file.as_fd()), addr)
                .await
                .unwrap();
            nft.publish(&published(&name, addr, &["8080:80", "8053:53/udp"]))
                .unwrap();
            if i % 10 == 0 {
                assert_eq!(fetch("127.0.0.1:8080").unwrap(), "C 10.88.0.1", "cycle {i}");
            }
            nft.unpublish(&name).unwrap();
            assert!(bridge::detach(&nl, &name).await.unwrap());
            ipam.release(&name).unwrap();
        }
        let after = (inventory(&nl).await, nft.rules().unwrap());
        assert_eq!(before, after);
        assert!(ipam.list().unwrap().is_empty());
        nft.remove_table().unwrap();
    });
    let inside_after = ns.run_async(1, async || inventory(&Netlink::connect().unwrap()).await);
    assert_eq!(inside_before, inside_after);
}
