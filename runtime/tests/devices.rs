//! Privileged host tests of the device cgroup filter: a program built from
//! rules is attached to a real cgroup and a shell moved into it tries to
//! use devices; then whole containers run through `berth-runtime run`.

use berth_runtime::devices::{self, DevType, Filter, Rule, READ, RWM};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::busybox;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");

/// A cgroup under the cgroup2 mount, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let root = berth_runtime::cgroup::find_root().expect("a cgroup2 mount");
        let dir = root.join(format!("berth-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a shell script checking device access, in `cg` when given, and
/// returns `label: ok` / `label: <error>` lines.
fn probe(cg: Option<&Path>, dir: &Path) -> String {
    let join = match cg {
        Some(cg) => format!("echo $$ > {}/cgroup.procs || exit 99\n", cg.display()),
        None => String::new(),
    };
    let d = dir.display();
    let script = format!(
        r#"{join}t() {{ label=$1; shift; if out=$("$@" 2>&1); then echo "$label: ok"; else echo "$label: $out"; fi; }}
t null sh -c ': <>/dev/null'
t mknod mknod {d}/m b 7 0
t block sh -c ': <{d}/pre'
t random sh -c 'head -c1 /dev/random >/dev/null'
t zero sh -c ': </dev/zero'
"#
    );
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in {out}"))
}

#[test]
fn filter_on_a_real_cgroup_denies_what_no_rule_allows() {
    let tmp = tempfile::tempdir().unwrap();
    // A node for block device 7:0 made outside the cgroup.
    nix::sys::stat::mknod(
        &tmp.path().join("pre"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 0),
    )
    .unwrap();
    let cg = TestCgroup::new("devices");
    let rules = [
        (
            "test",
            Rule {
                allow: false,
                kind: DevType::All,
                major: None,
                minor: None,
                access: RWM,
            },
        ),
        ("test", Rule::allow_char(1, Some(3))),
        // The extra rule: /dev/random, read only.
        (
            "test",
            Rule {
                allow: true,
                kind: DevType::Char,
                major: Some(1),
                minor: Some(8),
                access: READ,
            },
        ),
    ];
    let filter = Filter::from_rules(rules).unwrap();
    devices::attach(&cg.0, &filter).unwrap();
    let ids = devices::attached(&cg.0).unwrap();
    assert_eq!(ids.len(), 1);
    // Attaching again replaces the program instead of stacking a second.
    devices::attach(&cg.0, &filter).unwrap();
    let ids2 = devices::attached(&cg.0).unwrap();
    assert_eq!(ids2.len(), 1);
    assert_ne!(ids, ids2);

    // Control: outside the cgroup nothing is denied by a filter.
    let outside = probe(None, tmp.path());
    assert_eq!(line(&outside, "null"), "null: ok");
    assert!(
        !line(&outside, "block").contains("Operation not permitted"),
        "{outside}"
    );
    assert_eq!(line(&outside, "zero"), "zero: ok");
    std::fs::remove_file(tmp.path().join("m")).unwrap();

    let inside = probe(Some(&cg.0), tmp.path());
    eprintln!("{inside}");
    assert_eq!(line(&inside, "null"), "null: ok");
    assert_eq!(line(&inside, "random"), "random: ok");
    for denied in ["mknod", "block", "zero"] {
        assert!(
            line(&inside, denied).contains("Operation not permitted"),
            "{denied} should be denied: {inside}"
        );
    }
    assert!(!tmp.path().join("m").exists());
}

/// A busybox bundle (config from oci-spec's default, like `runc spec`).
fn bundle(args: &[&str], edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    for t in ["sh", "echo", "cat", "mknod", "dd", "head", "grep", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
    }
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    // A writable /tmp for mknod, so only the device filter can say no.
    spec["root"]["readonly"] = json!(false);
    edit(&mut spec);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir
}

fn run(bundle: &Path, id: &str, extra: &[&str]) -> (i32, String, String) {
    let root = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .arg("--root")
        .arg(root.path())
        .arg("run")
        .args(extra)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const SCRIPT: &str = "mknod /tmp/d b 7 0 && echo mknod-ok; \
    dd if=/tmp/d of=/dev/null bs=512 count=1 && echo read-ok || echo read-denied; \
    echo x > /dev/null && echo null-ok; \
    head -c 4 /dev/urandom | dd of=/dev/null 2>/dev/null && echo urandom-ok";

fn with_mknod(spec: &mut Value) {
    // CAP_MKNOD, so only the device filter stands between mknod and the disk.
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
}

#[test]
fn container_cannot_make_or_read_a_block_device() {
    let b = bundle(&["sh", "-c", SCRIPT], with_mknod);
    let id = format!("devs-{}", std::process::id());
    let (code, out, err) = run(b.path(), &id, &[]);
    eprintln!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("mknod-ok"), "{out}");
    assert!(
        err.contains("mknod: /tmp/d: Operation not permitted"),
        "{err}"
    );
    assert!(out.contains("read-denied"), "{out}");
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("urandom-ok"), "{out}");
}

#[test]
fn mknod_allowed_by_a_rule_still_cannot_read() {
    // The spec allows creating block 7:0 (m) but not reading it.
    let b = bundle(&["sh", "-c", SCRIPT], |spec| {
        with_mknod(spec);
        spec["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "b", "major": 7, "minor": 0, "access": "m"}));
    });
    let id = format!("devs-m-{}", std::process::id());
    let (code, out, err) = run(b.path(), &id, &[]);
    eprintln!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mknod-ok"), "{out}");
    assert!(out.contains("read-denied"), "{out}");
    assert!(err.contains("'/tmp/d': Operation not permitted"), "{err}");
    assert!(out.contains("null-ok"), "{out}");
}

#[test]
fn default_profile_dev_is_nodev_and_devices_still_work() {
    let script = "grep ' /dev ' /proc/self/mounts; \
        echo x > /dev/null && echo null-ok; \
        head -c 4 /dev/zero | dd of=/dev/null 2>/dev/null && echo zero-ok; \
        mknod /dev/x c 1 3 2>/dev/null && echo mknod-ok || echo mknod-denied; \
        grep CapBnd /proc/self/status";
    let b = bundle(&["sh", "-c", script], |_| {});
    let id = format!("devs-p-{}", std::process::id());
    let (code, out, err) = run(b.path(), &id, &["--default-profile"]);
    eprintln!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    let dev_line = out.lines().find(|l| l.contains(" /dev ")).unwrap();
    assert!(dev_line.contains("nodev"), "{dev_line}");
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("zero-ok"), "{out}");
    assert!(out.contains("mknod-denied"), "{out}");
    let bnd = out.lines().find(|l| l.starts_with("CapBnd")).unwrap();
    let mask = u64::from_str_radix(bnd.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 27), 0, "CAP_MKNOD (27) must not be in {bnd}");
}
