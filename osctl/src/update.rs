//! Text output of `osctl update`: the machine answers in JSON (the updater's own types),
//! these render it for people. `-o json` prints the JSON as it came.

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn entry(e: &Value) -> String {
    if e.is_null() {
        return "-".into();
    }
    let mut t = s(&e["file"]);
    if let Some(v) = e["version"].as_str() {
        t.push_str(&format!(" ({v})"));
    }
    t
}

/// `osctl update status` as text.
pub fn format_status(v: &Value) -> String {
    let st = &v["status"];
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<15}{val}\n"));
    let trial = match st["running_entry"]["tries_left"].as_u64() {
        _ if st["blessed"].as_bool() == Some(true) => "blessed".to_string(),
        Some(n) => format!("on trial, {n} tries left"),
        None => "no boot entry".to_string(),
    };
    line(
        "running",
        format!(
            "{} on slot {} ({trial})",
            s(&st["running_version"]),
            s(&st["running_slot"])
        ),
    );
    let other = match st["other_version"].as_str() {
        Some(ver) => format!("{} {ver}", s(&st["other_state"])),
        None => s(&st["other_state"]),
    };
    line("other slot", format!("{}: {other}", s(&st["other_slot"])));
    line("next boot", entry(&st["next_boot"]));
    let floor = match st["version_floor"]["version"].as_str() {
        Some(v) => {
            format!("{v} (the highest version installed; lower ones need --allow-downgrade)")
        }
        None => "none recorded (no update installed yet)".to_string(),
    };
    line("version floor", floor);
    line(
        "source",
        format!(
            "{} (policy {}, health deadline {} s)",
            s(&st["source"]),
            s(&v["policy"]),
            s(&v["health_deadline_secs"])
        ),
    );
    if let Some(note) = v["boot"]["note"].as_str().filter(|n| !n.is_empty()) {
        line("this boot", note.to_string());
    }
    if let Some(f) = v["fleet_lock"]["text"].as_str() {
        line("fleet lock", f.to_string());
    }
    let job = &st["in_progress"];
    if !job.is_null() {
        line(
            "installing",
            format!(
                "{} on slot {}: {} ({} of {} bytes written); apply again to resume",
                s(&job["version"]),
                s(&job["slot"]),
                s(&job["step"]),
                s(&job["written"]),
                s(&job["total"])
            ),
        );
    }
    let c = &st["last_check"];
    if !c.is_null() {
        let what = match c["error"].as_str() {
            Some(e) => format!("failed: {e}"),
            None if c["update_available"].as_bool() == Some(true) => {
                format!("{} available", s(&c["offered"]))
            }
            None => format!("no update for this node (offered {})", s(&c["offered"])),
        };
        line("last check", what);
    }
    let a = &st["last_apply"];
    if !a.is_null() {
        let mut what = format!(
            "{}: {}",
            if a["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "failed"
            },
            s(&a["message"])
        );
        let t = &a["timings"];
        if let Some(total) = t["total_secs"].as_f64() {
            what.push_str(&format!(
                " [{total:.1} s: download {:.1}, write {:.1}, verify {:.1}]",
                t["download_secs"].as_f64().unwrap_or(0.0),
                t["write_secs"].as_f64().unwrap_or(0.0),
                t["verify_secs"].as_f64().unwrap_or(0.0)
            ));
        }
        line("last apply", what);
    }
    let r = &st["last_rollback"];
    if !r.is_null() {
        line(
            "last rollback",
            format!("to slot {} ({})", s(&r["to_slot"]), s(&r["version"])),
        );
    }
    for f in st["failed_versions"].as_array().into_iter().flatten() {
        line(
            "failed",
            format!(
                "{} (slot {}): {}",
                s(&f["version"]),
                s(&f["slot"]),
                s(&f["reason"])
            ),
        );
    }
    out
}

/// `osctl update check` as text.
pub fn format_check(v: &Value) -> String {
    let mib = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1048576.0;
    let verdict = if v["update_available"].as_bool() == Some(true) {
        "update available: `osctl update apply` installs it".to_string()
    } else if v["already_installed"].as_bool() == Some(true) {
        "already installed on the other slot: it boots next".to_string()
    } else if v["below_floor"].as_bool() == Some(true) {
        format!(
            "below this node's version floor {} (the highest version it installed): `osctl update apply --allow-downgrade` installs it anyway",
            s(&v["version_floor"])
        )
    } else if v["failed_before"].as_bool() == Some(true) {
        "it failed to boot healthy before: `osctl update apply --force` tries again".to_string()
    } else {
        "not newer than the running version: nothing to do".to_string()
    };
    format!(
        "{} offers {} for {} (running {})\n  signed by {}\n  payload {:.1} MiB (root {:.1}, kernel {:.1}, initrd {:.1})\n{verdict}\n",
        s(&v["reference"]),
        s(&v["version"]),
        s(&v["arch"]),
        s(&v["running_version"]),
        s(&v["signed_by"]),
        mib("root_bytes") + mib("kernel_bytes") + mib("initrd_bytes"),
        mib("root_bytes"),
        mib("kernel_bytes"),
        mib("initrd_bytes"),
    )
}

/// `osctl update apply` as text.
pub fn format_apply(v: &Value) -> String {
    let o = &v["outcome"];
    let t = &o["timings"];
    let mut out = if o["already_installed"].as_bool() == Some(true) {
        format!(
            "{} was already installed on slot {}\n",
            s(&o["version"]),
            s(&o["slot"])
        )
    } else {
        format!(
            "installed {} on slot {} ({}): it boots next, with 3 tries to become healthy\n  {:.1} s: download {:.1}, write {:.1}, verify {:.1}, boot files {:.1}\n",
            s(&o["version"]),
            s(&o["slot"]),
            s(&o["entry"]),
            t["total_secs"].as_f64().unwrap_or(0.0),
            t["download_secs"].as_f64().unwrap_or(0.0),
            t["write_secs"].as_f64().unwrap_or(0.0),
            t["verify_secs"].as_f64().unwrap_or(0.0),
            t["boot_files_secs"].as_f64().unwrap_or(0.0),
        )
    };
    let r = &v["reboot"];
    if v["fleet_lock"].as_bool() == Some(true) && r["when"].as_str().is_some() {
        out.push_str("taking a reboot slot from the fleet lock server first (osctl update status shows it), then ");
    }
    out.push_str(&match r["when"].as_str() {
        Some("now") => "rebooting into it now (policy auto)\n".to_string(),
        Some("at") => format!(
            "rebooting into it in the reboot window (at {} UTC, Unix time)\n",
            s(&r["at"])
        ),
        _ => "reboot to run it: osctl reboot\n".to_string(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_slots_versions_and_failures() {
        let v = serde_json::json!({
            "status": {
                "source": "10.0.2.100:5000/berth/os:stable",
                "running_slot": "b", "running_version": "0.2.0",
                "running_entry": {"file": "berth-2-b+2-1.conf", "slot": "b", "version": "0.2.0",
                                  "generation": 2, "tries_left": 2, "tries_done": 1},
                "blessed": false, "other_slot": "a", "other_version": "0.1.0",
                "other_state": "fallback",
                "other_entry": null,
                "next_boot": {"file": "berth-2-b+2-1.conf", "version": "0.2.0"},
                "in_progress": null, "last_check": null,
                "last_apply": {"at": 1, "version": "0.2.0", "slot": "b", "ok": true,
                               "message": "installed 0.2.0 on slot b",
                               "timings": {"total_secs": 3.5, "download_secs": 1.0,
                                           "write_secs": 2.0, "verify_secs": 0.5}},
                "last_rollback": null,
                "failed_versions": [{"version": "0.3.0", "slot": "a", "reason": "ran out of tries"}],
                "version_floor": {"version": "0.3.0", "root_hash": "ab", "at": 1}
            },
            "boot": {"check": {"kind": "awaiting-bless", "tries_left": 2},
                     "note": "waiting to bless: ntpd starting (40 s left)"},
            "policy": "manual", "health_deadline_secs": 300,
            "fleet_lock": {"text": "waiting for the fleet lock (group default, 3 tries)"}
        });
        let t = format_status(&v);
        assert!(
            t.contains("running        0.2.0 on slot b (on trial, 2 tries left)"),
            "{t}"
        );
        assert!(t.contains("other slot     a: fallback 0.1.0"), "{t}");
        assert!(t.contains("this boot      waiting to bless"), "{t}");
        assert!(
            t.contains("fleet lock     waiting for the fleet lock (group default, 3 tries)"),
            "{t}"
        );
        assert!(t.contains("download 1.0, write 2.0, verify 0.5"), "{t}");
        assert!(
            t.contains("failed         0.3.0 (slot a): ran out of tries"),
            "{t}"
        );
        assert!(t.contains("version floor  0.3.0 (the highest"), "{t}");
        let mut none = v.clone();
        none["status"]["version_floor"] = serde_json::Value::Null;
        assert!(
            format_status(&none).contains("version floor  none recorded"),
            "{t}"
        );
    }

    #[test]
    fn check_text_names_the_floor() {
        let v = serde_json::json!({
            "reference": "r/berth/os:stable", "version": "0.1.5", "arch": "x86_64",
            "running_version": "0.1.0", "newer": true, "failed_before": false,
            "below_floor": true, "version_floor": "0.2.0", "already_installed": false,
            "update_available": false, "signed_by": "k",
            "root_bytes": 0, "kernel_bytes": 0, "initrd_bytes": 0
        });
        let t = format_check(&v);
        assert!(t.contains("below this node's version floor 0.2.0"), "{t}");
        assert!(t.contains("--allow-downgrade"), "{t}");
    }

    #[test]
    fn apply_text_says_what_boots_next() {
        let v = serde_json::json!({
            "outcome": {"version": "0.2.0", "slot": "b", "entry": "berth-2-b+3.conf",
                        "already_installed": false,
                        "timings": {"total_secs": 4.0, "download_secs": 1.0, "write_secs": 2.0,
                                    "verify_secs": 0.5, "boot_files_secs": 0.5}},
            "reboot": {"when": "manual"}
        });
        let t = format_apply(&v);
        assert!(
            t.starts_with("installed 0.2.0 on slot b (berth-2-b+3.conf)"),
            "{t}"
        );
        assert!(t.contains("osctl reboot"), "{t}");
    }
}
