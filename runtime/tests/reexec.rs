//! The embedding path used by sysd: a multi-threaded process drives the
//! library, so stage 1 is started by re-executing `/proc/self/exe` (this
//! test binary), whose `main` calls `maybe_run_init` first. Runs without the
//! libtest harness so that `main` is ours. Also checks that repeated
//! create/start/wait/delete cycles leave no fds, mounts, cgroups or
//! processes in the embedding process.

use std::path::{Path, PathBuf};

fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let bb = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: install the Debian package busybox-static");
    std::fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
    for t in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
    }
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    dir
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn mounts_with(p: &Path) -> usize {
    let needle = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

fn main() {
    berth_runtime::maybe_run_init();
    // Become multi-threaded like sysd, so the runtime must re-exec.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let bg = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    assert!(threads() > 1);

    let b = bundle();
    let root = tempfile::tempdir().unwrap();
    let rt = berth_runtime::Runtime::new(root.path());
    let cycles: usize = std::env::var("BERTH_RUNTIME_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let id = format!("reexec-{}", std::process::id());
    let fd0 = fds();
    let (mut passed, mut failed) = (0, 0);
    for i in 0..cycles {
        let st = rt
            .create(&id, b.path(), berth_runtime::CreateOptions::default())
            .unwrap_or_else(|e| panic!("cycle {i}: {e:?}"));
        rt.start(&id).unwrap();
        // The container is our child (CLONE_PARENT), so we get its status.
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(st.pid), None).unwrap();
        let ok = matches!(status, nix::sys::wait::WaitStatus::Exited(_, 3));
        rt.delete(&id, false).unwrap();
        if ok {
            passed += 1;
        } else {
            failed += 1;
            eprintln!("cycle {i}: unexpected status {status:?}");
        }
    }
    let mut check = |what: &str, ok: bool| {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            eprintln!("leak check failed: {what}");
        }
    };
    check("fds", fds() == fd0);
    check("mounts", mounts_with(b.path()) == 0);
    check("state", rt.list().unwrap().is_empty());
    if let Ok(cg) = berth_runtime::cgroup::find_root() {
        check("cgroup", !cg.join("berth-runtime").join(&id).exists());
    }
    // No child process is left (no zombies, nothing running).
    check(
        "children",
        matches!(
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        ),
    );
    let _ = tx.send(());
    let _ = bg.join();
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
