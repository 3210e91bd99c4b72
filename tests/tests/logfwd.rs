//! Log forwarding in the VM (issue 22): Debian's rsyslog on the host (own config, run in
//! the foreground, imtcp on 127.0.0.1 plain and GnuTLS) receives a workload's lines with
//! the workload's name as APP-NAME, reached from the guest through guestfwd (restrict=on)
//! as 10.0.2.100; rsyslog stopped for 30 s while a workload logs 1,000 numbered lines,
//! then started: all 1,000 arrive, in order, none twice; lines spooled when the node
//! reboots arrive after the reboot; the same over TLS after `osctl config apply`.

use berth_tests::registry::{LocalRegistry, GUEST_REGISTRY};
use berth_tests::remote::{free_port, pki};
use berth_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Guest ports of the collector (10.0.2.100:PORT, forwarded to rsyslog's host ports).
const GUEST_TCP: u16 = 601;
const GUEST_TLS: u16 = 6514;

struct Rsyslog {
    dir: PathBuf,
    child: Option<Child>,
    tcp: u16,
    tls: u16,
}

impl Rsyslog {
    /// Config in `dir`, server certificate for 10.0.2.100 signed by the CA in `dir/ca`.
    fn new(dir: &Path) -> Rsyslog {
        pki(
            dir,
            &[
                "node",
                "--ca",
                "ca",
                "--name",
                "collector",
                "--ip",
                "10.0.2.100",
                "--out",
                "collector",
            ],
        );
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let (tcp, tls) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{d}/work"
       defaultNetstreamDriverCAFile="{d}/ca/ca.crt"
       defaultNetstreamDriverCertFile="{d}/collector/node.crt"
       defaultNetstreamDriverKeyFile="{d}/collector/node.key")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="r"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="t" type="string" string="%hostname%|%app-name%|%structured-data%|%msg%\n")
ruleset(name="r") {{
  action(type="omfile" file="{d}/out.log" template="t")
}}
"#
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        Rsyslog {
            dir: dir.into(),
            child: None,
            tcp,
            tls,
        }
    }

    fn start(&mut self) {
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .spawn()
            .expect("rsyslogd (scripts/deps.sh installs it)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.tcp)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.tls)).is_err()
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "rsyslogd does not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The MSGs of APP-NAME `app`, once `n` of them arrived.
    fn wait_msgs(&self, app: &str, n: usize, timeout: Duration) -> Vec<String> {
        let t = Instant::now();
        loop {
            let m = msgs(&self.lines(), app);
            if m.len() >= n {
                return m;
            }
            assert!(
                t.elapsed() < timeout,
                "{n} lines of {app} not within {timeout:?}: got {} (last {:?})",
                m.len(),
                m.last()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `HOST|APP|SD|MSG` lines of `app`: the MSGs.
fn msgs(lines: &[String], app: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let p: Vec<&str> = l.splitn(4, '|').collect();
            (p.len() == 4 && p[1] == app).then(|| p[3].to_string())
        })
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i}")).collect()
}

/// `osctl run` of busybox printing `prefix 1` .. `prefix n`, then sleeping.
fn run_counter(vm: &Vm, name: &str, prefix: &str, n: usize) {
    let script = format!(
        "i=1; while [ $i -le {n} ]; do echo \"{prefix} $i\"; i=$((i+1)); done; sleep 100000"
    );
    let image = format!("{GUEST_REGISTRY}/test/busybox:1");
    vm.osctl_ok(&["run", &image, "--name", name, "--", "sh", "-c", &script]);
    vm.wait_for(
        &format!("{name} wrote {n} lines"),
        Duration::from_secs(120),
        || {
            vm.logs(name)
                .contains(&format!("{prefix} {n}\n"))
                .then_some(())
        },
    );
}

#[test]
fn workload_lines_reach_rsyslog_without_loss() {
    let image = image();
    let dir = root().join("target/system-tests/logfwd-host");
    let reg = LocalRegistry::start(&dir.join("registry"));
    reg.push_busybox(Path::new("/bin/busybox"), "amd64", "test/busybox:1");
    let _ = std::fs::remove_dir_all(dir.join("pki"));
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    pki(&dir.join("pki"), &["init", "--out", "ca"]);
    let ca = std::fs::read_to_string(dir.join("pki/ca/ca.crt")).unwrap();
    let mut rs = Rsyslog::new(&dir.join("pki"));
    let _ = std::fs::remove_file(rs.dir.join("out.log"));
    rs.start();

    let cfg = dir.join("berth.toml");
    // The metrics endpoint is on too, for the RSS figure with both halves of issue 22.
    let base = format!(
        "[host]\nhostname = \"fwd-node\"\n\n[registries.\"{GUEST_REGISTRY}\"]\ninsecure = true\n\n[metrics]\nlisten = \"0.0.0.0:9101\"\n\n"
    );
    std::fs::write(
        &cfg,
        format!("{base}[logging]\nforward = \"tcp://10.0.2.100:{GUEST_TCP}\"\n"),
    )
    .unwrap();
    let vm = Vm::boot(
        "logfwd",
        &image,
        &BootOpts {
            config: Some(cfg),
            extra: vec![
                "--registry-port".into(),
                reg.port.to_string(),
                "--guestfwd".into(),
                format!("{GUEST_TCP}:{}", rs.tcp),
                "--guestfwd".into(),
                format!("{GUEST_TLS}:{}", rs.tls),
            ],
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);

    // A workload's lines over TCP, its name as APP-NAME, the node's hostname.
    run_counter(&vm, "hello", "hello-tcp", 3);
    rs.wait_msgs("hello", 3, Duration::from_secs(60));
    let l = rs.lines();
    let first = l.iter().find(|x| x.contains("|hello|")).unwrap();
    assert!(
        first.starts_with("fwd-node|hello|[berth@32473 stream=\"stdout\"][meta sequenceId=\""),
        "{first}"
    );
    // sysd's own log goes too.
    assert!(!msgs(&l, "sysd").is_empty(), "no sysd lines in {l:?}");

    // rsyslog stopped for 30 s while a workload logs 1,000 numbered lines.
    rs.stop();
    let stopped = Instant::now();
    let t = Instant::now();
    run_counter(&vm, "counter", "line", 1000);
    let wrote = t.elapsed();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    rs.start();
    let t = Instant::now();
    let got = rs.wait_msgs("counter", 1000, Duration::from_secs(180));
    println!(
        "FIGURE 1000 lines written (with osctl run) in {wrote:?}, all forwarded {:?} after rsyslog was back",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    let got_after = msgs(&rs.lines(), "counter");
    assert_eq!(got, numbered("line", 1000), "all 1,000, in order");
    assert_eq!(got_after.len(), 1000, "none twice");

    // A reboot with lines in the spool: they arrive after it, once. `osctl run` workloads
    // start again after a reboot and would print their lines anew: remove them first.
    for name in ["hello", "counter"] {
        vm.osctl_ok(&["rm", "--force", name]);
    }
    rs.stop();
    run_counter(&vm, "spooled", "kept", 300);
    vm.osctl_ok(&["rm", "--force", "spooled"]);
    vm.osctl_ok(&["reboot"]);
    vm.wait_serial_n("berth: ready", 2, BOOT_TIMEOUT);
    rs.start();
    let got = rs.wait_msgs("spooled", 300, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(got, numbered("kept", 300));
    assert_eq!(msgs(&rs.lines(), "spooled").len(), 300, "none twice");
    assert_eq!(msgs(&rs.lines(), "counter").len(), 1000, "none twice");

    // TLS, switched on with osctl config apply.
    let next = dir.join("tls.toml");
    std::fs::write(
        &next,
        format!(
            "{base}[logging]\nforward = \"tcp+tls://10.0.2.100:{GUEST_TLS}\"\nca = \"\"\"\n{ca}\"\"\"\n"
        ),
    )
    .unwrap();
    vm.osctl_ok(&["config", "apply", next.to_str().unwrap()]);
    run_counter(&vm, "secure", "over-tls", 5);
    assert_eq!(
        rs.wait_msgs("secure", 5, Duration::from_secs(120)),
        numbered("over-tls", 5)
    );

    // sysd's memory with forwarding and metrics on (after 1,300 lines went through the
    // spool).
    let st = vm.status();
    let (i, d) = (
        st["init_rss_kib"].as_u64().unwrap_or(0),
        st["sysd_rss_kib"].as_u64().unwrap_or(0),
    );
    println!(
        "FIGURE RSS with forwarding and metrics on: init {:.1} MiB + sysd {:.1} MiB = {:.1} MiB (goal < 12)",
        i as f64 / 1024.0,
        d as f64 / 1024.0,
        (i + d) as f64 / 1024.0
    );
    assert!(d > 0, "{st:#}");
}
