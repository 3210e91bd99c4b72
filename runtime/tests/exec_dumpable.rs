//! Privileged host test: the `exec` helper (stage 1 of `berth-runtime exec`)
//! is non-dumpable while it joins the container's namespaces, so a process
//! in the container cannot ptrace it before its seccomp filter is installed.
//!
//! Setup: a container with its own user namespace (root mapped to 100000),
//! `CAP_SYS_PTRACE` in that namespace, and the host's pid namespace and
//! `/proc` (bind mount), so the helper is visible from inside. The container
//! process is a small static C program (built here with `cc -static`) that
//! watches `/proc` for `berth-runtime` processes whose parent is also a
//! `berth-runtime` (the helper, and its clone before execve) and tries
//! `PTRACE_SEIZE` on them, while the test runs `exec` in a loop. Once the
//! helper has joined the container's user namespace, a dumpable helper is
//! attachable (the container holds `CAP_SYS_PTRACE` over that namespace);
//! the non-dumpable one is not, since the helper's mm belongs to the
//! initial user namespace. Without `prctl(PR_SET_DUMPABLE, 0)` in
//! `InitPlan::Exec` this test sees attaches; with it, none.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::busybox;

const BIN: &str = env!("CARGO_BIN_EXE_berth-runtime");

/// The tracer. argv[1]: log file. Writes `ready`, then `attached PID` for
/// every successful seize and, every 200 ms, `stats CANDIDATES EPERM`.
const TRACER_C: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int read_small(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return 0;
}

static int is_runtime(int pid) {
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    if (read_small(path, buf, sizeof buf) < 0) return 0;
    return strcmp(buf, "berth-runtime\n") == 0;
}

static int parent_of(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_small(path, buf, sizeof buf) < 0) return -1;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    int ppid = -1;
    char state;
    if (sscanf(p + 1, " %c %d", &state, &ppid) != 2) return -1;
    return ppid;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *log = fopen(argv[1], "a");
    if (!log) return 3;
    setvbuf(log, NULL, _IOLBF, 0);
    fprintf(log, "ready\n");
    long candidates = 0, eperm = 0;
    int last = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        DIR *d = opendir("/proc");
        if (!d) return 4;
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid == getpid() || !is_runtime(pid)) continue;
            int ppid = parent_of(pid);
            if (ppid <= 0 || !is_runtime(ppid)) continue;
            if (pid != last) candidates++;
            last = pid;
            /* Keep trying this one until it is gone, execs, or we attach. */
            for (int i = 0; i < 20000 && is_runtime(pid); i++) {
                if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
                    fprintf(log, "attached %d\n", pid);
                    ptrace(PTRACE_INTERRUPT, pid, 0, 0);
                    int st;
                    waitpid(pid, &st, __WALL);
                    ptrace(PTRACE_DETACH, pid, 0, 0);
                    break;
                }
                if (errno == ESRCH) break;
                if (errno == EPERM) eperm++;
            }
        }
        closedir(d);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > 200) {
            fprintf(log, "stats %ld %ld\n", candidates, eperm);
            t0 = t;
        }
    }
}
"#;

/// Builds the tracer as a static binary at `out`.
fn build_tracer(work: &Path, out: &Path) {
    let src = work.join("tracer.c");
    std::fs::write(&src, TRACER_C).unwrap();
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .expect("running cc (install gcc and libc6-dev)");
    assert!(
        o.status.success(),
        "cc -static failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Container {
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
    id: String,
}

impl Container {
    fn rt(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rootfs/tmp/tracer.log")).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.rt(&["delete", "--force", &self.id]);
    }
}

fn start_tracer_container() -> Container {
    let dir = tempfile::tempdir().unwrap();
    let perm = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    // Traversable by the mapped root; /tmp writable by it.
    perm(dir.path(), 0o755);
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    perm(&rootfs.join("tmp"), 0o1777);
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    build_tracer(dir.path(), &rootfs.join("bin/tracer"));

    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/bin/tracer", "/tmp/tracer.log"]);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    let caps = json!(["CAP_SYS_PTRACE", "CAP_KILL"]);
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    spec["hostname"] = json!("dumpable-test");
    spec["root"]["readonly"] = json!(false);
    // The host's pid namespace (so the helper is visible), everything else new.
    spec["linux"]["namespaces"] = json!([
        {"type": "user"}, {"type": "mount"}, {"type": "network"},
        {"type": "ipc"}, {"type": "uts"},
    ]);
    spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // A new procfs for the host pid namespace cannot be mounted from the
    // user namespace: bind the host's.
    spec["mounts"] = json!([
        {"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
    ]);
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    if let Some(l) = spec["linux"].as_object_mut() {
        l.remove("seccomp");
        l.remove("resources");
    }
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let c = Container {
        id: format!("dumpable-{}", std::process::id()),
        root: tempfile::tempdir().unwrap(),
        dir,
    };
    let errf = c.dir.path().join("stderr.log");
    let st = Command::new(BIN)
        .arg("--root")
        .arg(c.root.path())
        .args(["run", "--detach", "--bundle"])
        .arg(c.dir.path())
        .arg(&c.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "run: {}",
        std::fs::read_to_string(&errf).unwrap_or_default()
    );
    let t = Instant::now();
    while !c.log().contains("ready") {
        if t.elapsed() > Duration::from_secs(10) {
            let st = c.rt(&["state", &c.id]);
            panic!(
                "tracer not ready: {} {}",
                String::from_utf8_lossy(&st.stdout),
                std::fs::read_to_string(&errf).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

#[test]
fn exec_helper_cannot_be_ptraced_from_the_container() {
    let c = start_tracer_container();
    let state: Value = serde_json::from_slice(&c.rt(&["state", &c.id]).stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    let n: usize = std::env::var("BERTH_RUNTIME_EXEC_DUMPABLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for _ in 0..n {
        let o = c.rt(&["exec", &c.id, "/bin/true"]);
        assert!(
            o.status.success(),
            "exec: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = c.log();
    let attached = log.lines().filter(|l| l.starts_with("attached")).count();
    let last_stats = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stats "))
        .unwrap_or("0 0")
        .to_string();
    let mut it = last_stats.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
    let (candidates, eperm) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    eprintln!(
        "{n} execs: tracer saw {candidates} helper processes, {eperm} EPERM, {attached} attached"
    );
    // The tracer must have been watching: it saw the helpers and was refused.
    assert!(
        candidates as usize >= n / 4,
        "tracer saw only {candidates} helpers in {n} execs: {log}"
    );
    assert!(eperm > 0, "{log}");
    assert_eq!(attached, 0, "the exec helper was ptraced: {log}");
}
