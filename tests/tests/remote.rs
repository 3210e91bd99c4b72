//! Remote management over mutual TLS (issue 17): the VM's API port 7443 is forwarded to
//! 127.0.0.1 on the host (QEMU user networking with restrict=on), and the host-side osctl
//! reaches it with client files made by `osctl pki`. Roles, refusals in the handshake
//! (another CA, expired, revoked, no certificate, plain TCP), live revocation by config
//! apply, and the audit log.

use berth_tests::remote::{free_port, pki, text, Pki};
use berth_tests::{image, osctl_bin, BootOpts, Vm, BOOT_TIMEOUT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// osctl on the host with a client file and a context, never the Unix socket.
fn remote(file: &Path, context: &str, args: &[&str]) -> Output {
    Command::new(osctl_bin())
        .env("BERTH_CONFIG", file)
        .env_remove("BERTH_CONNECT")
        .args(["--timeout", "60", "--context", context])
        .args(args)
        .output()
        .expect("running osctl")
}

fn ok(file: &Path, context: &str, args: &[&str]) -> String {
    let o = remote(file, context, args);
    assert!(
        o.status.success(),
        "osctl {args:?} as {context}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The machine still answers a good client (after something hostile).
fn still_serving(file: &Path) {
    let out = ok(file, "admin", &["-o", "json", "status"]);
    assert!(out.contains("\"hostname\""), "{out}");
}

#[test]
fn remote_api_over_mutual_tls() {
    let image = image();
    let dir = berth_tests::root().join("target/system-tests/remote-files");
    let ca = Pki::init(&dir);
    pki(&dir, &["init", "--out", "other", "--name", "Other CA"]);
    let port = free_port();

    let cfg = dir.join("berth.toml");
    let config = |revoked: &[&str]| {
        format!(
            "[host]\nhostname = \"remote\"\n\n{}",
            ca.api_config(revoked)
        )
    };
    std::fs::write(&cfg, config(&[])).unwrap();
    let vm = Vm::boot(
        "remote",
        &image,
        &BootOpts {
            config: Some(cfg),
            extra: vec!["--hostfwd".into(), format!("{port}:7443")],
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let console = vm.wait_serial("api: listening", Duration::from_secs(120));
    println!(
        "{}",
        console
            .lines()
            .filter(|l| l.contains("api:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let (admin, _) = ca.client("ca", "admin", "1h", "admin", port);
    let (reader, reader_serial) = ca.client("ca", "reader", "1h", "reader", port);
    let (victim, victim_serial) = ca.client("ca", "operator", "1h", "victim", port);
    let (short, _) = ca.client("ca", "admin", "1s", "short", port);
    // A client certificate from another CA in a file that trusts the node's CA: the node
    // must refuse it (not the client refuse the node).
    let (foreign, _) = ca.client("other", "admin", "1h", "foreign", port);
    let other = std::fs::read_to_string(dir.join("other/ca.crt")).unwrap();
    let f = std::fs::read_to_string(&foreign).unwrap();
    assert!(f.contains(other.trim()), "{f}");
    std::fs::write(&foreign, f.replace(other.trim(), ca.ca.trim())).unwrap();

    // The first connection may come while sysd still starts its listener.
    let start = Instant::now();
    let status = loop {
        let o = remote(&admin, "admin", &["-o", "json", "status"]);
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no TLS answer: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(status.contains("\"remote\""), "{status}");

    // admin: status, ps, exec, logs -f, all over TLS.
    vm.wait_running("admin");
    vm.wait_running("ntpd");
    let t = Instant::now();
    ok(&admin, "admin", &["status"]);
    println!(
        "TLS status round trip (osctl process included): {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    vm.osctl_ok(&["status"]);
    println!(
        "virtio-serial status round trip (osctl process included): {:?}",
        t.elapsed()
    );
    let ps = ok(&admin, "admin", &["ps"]);
    assert!(ps.contains("admin") && ps.contains("ntpd"), "{ps}");
    let uname = ok(
        &admin,
        "admin",
        &["exec", "-T", "admin", "--", "uname", "-s"],
    );
    assert_eq!(uname.trim(), "Linux");
    let mut follow = Command::new(osctl_bin())
        .env("BERTH_CONFIG", &admin)
        .env_remove("BERTH_CONNECT")
        .args(["--context", "admin", "logs", "-f", "ntpd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let _ = follow.kill();
    let followed = follow.wait_with_output().unwrap();
    assert!(
        !followed.stdout.is_empty(),
        "logs -f printed nothing over TLS: {}",
        text(&followed)
    );

    // reader: ps yes; exec, run, config apply, update apply refused with the role named.
    ok(&reader, "reader", &["ps"]);
    let cfg_file = dir.join("berth.toml");
    for args in [
        vec!["exec", "-T", "admin", "--", "true"],
        vec!["run", "admin", "--name", "nope", "--", "true"],
        vec!["config", "apply", cfg_file.to_str().unwrap()],
        vec!["update", "apply"],
    ] {
        let o = remote(&reader, "reader", &args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(1), "reader {args:?}: {all}");
        assert!(
            all.contains("reader") && (all.contains("admin") || all.contains("operator")),
            "reader {args:?} should name the role needed: {all}"
        );
    }
    // A reader sees the config with its secrets redacted.
    let shown = ok(&reader, "reader", &["config", "show"]);
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // Refused in the handshake: another CA, expired, no certificate, plain TCP.
    let o = remote(&foreign, "foreign", &["ps"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    std::thread::sleep(Duration::from_secs(2));
    let o = remote(&short, "short", &["ps"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("expired"), "{}", text(&o));
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(dir.join("ca/ca.crt"))
        .args(["--tlsv1.3", "--resolve"])
        .arg(format!("remote:{port}:127.0.0.1"))
        .arg(format!("https://remote:{port}/"))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "a TLS client without a certificate got in: {}",
        text(&o)
    );
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = plain.write_all(b"\0AUTH EXTERNAL 30\r\nBEGIN\r\n");
    let mut buf = [0u8; 256];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("OK "),
        "plain TCP got a D-Bus answer: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(plain);
    still_serving(&admin);

    // Revocation by config apply: the victim works, then its next call is refused.
    ok(&victim, "victim", &["ps"]);
    let revoked = dir.join("revoked.toml");
    std::fs::write(&revoked, config(&[&victim_serial])).unwrap();
    ok(
        &admin,
        "admin",
        &["config", "apply", revoked.to_str().unwrap()],
    );
    let o = remote(&victim, "victim", &["ps"]);
    assert_eq!(o.status.code(), Some(3), "revoked client: {}", text(&o));
    still_serving(&admin);

    // The audit log names who called what, and what was refused.
    let audit = ok(&admin, "admin", &["logs", "--system", "api"]);
    assert!(audit.contains(&reader_serial), "{audit}");
    assert!(audit.contains("Exec"), "{audit}");
    println!(
        "audit log tail:\n{}",
        audit.lines().rev().take(6).collect::<Vec<_>>().join("\n")
    );
    // The refused handshakes were logged with the peer address.
    let console = vm.serial();
    assert!(
        console.contains("127.0.0.1") || console.contains("10.0.2.2"),
        "{console}"
    );
}
