//! cgroup v2 limits, proven on a pure cgroup v2 system (the Berth guest):
//! memory.max OOM-kills a hungry process and `run` reports it, pids.max
//! stops a fork bomb, cpu.max throttles a busy loop.
//!
//! The build host has hybrid v1 cgroups (its cgroup2 tree has no memory,
//! pids or cpu controller), so these are ignored there. In the VM:
//!   BERTH_RUNTIME_BIN=/usr/bin/berth-runtime BERTH_TEST_BUSYBOX=/path/busybox \
//!     ./cgroup_v2-<hash> --ignored --test-threads=1
//! (the test binary is built by `cargo test -p berth-runtime --no-run`).

use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn bin() -> String {
    std::env::var("BERTH_RUNTIME_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_berth-runtime").into())
}

fn busybox() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_TEST_BUSYBOX") {
        return p.into();
    }
    ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: set BERTH_TEST_BUSYBOX")
}

fn bundle(args: &[&str], resources: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    for t in ["sh", "sleep", "seq", "cat", "grep", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
    }
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    spec["linux"]["resources"] = resources;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    dir
}

fn run(b: &tempfile::TempDir, id: &str) -> (i32, String, String) {
    let root = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .arg("--root")
        .arg(root.path())
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(id)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs a pure cgroup v2 host with the memory controller (the Berth VM)"]
fn memory_max_oom_kills_and_is_reported() {
    let b = bundle(
        &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"],
        json!({"memory": {"limit": 33554432, "swap": 33554432}}),
    );
    let (code, _, err) = run(&b, "oom");
    assert_eq!(code, 137, "{err}");
    assert!(err.contains("OOM-killed"), "{err}");
}

#[test]
#[ignore = "needs a pure cgroup v2 host with the pids controller (the Berth VM)"]
fn pids_max_stops_a_fork_bomb() {
    let b = bundle(
        &[
            "sh",
            "-c",
            "n=0; for i in $(seq 100); do sleep 5 & n=$((n+1)); done 2>/dev/null; \
             cat /sys/fs/cgroup/pids.current; cat /sys/fs/cgroup/pids.max",
        ],
        json!({"pids": {"limit": 16}}),
    );
    let (_, out, err) = run(&b, "pids");
    let nums: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(nums.len(), 2, "{out} {err}");
    assert!(nums[0] <= 16, "pids.current {} above the limit", nums[0]);
    assert_eq!(nums[1], 16);
    assert!(err.contains("fork") || err.contains("Resource"), "{err}");
}

#[test]
#[ignore = "needs a pure cgroup v2 host with the cpu controller (the Berth VM)"]
fn cpu_max_throttles() {
    let b = bundle(
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; grep -E 'nr_throttled|throttled_usec' /sys/fs/cgroup/cpu.stat",
        ],
        json!({"cpu": {"quota": 10000, "period": 100000}}),
    );
    let t0 = std::time::Instant::now();
    let (code, out, err) = run(&b, "cpu");
    assert_eq!(code, 0, "{err}");
    let throttled: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(throttled > 0, "not throttled: {out}");
    assert!(t0.elapsed().as_millis() > 200);
}
