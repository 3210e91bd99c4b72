//! osctl: the operator's door into a Berth machine.
//!
//! Talks `org.berth.Manager1` peer-to-peer over a Unix socket: `/run/berth/osctl.sock` on
//! the machine itself, or the QEMU virtio-serial socket (`qemu/run.sh` writes
//! `STATE_DIR/osctl.sock`) from a VM's host.

use berth_api::{ContainerInfo, ContainerStats, ImageInfo, ManagerProxy};
use std::time::Duration;

pub mod exec;
pub mod progress;
pub mod update;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(std::path::PathBuf),
}

/// Errors reaching the machine.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported address {0:?}: use unix:path=/path/to/socket")]
    BadAddress(String),
    #[error("cannot connect to {path}: {source}. Is the machine running (and are you root)?")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {path} within {secs} s: the machine may still be booting")]
    Timeout { path: String, secs: u64 },
    #[error("D-Bus handshake with {path} failed: {source}")]
    Handshake {
        path: String,
        #[source]
        source: Box<zbus::Error>,
    },
}

impl Address {
    /// Parse `unix:path=/x` (D-Bus address syntax) or a plain path.
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            for kv in rest.split(',') {
                if let Some(p) = kv.strip_prefix("path=") {
                    return Ok(Address::Unix(p.into()));
                }
            }
            return Err(ConnectError::BadAddress(s.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Address::Unix(s.into()));
        }
        Err(ConnectError::BadAddress(s.into()))
    }
}

/// Connect and return a proxy for the manager.
pub async fn connect(
    addr: &Address,
    timeout: Duration,
) -> Result<(zbus::Connection, ManagerProxy<'static>), ConnectError> {
    let Address::Unix(path) = addr;
    let p = path.display().to_string();
    let fut = async {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ConnectError::Connect {
                path: p.clone(),
                source,
            })?;
        let conn = zbus::connection::Builder::unix_stream(s)
            .p2p()
            .build()
            .await
            .map_err(|source| ConnectError::Handshake {
                path: p.clone(),
                source: Box::new(source),
            })?;
        let proxy = ManagerProxy::new(&conn)
            .await
            .map_err(|source| ConnectError::Handshake {
                path: p.clone(),
                source: Box::new(source),
            })?;
        Ok((conn, proxy))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            path: p.clone(),
            secs: timeout.as_secs(),
        })?
}

/// Human-readable status.
pub fn format_status(s: &berth_api::Status) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<14} {v}\n"));
    line(
        "os",
        if s.arch.is_empty() {
            format!("{} (build {})", s.os, s.build_id)
        } else {
            format!("{} {} (build {})", s.os, s.arch, s.build_id)
        },
    );
    line("hostname", s.hostname.clone());
    line("slot", s.slot.clone());
    line("kernel", s.kernel.clone());
    line("uptime", format!("{:.1} s", s.uptime_seconds));
    line("boot", format!("#{}", s.boot_count));
    line(
        "root",
        format!(
            "{} {} ({}){}",
            s.root.fstype,
            s.root.source,
            if s.root.read_only { "ro" } else { "rw" },
            if s.root_dm_uuid.is_empty() {
                String::new()
            } else {
                format!(
                    ", dm {} verity {}",
                    s.root_dm_name,
                    short(&s.verity_root_hash)
                )
            }
        ),
    );
    line(
        "state",
        format!(
            "{} {} on /var: {} (was {})",
            s.var.fstype,
            s.var.source,
            s.state_action,
            if s.state_was_clean {
                "clean"
            } else {
                "not clean"
            }
        ),
    );
    if !s.boot_disk.is_empty() {
        line("boot disk", s.boot_disk.clone());
    }
    for n in &s.network {
        line("network", n.clone());
    }
    line(
        "default route",
        if s.default_route.is_empty() {
            "none".into()
        } else {
            s.default_route.clone()
        },
    );
    if !s.required_services.is_empty() {
        let v: Vec<String> = s
            .required_services
            .iter()
            .map(|(n, h)| format!("{n} {h}"))
            .collect();
        line(
            "health",
            format!(
                "{} ({})",
                if s.healthy { "healthy" } else { "not healthy" },
                v.join(", ")
            ),
        );
    }
    line("config", s.config_source.clone());
    if !s.config_change.is_empty() {
        line("config change", s.config_change.clone());
    }
    if !s.config_error.is_empty() {
        line("config error", s.config_error.clone());
    }
    line("cgroups", s.cgroup_controllers.join(" "));
    line(
        "sysd",
        format!("pid {} (start #{})", s.sysd_pid, s.sysd_starts),
    );
    line(
        "memory",
        format!(
            "init {:.1} MiB, sysd {:.1} MiB resident",
            s.init_rss_kib as f64 / 1024.0,
            s.sysd_rss_kib as f64 / 1024.0
        ),
    );
    let phases: Vec<String> = s
        .phases
        .iter()
        .map(|(n, t)| format!("{n} {t:.2}s"))
        .collect();
    line("boot phases", phases.join(", "));
    for w in &s.warnings {
        line("warning", w.clone());
    }
    o
}

/// A table with a header row; columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut o = String::new();
    let mut put = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    put(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        put(r.clone());
    }
    o
}

fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `osctl ps`.
pub fn format_ps(v: &[ContainerInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.kind.clone(),
                c.image.clone(),
                c.state.clone(),
                c.health.clone(),
                c.restarts.to_string(),
                if c.pid > 0 {
                    c.pid.to_string()
                } else {
                    "-".into()
                },
                if c.uptime_seconds > 0.0 {
                    human_secs(c.uptime_seconds)
                } else {
                    "-".into()
                },
                c.message.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "KIND", "IMAGE", "STATE", "HEALTH", "RESTARTS", "PID", "UP", "MESSAGE",
        ],
        &rows,
    )
}

/// `osctl stats`.
pub fn format_stats(v: &[ContainerStats]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                human_bytes(s.memory_bytes),
                if s.memory_max > 0 {
                    human_bytes(s.memory_max)
                } else {
                    "-".into()
                },
                format!("{:.2}s", s.cpu_usec as f64 / 1e6),
                s.pids.to_string(),
                if s.pids_max > 0 {
                    s.pids_max.to_string()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &["NAME", "MEMORY", "MEM LIMIT", "CPU", "PIDS", "PID LIMIT"],
        &rows,
    )
}

/// `osctl images`.
pub fn format_images(v: &[ImageInfo]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                short(i.digest.trim_start_matches("sha256:")).to_string(),
                human_bytes(i.size),
                if i.in_use { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    table(&["IMAGE", "DIGEST", "SIZE", "IN USE"], &rows)
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:path=/tmp/x.sock").unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Address::parse("/run/berth/osctl.sock").unwrap(),
            Address::Unix("/run/berth/osctl.sock".into())
        );
        assert!(Address::parse("tcp:host=1.2.3.4").is_err());
        assert!(Address::parse("unix:abstract=x").is_err());
    }

    #[test]
    fn status_text_mentions_verity_and_warnings() {
        let s = berth_api::Status {
            os: "Berth 0.2.0".into(),
            version: "0.2.0".into(),
            arch: "arm64".into(),
            build_id: "abc".into(),
            root: berth_api::MountStatus {
                target: "/".into(),
                source: "/dev/dm-0".into(),
                fstype: "erofs".into(),
                read_only: true,
            },
            root_dm_name: "berth-root-a".into(),
            root_dm_uuid: "BERTH-VERITY-a".into(),
            verity_root_hash: "0123456789abcdef".into(),
            warnings: vec!["disk on fire".into()],
            ..Default::default()
        };
        let t = format_status(&s);
        assert!(
            t.contains("erofs /dev/dm-0 (ro), dm berth-root-a verity 0123456789ab"),
            "{t}"
        );
        assert!(
            t.contains("os             Berth 0.2.0 arm64 (build abc)\n"),
            "{t}"
        );
        assert!(t.contains("warning        disk on fire"), "{t}");
    }

    #[test]
    fn ps_table_aligns_columns() {
        let v = vec![
            ContainerInfo {
                name: "admin".into(),
                kind: "system".into(),
                image: "admin".into(),
                state: "running".into(),
                health: "none".into(),
                pid: 42,
                uptime_seconds: 75.0,
                ..Default::default()
            },
            ContainerInfo {
                name: "web-server".into(),
                kind: "workload".into(),
                image: "10.0.2.100:5000/web:1".into(),
                state: "crash-loop".into(),
                health: "none".into(),
                restarts: 4,
                message: "exited 4 times".into(),
                ..Default::default()
            },
        ];
        let t = format_ps(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME        KIND"), "{t}");
        assert!(
            lines[1].contains("running") && lines[1].contains("1m15s"),
            "{t}"
        );
        assert!(lines[2].ends_with("exited 4 times"), "{t}");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
