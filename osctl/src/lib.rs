//! osctl: the operator's door into a Berth machine.
//!
//! Talks `org.berth.Manager1` peer-to-peer over a Unix socket: `/run/berth/osctl.sock` on
//! the machine itself, or the QEMU virtio-serial socket (`qemu/run.sh` writes
//! `STATE_DIR/osctl.sock`) from a VM's host.

use berth_api::ManagerProxy;
use std::time::Duration;

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
    line("os", format!("{} (build {})", s.os, s.build_id));
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
    line("config", s.config_source.clone());
    if !s.config_error.is_empty() {
        line("config error", s.config_error.clone());
    }
    line("cgroups", s.cgroup_controllers.join(" "));
    line(
        "sysd",
        format!("pid {} (start #{})", s.sysd_pid, s.sysd_starts),
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
        assert!(t.contains("warning        disk on fire"), "{t}");
    }
}
