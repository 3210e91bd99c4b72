//! Whole-system tests of the bootable foundation: the real image, OVMF + systemd-boot +
//! Debian kernel + Berth initramfs, driven from the host with osctl and QMP.

use berth_tests::*;
use serde_json::Value;
use std::time::Duration;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

/// Boot -> verified read-only root, writable /var, cgroup2 controllers, sysd restart on
/// kill, reboot keeps /var, QMP power button powers off cleanly, next boot sees a clean fs.
#[test]
fn lifecycle() {
    let image = image();
    let info = image_info(&image);
    // A disk larger than the image, as after `dd` onto a real disk: the state partition
    // and filesystem grow at first boot.
    let big = BootOpts {
        disk_size: Some("4G".into()),
        uefi: true,
        ..Default::default()
    };
    let vm = Vm::boot("lifecycle", &image, &big);
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    for stage in [
        "berth: stage1 t=",
        "berth: modules t=",
        "berth: root t=",
        "berth: stage2 t=",
    ] {
        assert!(log.contains(stage), "console lacks {stage:?}");
    }
    // Issue 21: a `services` phase once every system container runs, after `ready`.
    vm.wait_serial("berth: services t=", BOOT_TIMEOUT);

    let st = vm.status();
    let phases: Vec<&str> = st["phases"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p[0].as_str()).collect())
        .unwrap_or_default();
    let at = |name: &str| phases.iter().position(|p| *p == name);
    assert!(
        at("ready").is_some() && at("services") > at("ready"),
        "phases: {phases:?}"
    );
    for c in vm.osctl_json(&["ps"]).as_array().unwrap() {
        if c["kind"] == "system" {
            assert_eq!(c["state"], "running", "at `services`: {c:#}");
        }
    }
    // Root: EROFS, read-only, on the slot's dm-verity device with the image's root hash.
    assert_eq!(st["root"]["fstype"], "erofs", "{st:#}");
    assert_eq!(st["root"]["read_only"], true);
    assert!(s(&st["root"], "source").starts_with("/dev/dm-"), "{st:#}");
    assert_eq!(st["root_dm_uuid"], "BERTH-VERITY-a");
    assert_eq!(st["verity_root_hash"], info["root_hash"]);
    assert_eq!(st["slot"], "a");
    // /var: the ext4 state partition, writable.
    assert_eq!(st["var"]["fstype"], "ext4");
    assert_eq!(st["var"]["read_only"], false);
    assert_eq!(st["boot_count"], 1);
    let action = s(&st, "state_action");
    assert!(action.contains("partition grown from 32 to "), "{action}");
    let grown_mib: u64 = action
        .rsplit("grown to ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        grown_mib > 2700,
        "filesystem not grown to the disk: {action}"
    );
    // cgroup2 with the controllers enabled for children.
    let ctrls: Vec<&str> = st["cgroup_controllers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for c in ["cpu", "memory", "pids", "io"] {
        assert!(ctrls.contains(&c), "controller {c} not enabled: {ctrls:?}");
    }
    assert_eq!(st["os"], format!("Berth {}", s(&info, "version")));
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st:#}");

    // Killing sysd: PID 1 restarts it and the API comes back.
    let old_pid = st["sysd_pid"].as_u64().unwrap();
    let out = vm.osctl(&["debug", "kill-sysd"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.wait_serial("sysd restarted", Duration::from_secs(60));
    let st2 = vm.status();
    assert_eq!(st2["sysd_starts"], 2, "{st2:#}");
    assert_ne!(st2["sysd_pid"].as_u64().unwrap(), old_pid);

    // Reboot: /var keeps what was written (the boot counter), and the fs was clean.
    let out = vm.osctl(&["reboot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.wait_serial_n("berth: ready", 2, BOOT_TIMEOUT);
    let st3 = vm.status();
    assert_eq!(st3["boot_count"], 2, "{st3:#}");
    assert_eq!(st3["state_was_clean"], true, "{st3:#}");

    // ACPI power button via QMP: ordered shutdown, QEMU exits by itself.
    vm.qmp("system_powerdown");
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "QEMU still running after system_powerdown"
    );
    let log = vm.serial();
    assert!(log.contains("power button pressed"), "no power button line");
    assert!(log.contains("berth: poweroff now"), "no ordered power-off");

    // Next boot of the same disk (a new QEMU, a new console log): third boot, state
    // filesystem clean.
    vm.start(&big);
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let st4 = vm.status();
    assert_eq!(st4["boot_count"], 3, "{st4:#}");
    assert_eq!(st4["state_was_clean"], true, "{st4:#}");
    assert_eq!(st4["state_action"], "mounted", "{st4:#}");
}

/// One flipped byte in a file's data in the root image: reading that file fails (EIO from
/// dm-verity) instead of returning wrong data. A missing state partition with a destroyed
/// filesystem is recreated.
#[test]
fn damaged_disk() {
    let src = image();
    let info = image_info(&src);
    let dir = root().join("target/system-tests/damaged-image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("berth.img");
    copy_image(&src, &image);

    let (root_off, root_len) = partition("berth-root-a");
    let needle = format!("BUILD_ID={}\n", s(&info, "build_id"));
    let at = find_bytes(&image, root_off, root_len, needle.as_bytes())
        .expect("os-release data in the root partition");
    flip_byte(&image, at + 3);
    // The state partition is gone from the table and its filesystem destroyed.
    let (state_off, _) = partition("berth-state");
    zero_range(&image, state_off, 64 * 1024); // the ext4 superblock and group descriptors
    let st = std::process::Command::new("sfdisk")
        .args(["--quiet", "--delete"])
        .arg(&image)
        .arg("4")
        .status()
        .unwrap();
    assert!(st.success(), "sfdisk --delete");

    let vm = Vm::boot(
        "damaged",
        &image,
        &BootOpts {
            uefi: true,
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(
        log.contains("is corrupted"),
        "dm-verity did not report the corrupted block"
    );
    let st = vm.status();
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains("cannot read /usr/lib/berth/os-release")
            && warnings.contains("Input/output error"),
        "{st:#}"
    );
    // Nothing of the corrupted file leaks through.
    assert_eq!(st["os"], "", "{st:#}");
    // The state partition was re-added to the table and got a fresh filesystem.
    assert!(
        warnings.contains("state partition berth-state was missing"),
        "{st:#}"
    );
    let action = s(&st, "state_action");
    assert!(action.starts_with("partition created; recreated"), "{st:#}");
    assert_eq!(st["var"]["fstype"], "ext4");
    assert_eq!(st["boot_count"], 1);
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A root partition that does not verify ends in a clear console message, not a hang.
#[test]
fn corrupt_root_is_reported() {
    let src = image();
    let dir = root().join("target/system-tests/corrupt-root-image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("berth.img");
    copy_image(&src, &image);
    let (root_off, _) = partition("berth-root-a");
    flip_byte(&image, root_off + 1024 + 8); // inside the EROFS superblock

    let vm = Vm::boot(
        "corrupt-root",
        &image,
        &BootOpts {
            extra: vec!["--no-reboot".into()],
            uefi: true,
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: FATAL:", BOOT_TIMEOUT);
    assert!(
        log.contains("cannot mount the root of slot a"),
        "unclear message:\n{log}"
    );
    // It reboots deliberately (here: QEMU exits because of --no-reboot), never hangs.
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "no reboot after the fatal error"
    );
    assert!(!log.contains("berth: ready"));
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}
