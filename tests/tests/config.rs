//! Whole-system tests of the first-boot config: fw_cfg datasource, persistence, bad input.

use berth_tests::*;
use std::time::Duration;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = root().join("target/system-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config via fw_cfg sets the hostname (and sysctls and files); it is persisted, and a
/// later boot without any datasource uses the persisted one.
#[test]
fn fw_cfg_config_is_applied_and_persisted() {
    let image = image();
    let cfg = write_config(
        "node7.toml",
        "[host]\nhostname = \"node-7\"\nntp_servers = [\"10.0.2.2\"]\n\n[sysctl]\n\"vm.swappiness\" = 13\n\n[[files]]\npath = \"/etc/motd\"\ncontent = \"welcome\\n\"\n\n[[containers]]\nname = \"greeter\"\nimage = \"admin\"\ncommand = [\"/bin/sh\", \"-c\", \"echo greeter up; cat /proc/sys/vm/swappiness; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n",
    );
    let vm = Vm::boot(
        "config-fwcfg",
        &image,
        &BootOpts {
            config: Some(cfg.clone()),
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(
        log.contains("config: fw_cfg opt/org.berth/config (hostname node-7)"),
        "{log}"
    );
    let st = vm.status();
    assert_eq!(st["hostname"], "node-7", "{st:#}");
    assert_eq!(st["config_source"], "fw_cfg opt/org.berth/config");
    // The config's workload runs and sees the config's sysctl.
    vm.wait_for(
        "the greeter workload logs",
        Duration::from_secs(120),
        || {
            let log = vm.logs("greeter");
            (log.contains("greeter up") && log.contains("13")).then_some(())
        },
    );
    assert_eq!(st["config_error"], "");
    assert!(
        !st["warnings"].to_string().contains("config:"),
        "config applied with problems: {st:#}"
    );
    // ntpd uses the config's NTP server.
    let peers = || vm.osctl_ok(&["exec", "ntpd", "--", "/usr/sbin/ntpctl", "-s", "peers"]);
    let p = vm.wait_for(
        "ntpd peers from the config",
        Duration::from_secs(60),
        || {
            let p = peers();
            p.contains("10.0.2.2").then_some(p)
        },
    );
    eprintln!("ntpctl -s peers:\n{p}");

    // Power off, boot the same disk without the datasource: the persisted config rules.
    vm.qmp("system_powerdown");
    assert!(vm.wait_exit(Duration::from_secs(120)));
    vm.start(&BootOpts::default());
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let st = vm.status();
    assert_eq!(st["config_source"], "persisted", "{st:#}");
    assert_eq!(st["hostname"], "node-7");
    let _ = std::fs::remove_file(cfg);

    // `osctl config validate` uses the node's rules, offline.
    let bad = write_config("bad-host.toml", "[host]\nhostname = \"Not_Valid\"\n");
    let out = vm.osctl(&["config", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host.hostname"));
    // ...and `apply` refuses it with nothing changed.
    assert!(!vm
        .osctl(&["config", "apply", bad.to_str().unwrap()])
        .status
        .success());

    // A dependency cycle is named, and nothing of it is started.
    let cycle = write_config(
        "cycle.toml",
        "[[containers]]\nname = \"cyc-a\"\nimage = \"admin\"\nafter = [\"cyc-b\"]\n\n\
         [[containers]]\nname = \"cyc-b\"\nimage = \"admin\"\nrequires = [\"cyc-a\"]\n",
    );
    let out = vm.osctl(&["config", "apply", cycle.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dependency cycle: cyc-a -> cyc-b -> cyc-a"),
        "{err}"
    );
    let ps = vm.osctl_ok(&["ps"]);
    assert!(!ps.contains("cyc-"), "{ps}");
    assert_eq!(vm.status()["hostname"], "node-7");

    // A good change is applied live and kept once the node is healthy.
    let next = write_config(
        "node8.toml",
        "[host]\nhostname = \"node-8\"\n\n[sysctl]\n\"vm.swappiness\" = 21\n",
    );
    vm.osctl_ok(&["config", "apply", next.to_str().unwrap()]);
    assert_eq!(vm.status()["hostname"], "node-8");
    // No NTP servers named any more: ntpd was restarted with the default (the NTP pool,
    // which does not resolve here).
    let p = peers();
    assert!(!p.contains("10.0.2.2") && p.contains("pool.ntp.org"), "{p}");
    eprintln!("ntpctl -s peers after the change:\n{p}");
    vm.wait_for("the new config kept", Duration::from_secs(120), || {
        (vm.status()["config_change"] == "applied").then_some(())
    });
    let shown = vm.osctl_ok(&["config", "show"]);
    assert!(shown.contains("node-8"), "{shown}");

    // A change that leaves a required service unhealthy is reverted after the deadline,
    // and the node reboots into the last known good config.
    let broken = write_config(
        "broken.toml",
        "[host]\nhostname = \"node-9\"\n\n[[containers]]\nname = \"needed\"\nimage = \"admin\"\ncommand = [\"false\"]\nrequired_for_boot = true\nrestart = { policy = \"never\" }\n",
    );
    vm.osctl_ok(&[
        "config",
        "apply",
        "--deadline",
        "15",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(vm.status()["hostname"], "node-9");
    // (This QEMU run's console: the boot above, then the one after the revert.)
    vm.wait_serial_n("berth: ready", 2, BOOT_TIMEOUT);
    let st = vm.status();
    assert_eq!(st["hostname"], "node-8", "{st:#}");
    let change = st["config_change"].as_str().unwrap_or("").to_string();
    assert!(
        change.starts_with("reverted:") && change.contains("needed"),
        "{st:#}"
    );

    // A change that cuts the node off the network (a static address and gateway that do
    // not exist here; the DHCP address goes) is reverted by itself as well.
    let cut = write_config(
        "cut.toml",
        "[host]\nhostname = \"node-cut\"\n\n[[network.interfaces]]\nname = \"eth0\"\nmode = \"static\"\naddresses = [\"192.168.77.5/24\"]\nroutes = [{ to = \"default\", via = \"192.168.77.1\" }]\n",
    );
    vm.osctl_ok(&["config", "apply", "--deadline", "20", cut.to_str().unwrap()]);
    let st = vm.status();
    let net = st["network"].to_string();
    assert!(
        net.contains("192.168.77.5/24") && !net.contains("10.0.2.15"),
        "the cut config is not in force: {st:#}"
    );
    vm.wait_serial_n("berth: ready", 3, BOOT_TIMEOUT);
    let st = vm.wait_for(
        "DHCP again after the revert",
        Duration::from_secs(60),
        || {
            let st = vm.status();
            st["network"]
                .to_string()
                .contains("10.0.2.15")
                .then_some(st)
        },
    );
    assert_eq!(st["hostname"], "node-8", "{st:#}");
    let change = st["config_change"].as_str().unwrap_or("").to_string();
    assert!(
        change.starts_with("reverted:") && change.contains("192.168.77.1"),
        "{st:#}"
    );
}

/// An invalid config at first boot: the error names the key path and line on the console
/// and in `osctl status`, and the node boots with the safe defaults.
#[test]
fn invalid_config_boots_with_defaults() {
    let image = image();
    let cfg = write_config("bad.toml", "[host]\nhostname = \"not a valid name!\"\n");
    let vm = Vm::boot(
        "config-bad",
        &image,
        &BootOpts {
            config: Some(cfg.clone()),
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(log.contains("berth: CONFIG ERROR"), "no console error");
    let st = vm.status();
    let err = st["config_error"].as_str().unwrap_or_default();
    assert!(err.contains("line 2: host.hostname"), "{st:#}");
    assert_eq!(st["config_source"], "defaults");
    assert_eq!(st["hostname"], "berth");
    let _ = std::fs::remove_file(cfg);
}

/// The same kind of config from a CIDATA volume (cloud-init NoCloud style), with a static
/// address instead of DHCP: hostname, address, default route, DNS, a file and a workload,
/// persisted for the next boot.
#[test]
fn cidata_config_with_a_static_address() {
    let image = image();
    let cfg = write_config(
        "cidata.toml",
        r#"[host]
hostname = "node-ci"

[[network.interfaces]]
name = "eth0"
mode = "static"
addresses = ["10.0.2.50/24"]
routes = [{ to = "default", via = "10.0.2.2" }]

[network.dns]
servers = ["10.0.2.3"]
search = ["berth.test"]

[[files]]
path = "/var/lib/app/settings"
content = "from cidata\n"

[[containers]]
name = "reader"
image = "admin"
mounts = [{ source = "/var/lib/app", target = "/app", read_only = true }]
command = ["/bin/sh", "-c", "cat /app/settings; cat /etc/resolv.conf; trap 'exit 0' TERM; while :; do sleep 1; done"]
"#,
    );
    let cidata = cfg.to_str().unwrap().to_string();
    let vm = Vm::boot(
        "config-cidata",
        &image,
        &BootOpts {
            extra: vec!["--cidata".into(), cidata],
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(log.contains("config: CIDATA volume"), "{log}");
    let st = vm.wait_for("the static address", Duration::from_secs(60), || {
        let st = vm.status();
        st["network"]
            .to_string()
            .contains("10.0.2.50/24")
            .then_some(st)
    });
    assert_eq!(st["hostname"], "node-ci", "{st:#}");
    assert!(
        st["config_source"]
            .as_str()
            .unwrap_or("")
            .starts_with("CIDATA volume"),
        "{st:#}"
    );
    assert_eq!(st["default_route"], "via 10.0.2.2 dev eth0", "{st:#}");
    let net = st["network"].to_string();
    assert!(
        !net.contains("10.0.2.15"),
        "a DHCP address on a static interface: {net}"
    );
    let log = vm.wait_for("the reader workload logs", Duration::from_secs(120), || {
        let log = vm.logs("reader");
        log.contains("search berth.test").then_some(log)
    });
    assert!(log.contains("from cidata"), "{log}");
    assert!(log.contains("nameserver 10.0.2.3"), "{log}");

    // Second boot, no datasource attached: the persisted config, same address.
    vm.qmp("system_powerdown");
    assert!(vm.wait_exit(Duration::from_secs(120)));
    vm.start(&BootOpts::default());
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let st = vm.wait_for("the static address again", Duration::from_secs(60), || {
        let st = vm.status();
        st["network"]
            .to_string()
            .contains("10.0.2.50/24")
            .then_some(st)
    });
    assert_eq!(st["config_source"], "persisted", "{st:#}");
    assert_eq!(st["hostname"], "node-ci");
    let _ = std::fs::remove_file(cfg);
}

/// A tiny HTTP server on loopback for `berth.config=`: the first request gets a 503 (the
/// node must retry), later ones the config. Returns the port and the request count.
fn serve_config(text: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut req = [0u8; 4096];
            let n = c.read(&mut req).unwrap_or(0);
            let line = String::from_utf8_lossy(&req[..n]);
            let reply = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            } else if line.starts_with("GET /node/berth.toml ") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = c.write_all(reply.as_bytes());
        }
    });
    (port, count)
}

/// `berth.config=http://...` on the kernel command line (set on the image with
/// `berth-image cmdline --append`) and no other datasource: sysd fetches the config once
/// DHCP is up, retrying after a server error, applies it live and persists it.
#[test]
fn url_config_at_first_boot() {
    let (port, requests) = serve_config(
        r#"[host]
hostname = "node-url"

[sysctl]
"vm.swappiness" = 17

[[files]]
path = "/var/lib/app/greeting"
content = "fetched\n"

[[containers]]
name = "reader"
image = "admin"
mounts = [{ source = "/var/lib/app", target = "/app", read_only = true }]
command = ["/bin/sh", "-c", "cat /app/greeting /proc/sys/vm/swappiness; trap 'exit 0' TERM; while :; do sleep 1; done"]
"#,
    );
    let dir = root().join("target/system-tests/config-url-image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("berth.img");
    copy_image(&image(), &disk);
    let url = "http://10.0.2.100:5000/node/berth.toml";
    let out = image_tool()
        .arg("cmdline")
        .arg(&disk)
        .arg("--append")
        .arg(format!("berth.config={url}"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && shown.contains(&format!("berth.config={url}")),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm = Vm::boot(
        "config-url",
        &disk,
        &BootOpts {
            extra: vec!["--registry-port".into(), port.to_string()],
            // The command line edited on the disk: only the boot loader reads it.
            uefi: true,
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let st = vm.wait_for("the fetched config", Duration::from_secs(120), || {
        let st = vm.status();
        (st["config_source"] == url).then_some(st)
    });
    assert_eq!(st["hostname"], "node-url", "{st:#}");
    assert_eq!(st["config_error"], "", "{st:#}");
    assert!(
        requests.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "no retry after the 503"
    );
    // The config's workload runs and sees its file and sysctl.
    vm.wait_for("the reader workload logs", Duration::from_secs(120), || {
        let log = vm.logs("reader");
        (log.contains("fetched") && log.contains("17")).then_some(())
    });
    let shown = vm.osctl_ok(&["config", "show"]);
    assert!(shown.contains("node-url") && shown.contains(url), "{shown}");
}
