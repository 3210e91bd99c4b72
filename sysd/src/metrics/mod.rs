//! Prometheus metrics of the node and its containers (`[metrics]` in the config).
//!
//! - [`node`] reads the node's figures from `/proc` and `statvfs`; the containers' come
//!   from [`crate::containers::Manager::figures`], the one source of `osctl stats` too,
//!   and the OS identity, uptime, boot phases and process sizes from
//!   [`crate::status::collect`], the one source of `osctl status`.
//! - [`gather`] takes one [`Snapshot`] of all of it; [`encode`] writes it with the
//!   `prometheus-client` crate, in the OpenMetrics text format or the Prometheus text
//!   format 0.0.4 ([`Format::negotiate`] picks by the scraper's `Accept` header).
//! - [`serve`] is the HTTP listener (`/metrics`), plain or behind the remote API's mutual
//!   TLS.
//!
//! Names follow the Prometheus conventions: prefix `berth_`, the unit in the name
//! (`_bytes`, `_seconds`), `_total` for counters, the container name in the label
//! `container`. `docs/CONFIG.md` lists them all.

pub mod node;
pub mod serve;

use crate::containers::ContainerFigures;
use berth_api::Status;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Everything one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// What `osctl status` shows: OS version, slot, uptime, boot phases, process sizes.
    pub status: Status,
    pub node: node::NodeFigures,
    /// The update state of this boot ([`crate::update::NodeUpdates::state`]).
    pub update_state: &'static str,
    /// The last `osctl config apply` ([`crate::node::config_trial`]).
    pub config: crate::node::ConfigTrial,
    pub containers: Vec<ContainerFigures>,
    /// How long gathering took.
    pub collect_time: Duration,
}

/// Where [`gather`] reads from.
#[derive(Clone, Default)]
pub struct Sources {
    /// How often PID 1 has started sysd (for [`crate::status::collect`]).
    pub sysd_start: u32,
    pub containers: Option<crate::containers::Manager>,
    pub updates: Option<std::sync::Arc<crate::update::NodeUpdates>>,
}

/// Read every figure now. Blocking file reads: run it off the async threads.
pub fn gather(src: &Sources) -> Snapshot {
    let start = Instant::now();
    let mut status = crate::status::collect(src.sysd_start);
    let containers = src
        .containers
        .as_ref()
        .map(|c| {
            let (_, healthy) = c.required_health();
            status.healthy = healthy;
            c.figures()
        })
        .unwrap_or_default();
    Snapshot {
        status,
        node: node::read(Path::new("/proc"), Path::new("/var")),
        update_state: src.updates.as_ref().map(|u| u.state()).unwrap_or("unknown"),
        config: crate::node::config_trial(Path::new("/var")),
        containers,
        collect_time: start.elapsed(),
    }
}

/// The exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus text format 0.0.4 (anything else, e.g. curl).
    Text,
}

/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    /// OpenMetrics when the `Accept` header names it (with a quality above 0), else text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            if !parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"))
            {
                continue;
            }
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if !refused {
                return Format::OpenMetrics;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

type Labels = Vec<(&'static str, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// Adds metric families to a registry made for one scrape.
struct Builder {
    reg: Registry,
}

impl Builder {
    fn gauges(&mut self, name: &str, help: &str, unit: Option<Unit>, samples: Vec<(Labels, f64)>) {
        if samples.is_empty() {
            return;
        }
        let f = Family::<Labels, GaugeF>::default();
        for (l, v) in samples {
            f.get_or_create(&l).set(v);
        }
        self.add(name, help, unit, f);
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: Vec<(Labels, f64)>,
    ) {
        if samples.is_empty() {
            return;
        }
        let f = Family::<Labels, CounterF>::default();
        for (l, v) in samples {
            f.get_or_create(&l).inc_by(v.max(0.0));
        }
        self.add(name, help, unit, f);
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, v: Option<f64>) {
        if let Some(v) = v {
            let g = GaugeF::default();
            g.set(v);
            self.add(name, help, unit, g);
        }
    }

    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, v: Option<f64>) {
        if let Some(v) = v {
            let c = CounterF::default();
            c.inc_by(v.max(0.0));
            self.add(name, help, unit, c);
        }
    }

    fn add(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        m: impl prometheus_client::registry::Metric,
    ) {
        match unit {
            Some(u) => self.reg.register_with_unit(name, help, u, m),
            None => self.reg.register(name, help, m),
        }
    }
}

fn l1(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// One-hot samples of `label` over `all` states, 1 for `current`.
fn one_hot(base: &Labels, label: &'static str, all: &[&str], current: &str) -> Vec<(Labels, f64)> {
    all.iter()
        .map(|s| {
            let mut l = base.clone();
            l.push((label, s.to_string()));
            (l, if *s == current { 1.0 } else { 0.0 })
        })
        .collect()
}

/// States of [`crate::update::NodeUpdates::state`].
pub const UPDATE_STATES: [&str; 6] = [
    "normal",
    "awaiting_bless",
    "update_pending",
    "fell_back",
    "applying",
    "unknown",
];
/// States of [`crate::node::ConfigTrial::state`].
pub const CONFIG_STATES: [&str; 4] = ["none", "on_trial", "applied", "reverted"];
const HEALTH_STATES: [&str; 4] = ["none", "starting", "healthy", "unhealthy"];

/// The snapshot in `format`.
pub fn encode(s: &Snapshot, format: Format) -> String {
    let mut b = Builder {
        reg: Registry::default(),
    };
    node_families(&mut b, s);
    container_families(&mut b, &s.containers);
    b.gauge(
        "berth_metrics_collect_duration",
        "Time sysd took to read the figures of this scrape",
        Some(Unit::Seconds),
        Some(s.collect_time.as_secs_f64()),
    );
    let mut out = String::new();
    let r = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &b.reg),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &b.reg),
    };
    // Writing into a String cannot fail; the encoder reports only the writer's errors.
    if let Err(e) = r {
        tracing::error!("metrics: encoding failed: {e}");
    }
    out
}

fn node_families(b: &mut Builder, s: &Snapshot) {
    let st = &s.status;
    let info = Info::new(vec![
        ("os", st.os.clone()),
        ("version", st.version.clone()),
        ("build_id", st.build_id.clone()),
        ("arch", st.arch.clone()),
        ("slot", st.slot.clone()),
        ("kernel", st.kernel.clone()),
        ("hostname", st.hostname.clone()),
    ]);
    b.add(
        "berth_node",
        "The running OS: version, build, architecture and A/B slot",
        None,
        info,
    );
    let n = &s.node;
    b.gauge(
        "berth_node_uptime",
        "Seconds since the kernel started (as osctl status shows)",
        Some(Unit::Seconds),
        Some(st.uptime_seconds),
    );
    b.gauge(
        "berth_node_boot_time",
        "Unix time the kernel started",
        Some(Unit::Seconds),
        n.boot_time.map(|t| t as f64),
    );
    b.counter(
        "berth_node_boots",
        "Boots recorded on the state partition, this one included",
        None,
        Some(st.boot_count as f64),
    );
    b.gauges(
        "berth_node_boot_phase",
        "Time since the kernel started at which each boot phase was reached",
        Some(Unit::Seconds),
        st.phases
            .iter()
            .map(|(p, t)| (l1("phase", p.clone()), *t))
            .collect(),
    );
    b.counters(
        "berth_node_cpu",
        "CPU time of the node by mode",
        Some(Unit::Seconds),
        n.cpu
            .iter()
            .flat_map(|c| c.modes())
            .map(|(m, v)| (l1("mode", m), v))
            .collect(),
    );
    let m = &n.memory;
    for (name, help, v) in [
        (
            "berth_node_memory_total",
            "Memory the kernel manages",
            m.total,
        ),
        ("berth_node_memory_free", "Memory not used at all", m.free),
        (
            "berth_node_memory_available",
            "Memory available for new work without swapping (MemAvailable)",
            m.available,
        ),
        (
            "berth_node_memory_buffers",
            "Block device buffers",
            m.buffers,
        ),
        ("berth_node_memory_cached", "Page cache", m.cached),
        ("berth_node_swap_total", "Swap space", m.swap_total),
        ("berth_node_swap_free", "Unused swap space", m.swap_free),
    ] {
        b.gauge(name, help, Some(Unit::Bytes), v.map(|v| v as f64));
    }
    for (i, w) in ["1", "5", "15"].iter().enumerate() {
        b.gauge(
            &format!("berth_node_load{w}"),
            &format!("Load average over {w} minute(s)"),
            None,
            n.load.map(|l| l[i]),
        );
    }
    if let Some(v) = &n.var {
        let mp = || l1("mountpoint", "/var");
        for (name, help, unit, x) in [
            (
                "berth_node_filesystem_size",
                "Size of the filesystem",
                Some(Unit::Bytes),
                v.size,
            ),
            (
                "berth_node_filesystem_free",
                "Free space, including the blocks reserved for root",
                Some(Unit::Bytes),
                v.free,
            ),
            (
                "berth_node_filesystem_avail",
                "Free space for unprivileged writers",
                Some(Unit::Bytes),
                v.avail,
            ),
            ("berth_node_filesystem_files", "Inodes", None, v.files),
            (
                "berth_node_filesystem_files_free",
                "Free inodes",
                None,
                v.files_free,
            ),
        ] {
            b.gauges(name, help, unit, vec![(mp(), x as f64)]);
        }
    }
    type NetField = fn(&node::NetDev) -> u64;
    let net: [(&str, &str, Option<Unit>, NetField); 8] = [
        (
            "berth_node_network_receive",
            "Bytes received by the interface",
            Some(Unit::Bytes),
            |d| d.rx_bytes,
        ),
        (
            "berth_node_network_transmit",
            "Bytes sent by the interface",
            Some(Unit::Bytes),
            |d| d.tx_bytes,
        ),
        (
            "berth_node_network_receive_packets",
            "Packets received",
            None,
            |d| d.rx_packets,
        ),
        (
            "berth_node_network_transmit_packets",
            "Packets sent",
            None,
            |d| d.tx_packets,
        ),
        (
            "berth_node_network_receive_errors",
            "Receive errors",
            None,
            |d| d.rx_errors,
        ),
        (
            "berth_node_network_transmit_errors",
            "Transmit errors",
            None,
            |d| d.tx_errors,
        ),
        (
            "berth_node_network_receive_drop",
            "Received packets dropped",
            None,
            |d| d.rx_dropped,
        ),
        (
            "berth_node_network_transmit_drop",
            "Packets dropped before sending",
            None,
            |d| d.tx_dropped,
        ),
    ];
    for (name, help, unit, f) in net {
        b.counters(
            name,
            help,
            unit,
            n.net
                .iter()
                .map(|d| (l1("device", d.name.clone()), f(d) as f64))
                .collect(),
        );
    }
    b.gauges(
        "berth_node_update_state",
        "The OS update state of this boot: 1 for the current state",
        None,
        one_hot(&Vec::new(), "state", &UPDATE_STATES, s.update_state),
    );
    b.gauges(
        "berth_node_config_state",
        "The last osctl config apply: 1 for the current state (none: there was none)",
        None,
        one_hot(&Vec::new(), "state", &CONFIG_STATES, s.config.state),
    );
    b.gauge(
        "berth_node_config_trial_remaining",
        "Time left before a config on trial is reverted unless the node is healthy",
        Some(Unit::Seconds),
        Some(s.config.seconds_left as f64),
    );
    b.gauge(
        "berth_node_healthy",
        "1 when every service required for boot runs and is healthy",
        None,
        Some(if st.healthy { 1.0 } else { 0.0 }),
    );
    b.counter(
        "berth_sysd_starts",
        "How often PID 1 has started sysd during this boot",
        None,
        Some(st.sysd_starts as f64),
    );
    b.gauges(
        "berth_process_resident_memory",
        "Resident memory of PID 1 (init) and of sysd",
        Some(Unit::Bytes),
        vec![
            (l1("process", "init"), (st.init_rss_kib * 1024) as f64),
            (l1("process", "sysd"), (st.sysd_rss_kib * 1024) as f64),
        ],
    );
}

fn container_families(b: &mut Builder, cs: &[ContainerFigures]) {
    let name = |c: &ContainerFigures| l1("container", c.name.clone());
    let all = |f: fn(&ContainerFigures) -> f64| -> Vec<(Labels, f64)> {
        cs.iter().map(|c| (name(c), f(c))).collect()
    };
    b.gauges(
        "berth_container_up",
        "1 while the container runs",
        None,
        all(|c| if c.state == "running" { 1.0 } else { 0.0 }),
    );
    b.counters(
        "berth_container_restarts",
        "Restarts of the container since sysd started",
        None,
        all(|c| c.restarts as f64),
    );
    b.gauges(
        "berth_container_health",
        "Health check state of the container: 1 for the current state (none: no check or not running)",
        None,
        cs.iter()
            .flat_map(|c| one_hot(&name(c), "state", &HEALTH_STATES, c.health))
            .collect(),
    );
    b.counters(
        "berth_container_oom_events",
        "Times the container's cgroup reached its memory limit and the OOM killer ran (memory.events oom)",
        None,
        all(|c| c.ooms as f64),
    );
    b.counters(
        "berth_container_oom_kills",
        "Processes of the container killed by the OOM killer (memory.events oom_kill)",
        None,
        all(|c| c.oom_kills as f64),
    );
    // The cgroup's own figures: only while it runs.
    type Field = fn(&berth_runtime::Stats) -> Option<f64>;
    let gauges: [(&str, &str, Option<Unit>, Field); 4] = [
        (
            "berth_container_memory",
            "Memory used by the container's cgroup (memory.current)",
            Some(Unit::Bytes),
            |s| s.memory_current.map(|v| v as f64),
        ),
        (
            "berth_container_memory_limit",
            "The container's memory limit (memory.max); absent when unlimited",
            Some(Unit::Bytes),
            |s| s.memory_max.map(|v| v as f64),
        ),
        (
            "berth_container_pids",
            "Processes and threads in the container (pids.current)",
            None,
            |s| s.pids_current.map(|v| v as f64),
        ),
        (
            "berth_container_pids_limit",
            "The container's limit on processes and threads (pids.max); absent when unlimited",
            None,
            |s| s.pids_max.map(|v| v as f64),
        ),
    ];
    let per = |f: Field| -> Vec<(Labels, f64)> {
        cs.iter()
            .filter_map(|c| Some((name(c), f(c.cgroup.as_ref()?)?)))
            .collect()
    };
    for (metric, help, unit, f) in gauges {
        b.gauges(metric, help, unit, per(f));
    }
    let counters: [(&str, &str, Option<Unit>, Field); 6] = [
        (
            "berth_container_cpu_usage",
            "CPU time of the container (cpu.stat usage_usec)",
            Some(Unit::Seconds),
            |s| s.cpu_usage_usec.map(|v| v as f64 / 1e6),
        ),
        (
            "berth_container_cpu_user",
            "CPU time of the container in user mode (cpu.stat user_usec)",
            Some(Unit::Seconds),
            |s| s.cpu_user_usec.map(|v| v as f64 / 1e6),
        ),
        (
            "berth_container_cpu_system",
            "CPU time of the container in the kernel (cpu.stat system_usec)",
            Some(Unit::Seconds),
            |s| s.cpu_system_usec.map(|v| v as f64 / 1e6),
        ),
        (
            "berth_container_cpu_throttled",
            "Time the container was throttled by its CPU limit (cpu.stat throttled_usec)",
            Some(Unit::Seconds),
            |s| s.cpu_throttled_usec.map(|v| v as f64 / 1e6),
        ),
        (
            "berth_container_io_read",
            "Bytes the container read from block devices (io.stat rbytes)",
            Some(Unit::Bytes),
            |s| s.io_read_bytes.map(|v| v as f64),
        ),
        (
            "berth_container_io_written",
            "Bytes the container wrote to block devices (io.stat wbytes)",
            Some(Unit::Bytes),
            |s| s.io_write_bytes.map(|v| v as f64),
        ),
    ];
    for (metric, help, unit, f) in counters {
        b.counters(metric, help, unit, per(f));
    }
}

#[cfg(test)]
mod tests;
