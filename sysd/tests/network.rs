//! Privileged host test (root) of sysd's side of the workload bridge, with the real `net`
//! crate: a "host" network namespace and two "containers" (sleeping processes in namespaces
//! of their own), all made by the test and deleted afterwards, also when it fails. The
//! machine's real interfaces and nf_tables rules are never touched.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_config::PortMapping;
use berth_sysd::containers::network::{Adopted, Bridge, NetPaths, NetworkError};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` is needed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces `h` (host), `a`, `b`, with a sleeper in `a` and `b`; deleted on drop.
struct Lab {
    names: Vec<String>,
    children: Vec<Child>,
    stop: Arc<AtomicBool>,
}

impl Lab {
    fn new() -> Lab {
        // Tests run in parallel threads of one process: a lab number of their own.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = std::process::id() % 100_000;
        let l = LABS.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = ["h", "a", "b"]
            .iter()
            .map(|r| format!("berth-sd{n}-{l}{r}"))
            .collect();
        for ns in &names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Lab {
            names,
            children: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[i])
    }

    fn sleeper(&mut self, i: usize) -> u32 {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.names[i], "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        self.children.push(c);
        let want = std::fs::metadata(self.path(i)).unwrap();
        for _ in 0..100 {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if m.ino() == want.ino() {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the sleeper did not enter {}", self.names[i]);
    }

    /// A TCP server in namespace `i` on `port` answering `reply`.
    fn serve(&self, i: usize, port: u16, reply: &'static str) {
        let path = self.path(i);
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = writeln!(s, "{reply}");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
    }
}

impl Drop for Lab {
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

fn enter(path: &Path) {
    let ns = File::open(path).unwrap();
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

fn fetch(to: &str) -> Result<String, std::io::Error> {
    let addr: SocketAddr = to.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

fn ports(p: &[&str]) -> Vec<PortMapping> {
    p.iter().map(|p| p.parse().unwrap()).collect()
}

/// Rules of the NAT table per container, in the current namespace.
fn rules_of(container: &str) -> usize {
    berth_net::Nft::open()
        .unwrap()
        .rules()
        .unwrap()
        .iter()
        .filter(|r| r.container.as_deref() == Some(container))
        .count()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn bridged_containers_get_addresses_ports_and_each_others_names() {
    let mut lab = Lab::new();
    let pid_a = lab.sleeper(1);
    let pid_b = lab.sleeper(2);
    lab.serve(1, 80, "web");
    lab.serve(2, 80, "db");
    let dir = tempfile::tempdir().unwrap();
    let host_resolv = dir.path().join("host-resolv.conf");
    std::fs::write(
        &host_resolv,
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.com\n",
    )
    .unwrap();
    let paths = NetPaths {
        ipam: dir.path().join("net/ipam.json"),
        files: dir.path().join("files"),
        host_resolv,
    };
    let subnet: berth_config::Cidr = "10.123.0.0/24".parse().unwrap();
    let (names_a, names_b) = (lab.names[1].clone(), lab.names[2].clone());
    let h = lab.path(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&h);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let b = Bridge::setup("berth0", subnet, paths.clone(), &[])
                    .await
                    .unwrap();
                // web: an address, its files, its port.
                let web = ports(&["8080:80"]);
                let addr_a = b.prepare("web", &web).unwrap();
                assert_eq!(addr_a, Ipv4Addr::new(10, 123, 0, 2));
                let (hosts_a, resolv_a) = b.files_of("web");
                assert!(read(&hosts_a).contains("10.123.0.2\tweb\n"));
                assert_eq!(
                    read(&resolv_a),
                    "# written by sysd from the node's /etc/resolv.conf\nnameserver 192.0.2.53\nsearch example.com\n"
                );
                b.attach("web", pid_a, addr_a, &web).await.unwrap();
                assert_eq!(b.address("web"), Some(addr_a));
                assert!(ip(&["-n", &names_a, "-4", "addr", "show", "eth0"])
                    .contains("10.123.0.2/24"));
                assert_eq!(rules_of("web"), 1, "one DNAT rule per published port");
                assert_eq!(fetch("127.0.0.1:8080").unwrap(), "web");

                // db wants the same host port: refused, naming web; nothing allocated.
                let e = b.prepare("db", &ports(&["8080:81"])).unwrap_err();
                assert!(matches!(e, NetworkError::PortTaken(_)), "{e:?}");
                let msg = berth_config::error_chain(&e);
                assert!(msg.contains("of web"), "{msg}");
                // Another port: fine; both see each other by name.
                let dbp = ports(&["8081:80"]);
                let addr_b = b.prepare("db", &dbp).unwrap();
                assert_eq!(addr_b, Ipv4Addr::new(10, 123, 0, 3));
                b.attach("db", pid_b, addr_b, &dbp).await.unwrap();
                let (hosts_b, _) = b.files_of("db");
                assert!(read(&hosts_a).contains("10.123.0.3\tdb\n"), "{}", read(&hosts_a));
                assert!(read(&hosts_b).contains("10.123.0.2\tweb\n"));
                assert!(read(&hosts_b).contains("10.123.0.3\tdb\n"));
                assert_eq!(fetch("127.0.0.1:8081").unwrap(), "db");
                assert_eq!(fetch("127.0.0.1:8080").unwrap(), "web");

                // web stops: its rules and veth go, db forgets its name, the address stays.
                let inode = {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata(&hosts_b).unwrap().ino()
                };
                b.detach("web").await.unwrap();
                b.detach("web").await.unwrap();
                assert_eq!(rules_of("web"), 0);
                assert!(fetch("127.0.0.1:8080").is_err());
                assert!(!ip(&["-n", &names_a, "link"]).contains("eth0"));
                assert!(!read(&hosts_b).contains("web"), "{}", read(&hosts_b));
                {
                    use std::os::unix::fs::MetadataExt;
                    let now = std::fs::metadata(&hosts_b).unwrap().ino();
                    assert_eq!(now, inode, "rewritten in place (it is bind-mounted)");
                }
                assert_eq!(b.prepare("web", &web).unwrap(), addr_a);
                // Prepared, not yet attached: its port is claimed already.
                let e = b.prepare("other", &ports(&["8080:8080"])).unwrap_err();
                assert!(berth_config::error_chain(&e).contains("of web"), "{e:?}");
                b.attach("web", pid_a, addr_a, &web).await.unwrap();

                // sysd restarts with only db running: db keeps answering, web's veth and
                // rules (a container that is gone) are swept.
                drop(b);
                let b = Bridge::setup(
                    "berth0",
                    subnet,
                    paths.clone(),
                    &[Adopted {
                        name: "db".into(),
                        ports: dbp.clone(),
                    }],
                )
                .await
                .unwrap();
                assert_eq!(rules_of("db"), 1);
                assert_eq!(rules_of("web"), 0);
                assert_eq!(fetch("127.0.0.1:8081").unwrap(), "db");
                assert!(!ip(&["link"]).contains(&berth_net::bridge::veth_name("web")));
                assert_eq!(b.address("db"), Some(addr_b));
                assert!(!read(&hosts_b).contains("web"));

                // rm db: unplugged, address free, files gone.
                b.detach("db").await.unwrap();
                b.release("db").unwrap();
                assert!(!paths.files.join("db").exists());
                assert_eq!(b.prepare("db2", &[]).unwrap(), addr_b);
                assert!(!ip(&["-n", &names_b, "link"]).contains("eth0"));
                let links = ip(&["link"]);
                assert!(!links.contains("vb"), "{links}");
            });
        })
        .join()
        .unwrap();
    });
}

/// Issue 18: 100 create/delete cycles of a bridged container with a published port leave
/// no interface, address or rule behind, and the address is free again.
#[test]
fn hundred_bridge_cycles_leak_nothing() {
    let mut lab = Lab::new();
    let pid = lab.sleeper(1);
    let dir = tempfile::tempdir().unwrap();
    let host_resolv = dir.path().join("host-resolv.conf");
    std::fs::write(&host_resolv, "nameserver 192.0.2.53\n").unwrap();
    let paths = NetPaths {
        ipam: dir.path().join("net/ipam.json"),
        files: dir.path().join("files"),
        host_resolv,
    };
    let subnet: berth_config::Cidr = "10.124.0.0/24".parse().unwrap();
    let (h, host_ns, ctr_ns) = (lab.path(0), lab.names[0].clone(), lab.names[1].clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&h);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let b = Bridge::setup("berth0", subnet, paths.clone(), &[])
                    .await
                    .unwrap();
                let links0 = ip(&["-n", &host_ns, "-o", "link"]).lines().count();
                // IPv4: the bridge gains its IPv6 link-local address when its first port
                // comes up, which is the kernel's, not a leak.
                let addrs0 = ip(&["-n", &host_ns, "-4", "-o", "addr"]);
                let rules0 = berth_net::Nft::open().unwrap().rules().unwrap().len();
                let web = ports(&["8080:80"]);
                let t = std::time::Instant::now();
                for i in 0..100 {
                    let addr = b.prepare("cycle", &web).unwrap();
                    assert_eq!(addr, Ipv4Addr::new(10, 124, 0, 2), "cycle {i}");
                    b.attach("cycle", pid, addr, &web).await.unwrap();
                    assert_eq!(rules_of("cycle"), 1, "cycle {i}");
                    b.detach("cycle").await.unwrap();
                    b.release("cycle").unwrap();
                }
                println!("100 bridge cycles in {:?}", t.elapsed());
                assert_eq!(rules_of("cycle"), 0);
                assert_eq!(
                    berth_net::Nft::open().unwrap().rules().unwrap().len(),
                    rules0
                );
                assert_eq!(
                    ip(&["-n", &host_ns, "-o", "link"]).lines().count(),
                    links0,
                    "{}",
                    ip(&["-n", &host_ns, "-o", "link"])
                );
                assert_eq!(ip(&["-n", &host_ns, "-4", "-o", "addr"]), addrs0);
                assert!(!ip(&["-n", &ctr_ns, "link"]).contains("eth0"));
                assert!(!paths.files.join("cycle").exists());
                // The address is free: the next container gets the first one again.
                assert_eq!(
                    b.prepare("next", &[]).unwrap(),
                    Ipv4Addr::new(10, 124, 0, 2)
                );
            });
        })
        .join()
        .unwrap();
    });
}
