//! Whole-system smoke test of the arm64 image (cross-built on this x86_64 machine) in
//! `qemu-system-aarch64 -M virt -cpu cortex-a57` with AAVMF under TCG: boot to ready,
//! status from the host over virtio-serial, the system containers of the arm64 images
//! running, a workload that runs and logs, QMP power button -> QEMU exits by itself.
//! One boot, several checks (a TCG arm64 boot is the slow part).
//!
//! Input: `BERTH_IMAGE_ARM64` (set by `make system-test`, which builds the arm64 image).

use berth_tests::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Emulating aarch64 on x86_64 is slower than x86_64 on x86_64.
const ARM64_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn arm64_image() -> PathBuf {
    let p = std::env::var_os("BERTH_IMAGE_ARM64")
        .map(PathBuf::from)
        .expect(
            "BERTH_IMAGE_ARM64 is not set: run `make system-test` (it builds the arm64 image) \
         or set it to build/arm64/berth.img after `make image ARCH=arm64`",
        );
    assert!(p.exists(), "no arm64 image at {}", p.display());
    p
}

fn container<'a>(ps: &'a Value, name: &str) -> Option<&'a Value> {
    ps.as_array()?.iter().find(|c| c["name"] == name)
}

/// Seconds after `berth: <stage> t=` on the console.
fn stage_time(log: &str, stage: &str) -> Option<f64> {
    let needle = format!("berth: {stage} t=");
    let rest = &log[log.find(&needle)? + needle.len()..];
    rest.split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .parse()
        .ok()
}

#[test]
fn arm64_boots_runs_containers_and_powers_off() {
    let image = arm64_image();
    let info = image_info(&image);
    assert_eq!(
        info["arch"],
        "arm64",
        "{} is not an arm64 image",
        image.display()
    );
    let started = Instant::now();
    let vm = Vm::boot(
        "arm64",
        &image,
        &BootOpts {
            extra: vec!["--arch".into(), "arm64".into()],
            uefi: true,
            ..Default::default()
        },
    );
    // Firmware + systemd-boot: QEMU start until the kernel starts. The command line has
    // `quiet`, so the kernel's own first line is not printed; the first `berth:` line
    // carries the kernel's clock (CLOCK_BOOTTIME), so wall time minus that is the time
    // before the kernel (QEMU start, AAVMF, systemd-boot, EFI stub).
    let log = vm.wait_serial("berth: stage1 t=", ARM64_BOOT_TIMEOUT);
    let seen = started.elapsed().as_secs_f64();
    let firmware = seen - stage_time(&log, "stage1").unwrap_or(0.0);
    let log = vm.wait_serial("berth: ready", ARM64_BOOT_TIMEOUT);
    let wall = started.elapsed().as_secs_f64();
    let mut phases = Vec::new();
    for stage in ["stage1", "modules", "root", "state", "stage2", "ready"] {
        let t = stage_time(&log, stage)
            .unwrap_or_else(|| panic!("console lacks `berth: {stage} t=`:\n{log}"));
        phases.push(format!("{stage} {t:.2}s"));
    }
    eprintln!(
        "FIGURE arm64 boot: firmware+loader {firmware:.1} s (QEMU start -> kernel start), \
         kernel clock: {}; QEMU start -> ready {wall:.1} s",
        phases.join(", ")
    );

    // The host drives the arm64 guest over virtio-serial like the x86_64 one.
    let st = vm.status();
    assert_eq!(st["slot"], "a", "{st:#}");
    let kernel = st["kernel"].as_str().unwrap_or_default();
    assert!(kernel.ends_with("-arm64"), "not the arm64 kernel: {st:#}");
    assert_eq!(kernel, info["kernel"], "{st:#}");
    assert_eq!(st["root"]["fstype"], "erofs", "{st:#}");
    assert_eq!(st["root_dm_uuid"], "BERTH-VERITY-a", "{st:#}");
    assert_eq!(st["verity_root_hash"], info["root_hash"], "{st:#}");
    assert_eq!(st["var"]["fstype"], "ext4", "{st:#}");

    // The system containers from the shipped arm64 images.
    let ps = vm.wait_for("admin and ntpd running", Duration::from_secs(180), || {
        let ps = vm.osctl_json(&["ps"]);
        let up = |n: &str| container(&ps, n).is_some_and(|c| c["state"] == "running");
        (up("admin") && up("ntpd")).then_some(ps)
    });
    for n in ["admin", "ntpd"] {
        assert_eq!(container(&ps, n).unwrap()["kind"], "system", "{ps:#}");
    }
    // Busybox in the admin image is the arm64 build, running natively in the guest.
    let out = vm.osctl_ok(&["exec", "admin", "--", "uname", "-m"]);
    assert_eq!(out.trim(), "aarch64", "{out}");
    // OpenNTPD (dynamically linked against the image's arm64 libc) answers its control
    // socket; with no network beyond the host it has no valid peer, and keeps running.
    let out = vm.osctl_ok(&["exec", "ntpd", "--", "/usr/sbin/ntpctl", "-s", "status"]);
    assert!(out.contains("peers valid"), "{out}");

    // A workload from a shipped image runs and logs.
    vm.osctl_ok(&[
        "run",
        "admin",
        "--name",
        "hello",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "echo hello-from-$(uname -m)",
    ]);
    vm.wait_for("the workload's output", Duration::from_secs(120), || {
        vm.logs("hello")
            .contains("hello-from-aarch64")
            .then_some(())
    });

    // The ACPI power button (QMP) powers it off and QEMU exits by itself.
    let t = Instant::now();
    vm.qmp("system_powerdown");
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "QEMU still running 120 s after system_powerdown; console:\n{}",
        vm.serial()
    );
    assert!(vm.serial().contains("berth: poweroff"), "{}", vm.serial());
    eprintln!(
        "FIGURE arm64 power button -> QEMU exit {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
