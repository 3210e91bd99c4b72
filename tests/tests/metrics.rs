//! Prometheus metrics (issue 22): Debian's `prometheus` on this host scrapes the VM's
//! `[metrics] listen` port through a QEMU hostfwd (user networking, restrict=on), and
//! PromQL queries through Prometheus's HTTP API (`/api/v1/query`) return a workload's
//! memory, the node's uptime and an OOM kill. Everything on 127.0.0.1.

use berth_tests::remote::free_port;
use berth_tests::{image, BootOpts, Vm, BOOT_TIMEOUT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request over a fresh connection: (status code, headers, body).
fn http(port: u16, request: &str) -> (u16, String, String) {
    // Prometheus may not listen yet: no answer (code 0), and the caller tries again.
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may close early (an oversized head): what it answered still counts.
    let _ = s.write_all(request.as_bytes());
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn get(port: u16, path: &str, accept: &str) -> (u16, String, String) {
    http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: node\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// Prometheus from Debian with a temporary config and data dir; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Prometheus {
        let port = free_port();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: berth\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/deps.sh installs it)");
        Prometheus { child, port }
    }

    /// The result vector of an instant PromQL query.
    fn query(&self, q: &str) -> Vec<Value> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, _, body) = get(self.port, &format!("/api/v1/query?query={enc}"), "*/*");
        if code != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Wait (up to `timeout`) until `q` returns a sample whose value satisfies `ok`;
    /// returns that value.
    fn wait_value(&self, q: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            let r = self.query(q);
            if let Some(v) = r
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .find(|v| ok(*v))
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "PromQL {q:?}: no fitting value after {timeout:?}; last answer {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_node_and_its_containers() {
    let image = image();
    let dir = berth_tests::root().join("target/system-tests/metrics-host");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = dir.join("berth.toml");
    std::fs::write(
        &cfg,
        "[host]\nhostname = \"scraped\"\n\n[metrics]\nlisten = \"0.0.0.0:9101\"\n",
    )
    .unwrap();
    let vm = Vm::boot(
        "metrics",
        &image,
        &BootOpts {
            config: Some(cfg),
            extra: vec!["--hostfwd".into(), format!("{port}:9101")],
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    vm.wait_serial(
        "metrics: serving http://0.0.0.0:9101/metrics",
        Duration::from_secs(60),
    );
    vm.wait_running("admin");
    let st = vm.status();
    eprintln!(
        "FIGURE RSS with metrics on, before any scrape: init {} KiB + sysd {} KiB",
        st["init_rss_kib"], st["sysd_rss_kib"]
    );

    // A workload with a memory limit that stays, and one that is OOM-killed.
    vm.osctl_ok(&[
        "run", "admin", "--name", "idle", "--memory", "64M", "--", "sleep", "3600",
    ]);
    vm.wait_running("idle");
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "hog",
        "--memory",
        "16M",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
    ]);

    // The endpoint itself: formats by Accept, refusals, and the scrape time.
    let (code, head, body) = get(port, "/metrics", "text/plain");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("berth_node_info{"), "{body}");
    assert!(body.contains("hostname=\"scraped\""), "{body}");
    let (code, head, body) = get(
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    );
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(get(port, "/", "*/*").0, 404);
    let (code, head, _) = http(
        port,
        "POST /metrics HTTP/1.1\r\nHost: n\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(code, 405, "{head}");
    // A request head larger than the server's 8 KiB buffer is refused, not buffered.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: n\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let (code, _, body) = http(port, &big);
    assert!(code != 200 && !body.contains("berth_"), "{code} {body}");
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(port, "/metrics", "text/plain").0, 200);
    }
    eprintln!(
        "FIGURE scrape time {:.1} ms (mean of 10 GETs of /metrics through hostfwd, TCG guest)",
        t.elapsed().as_secs_f64() * 100.0
    );

    // Prometheus scrapes it; PromQL answers from what it stored.
    let prom = Prometheus::start(&dir, port);
    let up = prom.wait_value("up{job=\"berth\"}", Duration::from_secs(60), |v| v == 1.0);
    assert_eq!(up, 1.0);
    let mem = prom.wait_value(
        "berth_container_memory_bytes{container=\"idle\"}",
        Duration::from_secs(30),
        |v| v > 0.0,
    );
    assert!(mem < (64 << 20) as f64, "idle uses {mem} bytes");
    let limit = prom.wait_value(
        "berth_container_memory_limit_bytes{container=\"idle\"}",
        Duration::from_secs(10),
        |v| v > 0.0,
    );
    assert_eq!(limit, (64 << 20) as f64);
    let uptime = prom.wait_value("berth_node_uptime_seconds", Duration::from_secs(10), |v| {
        v > 0.0
    });
    let status = vm.status();
    let osctl_uptime = status["uptime_seconds"].as_f64().unwrap();
    assert!(
        uptime > 1.0 && uptime <= osctl_uptime + 1.0,
        "Prometheus {uptime} s, osctl status {osctl_uptime} s"
    );
    let kills = prom.wait_value(
        "berth_container_oom_kills_total{container=\"hog\"}",
        Duration::from_secs(90),
        |v| v >= 1.0,
    );
    eprintln!("hog: {kills} OOM kill(s) in Prometheus");
    // The kill is counted as it happens; sysd sees the container end a moment later.
    let t = Instant::now();
    loop {
        let (code, _, body) = get(port, "/metrics", "text/plain");
        assert_eq!(code, 200);
        if body.contains("berth_container_up{container=\"hog\"} 0") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "hog still up a minute after its OOM kill:\n{body}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // A node figure with a label: the CPU time of the node by mode.
    prom.wait_value(
        "sum(rate(berth_node_cpu_seconds_total[10s]))",
        Duration::from_secs(30),
        |v| v > 0.0,
    );

    // One source: osctl stats reads the same cgroup figures.
    let stats = vm.osctl_json(&["stats"]);
    let idle = stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "idle"))
        .cloned()
        .unwrap_or_else(|| panic!("idle not in osctl stats: {stats:#}"));
    assert_eq!(idle["memory_max"], 64 << 20, "{idle:#}");
    let osctl_mem = idle["memory_bytes"].as_f64().unwrap();
    assert!(
        (osctl_mem - mem).abs() <= mem * 0.25,
        "osctl stats {osctl_mem} vs Prometheus {mem}"
    );

    // Figures for the note: memory of init and sysd with metrics on and scraped.
    let st = vm.status();
    eprintln!(
        "FIGURE RSS with metrics on, scraped every 1 s: init {} KiB + sysd {} KiB",
        st["init_rss_kib"], st["sysd_rss_kib"]
    );
    drop(prom);
}
