//! Whole-system test of A/B updates: the real image (v1) boots from slot A; newer
//! versions built from the same binaries with `berth-image build`, published and signed
//! with `berth-image publish/sign` into a real docker-registry on loopback, which the
//! guest reaches through guestfwd. Proves: bad artifacts are refused with nothing
//! changed (also a tampered and a truncated layer); v2 installs on slot B, boots and is
//! blessed; rollback returns to v1 and, again, to v2; a v3 (on slot A) whose required
//! service never becomes healthy is tried three times by the boot loader and the node
//! comes back to v2 by itself, with v3 recorded as failed. With an arm64
//! build at hand, `os:stable` carries both architectures and the node picks its own.
//! Power cuts during an apply leave a bootable node. `policy = "auto"` installs by itself
//! and reboots only once its reboot window opens.
//!
//! Inputs besides the harness's: `BERTH_IMAGE_TOOL` (berth-image), `BERTH_UPDATE_KEY`
//! (the key pair prefix whose public half the image trusts), `BERTH_KERNEL_DIR` and
//! `BERTH_BIN_DIR` (what the image was built from), `BERTH_IMAGE_ARM64` (optional: an
//! arm64 build to offer as the wrong architecture). `make system-test` sets them.
//!
//! Every test here is named `update_*`: `make system-test` runs the other whole-system
//! tests two at a time with `--skip update_`, then these one by one.

use berth_tests::registry::{sh, LocalRegistry, Throttle, GUEST_REGISTRY};
use berth_tests::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn key() -> PathBuf {
    env_path("BERTH_UPDATE_KEY", "build/keys/berth-update")
}

fn with_ext(p: &Path, ext: &str) -> String {
    format!("{}.{ext}", p.display())
}

/// `berth-image build` of version `version` from the same kernel and binaries as the
/// image under test, with `services` added.
fn build(out: &Path, version: &str, services: &[PathBuf]) {
    build_image(out, &format!("update-test-{version}"), version, services);
}

/// Publish `build` as `berth/REPO_TAG` (signatures live per repository and digest, so an
/// unsigned copy needs a repository of its own).
fn publish(reg: &LocalRegistry, build: &Path, repo_tag: &str) -> String {
    let r = format!("{}/berth/{repo_tag}", reg.host());
    let out = sh(image_tool()
        .args(["publish", &r, "--insecure", "--build"])
        .arg(build));
    eprintln!("{}", out.trim());
    out
}

/// Sign for the repository as the guest names it (`update.source`): a signature names
/// its repository, and the guest reaches the registry as GUEST_REGISTRY.
fn sign(reg: &LocalRegistry, key_prefix: &Path, repo_tag: &str) {
    let r = format!("{}/berth/{repo_tag}", reg.host());
    let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
    sh(image_tool()
        .args(["sign", "--insecure", "--key", &with_ext(key_prefix, "key")])
        .arg(format!("--identity={GUEST_REGISTRY}/berth/{repo}"))
        .arg(&r));
}

fn try_json(vm: &Vm, args: &[&str]) -> Option<Value> {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let out = vm.osctl(&a);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn update_status(vm: &Vm) -> Value {
    vm.osctl_json(&["update", "status"])
}

/// What a refused update must leave alone: the slots' states and the boot entries.
fn slots_and_entries(s: &Value) -> Value {
    let st = &s["status"];
    serde_json::json!([
        st["running_slot"],
        st["running_entry"],
        st["other_state"],
        st["other_entry"],
        st["next_boot"],
        st["in_progress"]
    ])
}

/// `osctl update apply` that must fail with `needle` in its message and change nothing.
fn refused(vm: &Vm, source: &str, needle: &str) {
    let before = slots_and_entries(&update_status(vm));
    let out = vm.osctl(&["update", "apply", "--source", source]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "apply of {source} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(needle),
        "apply of {source}: expected {needle:?} in: {err}"
    );
    eprintln!("refused {source}: {}", err.trim());
    let after = slots_and_entries(&update_status(vm));
    assert_eq!(
        before, after,
        "a refused apply of {source} changed the slots"
    );
}

/// `osctl update apply` of an artifact whose layer is damaged in the registry: it fails
/// with `needle` in its message, and no boot entry or boot choice changes (the inactive
/// slot may hold the partial write, never marked bootable).
fn refused_download(vm: &Vm, source: &str, needle: &str) {
    let boot_state = |s: &Value| {
        let st = &s["status"];
        serde_json::json!([
            st["running_slot"],
            st["running_entry"],
            st["other_entry"],
            st["next_boot"]
        ])
    };
    let before = update_status(vm);
    let out = vm.osctl(&["update", "apply", "--source", source]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "apply of a damaged {source} succeeded"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    let after = update_status(vm);
    eprintln!(
        "refused damaged {source}: {}; inactive slot now {}",
        err.trim().lines().last().unwrap_or(""),
        after["status"]["other_state"]
    );
    assert_eq!(boot_state(&before), boot_state(&after), "{after:#}");
    assert_ne!(after["status"]["other_state"], "pending", "{after:#}");
}

/// Wait until the node runs `version` from `slot` and `pred` holds for its update status.
fn wait_running(
    vm: &Vm,
    what: &str,
    version: &str,
    slot: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    vm.wait_for(what, timeout, || {
        let s = try_json(vm, &["update", "status"])?;
        let st = &s["status"];
        (st["running_version"] == version && st["running_slot"] == slot && pred(&s)).then_some(s)
    })
}

/// The image under test, its version (v1), a fresh work dir
/// `target/system-tests/<name>`, and a registry in it.
fn setup(name: &str) -> (PathBuf, String, PathBuf, LocalRegistry) {
    let image = image();
    let v1 = image_info(&image)["version"]
        .as_str()
        .expect("version in image.json")
        .to_string();
    let work = root().join("target/system-tests").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let reg = LocalRegistry::start(&work.join("registry"));
    (image, v1, work, reg)
}

/// Boot the image under test (v1) with the registry at `port` as the update source (plus
/// `update_extra` in `[update]`), and wait until it runs from slot A.
fn boot_v1(
    name: &str,
    image: &Path,
    work: &Path,
    port: u16,
    update_extra: &str,
    v1: &str,
) -> (Vm, BootOpts) {
    let cfg = work.join("berth.toml");
    std::fs::write(
        &cfg,
        format!(
            "[registries.\"{GUEST_REGISTRY}\"]\ninsecure = true\n\n[update]\nsource = \"{GUEST_REGISTRY}/berth/os:stable\"\n{update_extra}"
        ),
    )
    .unwrap();
    // A disk larger than the image, as on a real machine: the state partition grows to
    // fill it at first boot. The image's own 32 MiB /var holds the system images (10 MiB)
    // and barely not an update's staged kernel and initrd (15.8 MiB): with it, the
    // download failed with ENOSPC whenever the logs had grown a little.
    let opts = BootOpts {
        config: Some(cfg),
        disk_size: Some("1600M".into()),
        extra: vec!["--registry-port".into(), port.to_string()],
        uefi: true,
    };
    let vm = Vm::boot(name, image, &opts);
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    wait_running(
        &vm,
        "v1 on slot a",
        v1,
        "a",
        Duration::from_secs(60),
        |_| true,
    );
    (vm, opts)
}

/// `osctl reboot`, wait for the `boot`-th `berth: ready` on this QEMU run's console, then
/// until `version` runs from `slot` with its boot entry blessed.
fn reboot_blessed(vm: &Vm, boot: usize, version: &str, slot: &str) -> Value {
    vm.osctl_ok(&["reboot"]);
    vm.wait_serial_n("berth: ready", boot, BOOT_TIMEOUT);
    wait_running(
        vm,
        &format!("{version} blessed on slot {slot}"),
        version,
        slot,
        Duration::from_secs(180),
        |s| s["status"]["blessed"] == true,
    )
}

#[test]
fn update_refuse_apply_bless_rollback_and_fall_back() {
    let (image, v1, work, reg) = setup("update-work");
    let (v2, v3) = (format!("{v1}.1"), format!("{v1}.2"));

    // The artifacts: v2 (good), v3 (a required service that is never healthy), v1 again
    // (not newer), v2 unsigned and signed by a key the node does not trust, and the arm64
    // build when there is one.
    let t = Instant::now();
    build(&work.join("v2"), &v2, &[]);
    build(
        &work.join("v3"),
        &v3,
        &[root().join("tests/data/never-healthy.toml")],
    );
    eprintln!("built v2 and v3 in {:.1} s", t.elapsed().as_secs_f64());
    let stranger = work.join("stranger");
    sh(image_tool().args(["keygen", "--out"]).arg(&stranger));
    let payload = publish(&reg, &work.join("v2"), "os:stable");
    let arm64 = std::env::var_os("BERTH_IMAGE_ARM64")
        .map(PathBuf::from)
        .filter(|p| p.with_file_name("image.json").exists());
    if let Some(a) = &arm64 {
        // One tag for both architectures: each node picks its own manifest.
        let out = publish(&reg, a.parent().unwrap(), "os:stable");
        assert!(
            out.contains("linux/amd64") && out.contains("linux/arm64"),
            "{out}"
        );
    }
    sign(&reg, &key(), "os:stable");
    publish(&reg, &work.join("v3"), "os:v3");
    sign(&reg, &key(), "os:v3");
    publish(&reg, &work.join("v2"), "unsigned:v2");
    publish(&reg, &work.join("v2"), "untrusted:v2");
    sign(&reg, &stranger, "untrusted:v2");
    publish(&reg, image.parent().unwrap(), "os:v1");
    sign(&reg, &key(), "os:v1");
    if let Some(a) = &arm64 {
        publish(&reg, a.parent().unwrap(), "os:arm64");
        sign(&reg, &key(), "os:arm64");
    }
    eprintln!(
        "payload: {}",
        payload
            .lines()
            .find(|l| l.contains("payload"))
            .unwrap_or("")
            .trim()
    );

    let (vm, _) = boot_v1(
        "update",
        &image,
        &work,
        reg.port,
        "health_deadline = \"30s\"\n",
        &v1,
    );
    let s = update_status(&vm);
    assert_eq!(s["status"]["other_state"], "empty", "{s:#}");
    eprintln!("{}", vm.osctl_ok(&["update", "status"]));

    // Refused, nothing changed.
    let src = |tag: &str| format!("{GUEST_REGISTRY}/berth/os:{tag}");
    refused(
        &vm,
        &format!("{GUEST_REGISTRY}/berth/unsigned:v2"),
        "is not signed",
    );
    refused(
        &vm,
        &format!("{GUEST_REGISTRY}/berth/untrusted:v2"),
        "signature(s) verifies",
    );
    refused(&vm, &src("v1"), "not newer");
    refused(&vm, &src("missing"), "missing");
    if arm64.is_some() {
        refused(&vm, &src("arm64"), "x86_64");
    }

    // A tampered root layer (one byte flipped in the registry's storage), then a truncated
    // one: the download fails verification; the running slot, the boot entries and the
    // next boot are untouched, and the good layer installs afterwards.
    let root_hex = sh(Command::new("sha256sum").arg(work.join("v2/root.img")));
    let blob = reg.blob_data(root_hex.split_whitespace().next().unwrap());
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    refused_download(&vm, &src("stable"), "root image");
    std::fs::write(&blob, &good[..good.len() - 5000]).unwrap();
    refused_download(&vm, &src("stable"), "downloading");
    std::fs::write(&blob, &good).unwrap();

    // v2: check, apply (progress on stderr), reboot, blessed on slot B.
    let check = vm.osctl_ok(&["update", "check"]);
    eprintln!("{check}");
    assert!(
        check.contains(&format!("offers {v2}")) && check.contains("update available"),
        "{check}"
    );
    let out = vm.osctl(&["update", "apply"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "apply failed: {stdout}{stderr}");
    eprintln!("apply progress:\n{stderr}\napply: {stdout}");
    assert!(
        stdout.contains(&format!("installed {v2} on slot b")),
        "{stdout}"
    );
    assert!(
        stderr.contains("entry-written"),
        "no step progress shown: {stderr}"
    );
    let s = update_status(&vm);
    assert_eq!(s["status"]["other_state"], "pending", "{s:#}");
    assert_eq!(s["status"]["running_slot"], "a");
    let t = &s["status"]["last_apply"]["timings"];
    eprintln!(
        "apply timings: total {} s, download {} s, write {} s, verify {} s, boot files {} s",
        t["total_secs"],
        t["download_secs"],
        t["write_secs"],
        t["verify_secs"],
        t["boot_files_secs"]
    );

    let reboot = Instant::now();
    let s = reboot_blessed(&vm, 2, &v2, "b");
    eprintln!(
        "v2 blessed {:.1} s after `osctl reboot` (host clock); {}",
        reboot.elapsed().as_secs_f64(),
        s["boot"]["note"]
    );
    assert_eq!(s["status"]["other_state"], "fallback", "{s:#}");
    eprintln!("{}", vm.osctl_ok(&["update", "status"]));

    // Rollback: v1 again from slot A, and it stays.
    let out = vm.osctl_ok(&["update", "rollback"]);
    assert!(out.contains("slot a"), "{out}");
    let s = reboot_blessed(&vm, 3, &v1, "a");
    assert_eq!(s["status"]["last_rollback"]["to_slot"], "a", "{s:#}");
    // ...and forward again: v2 from slot B, which v3 is then installed next to.
    let out = vm.osctl_ok(&["update", "rollback"]);
    assert!(out.contains("slot b"), "{out}");
    let s = reboot_blessed(&vm, 4, &v2, "b");
    assert_eq!(s["status"]["last_rollback"]["to_slot"], "b", "{s:#}");

    // v3 never becomes healthy: 3 tries, each rebooted by sysd at the health deadline,
    // then systemd-boot falls back to v2 on slot B by itself and v3 is recorded as failed.
    let out = vm.osctl_ok(&["update", "apply", "--source", &src("v3")]);
    assert!(out.contains(&format!("installed {v3} on slot a")), "{out}");
    let fall = Instant::now();
    vm.osctl_ok(&["reboot"]);
    // Three boots of v3 and the fallback boot.
    vm.wait_serial_n("berth: ready", 8, Duration::from_secs(900));
    let serial = vm.serial();
    assert_eq!(
        serial.matches("this boot counts as failed").count(),
        3,
        "v3 must have been tried exactly 3 times"
    );
    let s = wait_running(
        &vm,
        "v2 after the fallback",
        &v2,
        "b",
        Duration::from_secs(120),
        |s| s["boot"]["check"]["kind"] == "fell-back",
    );
    eprintln!(
        "fell back to v2 {:.1} s after rebooting into v3",
        fall.elapsed().as_secs_f64()
    );
    let failed = s["status"]["failed_versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        failed.iter().any(|f| f["version"] == v3.as_str()),
        "v3 not recorded as failed: {s:#}"
    );
    let c = vm.osctl_json(&["update", "check", "--source", &src("v3")]);
    assert_eq!(c["failed_before"], true, "{c:#}");
    assert_eq!(c["update_available"], false, "{c:#}");
    refused(&vm, &src("v3"), "failed to boot healthy before");
    eprintln!("{}", vm.osctl_ok(&["update", "status"]));
}

/// Start `osctl update apply`, wait until its progress reaches the step named `step`, wait
/// `delay` more, and cut the power (SIGKILL to QEMU).
fn cut_power_during(vm: &Vm, step: &str, delay: Duration) {
    let mut child = Command::new(osctl_bin())
        .arg("--connect")
        .arg(format!("unix:path={}", vm.dir.join("osctl.sock").display()))
        .args(["update", "apply"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running osctl");
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        seen.push(line.clone());
        if line.starts_with(&format!("{step}:")) {
            std::thread::sleep(delay);
            eprintln!("power cut {:.1} s into step {step}", delay.as_secs_f64());
            vm.kill();
            let _ = child.wait();
            return;
        }
    }
    let _ = child.wait();
    panic!("the apply never reached step {step}: {seen:#?}");
}

#[test]
fn update_power_cuts_leave_a_bootable_node() {
    let (image, v1, work, reg) = setup("update-cut-work");
    let v2 = format!("{v1}.1");
    build(&work.join("v2"), &v2, &[]);
    publish(&reg, &work.join("v2"), "os:stable");
    sign(&reg, &key(), "os:stable");
    // 2 MiB/s: the kernel and the root image (13-14 MiB each) take about 7 s each.
    let slow = Throttle::start(reg.port, 2 << 20);
    let (vm, opts) = boot_v1("update-cut", &image, &work, slow.port, "", &v1);

    // 1: while the kernel and initrd download; 2: in the middle of the slot write.
    for (step, delay) in [("boot-files-staged", 3), ("writing", 4)] {
        cut_power_during(&vm, step, Duration::from_secs(delay));
        vm.start(&opts);
        vm.wait_serial("berth: ready", BOOT_TIMEOUT);
        let s = wait_running(
            &vm,
            "v1 after the power cut",
            &v1,
            "a",
            Duration::from_secs(60),
            |_| true,
        );
        let st = &s["status"];
        assert_eq!(st["blessed"], true, "{s:#}");
        assert_eq!(
            st["next_boot"]["slot"], "a",
            "slot b must not boot half written: {s:#}"
        );
        eprintln!(
            "after the cut in {step}: {}",
            vm.osctl_ok(&["update", "status"])
        );
    }
    // The apply resumes the slot write from its last checkpoint.
    let s = update_status(&vm);
    let written = s["status"]["in_progress"]["written"].as_u64().unwrap_or(0);
    let out = vm.osctl_json(&["update", "apply"]);
    let resumed = out["outcome"]["timings"]["resumed_from"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("resumed at {resumed} bytes (recorded before the cut: {written}): {out:#}");
    assert_eq!(out["outcome"]["version"], v2.as_str(), "{out:#}");
    assert!(
        written > 0 && resumed == written,
        "the apply did not resume from its checkpoint: {out:#}"
    );

    // 3: right after the boot entry is written: the next boot is the new version.
    vm.kill();
    vm.start(&opts);
    vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    let s = wait_running(
        &vm,
        "v2 after the last cut",
        &v2,
        "b",
        Duration::from_secs(180),
        |s| s["status"]["blessed"] == true,
    );
    eprintln!("after the cut right after the entry: {}", s["boot"]["note"]);
}

/// `policy = "auto"` with a reboot window: with nobody asking, the node finds v2 (its
/// first look is a minute after sysd starts), installs it at once, waits for the window
/// to open, then reboots into v2 and blesses it.
#[test]
fn update_auto_policy_installs_then_reboots_in_the_window() {
    let (image, v1, work, reg) = setup("update-auto-work");
    let v2 = format!("{v1}.1");
    build(&work.join("v2"), &v2, &[]);
    publish(&reg, &work.join("v2"), "os:stable");
    sign(&reg, &key(), "os:stable");
    // The window opens 3-4 minutes from now (UTC, whole minutes): after the install.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let opens = (now() + 180).div_ceil(60) * 60;
    let start = format!("{:02}:{:02}", (opens / 3600) % 24, (opens / 60) % 60);
    let policy = format!(
        "policy = \"auto\"\nreboot_window = {{ start = \"{start}\", duration = \"30m\" }}\n"
    );
    let (vm, _) = boot_v1("update-auto", &image, &work, reg.port, &policy, &v1);

    // Installed by itself, and waiting: the next boot is v2 on slot b, not taken yet.
    let s = wait_running(
        &vm,
        "v2 installed by the auto policy",
        &v1,
        "a",
        Duration::from_secs(240),
        |s| s["status"]["other_state"] == "pending",
    );
    let installed = now();
    eprintln!(
        "installed {} s before the window opens ({start} UTC): {}",
        opens as i64 - installed as i64,
        s["status"]
    );
    assert!(installed < opens, "installed after the window opened");
    assert_eq!(s["status"]["other_version"], v2.as_str(), "{s:#}");
    assert_eq!(s["status"]["next_boot"]["slot"], "b", "{s:#}");

    // The reboot waits for the window, then v2 boots and is blessed.
    vm.wait_serial_n(
        "berth: ready",
        2,
        Duration::from_secs(opens - installed + 300),
    );
    let rebooted = now();
    eprintln!("rebooted {} s after the window opened", rebooted - opens);
    assert!(rebooted >= opens, "rebooted before the window opened");
    wait_running(
        &vm,
        "v2 blessed on slot b",
        &v2,
        "b",
        Duration::from_secs(180),
        |s| s["status"]["blessed"] == true,
    );
}
