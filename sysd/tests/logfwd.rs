//! Log forwarding against Debian's rsyslog on 127.0.0.1 (imtcp, plain and GnuTLS): lines
//! arrive with the right APP-NAME and stream; with rsyslog stopped for 5 s (the VM test
//! `tests/tests/logfwd.rs` keeps it away for the issue's 30 s), 1,000
//! numbered lines wait in the spool and all arrive in order, none twice, once it is back;
//! a forwarder that stops with lines spooled (sysd restarting, a reboot) sends them from
//! the spool when it starts again.
//!
//! Needs `rsyslogd` and rsyslog-gnutls (scripts/deps.sh).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_config::Config;
use berth_remote::Ca;
use berth_sysd::logfwd::format::Stream;
use berth_sysd::logfwd::Forwarder;
use tokio::sync::watch;

struct Rsyslog {
    dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    tcp: u16,
    tls: u16,
    udp: u16,
}

impl Rsyslog {
    fn new(dir: &Path, ca: &Ca) -> Rsyslog {
        let server = ca
            .issue_server(
                &["localhost".into()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(3600),
                None,
            )
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &server.key_pem).unwrap();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let (tcp, tls) = (free_port(), free_port());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{d}/work"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/cert.pem"
       defaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" maxSessions="20")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="r")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="r"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="t" type="string" string="%app-name%|%structured-data%|%msg%\n")
ruleset(name="r") {{
  action(type="omfile" file="{d}/out.log" template="t")
}}
"#
        );
        let path = dir.join("rsyslog.conf");
        std::fs::write(&path, conf).unwrap();
        Rsyslog {
            dir: dir.into(),
            conf: path,
            child: None,
            tcp,
            tls,
            udp,
        }
    }

    fn start(&mut self) {
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .spawn()
            .expect("rsyslogd (scripts/deps.sh installs it)");
        self.child = Some(child);
        // Listening on both ports.
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
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// The lines received so far: `APP|SD|MSG`.
    fn lines(&self) -> Vec<String> {
        // Lossy: the test sends a line that is not UTF-8, and rsyslog writes it as it is.
        String::from_utf8_lossy(&std::fs::read(self.dir.join("out.log")).unwrap_or_default())
            .lines()
            .map(String::from)
            .collect()
    }

    /// Waits until `pred` holds for the lines received.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let t = Instant::now();
        loop {
            let l = self.lines();
            if pred(&l) {
                return l;
            }
            if t.elapsed() > Duration::from_secs(secs) {
                let tail: Vec<_> = l.iter().rev().take(5).collect();
                panic!(
                    "{what}: not within {secs} s ({} lines, last {tail:?})",
                    l.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(forward: &str, ca: Option<&Ca>) -> Config {
    let mut text = format!("[logging]\nforward = \"{forward}\"\n");
    if let Some(ca) = ca {
        text.push_str(&format!("ca = \"\"\"\n{}\"\"\"\n", ca.cert_pem()));
    }
    berth_config::parse(&text).unwrap()
}

/// Writes `lines` as container `app`'s stdout (off the async threads, as the pumps do).
async fn write(fwd: &Forwarder, app: &str, lines: Vec<String>) {
    let (f, app) = (fwd.clone(), app.to_string());
    tokio::task::spawn_blocking(move || {
        for l in lines {
            f.line(&app, Stream::Stdout, l.as_bytes());
        }
    })
    .await
    .unwrap();
}

fn msgs_of<'a>(lines: &'a [String], app: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| {
            let mut p = l.splitn(3, '|');
            (p.next() == Some(app)).then(|| p.nth(1).unwrap_or_default())
        })
        .collect()
}

fn seq_of(line: &str) -> u64 {
    let at = line.find("sequenceId=\"").unwrap() + 12;
    line[at..].split('"').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_reach_rsyslog_over_tcp_and_tls_and_survive_an_outage() {
    if Command::new("rsyslogd").arg("-v").output().is_err() {
        panic!("rsyslogd is not installed: run scripts/deps.sh");
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("logfwd test CA", Duration::from_secs(3600)).unwrap();
    let mut rs = Rsyslog::new(tmp.path(), &ca);
    rs.start();
    let spool = tmp.path().join("spool");
    let tcp = format!("tcp://127.0.0.1:{}", rs.tcp);

    // Over TCP, with the container's name and stream.
    let (cfg_tx, cfg_rx) = watch::channel(config(&tcp, None));
    let fwd = Forwarder::new();
    fwd.start(cfg_rx, spool.clone());
    write(&fwd, "web-1", vec!["hello over tcp".into()]).await;
    fwd.line("web-1", Stream::Stderr, b"an error \xff line");
    let l = rs.wait_for("first lines over TCP", 30, |l| l.len() >= 2);
    assert!(
        l[0].starts_with("web-1|[berth@32473 stream=\"stdout\"][meta sequenceId=\"")
            && l[0].ends_with("|hello over tcp"),
        "{}",
        l[0]
    );
    assert!(l[1].contains("stream=\"stderr\""), "{}", l[1]);
    assert!(
        l[1].ends_with("|an error \u{fffd} line"),
        "byte for byte: {}",
        l[1]
    );

    // rsyslog away while 1,000 numbered lines are written (5 s: the forwarder retries with
    // back-off from 1 s, so it has failed several connections by then).
    rs.stop();
    let before = rs.lines().len();
    let t = Instant::now();
    write(
        &fwd,
        "counter",
        (1..=1000).map(|i| format!("line {i:04}")).collect(),
    )
    .await;
    let wrote = t.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        rs.lines().len(),
        before,
        "nothing can arrive while rsyslog is down"
    );
    rs.start();
    let l = rs.wait_for("1,000 lines after the outage", 60, |l| {
        msgs_of(l, "counter").len() >= 1000
    });
    let got = msgs_of(&l, "counter");
    let want: Vec<String> = (1..=1000).map(|i| format!("line {i:04}")).collect();
    assert_eq!(got, want, "all 1,000, in order, none twice");
    let seqs: Vec<u64> = l
        .iter()
        .filter(|x| x.starts_with("counter|"))
        .map(|x| seq_of(x))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive sequence numbers"
    );
    println!(
        "figure: 1000 lines spooled in {:?} ({:.0} lines/s written)",
        wrote,
        1000.0 / wrote.as_secs_f64()
    );

    // Throughput with rsyslog up: lines written vs forwarded.
    let n = 20_000;
    let t = Instant::now();
    write(
        &fwd,
        "bulk",
        (0..n).map(|i| format!("bulk line {i}")).collect(),
    )
    .await;
    let written = t.elapsed();
    rs.wait_for("bulk lines", 120, |l| msgs_of(l, "bulk").len() >= n);
    let forwarded = t.elapsed();
    println!(
        "figure: {n} lines written in {written:?} ({:.0}/s), all forwarded in {forwarded:?} ({:.0}/s)",
        n as f64 / written.as_secs_f64(),
        n as f64 / forwarded.as_secs_f64()
    );

    // A forwarder that stops with lines spooled sends them when it starts again.
    rs.stop();
    write(
        &fwd,
        "restart",
        (1..=200).map(|i| format!("r {i:03}")).collect(),
    )
    .await;
    fwd.sync();
    drop(cfg_tx); // the sender ends
    drop(fwd);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cfg_tx, cfg_rx) = watch::channel(config(&tcp, None));
    let fwd = Forwarder::new();
    fwd.start(cfg_rx, spool.clone());
    rs.start();
    let l = rs.wait_for("spooled lines after the restart", 60, |l| {
        msgs_of(l, "restart").len() >= 200
    });
    let want: Vec<String> = (1..=200).map(|i| format!("r {i:03}")).collect();
    assert_eq!(msgs_of(&l, "restart"), want);
    assert_eq!(msgs_of(&l, "counter").len(), 1000, "nothing sent twice");

    // TLS: a wrong CA gets nothing through (the lines wait), the right one does.
    let other = Ca::generate("another CA", Duration::from_secs(3600)).unwrap();
    let tls = format!("tcp+tls://127.0.0.1:{}", rs.tls);
    cfg_tx.send(config(&tls, Some(&other))).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    write(&fwd, "secure", vec!["over tls".into()]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        msgs_of(&rs.lines(), "secure").is_empty(),
        "an unknown CA must be refused"
    );
    cfg_tx.send(config(&tls, Some(&ca))).unwrap();
    let l = rs.wait_for("a line over TLS", 60, |l| !msgs_of(l, "secure").is_empty());
    assert_eq!(msgs_of(&l, "secure"), ["over tls"]);
    let (spooled, sent, _) = fwd.counters();
    assert_eq!(spooled, 1, "{spooled}");
    assert!(sent >= 1, "{sent}");

    // UDP: one message per datagram, without the octet count.
    cfg_tx
        .send(config(&format!("udp://127.0.0.1:{}", rs.udp), None))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    write(&fwd, "datagram", vec!["over udp".into(), "second".into()]).await;
    let l = rs.wait_for("lines over UDP", 60, |l| msgs_of(l, "datagram").len() >= 2);
    assert_eq!(msgs_of(&l, "datagram"), ["over udp", "second"]);
    drop(cfg_tx);
}
