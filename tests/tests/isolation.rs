//! Whole-system escape probes (issue 16): in the booted VM, workloads from the shipped
//! `admin` image try what a hostile root workload would try to reach the host, and every
//! attempt must fail. `berth-probe` (tests/probe, a static binary) makes the attempts at
//! the system-call level: mknod + read + open-for-writing of every block device in
//! /proc/partitions and of /dev/mem, /dev/kmem, /dev/port (on the rootfs, on /dev, and on
//! a fresh tmpfs where the container may mount one); /proc/sysrq-trigger, core_pattern,
//! /sys and cgroup writes; mount; user namespace creation; kernel module loading; io_uring;
//! bpf; open_by_handle_at; reboot; ptrace of a host process; the node's API socket.
//!
//! The same probes then run with capabilities granted, to show what each one opens (the
//! table in docs/SECURITY.md): `NET_ADMIN` + `SYS_ADMIN`, and `MKNOD` + `SYS_ADMIN`, where
//! the capability permits mknod and a fresh tmpfs has no `nodev`, so only the cgroup device
//! program stands between the container and the disk.

use berth_tests::*;
use std::collections::BTreeMap;

const LOOP: &str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done";

/// One probe's outcome: OPEN (true) or BLOCKED (false), and its detail.
type Probes = BTreeMap<String, (bool, String)>;

/// Copies the probe into the container (through `osctl exec -i`) and runs it there.
fn run_probes(vm: &Vm, container: &str) -> Probes {
    vm.upload_probe(container);
    let out = vm.osctl(&["exec", container, "--", "/tmp/berth-probe"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("PROBES DONE"),
        "berth-probe in {container} did not finish ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut probes = Probes::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("PROBE ") else {
            continue;
        };
        let mut f = rest.splitn(3, ' ');
        let (Some(name), Some(verdict), detail) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // Several lines may share a name (one per visible host process): OPEN wins.
        let open = verdict == "OPEN";
        let e = probes
            .entry(name.to_string())
            .or_insert((open, detail.unwrap_or("").to_string()));
        if open && !e.0 {
            *e = (true, detail.unwrap_or("").to_string());
        }
    }
    for (name, (open, detail)) in &probes {
        eprintln!(
            "PROBE {container:<12} {:<7} {name}: {detail}",
            if *open { "OPEN" } else { "blocked" }
        );
    }
    probes
}

fn opened(p: &Probes) -> Vec<&str> {
    p.iter()
        .filter(|(_, (open, _))| *open)
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn a_root_workload_cannot_reach_the_host() {
    let image = image();
    let dir = root().join("target/system-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("isolation.toml");
    let container = |name: &str, caps: &str| {
        format!(
            "[[containers]]\nname = \"{name}\"\nimage = \"admin\"\ncommand = [\"/bin/sh\", \"-c\", \"{LOOP}\"]\ncapabilities = [{caps}]\n\n"
        )
    };
    std::fs::write(
        &cfg,
        [
            container("probe-admin", "\"CAP_NET_ADMIN\", \"CAP_SYS_ADMIN\""),
            container("probe-mknod", "\"CAP_MKNOD\", \"CAP_SYS_ADMIN\""),
        ]
        .concat(),
    )
    .unwrap();
    let vm = Vm::boot(
        "isolation",
        &image,
        &BootOpts {
            config: Some(cfg),
            ..Default::default()
        },
    );
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);

    // The reproduction, as a user would type it: a workload started with
    // `osctl run` from the shipped image, default profile.
    vm.osctl_ok(&["run", "admin", "--name", "probe", "--", "sh", "-c", LOOP]);
    for name in ["probe", "probe-admin", "probe-mknod"] {
        vm.wait_running(name);
    }
    let out = vm.osctl(&[
        "exec",
        "probe",
        "--",
        "sh",
        "-c",
        "mknod /tmp/d b 254 0; dd if=/tmp/d bs=4096 count=1 | wc -c",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.trim(),
        "0",
        "the boot disk was readable: {stdout}{stderr}"
    );
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    // Default profile: every probe fails.
    let p = run_probes(&vm, "probe");
    let devices = p.keys().filter(|k| k.starts_with("device:")).count();
    assert!(
        devices >= 2 * 6,
        "too few device probes ({devices}): is /proc/partitions readable? {p:#?}"
    );
    assert!(p.contains_key("device:vda@/tmp"), "{p:#?}");
    for must in [
        "io_uring:setup",
        "userns:unshare",
        "module:init_module",
        "ptrace:host-pid",
        "api:osctl.sock",
        "proc:sysrq-trigger",
        "mount:tmpfs",
    ] {
        assert!(p.contains_key(must), "probe {must} did not run: {p:#?}");
    }
    assert!(
        opened(&p).is_empty(),
        "a default workload reached the host: {:?}",
        opened(&p)
    );
    assert!(
        p["io_uring:setup"].1.contains("errno 38"),
        "io_uring must fail with ENOSYS: {:?}",
        p["io_uring:setup"]
    );

    // NET_ADMIN + SYS_ADMIN: mount and namespaces work (the capability and its system
    // calls are granted, as in Docker), so /proc/sys can be made writable: SYS_ADMIN is
    // close to root on the host (docs/SECURITY.md). The devices stay shut: no CAP_MKNOD,
    // and the device program refuses even a node on a fresh tmpfs.
    let p = run_probes(&vm, "probe-admin");
    let open = opened(&p);
    eprintln!("FIGURE probes opened by NET_ADMIN+SYS_ADMIN: {open:?}");
    for must in ["mount:tmpfs", "userns:unshare"] {
        assert!(
            open.contains(&must),
            "{must} did not open with SYS_ADMIN: {p:#?}"
        );
    }
    assert!(
        !open.iter().any(|n| n.starts_with("device:")),
        "SYS_ADMIN opened a device: {open:?}"
    );
    for shut in [
        "module:init_module",
        "io_uring:setup",
        "api:osctl.sock",
        "reboot",
        "ptrace:host-pid",
        "open_by_handle_at",
    ] {
        assert!(
            !open.contains(&shut),
            "{shut} opened with SYS_ADMIN: {p:#?}"
        );
    }

    // MKNOD + SYS_ADMIN: mknod is allowed by the capability, and a fresh tmpfs has no
    // nodev; the cgroup device program alone refuses the nodes (already at mknod: the
    // program is asked for MKNOD access too).
    let p = run_probes(&vm, "probe-mknod");
    let open = opened(&p);
    eprintln!("FIGURE probes opened by MKNOD+SYS_ADMIN: {open:?}");
    assert!(open.contains(&"mount:tmpfs"), "{p:#?}");
    assert!(
        !open.iter().any(|n| n.starts_with("device:")),
        "a device node opened with MKNOD: {open:?}"
    );
    let on_tmpfs = &p["device:vda@/mnt/berth-probe"];
    assert!(
        on_tmpfs.1.contains("Operation not permitted"),
        "expected the device program to refuse the node: {on_tmpfs:?}"
    );
    // A user namespace (opt-in, `osctl run --userns`): the container's root is an
    // unprivileged host id range, and the same probes stay shut.
    vm.osctl_ok(&[
        "run",
        "admin",
        "--userns",
        "--name",
        "probe-userns",
        "--",
        "sh",
        "-c",
        LOOP,
    ]);
    vm.wait_running("probe-userns");
    let map = vm.osctl_ok(&["exec", "probe-userns", "--", "cat", "/proc/self/uid_map"]);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"0"), "{map}");
    let base: u64 = fields.get(1).and_then(|b| b.parse().ok()).unwrap_or(0);
    assert!(base >= 100_000, "container root is host id {base}: {map}");
    assert_eq!(fields.get(2), Some(&"65536"), "{map}");
    let ls = vm.osctl_ok(&[
        "exec",
        "probe-userns",
        "--",
        "sh",
        "-c",
        "touch /tmp/w && ls -ln /tmp/w /bin/busybox",
    ]);
    eprintln!("FIGURE userns container: uid_map {map:?}, files: {ls:?}");
    let p = run_probes(&vm, "probe-userns");
    assert!(
        opened(&p).is_empty(),
        "a user-namespace workload reached the host: {:?}",
        opened(&p)
    );

    // The node stays healthy after all that.
    let st = vm.status();
    assert_eq!(st["healthy"], true, "{st:#}");
}
