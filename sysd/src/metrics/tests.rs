use super::*;
use crate::containers::ContainerFigures;

fn snapshot() -> Snapshot {
    let status = Status {
        os: "Berth 0.1.0".into(),
        version: "0.1.0".into(),
        build_id: "abc\"quoted\\".into(),
        arch: "x86_64".into(),
        slot: "a".into(),
        kernel: "6.1.0-28-cloud-amd64".into(),
        hostname: "node-1".into(),
        uptime_seconds: 42.5,
        boot_count: 3,
        phases: vec![("stage1".into(), 1.5), ("ready".into(), 6.25)],
        healthy: true,
        sysd_starts: 1,
        init_rss_kib: 1000,
        sysd_rss_kib: 8000,
        ..Default::default()
    };
    let node = node::NodeFigures {
        cpu: node::parse_cpu("cpu 100 0 50 1000 0 0 0 0\n", 100),
        boot_time: Some(1764669000),
        memory: node::parse_meminfo("MemTotal: 1000 kB\nMemAvailable: 500 kB\n"),
        load: Some([0.5, 0.25, 0.0]),
        uptime: Some(42.5),
        net: node::parse_net_dev("eth0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n"),
        var: Some(node::FsUsage {
            size: 1 << 30,
            free: 1 << 29,
            avail: 1 << 28,
            files: 1000,
            files_free: 900,
        }),
    };
    let stats = berth_runtime::Stats {
        memory_current: Some(5 << 20),
        memory_max: Some(64 << 20),
        oom_events: Some(1),
        oom_kill_events: Some(1),
        cpu_usage_usec: Some(1_500_000),
        cpu_user_usec: Some(1_000_000),
        cpu_system_usec: Some(500_000),
        pids_current: Some(2),
        io_read_bytes: Some(4096),
        io_write_bytes: Some(0),
        ..Default::default()
    };
    Snapshot {
        status,
        node,
        update_state: "normal",
        config: crate::node::ConfigTrial {
            state: "on_trial",
            seconds_left: 90,
            reason: String::new(),
        },
        containers: vec![
            ContainerFigures {
                name: "web".into(),
                system: false,
                state: "running",
                restarts: 2,
                health: "healthy",
                ooms: 3,
                oom_kills: 3,
                cgroup: Some(stats),
            },
            ContainerFigures {
                name: "gone".into(),
                state: "failed",
                health: "none",
                oom_kills: 1,
                ..Default::default()
            },
        ],
        collect_time: Duration::from_micros(1500),
    }
}

/// The sample lines (`name{labels} value`) of an exposition.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// `line` (`name{labels} value`) is a sample of `text`, the value compared as a number.
fn has(text: &str, line: &str) {
    let (series, want) = line.rsplit_once(' ').unwrap();
    let want: f64 = want.parse().unwrap();
    let found = samples(text).into_iter().any(|l| {
        l.rsplit_once(' ')
            .is_some_and(|(s, v)| s == series && v.parse::<f64>().ok() == Some(want))
    });
    assert!(found, "no {line:?} in:\n{text}");
}

#[test]
fn text_format_names_units_and_labels() {
    let t = encode(&snapshot(), Format::Text);
    has(
        &t,
        "berth_container_memory_bytes{container=\"web\"} 5242880",
    );
    has(
        &t,
        "berth_container_memory_limit_bytes{container=\"web\"} 67108864",
    );
    has(&t, "berth_container_oom_kills_total{container=\"web\"} 3");
    // A container that is not running keeps its counters, without cgroup figures.
    has(&t, "berth_container_oom_kills_total{container=\"gone\"} 1");
    has(&t, "berth_container_up{container=\"gone\"} 0");
    assert!(!t.contains("berth_container_memory_bytes{container=\"gone\"}"));
    has(
        &t,
        "berth_container_cpu_usage_seconds_total{container=\"web\"} 1.5",
    );
    has(
        &t,
        "berth_container_io_read_bytes_total{container=\"web\"} 4096",
    );
    has(&t, "berth_container_restarts_total{container=\"web\"} 2");
    has(
        &t,
        "berth_container_health{container=\"web\",state=\"healthy\"} 1",
    );
    has(
        &t,
        "berth_container_health{container=\"web\",state=\"unhealthy\"} 0",
    );
    has(&t, "berth_node_uptime_seconds 42.5");
    has(&t, "berth_node_cpu_seconds_total{mode=\"user\"} 1.0");
    has(&t, "berth_node_memory_total_bytes 1024000.0");
    has(
        &t,
        "berth_node_network_receive_bytes_total{device=\"eth0\"} 10.0",
    );
    has(
        &t,
        "berth_node_filesystem_avail_bytes{mountpoint=\"/var\"} 268435456.0",
    );
    has(&t, "berth_node_boot_phase_seconds{phase=\"ready\"} 6.25");
    has(&t, "berth_node_update_state{state=\"normal\"} 1");
    has(&t, "berth_node_update_state{state=\"fell_back\"} 0");
    has(&t, "berth_node_config_state{state=\"on_trial\"} 1");
    has(&t, "berth_node_config_trial_remaining_seconds 90");
    has(
        &t,
        "berth_process_resident_memory_bytes{process=\"sysd\"} 8192000",
    );
    // Label values are escaped.
    assert!(
        t.contains("build_id=\"abc\\\"quoted\\\\\""),
        "{}",
        t.lines().find(|l| l.contains("build_id")).unwrap_or("")
    );
    assert!(
        t.contains("# TYPE berth_container_oom_kills_total counter"),
        "{t}"
    );
    assert!(!t.contains("# EOF"));
}

#[test]
fn openmetrics_format_ends_with_eof_and_has_units() {
    let t = encode(&snapshot(), Format::OpenMetrics);
    assert!(t.ends_with("# EOF\n"), "{t}");
    assert!(
        t.contains("# TYPE berth_container_oom_kills counter"),
        "{t}"
    );
    assert!(
        t.contains("# UNIT berth_container_memory_bytes bytes"),
        "{t}"
    );
    has(&t, "berth_container_oom_kills_total{container=\"web\"} 3");
    assert!(
        t.contains("berth_node_info{os=\"Berth 0.1.0\",version=\"0.1.0\""),
        "{t}"
    );
}

#[test]
fn every_sample_line_parses() {
    for f in [Format::Text, Format::OpenMetrics] {
        let t = encode(&snapshot(), f);
        for l in samples(&t) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
            let bare = name.split('{').next().unwrap();
            assert!(
                bare.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{l}"
            );
            assert!(bare.starts_with("berth_"), "{l}");
        }
    }
}

/// Debian's `promtool` (package prometheus, scripts/deps.sh) checks the text exposition,
/// lint included (names, units, `_total`).
#[test]
fn promtool_accepts_the_text_exposition() {
    use std::io::Write;
    let t = encode(&snapshot(), Format::Text);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{t}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn accept_header_negotiation() {
    assert_eq!(Format::negotiate(None), Format::Text);
    assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
    assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
    // What Prometheus 2.x sends.
    let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
    assert_eq!(
        Format::negotiate(Some("Application/OpenMetrics-Text; q=0.3")),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Text
    );
    assert_eq!(Format::negotiate(Some(",,;;=\u{0}")), Format::Text);
    assert!(Format::OpenMetrics
        .content_type()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(Format::Text
        .content_type()
        .starts_with("text/plain; version=0.0.4"));
}

#[test]
fn gather_on_this_machine_without_containers() {
    let s = gather(&Sources::default());
    assert_eq!(s.update_state, "unknown");
    assert!(s.node.cpu.is_some() && s.node.memory.total.is_some());
    assert!(s.status.uptime_seconds > 0.0);
    let t = encode(&s, Format::Text);
    assert!(
        t.contains("berth_node_cpu_seconds_total{mode=\"idle\"}"),
        "{t}"
    );
    assert!(!t.contains("berth_container_"), "{t}");
}
