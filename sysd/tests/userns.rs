//! Privileged host test (root, Linux >= 5.19, busybox from the Debian package
//! `busybox-static`): a `user_namespace = true` container end to end, the way sysd starts
//! it. A busybox layer owned by the host's root is mounted as an idmapped overlay, the
//! bundle comes from `bundle::build`, and the integrated runtime runs it; the container's
//! root sees the layer's files as its own and its writes land in the upper dir owned by
//! the range's first host id. Also times the start of the same container with and
//! without the user namespace (`BERTH_USERNS_BENCH=N` runs each N times; default 0).
//! Runs without the libtest harness: the runtime re-executes this binary as the
//! container's init, so `main` must be ours.

use berth_sysd::containers::{bundle, mount_idmapped_overlay, userns};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn busybox() -> PathBuf {
    ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: install the Debian package busybox-static")
}

fn uid_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .uid()
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts the rootfs of container dir `c` over `layer`, writes its bundle, runs `script`
/// to the end; returns (exit code, stdout+stderr, time from create to exit).
fn run(
    rt: &berth_runtime::Runtime,
    c: &Path,
    layer: &Path,
    name: &str,
    script: &str,
    id_base: Option<u32>,
) -> (i32, String, Duration) {
    let (upper, work, rootfs) = (c.join("upper"), c.join("work"), c.join("rootfs"));
    let _ = fs::remove_dir_all(c);
    for p in [&upper, &work, &rootfs] {
        fs::create_dir_all(p).unwrap();
    }
    let t0 = Instant::now();
    match id_base {
        Some(b) => mount_idmapped_overlay(
            &[layer.to_path_buf()],
            &upper,
            &work,
            &c.join("layers"),
            &rootfs,
            b,
        )
        .unwrap(),
        None => nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::MS_NODEV,
            Some(
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    layer.display(),
                    upper.display(),
                    work.display()
                )
                .as_str(),
            ),
        )
        .unwrap(),
    }
    let _guard = Unmount(rootfs.clone());
    let def = format!(
        "name = \"{name}\"\nimage = \"admin\"\nnetwork = \"none\"\nuser_namespace = {}\ncommand = [\"sh\", \"-c\", {script:?}]\n",
        id_base.is_some()
    );
    let spec = berth_config::parse_workload(&def).unwrap();
    let img = berth_registry::ImageConfig::parse(
        br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]}}"#,
    )
    .unwrap();
    let oci = bundle::build(
        &spec,
        &bundle::Inputs {
            rootfs: &rootfs,
            image: &img,
            volumes_dir: Path::new("/nonexistent"),
            id_base,
            net_files: None,
        },
    )
    .unwrap();
    fs::write(c.join("config.json"), serde_json::to_vec(&oci).unwrap()).unwrap();
    let out = c.join("out");
    let f = fs::File::create(&out).unwrap();
    let stdio = berth_runtime::Stdio3 {
        stdin: fs::File::open("/dev/null").unwrap().into(),
        stdout: f.try_clone().unwrap().into(),
        stderr: f.into(),
    };
    let st = rt
        .create(
            name,
            c,
            berth_runtime::CreateOptions {
                cgroup_parent: Some("berth-test".into()),
                stdio: Some(stdio),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
    rt.start(name).unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(st.pid), None).unwrap();
    let took = t0.elapsed();
    let code = match status {
        nix::sys::wait::WaitStatus::Exited(_, c) => c,
        other => panic!("{name}: {other:?}"),
    };
    rt.delete(name, true).unwrap();
    (code, fs::read_to_string(&out).unwrap(), took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    berth_runtime::maybe_run_init();
    let d = tempfile::tempdir().unwrap();
    // The mapped root must be able to reach the bundle.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let layer = d.path().join("layer");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::create_dir_all(layer.join("home/u")).unwrap();
    fs::copy(busybox(), layer.join("bin/busybox")).unwrap();
    for t in ["sh", "id", "stat", "cat", "touch", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(t)).unwrap();
    }
    fs::write(layer.join("etc/root-file"), "layer\n").unwrap();
    std::os::unix::fs::chown(layer.join("home/u"), Some(1000), Some(1000)).unwrap();
    let rt_root = d.path().join("rt");
    let rt = berth_runtime::Runtime::new(&rt_root);
    let base = userns::FIRST + 5 * userns::SIZE;
    let name = format!("userns-{}", std::process::id());
    let c = d.path().join("c");

    let script = "id -u; id -g; stat -c %u /etc/root-file /home/u /; \
                  cat /proc/self/uid_map; echo changed > /etc/root-file; touch /new";
    let (code, out, _) = run(&rt, &c, &layer, &name, script, Some(base));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    // Inside: root, and the layer's files belong to it (uid 0 and 1000 as on disk).
    assert_eq!(&lines[..5], ["0", "0", "0", "1000", "0"], "{out}");
    let map: Vec<&str> = lines[5].split_whitespace().collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"], "{out}");
    // On the host: its writes (a copy-up and a new file) belong to the range.
    let upper = c.join("upper");
    assert_eq!(uid_of(&upper.join("etc/root-file")), base);
    assert_eq!(uid_of(&upper.join("new")), base);
    assert_eq!(uid_of(&upper), base);
    // The shared layer is untouched.
    assert_eq!(uid_of(&layer.join("etc/root-file")), 0);
    assert_eq!(
        fs::read_to_string(layer.join("etc/root-file")).unwrap(),
        "layer\n"
    );
    println!("userns container: ok ({out:?})");

    // The same script without a user namespace still runs as the host's root.
    let (code, out, _) = run(
        &rt,
        &c,
        &layer,
        &name,
        "id -u; stat -c %u /etc/root-file",
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "0\n0\n");
    assert_eq!(uid_of(&c.join("upper")), 0);
    println!("plain container: ok");

    let n: usize = std::env::var("BERTH_USERNS_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if n > 0 {
        let (mut plain, mut user) = (Vec::new(), Vec::new());
        for _ in 0..n {
            plain.push(run(&rt, &c, &layer, &name, "true", None).2);
            user.push(run(&rt, &c, &layer, &name, "true", Some(base)).2);
        }
        println!(
            "start to exit of `true`, median of {n}: plain {:?}, user namespace {:?}",
            median(plain),
            median(user)
        );
    }
    let _ = fs::remove_dir_all(d.path().join("rt"));
}
