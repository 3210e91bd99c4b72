//! Bundles written by `runc spec` and `crun spec` (generated at test time)
//! run unchanged under `berth-runtime run`, except for `terminal: false` and
//! a busybox command. Both list CAP_AUDIT_WRITE, CAP_KILL and
//! CAP_NET_BIND_SERVICE as ambient without an inheritable set, which the
//! kernel cannot raise: like runc, berth-runtime warns and runs without them.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::busybox;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");

fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install the Debian package {name}");
}

/// Runs `<tool> spec` in a fresh bundle directory, sets `terminal` false
/// and the args, and runs the bundle with berth-runtime.
fn run_generated(tool_name: &str) -> (i32, String, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(tool(tool_name))
        .arg("spec")
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "{tool_name} spec failed");
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    for t in ["sh", "echo", "grep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!([
        "/bin/sh",
        "-c",
        format!("echo hello from {tool_name} spec; grep ^Cap /proc/self/status; echo x > /dev/null && echo null-ok")
    ]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = format!("{tool_name}-spec-{}", std::process::id());
    let o = Command::new(BIN)
        .arg("--root")
        .arg(root.path())
        .arg("run")
        .arg("--bundle")
        .arg(dir.path())
        .arg(&id)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        spec,
    )
}

fn cap_mask(out: &str, set: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(set))
        .unwrap_or_else(|| panic!("no {set} in {out}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn check(tool_name: &str) {
    let (code, out, err, spec) = run_generated(tool_name);
    eprintln!("{out}{err}");
    // The generated spec really is the case of the issue.
    let caps = &spec["process"]["capabilities"];
    assert!(!caps["ambient"].as_array().unwrap().is_empty());
    assert!(caps["inheritable"].as_array().is_none_or(|a| a.is_empty()));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("hello from {tool_name} spec")),
        "{out}"
    );
    assert!(out.contains("null-ok"), "{out}");
    // CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    let want = (1u64 << 29) | (1 << 5) | (1 << 10);
    assert_eq!(cap_mask(&out, "CapBnd"), want, "{out}");
    assert_eq!(cap_mask(&out, "CapEff"), want, "{out}");
    assert_eq!(cap_mask(&out, "CapPrm"), want, "{out}");
    // Not inheritable, so not ambient either; the user is told.
    assert_eq!(cap_mask(&out, "CapAmb"), 0, "{out}");
    assert!(
        err.contains("can't raise ambient capability CAP_KILL"),
        "{err}"
    );
}

#[test]
fn runc_spec_bundle_runs() {
    check("runc");
}

#[test]
fn crun_spec_bundle_runs() {
    check("crun");
}
