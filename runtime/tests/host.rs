//! Privileged host tests: they run the real `berth-runtime` binary as root
//! against a busybox bundle (Debian package `busybox-static`) and check from
//! inside the container what a user would check.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::busybox;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");

struct Bundle {
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Bundle {
    fn new(args: &[&str], edit: impl FnOnce(&mut Value)) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by a mapped (user namespace) root.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        for t in [
            "sh", "true", "false", "cat", "echo", "sleep", "id", "hostname", "ls", "mkdir", "grep",
            "stat", "wc", "touch", "head",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
        }
        let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["process"]["env"] = json!(["PATH=/bin"]);
        spec["hostname"] = json!("berth-test");
        edit(&mut spec);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        Bundle {
            dir,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn rt(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// For commands that leave a container process behind (`create`): its
    /// stdio must not be a pipe we wait on, so stdout goes to /dev/null and
    /// stderr to a file.
    fn rt_bg(&self, args: &[&str]) -> (bool, String) {
        let errf = self.dir.path().join("stderr.log");
        let f = std::fs::File::create(&errf).unwrap();
        let st = Command::new(BIN)
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .status()
            .unwrap();
        let err = std::fs::read_to_string(&errf).unwrap_or_default();
        let _ = std::fs::remove_file(&errf);
        (st.success(), err)
    }

    fn run(&self, id: &str) -> (i32, String, String) {
        let o = self.rt(&["run", "--bundle", self.dir.path().to_str().unwrap(), id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn uid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn cgroup_dir(id: &str) -> Option<PathBuf> {
    berth_runtime::cgroup::find_root()
        .ok()
        .map(|r| r.join("berth-runtime").join(id))
}

#[test]
fn namespaces_pivot_root_and_hostname() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; ls /; cat /proc/1/cmdline",
        ],
        |_| {},
    );
    let (code, out, err) = b.run(&uid("ns"));
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("berth-test\n"), "{out}");
    // The container sees exactly its own rootfs, not the host's.
    assert!(out.contains("\nbin\ndev\netc\nproc\nsys\ntmp\n"), "{out}");
    // Its pid namespace starts with the container process.
    // (busybox sh execs its last command, so pid 1 is now `cat`.)
    assert!(out.ends_with("\ncat\0/proc/1/cmdline\0"), "{out:?}");
}

#[test]
fn exit_status_is_reported() {
    let b = Bundle::new(&["sh", "-c", "exit 7"], |_| {});
    let (code, _, _) = b.run(&uid("exit"));
    assert_eq!(code, 7);
    // A process killed by a signal: the shell reports 128+9 as its status.
    let b = Bundle::new(&["sh", "-c", "sh -c 'kill -KILL $$'; exit $?"], |_| {});
    let (code, _, _) = b.run(&uid("sig"));
    assert_eq!(code, 128 + 9);
}

#[test]
fn masked_and_readonly_paths() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "wc -c < /proc/keys; echo 1 > /proc/sys/kernel/domainname && echo WROTE; echo 1 > /sys/kernel/x 2>/dev/null || echo SYSRO",
        ],
        |_| {},
    );
    let (code, out, err) = b.run(&uid("mask"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("0\n"), "/proc/keys not masked: {out}");
    assert!(!out.contains("WROTE"), "/proc/sys writable: {out}");
    assert!(out.contains("SYSRO"), "{out}");
}

#[test]
fn capabilities_are_dropped() {
    // Only CAP_KILL (5) and CAP_NET_BIND_SERVICE (10) in every set.
    let b = Bundle::new(&["sh", "-c", "grep Cap /proc/self/status"], |s| {
        let caps = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        s["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": caps, "ambient": caps,
        });
    });
    let (code, out, err) = b.run(&uid("caps"));
    assert_eq!(code, 0, "{err}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}:\t0000000000000420")),
            "{set} wrong: {out}"
        );
    }
}

#[test]
fn non_root_user_and_no_new_privileges() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "id -u; id -g; grep -E 'NoNewPrivs|CapEff' /proc/self/status",
        ],
        |s| {
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            s["process"]["noNewPrivileges"] = json!(true);
        },
    );
    let (code, out, err) = b.run(&uid("user"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1000\n1000\n"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The spec's effective set applies to a non-root user too.
    assert!(out.contains("CapEff:\t0000000020000420"), "{out}");
}

#[test]
fn seccomp_deny_is_observed_inside() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "mkdir /dev/shm/x; echo rc=$?; touch /dev/shm/y && echo touched",
        ],
        |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        },
    );
    let (code, out, err) = b.run(&uid("seccomp"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rc=1"), "mkdir was allowed: {out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(out.contains("touched"), "{out}");
}

#[test]
fn default_profile_denies_namespaces_and_mount() {
    let b = Bundle::new(
        &["sh", "-c", "grep -E 'Seccomp:|NoNewPrivs|CapEff' /proc/self/status; mkdir -p /tmp/m; mount -t tmpfs t /tmp/m; echo mount=$?"],
        |_| {},
    );
    let o = b.rt(&[
        "run",
        "--default-profile",
        "--bundle",
        b.path().to_str().unwrap(),
        &uid("profile"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // Docker's set without CAP_MKNOD (bit 27).
    assert!(out.contains("CapEff:\t00000000a00425fb"), "{out}");
    assert!(
        out.contains("mount=255") || out.contains("mount=1"),
        "{out}"
    );
}

#[test]
fn user_namespace_with_id_maps() {
    let b = Bundle::new(&["sh", "-c", "id -u; cat /proc/self/uid_map"], |s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The rootfs must be readable by the mapped root.
    let (code, out, err) = b.run(&uid("userns"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains("100000"), "{out}");
}

#[test]
fn lifecycle_state_kill_delete_and_hooks() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat) >> {}", log.display())]});
    let b = Bundle::new(&["sleep", "30"], |s| {
        s["hooks"] = json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let id = uid("life");
    let bundle = b.path().to_str().unwrap().to_string();
    let pidfile = d.path().join("pid");
    // Flags after the container id, as runc accepts.
    let (ok, err) = b.rt_bg(&[
        "create",
        &id,
        "--bundle",
        &bundle,
        "--pid-file",
        pidfile.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let state: Value = serde_json::from_slice(&b.rt(&["state", &id]).stdout).unwrap();
    assert_eq!(state["status"], "created");
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), pid.to_string());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("prestart {"));
    assert!(b.rt(&["start", &id]).status.success());
    let state: Value = serde_json::from_slice(&b.rt(&["state", &id]).stdout).unwrap();
    assert_eq!(state["status"], "running");
    // exec sees the same namespaces.
    let o = b.rt(&["exec", &id, "hostname"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "berth-test\n");
    let ps: Vec<i32> =
        serde_json::from_slice(&b.rt(&["ps", "--format", "json", &id]).stdout).unwrap();
    if cgroup_dir(&id).is_some() {
        assert!(ps.contains(&(pid as i32)), "{ps:?}");
    }
    // delete without --force refuses a running container.
    assert!(!b.rt(&["delete", &id]).status.success());
    assert!(b.rt(&["kill", &id, "KILL"]).status.success());
    for _ in 0..200 {
        let st: Value = serde_json::from_slice(&b.rt(&["state", &id]).stdout).unwrap();
        if st["status"] == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = b.rt(&["delete", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    for h in ["prestart", "createRuntime", "poststart", "poststop"] {
        assert!(text.contains(&format!("{h} {{")), "{h} missing: {text}");
    }
    assert!(!b.rt(&["state", &id]).status.success());
    if let Some(cg) = cgroup_dir(&id) {
        assert!(!cg.exists());
    }
}

fn assert_rejected(b: &Bundle, id: &str, needle: &str) {
    let (ok, err) = b.rt_bg(&["create", "--bundle", b.path().to_str().unwrap(), id]);
    assert!(!ok, "accepted: {id}");
    assert!(
        err.contains(needle),
        "error does not name {needle:?}: {err}"
    );
    // Nothing left behind.
    let left: Vec<_> = std::fs::read_dir(b.root.path())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left behind: {left:?}");
    if !id.contains('/') && id != ".." {
        if let Some(cg) = cgroup_dir(id) {
            assert!(!cg.exists(), "cgroup left behind");
        }
    }
}

#[test]
fn bad_input_is_rejected_cleanly() {
    let b = Bundle::new(&["true"], |_| {});
    assert_rejected(&b, "a/b", "'/'");
    assert_rejected(&b, "..", "'..'");
    let b = Bundle::new(&["true"], |s| {
        s["linux"]["namespaces"][0]["type"] = json!("bogus")
    });
    assert_rejected(&b, &uid("badns"), "linux.namespaces[0].type");
    let b = Bundle::new(&["true"], |s| s["root"]["path"] = json!("missing"));
    assert_rejected(&b, &uid("noroot"), "root.path");
    let b = Bundle::new(&["true"], |s| {
        s["linux"]["resources"] = json!({"memory": {"limit": -9}})
    });
    assert_rejected(&b, &uid("limit"), "linux.resources.memory.limit");
    let b = Bundle::new(&["true"], |_| {});
    std::fs::write(
        b.path().join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", \"process\": [",
    )
    .unwrap();
    assert_rejected(&b, &uid("malformed"), "config.json");
    let b = Bundle::new(&["/no/such/binary"], |_| {});
    assert_rejected(&b, &uid("nobin"), "process.args[0]");
}

/// Mounts in the host namespace that involve the bundle.
fn mount_count(bundle: &Path) -> usize {
    let needle = bundle.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// create/start/delete cycles leave no mounts, cgroups, fds or processes.
/// `BERTH_RUNTIME_LEAK_CYCLES` sets the count (default 200; the issue's
/// figure of 1000 is run by `make` targets outside the timed unit tests).
#[test]
fn no_leaks_after_many_cycles() {
    let cycles: usize = std::env::var("BERTH_RUNTIME_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let b = Bundle::new(&["true"], |_| {});
    let bundle = b.path().to_str().unwrap().to_string();
    let id = uid("leak");
    let mounts = mount_count(b.path());
    assert_eq!(mounts, 0);
    let mut last_pid = 0;
    let rt = berth_runtime::Runtime::new(b.root.path());
    for i in 0..cycles {
        let (ok, err) = b.rt_bg(&["create", "--bundle", &bundle, &id]);
        assert!(ok, "cycle {i}: {err}");
        if i + 1 == cycles {
            last_pid = rt.state(&id).unwrap().pid;
        }
        let o = b.rt(&["start", &id]);
        assert!(
            o.status.success(),
            "cycle {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = b.rt(&["delete", "--force", &id]);
        assert!(
            o.status.success(),
            "cycle {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(mount_count(b.path()), mounts, "mounts leaked");
    assert!(rt.list().unwrap().is_empty());
    if let Some(cg) = cgroup_dir(&id) {
        assert!(!cg.exists(), "cgroup leaked");
    }
    // The last container's init is gone.
    assert!(
        !Path::new(&format!("/proc/{last_pid}")).exists() || {
            let st = std::fs::read_to_string(format!("/proc/{last_pid}/stat")).unwrap_or_default();
            st.contains(") Z")
        },
        "container process {last_pid} still running"
    );
}

/// Accepts one console-socket connection on `listener` and reads the pty master it
/// receives until the output contains `until` (or the slave side closes).
fn read_console(
    listener: std::os::unix::net::UnixListener,
    until: &'static str,
) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        // SAFETY: the fd was just received over SCM_RIGHTS and is owned by us.
        #[allow(unsafe_code)]
        let master = unsafe { OwnedFd::from_raw_fd(fd.expect("no fd received")) };
        let mut f = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        // Read until the slave side closes (EIO) or enough arrived.
        while let Ok(n) = f.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&out).contains(until) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn terminal_via_console_socket() {
    let b = Bundle::new(&["sh", "-c", "tty; echo hello-from-pty"], |s| {
        s["process"]["terminal"] = json!(true);
    });
    let sockdir = tempfile::tempdir().unwrap();
    let sock_path = sockdir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let id = uid("tty");
    let bundle = b.path().to_str().unwrap().to_string();
    let receiver = read_console(listener, "hello-from-pty");
    let (ok, err) = b.rt_bg(&[
        "create",
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--bundle",
        &bundle,
        &id,
    ]);
    assert!(ok, "{err}");
    assert!(b.rt(&["start", &id]).status.success());
    let out = receiver.join().unwrap();
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("hello-from-pty"), "{out}");
    for _ in 0..200 {
        if b.rt(&["delete", &id]).status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("container did not stop");
}

/// `exec --tty`: the console socket is a path in the caller's mount namespace (the
/// container's rootfs has no such path), and the process gets its own pty there.
#[test]
fn exec_with_terminal_via_console_socket() {
    let b = Bundle::new(&["sleep", "100"], |_| {});
    let id = uid("exectty");
    let bundle = b.path().to_str().unwrap().to_string();
    let (ok, err) = b.rt_bg(&["create", "--bundle", &bundle, &id]);
    assert!(ok, "{err}");
    assert!(b.rt(&["start", &id]).status.success());
    let sockdir = tempfile::tempdir().unwrap();
    let sock_path = sockdir.path().join("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let receiver = read_console(listener, "hello-from-exec");
    let (ok, err) = b.rt_bg(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        sock_path.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; echo hello-from-exec",
    ]);
    assert!(ok, "{err}");
    let out = receiver.join().unwrap();
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("hello-from-exec"), "{out}");
    assert!(b.rt(&["delete", "--force", &id]).status.success());
}

#[test]
fn create_container_and_start_container_hooks() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("cc.log");
    let b = Bundle::new(&["cat", "/dev/shm/started"], |s| {
        s["hooks"] = json!({
            // Runs in the container's namespaces, before pivot_root: host paths resolve.
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!("readlink /proc/self/ns/mnt > {}", log.display())]}],
            // Runs in the container after start, before the process: container paths.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/shm/started"]}],
        });
    });
    let id = uid("cchooks");
    let (code, out, err) = b.run(&id);
    assert_eq!(code, 0, "{err}");
    // The createContainer hook ran in the container's mount namespace.
    let hook_ns = std::fs::read_to_string(&log).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert!(hook_ns.starts_with("mnt:["), "{hook_ns}");
    assert_ne!(hook_ns.trim(), ours.to_string_lossy());
    // The startContainer hook got the state on stdin.
    assert!(out.contains(&format!("\"id\":\"{id}\"")), "{out}");
    assert!(out.contains("\"status\":\"running\""), "{out}");
}

#[test]
fn run_forwards_signals_to_the_container() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 5' TERM; echo ready; sleep 20 & wait",
        ],
        |_| {},
    );
    let mut child = Command::new(BIN)
        .arg("--root")
        .arg(b.root.path())
        .args([
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &uid("sigfwd"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(status.code(), Some(5), "{rest}");
    assert!(rest.contains("got-term"), "{rest}");
}
