//! Whole-system tests of the first-boot config: fw_cfg datasource, persistence, bad input.

use berth_tests::*;
use std::time::Duration;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = root().join("target/system-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config via fw_cfg sets the hostname (and sysctls and files); it is persisted, and a
/// later boot without any datasource uses the persisted one.
#[test]
fn fw_cfg_config_is_applied_and_persisted() {
    let image = image();
    let cfg = write_config(
        "node7.toml",
        "[host]\nhostname = \"node-7\"\n\n[sysctl]\n\"vm.swappiness\" = 13\n\n[[files]]\npath = \"/etc/motd\"\ncontent = \"welcome\\n\"\n",
    );
    let vm = Vm::boot(
        "config-fwcfg",
        &image,
        &BootOpts {
            config: Some(cfg.clone()),
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(
        log.contains("config: fw_cfg opt/org.berth/config (hostname node-7)"),
        "{log}"
    );
    let st = vm.status();
    assert_eq!(st["hostname"], "node-7", "{st:#}");
    assert_eq!(st["config_source"], "fw_cfg opt/org.berth/config");
    assert_eq!(st["config_error"], "");
    assert!(
        !st["warnings"].to_string().contains("config:"),
        "config applied with problems: {st:#}"
    );

    // Power off, boot the same disk without the datasource: the persisted config rules.
    vm.qmp("system_powerdown");
    assert!(vm.wait_exit(Duration::from_secs(120)));
    vm.start(&BootOpts::default());
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let st = vm.status();
    assert_eq!(st["config_source"], "persisted", "{st:#}");
    assert_eq!(st["hostname"], "node-7");
    let _ = std::fs::remove_file(cfg);

    // `osctl config validate` uses the node's rules, offline.
    let bad = write_config("bad-host.toml", "[host]\nhostname = \"Not_Valid\"\n");
    let out = vm.osctl(&["config", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host.hostname"));
    // ...and `apply` refuses it with nothing changed.
    assert!(!vm
        .osctl(&["config", "apply", bad.to_str().unwrap()])
        .status
        .success());

    // A good change is applied live and kept once the node is healthy.
    let next = write_config(
        "node8.toml",
        "[host]\nhostname = \"node-8\"\n\n[sysctl]\n\"vm.swappiness\" = 21\n",
    );
    vm.osctl_ok(&["config", "apply", next.to_str().unwrap()]);
    assert_eq!(vm.status()["hostname"], "node-8");
    vm.wait_for("the new config kept", Duration::from_secs(120), || {
        (vm.status()["config_change"] == "applied").then_some(())
    });
    let shown = vm.osctl_ok(&["config", "show"]);
    assert!(shown.contains("node-8"), "{shown}");

    // A change that leaves a required service unhealthy is reverted after the deadline,
    // and the node reboots into the last known good config.
    let broken = write_config(
        "broken.toml",
        "[host]\nhostname = \"node-9\"\n\n[[containers]]\nname = \"needed\"\nimage = \"admin\"\ncommand = [\"false\"]\nrequired_for_boot = true\nrestart = { policy = \"never\" }\n",
    );
    vm.osctl_ok(&[
        "config",
        "apply",
        "--deadline",
        "15",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(vm.status()["hostname"], "node-9");
    // (This QEMU run's console: the boot above, then the one after the revert.)
    vm.wait_serial_n("berth: ready", 2, BOOT_TIMEOUT);
    let st = vm.status();
    assert_eq!(st["hostname"], "node-8", "{st:#}");
    let change = st["config_change"].as_str().unwrap_or("").to_string();
    assert!(
        change.starts_with("reverted:") && change.contains("needed"),
        "{st:#}"
    );
}

/// An invalid config at first boot: the error names the key path and line on the console
/// and in `osctl status`, and the node boots with the safe defaults.
#[test]
fn invalid_config_boots_with_defaults() {
    let image = image();
    let cfg = write_config("bad.toml", "[host]\nhostname = \"not a valid name!\"\n");
    let vm = Vm::boot(
        "config-bad",
        &image,
        &BootOpts {
            config: Some(cfg.clone()),
            ..Default::default()
        },
    );
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    assert!(log.contains("berth: CONFIG ERROR"), "no console error");
    let st = vm.status();
    let err = st["config_error"].as_str().unwrap_or_default();
    assert!(err.contains("line 2: host.hostname"), "{st:#}");
    assert_eq!(st["config_source"], "defaults");
    assert_eq!(st["hostname"], "berth");
    let _ = std::fs::remove_file(cfg);
}
