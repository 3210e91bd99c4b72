//! Whole-system test of sysd and osctl: the system container from the shipped images,
//! a workload pulled from a real registry on loopback, logs, stats, exec, restart
//! policy, crash-loop reporting, cgroup v2 limits (memory.max, pids.max, cpu.max), a
//! sysd crash that leaves containers running, and a reboot that brings `osctl run`
//! workloads back.

use berth_tests::registry::{LocalRegistry, GUEST_REGISTRY};
use berth_tests::*;
use serde_json::Value;
use std::time::Duration;

fn container<'a>(ps: &'a Value, name: &str) -> Option<&'a Value> {
    ps.as_array()?.iter().find(|c| c["name"] == name)
}

fn stats_of(vm: &Vm, name: &str) -> Value {
    let stats = vm.osctl_json(&["stats"]);
    container(&stats, name)
        .cloned()
        .unwrap_or_else(|| panic!("no stats for {name}: {stats:#}"))
}

fn state(vm: &Vm, name: &str) -> (String, i64, Value) {
    let ps = vm.osctl_json(&["ps"]);
    let c = container(&ps, name).cloned().unwrap_or(Value::Null);
    (
        c["state"].as_str().unwrap_or("").to_string(),
        c["pid"].as_i64().unwrap_or(0),
        c,
    )
}

/// A host program run in a pseudo-terminal by util-linux `script` (sized 33 x 101), its
/// keystrokes written to `script`'s input and its output collected as it comes.
struct Terminal {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    fn start(argv: &[String]) -> Terminal {
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r#"'\''"#)))
            .collect();
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qefc"])
            .arg(format!("stty rows 33 cols 101; exec {}", quoted.join(" ")))
            .arg("/dev/null");
        Terminal::spawn(cmd)
    }

    /// Any program, its output collected as it comes (no terminal unless it makes one).
    fn spawn(mut cmd: std::process::Command) -> Terminal {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a host program");
        let input = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let o = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            child,
            input,
            output,
        }
    }

    fn type_text(&mut self, text: &str) {
        use std::io::Write;
        self.input.write_all(text.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let start = std::time::Instant::now();
        while !self.text().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} in the terminal after {timeout:?}: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                start.elapsed() < timeout,
                "osctl did not exit: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `osctl exec` from a terminal: a shell with a pty of its own in the admin container,
/// the host terminal's size, output streamed while the command runs, typed input, ^C
/// reaching the command, the exit status; and a killed osctl leaves no process behind.
/// (Nothing else may talk to the VM meanwhile: its host channel serves one client.)
fn exec_in_a_terminal(vm: &Vm) {
    let mut argv = vm.osctl_argv();
    argv.extend(["exec", "admin", "--", "sh"].map(String::from));
    let t0 = std::time::Instant::now();
    let mut term = Terminal::start(&argv);
    term.type_text("stty size; tty; echo marker-$((6*7))\r");
    term.wait_for("marker-42", Duration::from_secs(30));
    eprintln!(
        "FIGURE osctl exec in a terminal: first command's output after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let out = term.text();
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // Output streams while the command still runs, and the command reads what is typed.
    term.type_text("echo ready-$((2+2)); read line; echo got-$line\r");
    term.wait_for("ready-4", Duration::from_secs(20));
    term.type_text("typed\r");
    term.wait_for("got-typed", Duration::from_secs(20));
    // ^C interrupts the remote command (the shell drops the rest of the line), not osctl.
    term.type_text("sleep 120; echo slept\r");
    std::thread::sleep(Duration::from_secs(2));
    let t = std::time::Instant::now();
    term.type_text("\x03");
    term.type_text("echo after-$((1+1))\r");
    term.wait_for("after-2", Duration::from_secs(20));
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(!term.text().contains("\nslept\r"), "{:?}", term.text());
    term.type_text("exit 5\r");
    assert_eq!(term.wait_exit(Duration::from_secs(30)), Some(5));

    // A killed osctl: the command it started is killed once the machine notices.
    let mut argv = vm.osctl_argv();
    argv.extend(
        [
            "exec",
            "admin",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 4242",
        ]
        .map(String::from),
    );
    let mut term = Terminal::start(&argv);
    term.wait_for("started", Duration::from_secs(30));
    // `script` runs osctl as its child (exec): kill that.
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-P", &term.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "osctl was not found to kill");
    let _ = term.wait_exit(Duration::from_secs(10));
    vm.wait_for(
        "the orphaned exec command to end",
        Duration::from_secs(30),
        || {
            let ps = vm.osctl_ok(&["exec", "-T", "admin", "--", "ps"]);
            (!ps.contains("sleep 4242")).then_some(())
        },
    );
}

#[test]
fn containers_run_log_restart_and_survive() {
    let image = image();
    let dir = root().join("target/system-tests/containers-registry");
    let reg = LocalRegistry::start(&dir);
    reg.push_busybox(
        std::path::Path::new("/bin/busybox"),
        "amd64",
        "test/busybox:1",
    );
    let cfg = dir.join("berth.toml");
    std::fs::write(
        &cfg,
        format!("[registries.\"{GUEST_REGISTRY}\"]\ninsecure = true\n"),
    )
    .unwrap();
    let vm = Vm::boot(
        "containers",
        &image,
        &BootOpts {
            config: Some(cfg),
            extra: vec!["--registry-port".into(), reg.port.to_string()],
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);

    // System containers from the shipped images come up by themselves.
    let ps = vm.wait_for(
        "system containers running",
        Duration::from_secs(120),
        || {
            let ps = vm.osctl_json(&["ps"]);
            let up = |n: &str| container(&ps, n).is_some_and(|c| c["state"] == "running");
            up("admin").then_some(ps)
        },
    );
    assert_eq!(container(&ps, "admin").unwrap()["kind"], "system", "{ps:#}");
    let text = vm.osctl_ok(&["ps"]);
    assert!(text.starts_with("NAME"), "{text}");
    // exec in the debug image; the default profile is in force (no CAP_SYS_ADMIN, no
    // CAP_MKNOD: Docker's set minus MKNOD).
    let out = vm.osctl_ok(&[
        "exec",
        "admin",
        "--",
        "sh",
        "-c",
        "echo hi-from-admin; grep CapEff /proc/self/status",
    ]);
    assert!(out.contains("hi-from-admin"), "{out}");
    assert!(out.contains("CapEff:\t00000000a00425fb"), "{out}");
    let out = vm.osctl(&["exec", "admin", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    exec_in_a_terminal(&vm);

    // Figures: osctl round trip over virtio-serial, and init + sysd memory.
    let t = std::time::Instant::now();
    for _ in 0..10 {
        vm.osctl_ok(&["status"]);
    }
    let st = vm.status();
    eprintln!(
        "FIGURE osctl round trip {:.0} ms (mean of 10 `status`); RSS init {} KiB + sysd {} KiB",
        t.elapsed().as_secs_f64() * 100.0,
        st["init_rss_kib"],
        st["sysd_rss_kib"]
    );
    assert!(st["sysd_rss_kib"].as_u64().unwrap() > 0, "{st:#}");

    // A workload from a shipped image.
    let t = std::time::Instant::now();
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "tool",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "echo from-shipped-image",
    ]);
    vm.wait_for(
        "output of the shipped-image workload",
        Duration::from_secs(60),
        || {
            vm.osctl_ok(&["logs", "tool"])
                .contains("from-shipped-image")
                .then_some(())
        },
    );
    eprintln!(
        "FIGURE osctl run -> first output {:.2} s (shipped image)",
        t.elapsed().as_secs_f64()
    );
    vm.wait_for("tool exited", Duration::from_secs(30), || {
        (state(&vm, "tool").0 == "exited").then_some(())
    });
    vm.osctl_ok(&["rm", "tool"]);

    // A memory-limited workload that exceeds its limit is OOM-killed, and ps says so.
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "hog",
        "--memory",
        "16M",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    let c = vm.wait_for("the OOM kill reported", Duration::from_secs(60), || {
        let (st, _, c) = state(&vm, "hog");
        (st == "failed").then_some(c)
    });
    assert!(
        c["message"].as_str().unwrap_or("").contains("OOM-killed"),
        "{c:#}"
    );
    assert_eq!(c["exit_code"], 137, "{c:#}");
    vm.osctl_ok(&["rm", "hog"]);

    // pids.max stops a fork bomb: a subshell forking 40 sleepers under a limit of 16
    // fails to fork, the container stays within its limit and the node is unaffected.
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "forker",
        "--pids",
        "16",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "( i=0; while [ $i -lt 40 ]; do sleep 300 & i=$((i+1)); done ); echo \"fork loop ended: $?\"; exec sleep 300",
    ]);
    let logs = vm.wait_for("the fork refused", Duration::from_secs(60), || {
        let l = vm.osctl_ok(&["logs", "forker"]);
        l.contains("fork loop ended").then_some(l)
    });
    assert!(logs.contains("can't fork"), "{logs}");
    assert!(!logs.contains("fork loop ended: 0"), "{logs}");
    let s = stats_of(&vm, "forker");
    assert_eq!(s["pids_max"], 16, "{s:#}");
    let pids = s["pids"].as_u64().unwrap_or(0);
    assert!((10..=16).contains(&pids), "{s:#}");
    eprintln!("FIGURE fork bomb under pids.max=16: {pids} processes, fork refused");
    vm.osctl_ok(&["rm", "--force", "forker"]);

    // cpu.max throttles: a busy loop limited to 0.2 CPU gets about a fifth of a CPU.
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "spinner",
        "--cpus",
        "0.2",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    vm.wait_for("the spinner running", Duration::from_secs(30), || {
        (state(&vm, "spinner").0 == "running").then_some(())
    });
    let used = |s: &Value| s["cpu_usec"].as_u64().unwrap_or(0) as f64 / 1e6;
    let (c0, t0) = (used(&stats_of(&vm, "spinner")), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(8));
    let (c1, wall) = (used(&stats_of(&vm, "spinner")), t0.elapsed().as_secs_f64());
    let share = (c1 - c0) / wall;
    eprintln!("FIGURE cpu.max 0.2: the busy loop used {share:.3} CPU over {wall:.1} s");
    assert!(share > 0.05 && share < 0.3, "cpu share {share:.3}");
    vm.osctl_ok(&["rm", "--force", "spinner"]);

    // A workload from the registry with a memory limit and a volume.
    let web = format!("{GUEST_REGISTRY}/test/busybox:1");
    let script = "echo hello-from-web $FROM_IMAGE $GREETING; echo persisted > /data/file; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";
    vm.osctl_ok(&[
        "run",
        &web,
        "--name",
        "web",
        "--memory",
        "64M",
        "--env",
        "GREETING=hi",
        "--volume",
        "webdata:/data",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let (st, web_pid, c) = state(&vm, "web");
    assert_eq!(st, "running", "{c:#}");
    assert!(web_pid > 0);
    let logs = vm.wait_for("web output in its log", Duration::from_secs(60), || {
        let l = vm.osctl_ok(&["logs", "web"]);
        (l.contains("tick 2")).then_some(l)
    });
    assert!(logs.contains("hello-from-web yes hi"), "{logs}");
    let tail = vm.osctl_ok(&["logs", "--tail", "1", "web"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // `logs -f` follows: lines written after it started arrive while it runs. (Alone on
    // the VM's host channel until it is stopped.)
    let last: u64 = tail
        .trim()
        .rsplit_once("tick ")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tick line: {tail:?}"));
    let argv = vm.osctl_argv();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .args(["logs", "-f", "--tail", "1", "web"]);
    let mut follow = Terminal::spawn(cmd);
    follow.wait_for(&format!("tick {}\n", last + 3), Duration::from_secs(30));
    follow.child.kill().unwrap();
    let _ = follow.child.wait();
    let s = stats_of(&vm, "web");
    assert_eq!(s["memory_max"], 64 << 20, "{s:#}");
    assert!(s["pids"].as_u64().unwrap() >= 1, "{s:#}");
    let images = vm.osctl_ok(&["images"]);
    assert!(images.contains("test/busybox:1"), "{images}");

    // Restart policy: a container that keeps failing is reported as a crash loop.
    let out = vm.osctl(&[
        "run",
        &web,
        "--name",
        "crasher",
        "--",
        "sh",
        "-c",
        "echo dying; exit 3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = vm.wait_for("crash loop reported", Duration::from_secs(90), || {
        let (_, _, c) = state(&vm, "crasher");
        (c["restarts"].as_u64().unwrap_or(0) >= 3
            && c["message"].as_str().unwrap_or("").contains("crash loop"))
        .then_some(c)
    });
    assert_eq!(c["exit_code"], 3, "{c:#}");
    vm.osctl_ok(&["rm", "--force", "crasher"]);

    // The workload's process killed from outside (from an exec): restarted per its
    // policy (`always`, the default of `osctl run`).
    vm.osctl_ok(&[
        "run",
        &web,
        "--name",
        "victim",
        "--",
        "sh",
        "-c",
        "echo started; sleep 600 & echo $! > /tmp/work.pid; wait $!",
    ]);
    vm.wait_for("victim started", Duration::from_secs(60), || {
        vm.osctl_ok(&["logs", "victim"])
            .contains("started")
            .then_some(())
    });
    vm.osctl_ok(&[
        "exec",
        "victim",
        "--",
        "sh",
        "-c",
        "kill -KILL $(cat /tmp/work.pid)",
    ]);
    let c = vm.wait_for("victim restarted", Duration::from_secs(60), || {
        let (st, _, c) = state(&vm, "victim");
        let again = vm.osctl_ok(&["logs", "victim"]).matches("started").count() >= 2;
        (st == "running" && c["restarts"].as_u64().unwrap_or(0) >= 1 && again).then_some(c)
    });
    assert_eq!(c["exit_code"], 128 + 9, "{c:#}");
    vm.osctl_ok(&["rm", "--force", "victim"]);

    // stop/start.
    vm.osctl_ok(&["stop", "web"]);
    assert_eq!(state(&vm, "web").0, "stopped");
    vm.osctl_ok(&["start", "web"]);
    let (st, web_pid, _) = state(&vm, "web");
    assert_eq!(st, "running");

    // sysd dies: PID 1 restarts it, the container keeps running and is adopted, with
    // its uptime counted from its process start, not from the adoption.
    let up_before = vm.wait_for("web up for 3 s", Duration::from_secs(30), || {
        let up = state(&vm, "web").2["uptime_seconds"]
            .as_f64()
            .unwrap_or(0.0);
        (up >= 3.0).then_some(up)
    });
    vm.osctl_ok(&["debug", "kill-sysd"]);
    vm.wait_serial("sysd ready again", Duration::from_secs(120));
    // The API answers before the containers are adopted (the bridge is set up first).
    let (st, pid_after, c) = vm.wait_for("web adopted", Duration::from_secs(60), || {
        let s = state(&vm, "web");
        (!s.0.is_empty()).then_some(s)
    });
    assert_eq!((st.as_str(), pid_after), ("running", web_pid), "{c:#}");
    let up_after = c["uptime_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        up_after >= up_before,
        "uptime {up_before} s before the sysd restart, {up_after} s after: {c:#}"
    );
    let before = vm.osctl_ok(&["logs", "web"]).matches("tick").count();
    let more = vm.wait_for(
        "web logs after sysd restart",
        Duration::from_secs(60),
        || {
            let n = vm.osctl_ok(&["logs", "web"]).matches("tick").count();
            (n > before + 2).then_some(n)
        },
    );
    assert!(more > before);

    // Reboot: the `osctl run` workload comes back, its volume kept its data.
    vm.osctl_ok(&["reboot"]);
    vm.wait_serial_n("berth: ready", 2, BOOT_TIMEOUT);
    vm.wait_for("web running after reboot", Duration::from_secs(120), || {
        (state(&vm, "web").0 == "running").then_some(())
    });
    let out = vm.osctl_ok(&["exec", "web", "--", "cat", "/data/file"]);
    assert_eq!(out.trim(), "persisted");

    // rm refuses a running workload without --force; rmi refuses an image in use.
    assert!(!vm.osctl(&["rm", "web"]).status.success());
    assert!(!vm.osctl(&["rmi", &web]).status.success());
    vm.osctl_ok(&["rm", "--force", "web"]);
    assert!(state(&vm, "web").0.is_empty());
    vm.osctl_ok(&["rmi", &web]);
    assert!(!vm.osctl_ok(&["images"]).contains("test/busybox"));

    // Errors are clear and disturb nothing.
    let out = vm.osctl(&["stop", "no-such"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no container named"));
    let out = vm.osctl(&[
        "run",
        &format!("{GUEST_REGISTRY}/test/missing:1"),
        "--name",
        "ghost",
    ]);
    assert!(!out.status.success());
    assert!(state(&vm, "ghost").0.is_empty());
    assert_eq!(state(&vm, "admin").0, "running");

    // poweroff stops the containers (sysd well within PID 1's budget) and QEMU exits.
    vm.osctl_ok(&["poweroff"]);
    assert!(vm.wait_exit(Duration::from_secs(90)), "QEMU did not exit");
    let log = vm.serial();
    assert!(log.contains("sysd stopped"), "sysd did not stop in order");
    assert!(
        !log.contains("sysd did not stop within"),
        "PID 1 had to kill sysd"
    );
}
