//! Privileged host tests (root) for mounts made by file descriptor, the
//! CVE-2021-30465 family: a container that swaps a directory of its rootfs
//! (or of a shared volume) for a symlink must never get a mount, a directory
//! or a file created outside its rootfs, and bind sources that contain a
//! symlink are refused.
//!
//! They run the real `berth-runtime` binary against a busybox bundle (Debian
//! package `busybox-static`), like `tests/host.rs`. What landed where is read
//! from the container's `/proc/<pid>/mountinfo` by a `createRuntime` hook,
//! which runs after the mounts and before `pivot_root`, so a mount made on a
//! host path (in the container's mount namespace) would show up there.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::busybox;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");

fn tempdir_755() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    d
}

struct Bundle {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Bundle {
    /// A busybox bundle whose `config.json` is written by [`Bundle::write`].
    fn new() -> Bundle {
        let dir = tempdir_755();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        for t in ["sh", "true", "cat", "ls"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
        }
        Bundle {
            dir,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn write(&self, args: &[&str], mounts: Value, hooks: Option<Value>) {
        let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["process"]["env"] = json!(["PATH=/bin"]);
        let list = spec["mounts"].as_array_mut().unwrap();
        list.extend(mounts.as_array().unwrap().iter().cloned());
        if let Some(h) = hooks {
            spec["hooks"] = h;
        }
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
    }

    fn run(&self, id: &str) -> (i32, String, String) {
        let o = Command::new(BIN)
            .arg("--root")
            .arg(self.state.path())
            .args(["run", "--bundle", self.dir.path().to_str().unwrap(), id])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A `createRuntime` hook that copies the container's mountinfo (taken
    /// after its mounts, before `pivot_root`) to `out`.
    fn mountinfo_hook(out: &Path) -> Value {
        let script = format!(
            "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); cat /proc/$pid/mountinfo > {}",
            out.display()
        );
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]})
    }
}

fn uid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn bind(source: &Path, destination: &str) -> Value {
    json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind"]})
}

/// Sorted names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Mount points (5th field, unescaped enough for tempdir names) of a mountinfo dump.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

/// A host directory the container tries to reach: one sentinel file, which
/// must stay the only entry.
fn host_target() -> tempfile::TempDir {
    let d = tempdir_755();
    std::fs::write(d.path().join("sentinel"), "host").unwrap();
    d
}

/// A bind source with a payload the container can read.
fn bind_source() -> tempfile::TempDir {
    let d = tempdir_755();
    std::fs::write(d.path().join("payload"), "from-the-source\n").unwrap();
    d
}

#[test]
fn bind_source_with_a_symlink_is_refused() {
    let outer = tempdir_755();
    std::fs::create_dir_all(outer.path().join("real/dir")).unwrap();
    std::fs::write(outer.path().join("real/dir/payload"), "x").unwrap();
    std::os::unix::fs::symlink(outer.path().join("real"), outer.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outer.path().join("real/dir"), outer.path().join("last")).unwrap();
    for (i, src) in [outer.path().join("link/dir"), outer.path().join("last")]
        .iter()
        .enumerate()
    {
        let b = Bundle::new();
        b.write(&["cat", "/m/payload"], json!([bind(src, "/m")]), None);
        let (code, out, err) = b.run(&uid(&format!("srclink{i}")));
        assert_ne!(code, 0, "a symlinked bind source was mounted: {out}");
        assert!(
            err.contains(&src.display().to_string()) && err.contains("symbolic link"),
            "the error must name the source and the symlink: {err}"
        );
        // The container never started, so nothing was created for it either.
        assert!(!b.rootfs().join("m").exists());
    }
}

#[test]
fn symlinked_destinations_stay_inside_the_rootfs() {
    let host = host_target();
    let src = bind_source();
    std::fs::write(src.path().join("file"), "single-file\n").unwrap();
    let b = Bundle::new();
    let rootfs = b.rootfs();
    // An absolute symlink to `/` and a relative one that climbs far above
    // the rootfs: both must resolve as if the rootfs were `/`.
    std::os::unix::fs::symlink("/", rootfs.join("abs")).unwrap();
    std::fs::create_dir_all(rootfs.join("a/b")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", rootfs.join("a/b/up")).unwrap();
    let h = host.path().display().to_string();
    let d1 = format!("/abs{h}/m1");
    let d2 = format!("/a/b/up{h}/m2");
    let d3 = format!("/abs{h}/f");
    let mut mounts = vec![bind(src.path(), &d1), bind(src.path(), &d2)];
    mounts.push(bind(&src.path().join("file"), &d3));
    let info = b.dir.path().join("mountinfo");
    let script = format!("cat {h}/m1/payload {h}/m2/payload {h}/f");
    b.write(
        &["sh", "-c", &script],
        json!(mounts),
        Some(Bundle::mountinfo_hook(&info)),
    );
    let (code, out, err) = b.run(&uid("dstlink"));
    assert_eq!(code, 0, "stderr: {err}");
    // The container sees the mounts at the paths it asked for...
    assert_eq!(out, "from-the-source\nfrom-the-source\nsingle-file\n");
    // ...which are inside its rootfs, not on the host.
    let inside = rootfs.join(host.path().strip_prefix("/").unwrap());
    assert!(inside.join("m1").is_dir() && inside.join("m2").is_dir());
    assert!(inside.join("f").is_file());
    assert_eq!(listing(host.path()), ["sentinel"]);
    let points = mount_points(&std::fs::read_to_string(&info).unwrap());
    for want in ["m1", "m2", "f"] {
        assert!(
            points.contains(&inside.join(want)),
            "{want} not mounted in the rootfs: {points:?}"
        );
    }
    assert!(
        !points.iter().any(|p| p.starts_with(host.path())),
        "a mount landed on the host: {points:?}"
    );
}

/// Exchanges two paths (`renameat2(RENAME_EXCHANGE)`) in a loop until stopped.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(a: PathBuf, b: PathBuf) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &a,
                    rustix::fs::CWD,
                    &b,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            swaps,
            thread: Some(thread),
        }
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs containers with a bind mount on `<dest>` (`.../vol/mnt`) while
/// another thread swaps the directory `dir` (which the container sees as
/// `.../vol`) with a symlink to a host directory, and checks after every run
/// that the host directory received nothing. `earlier` are mounts listed
/// before the raced one.
fn race(name: &str, dir: &Path, dest: &str, b: &Bundle, earlier: Vec<Value>) {
    let host = host_target();
    let src = bind_source();
    std::fs::create_dir_all(dir).unwrap();
    let link = dir.with_extension("lnk");
    std::os::unix::fs::symlink(host.path(), &link).unwrap();
    let info = b.dir.path().join("mountinfo");
    let mut mounts = earlier;
    mounts.push(bind(src.path(), dest));
    b.write(
        &["true"],
        json!(mounts),
        Some(Bundle::mountinfo_hook(&info)),
    );
    let swapper = Swapper::start(dir.to_path_buf(), link.clone());
    let started = Instant::now();
    let mut runs = 0;
    while runs < 200 && started.elapsed() < Duration::from_secs(90) {
        let _ = std::fs::remove_file(&info);
        let (code, out, err) = b.run(&format!("{}-{runs}", uid(name)));
        runs += 1;
        let entries = listing(host.path());
        assert_eq!(
            entries,
            ["sentinel"],
            "run {runs}: the host directory was changed (exit {code}, {out}{err})"
        );
        assert_eq!(code, 0, "run {runs}: {err}");
        let points = mount_points(&std::fs::read_to_string(&info).unwrap());
        assert!(
            !points.iter().any(|p| p.starts_with(host.path())),
            "run {runs}: a mount landed on the host path: {points:?}"
        );
        // And the bind did happen, inside the rootfs.
        assert!(
            points
                .iter()
                .any(|p| p.starts_with(b.rootfs()) && p.ends_with("mnt")),
            "run {runs}: the bind mount is missing: {points:?}"
        );
    }
    let swaps = swapper.swaps.load(Ordering::Relaxed);
    drop(swapper);
    eprintln!(
        "{name}: {runs} runs in {:.1} s, {swaps} swaps, host directory untouched",
        started.elapsed().as_secs_f64()
    );
    assert!(swaps > 0, "the swapper never ran");
}

#[test]
fn racing_symlink_swap_in_the_rootfs_never_reaches_the_host() {
    let b = Bundle::new();
    let dir = b.rootfs().join("vol");
    race("race-rootfs", &dir, "/vol/mnt", &b, vec![]);
}

#[test]
fn racing_symlink_swap_in_a_shared_volume_never_reaches_the_host() {
    // The swap happens in a volume directory that another container (here:
    // this test) can write to while this container is being created.
    let volume = tempdir_755();
    let b = Bundle::new();
    let dir = volume.path().join("vol");
    race(
        "race-volume",
        &dir,
        "/data/vol/mnt",
        &b,
        vec![bind(volume.path(), "/data")],
    );
}
