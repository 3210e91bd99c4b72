//! Workload networking (issue 18) in the booted image: two workloads of the shipped
//! `admin` image serve HTTP on the same container port 80 from the bridge `berth0`,
//! published on different node ports; the host reaches each through QEMU `hostfwd`
//! (restrict=on) and gets the right answer; one finds the other by name; egress from a
//! container reaches a server on the host (guestfwd); a port taken by another container is
//! refused naming it; `osctl rm` leaves no interface or nf_tables rule behind (listed by
//! `berth-probe net-state` in a host-network NET_ADMIN container), also after 5 run/rm
//! cycles (the host test `sysd/tests/network.rs` runs 100), and the port closed; sysd
//! killed and restarted keeps the published ports answering and the same rules.

use berth_tests::remote::{free_port, text};
use berth_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// A web server on the bridge: `index.html` says `name`, port 80 published on `node_port`.
fn web(name: &str, node_port: u16) -> String {
    format!(
        r#"
[[containers]]
name = "{name}"
image = "admin"
network = "bridge"
ports = ["{node_port}:80"]
command = ["/bin/sh", "-c", "mkdir -p /www && echo {name} > /www/index.html && exec busybox httpd -f -p 80 -h /www"]
"#
    )
}

/// `osctl run`/`rm` cycles in the VM (each takes seconds under TCG); the host test
/// `sysd/tests/network.rs` runs 100 through the same `Bridge` code.
const CYCLES: usize = 5;

/// Where `berth-probe net-state` runs: the node's network namespace, NET_ADMIN to read the
/// nf_tables table.
const NETSTATE: &str = r#"
[[containers]]
name = "netstate"
image = "admin"
network = "host"
capabilities = ["NET_ADMIN"]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
"#;

/// A one-line HTTP server on 127.0.0.1 of the host (what a container's egress reaches).
fn host_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhost-hello\n");
        }
    });
    port
}

/// GET / on 127.0.0.1:port of the host, retried until `want` answers or `timeout`.
fn get_until(port: u16, want: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if body == want {
            return body;
        }
        assert!(
            start.elapsed() < timeout,
            "127.0.0.1:{port} never answered {want:?}: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// GET / from inside `container` to `host:port` with busybox nc (its wget crashes: it is
/// static glibc); returns the body when the request succeeded.
fn get_in(vm: &Vm, container: &str, host: &str, port: u16) -> Option<String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} {port}");
    let o = vm.osctl(&["exec", "-T", container, "--", "sh", "-c", &script]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string());
    (o.status.success() && out.starts_with("HTTP/1."))
        .then_some(body)
        .flatten()
}

fn find<'a>(ps: &'a Value, name: &str) -> &'a Value {
    ps.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in ps: {ps:#}"))
}

/// The node's interfaces and the rules of table `ip berth` (`berth-probe net-state` in the
/// `netstate` container): ("LINK name" lines, "RULE chain container" lines).
fn net_state(vm: &Vm) -> (Vec<String>, Vec<String>) {
    let out = vm.osctl_ok(&[
        "exec",
        "-T",
        "netstate",
        "--",
        "/tmp/berth-probe",
        "net-state",
    ]);
    let pick = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix(kind))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    (pick("LINK "), pick("RULE "))
}

/// The host ends of berth's veth pairs (`vb...`) in the node's network namespace.
fn veths(vm: &Vm) -> Vec<String> {
    net_state(vm)
        .0
        .into_iter()
        .filter(|n| n.starts_with("vb"))
        .collect()
}

/// Rules of table `ip berth` that belong to `container`.
fn rules_of(vm: &Vm, container: &str) -> usize {
    net_state(vm)
        .1
        .iter()
        .filter(|r| r.split_whitespace().nth(1) == Some(container))
        .count()
}

#[test]
fn bridge_ports_names_and_egress() {
    let image = image();
    let dir = root().join("target/system-tests/network-files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("berth.toml");
    std::fs::write(
        &cfg,
        format!(
            "[host]\nhostname = \"net\"\n{}{}{NETSTATE}",
            web("web1", 8081),
            web("web2", 8082)
        ),
    )
    .unwrap();
    let (p1, p2) = (free_port(), free_port());
    let egress = host_server();
    let vm = Vm::boot(
        "network",
        &image,
        &BootOpts {
            config: Some(cfg),
            extra: vec![
                "--hostfwd".into(),
                format!("{p1}:8081"),
                "--hostfwd".into(),
                format!("{p2}:8082"),
                "--registry-port".into(),
                egress.to_string(),
            ],
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    vm.wait_running("web1");
    vm.wait_running("web2");
    vm.wait_running("netstate");
    vm.upload_probe("netstate");

    // The same container port, two node ports, the right answer from each.
    let t = Instant::now();
    get_until(p1, "web1", Duration::from_secs(120));
    get_until(p2, "web2", Duration::from_secs(60));
    println!(
        "both published ports answered {:?} after web1 ran",
        t.elapsed()
    );

    let ps = vm.osctl_json(&["ps"]);
    let (w1, w2) = (find(&ps, "web1"), find(&ps, "web2"));
    for w in [w1, w2] {
        assert_eq!(w["network"], "bridge", "{w:#}");
        assert!(
            w["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.88.")),
            "{w:#}"
        );
    }
    assert_ne!(w1["address"], w2["address"]);
    assert!(w1["ports"].to_string().contains("8081:80"), "{w1:#}");
    let table = vm.osctl_ok(&["ps"]);
    assert!(
        table.contains("8082:80") && table.contains(w2["address"].as_str().unwrap()),
        "{table}"
    );

    // By name, container to container; egress to a server on the host; the node itself
    // reaches a published port on its loopback (hairpin).
    let hosts = vm.osctl_ok(&["exec", "-T", "web1", "--", "cat", "/etc/hosts"]);
    let a2 = w2["address"].as_str().unwrap_or_default();
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().next() == Some(a2)
                && l.split_whitespace().skip(1).any(|n| n == "web2")),
        "no {a2} web2 in web1's /etc/hosts:\n{hosts}"
    );
    assert_eq!(get_in(&vm, "web1", "web2", 80).as_deref(), Some("web2"));
    assert_eq!(
        get_in(&vm, "web1", "10.0.2.100", 5000).as_deref(),
        Some("host-hello")
    );
    assert_eq!(
        get_in(&vm, "admin", "127.0.0.1", 8081).as_deref(),
        Some("web1")
    );

    // A node port already published by web1: refused, naming it.
    let o = vm.osctl(&[
        "run",
        "admin",
        "--name",
        "web3",
        "--network",
        "bridge",
        "-p",
        "8081:80",
        "--",
        "sleep",
        "600",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("web1"), "{}", text(&o));

    // A workload run and removed: its veth, its rules and its port are gone.
    let (links0, rules0) = net_state(&vm);
    let before = veths(&vm);
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(rules_of(&vm, "web1"), 1, "{rules0:?}");
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "web4",
        "--network",
        "bridge",
        "-p",
        "8084:80",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p /www && echo web4 > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    vm.wait_running("web4");
    assert_eq!(veths(&vm).len(), 3);
    assert_eq!(rules_of(&vm, "web4"), 1);
    let out = vm.wait_for("web4 on 8084", Duration::from_secs(60), || {
        get_in(&vm, "admin", "127.0.0.1", 8084)
    });
    assert_eq!(out, "web4");
    vm.osctl_ok(&["rm", "-f", "web4"]);
    assert_eq!(veths(&vm), before, "a veth outlived osctl rm");
    assert_eq!(
        net_state(&vm),
        (links0.clone(), rules0.clone()),
        "an interface or rule outlived osctl rm"
    );
    assert_eq!(
        get_in(&vm, "admin", "127.0.0.1", 8084),
        None,
        "8084 still answers after rm"
    );

    // Run/rm cycles of a bridged container with a published port leak nothing.
    let t = Instant::now();
    for i in 0..CYCLES {
        vm.osctl_ok(&[
            "run",
            "admin",
            "--name",
            "cycle",
            "--network",
            "bridge",
            "-p",
            "8090:80",
            "--",
            "sleep",
            "600",
        ]);
        vm.wait_running("cycle");
        if i == 0 {
            assert_eq!(rules_of(&vm, "cycle"), 1);
        }
        vm.osctl_ok(&["rm", "-f", "cycle"]);
    }
    println!("{CYCLES} run/rm cycles in {:?}", t.elapsed());
    assert_eq!(
        net_state(&vm),
        (links0.clone(), rules0.clone()),
        "{CYCLES} run/rm cycles leaked an interface or rule"
    );

    // sysd killed: PID 1 restarts it, it re-adopts the containers, the ports keep working.
    let o = vm.osctl(&["debug", "kill-sysd"]);
    println!("kill-sysd: {}", text(&o));
    std::thread::sleep(Duration::from_secs(3));
    vm.wait_for("sysd back", Duration::from_secs(120), || {
        vm.osctl(&["status"]).status.success().then_some(())
    });
    get_until(p1, "web1", Duration::from_secs(60));
    get_until(p2, "web2", Duration::from_secs(60));
    let ps = vm.osctl_json(&["ps"]);
    assert_eq!(find(&ps, "web1")["address"], w1["address"], "{ps:#}");
    assert_eq!(
        net_state(&vm),
        (links0, rules0),
        "interfaces or rules changed across a sysd restart"
    );
}
