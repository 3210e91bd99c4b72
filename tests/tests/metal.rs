//! Whole-system tests of the bare-metal profile (`make image PROFILE=metal`): the metal
//! image boots in QEMU with no virtio device at all, once per common disk type, and the
//! host drives it with osctl over the network: the mutual-TLS API on the emulated NIC
//! (e1000/e1000e), reached through a QEMU `hostfwd` (the image has no serial osctl channel
//! unless built with `OSCTL_UART=ttyS1`).
//!
//! Input: `BERTH_IMAGE_METAL` (set by `make system-test`, which builds the metal image).
//! Three boots in all; each checks several things. Plus one boot of the arm64 metal image
//! (`BERTH_IMAGE_ARM64_METAL`) from NVMe.

use berth_tests::remote::{free_port, Pki};
use berth_tests::*;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

fn metal_image() -> PathBuf {
    let p = std::env::var_os("BERTH_IMAGE_METAL")
        .map(PathBuf::from)
        .expect(
            "BERTH_IMAGE_METAL is not set: run `make system-test` (it builds the metal image with \
         `make image PROFILE=metal` and points this variable at it)",
        );
    assert!(
        p.exists(),
        "no metal image at {} - run `make image PROFILE=metal`",
        p.display()
    );
    p
}

/// The initramfs modules a build put in (`image.json`).
fn module_names(info: &Value) -> Vec<&str> {
    info["modules"]
        .as_array()
        .expect("modules in image.json")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

fn boot(name: &str, hw: &str, disk_size: Option<&str>) -> (Vm, String) {
    boot_image(name, &metal_image(), &["--hw", hw], disk_size)
}

fn boot_image(
    name: &str,
    image: &std::path::Path,
    extra: &[&str],
    disk_size: Option<&str>,
) -> (Vm, String) {
    let hw = extra.join(" ");
    // The API's CA and an admin client file; the node signs its own certificate.
    let files = root()
        .join("target/system-tests")
        .join(format!("{name}-pki"));
    let ca = Pki::init(&files);
    let port = free_port();
    let cfg = files.join("berth.toml");
    std::fs::write(&cfg, ca.api_config(&[])).unwrap();
    let (admin, _) = ca.client("ca", "admin", "1h", "admin", port);
    let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    extra.extend(["--hostfwd".to_string(), format!("{port}:7443")]);
    let opts = BootOpts {
        config: Some(cfg),
        disk_size: disk_size.map(str::to_string),
        extra,
        uefi: true,
    };
    let mut vm = Vm::boot(name, image, &opts);
    vm.remote = Some(Remote {
        file: admin,
        context: "admin".into(),
        port,
    });
    let log = vm.wait_serial("berth: ready", BOOT_TIMEOUT);
    // The boot phases, for the record (`cargo test -- --nocapture` shows them).
    let phases: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("berth: ") && l.contains(" t="))
        .collect();
    eprintln!("{name} ({hw}) boot phases: {}", phases.join(" | "));
    for stage in ["berth: stage1 t=", "berth: modules t=", "berth: root t="] {
        assert!(log.contains(stage), "console lacks {stage:?}");
    }
    // The API answers once the NIC has its address (DHCP, a few seconds after `ready`).
    vm.wait_for(
        "the TLS API on the emulated NIC",
        Duration::from_secs(120),
        || {
            vm.osctl(&["-o", "json", "status"])
                .status
                .success()
                .then_some(())
        },
    );
    (vm, log)
}

/// What every metal boot must show in `osctl status` (fetched over TLS on the NIC): the
/// verified root, /var on partition 4 of the expected disk, the boot disk, and an address
/// from slirp's DHCP on the emulated NIC (polled: the link comes up a few seconds after
/// `ready`).
fn check_status(vm: &Vm, disk: &str) -> Value {
    let start = std::time::Instant::now();
    let st = loop {
        let st = vm.status();
        if st["network"].to_string().contains("10.0.2.15/24")
            || start.elapsed() > Duration::from_secs(90)
        {
            break st;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(st["root"]["fstype"], "erofs", "{st:#}");
    assert!(s(&st["root"], "source").starts_with("/dev/dm-"), "{st:#}");
    assert_eq!(st["root_dm_uuid"], "BERTH-VERITY-a", "{st:#}");
    assert_eq!(st["var"]["fstype"], "ext4", "{st:#}");
    let want_var = format!(
        "/dev/{disk}{}4",
        if disk.ends_with(char::is_numeric) {
            "p"
        } else {
            ""
        }
    );
    assert_eq!(s(&st["var"], "source"), want_var, "{st:#}");
    assert_eq!(s(&st, "boot_disk"), format!("/dev/{disk}"), "{st:#}");
    let eth = st["network"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|l| l.starts_with("eth0 "))
        .unwrap_or_default();
    assert!(
        eth.contains(" up ") && eth.contains("10.0.2.15/24"),
        "no DHCP address on the emulated NIC after 90 s: {st:#}"
    );
    assert!(
        st["warnings"].as_array().is_some_and(|w| w.is_empty()),
        "{st:#}"
    );
    st
}

/// osctl status in text form works too (another TLS session).
fn check_text_status(vm: &Vm) {
    let out = vm.osctl(&["status"]);
    assert!(
        out.status.success(),
        "another osctl session over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("erofs"), "{text}");
}

/// SATA disk on AHCI + Intel e1000e; the disk is 16 GiB, so the state partition and its
/// filesystem grow to fill it at first boot. The image carries the metal drivers and the
/// firmware they name.
#[test]
fn ahci_e1000e_16g() {
    let info = image_info(&metal_image());
    let modules = module_names(&info);
    for m in [
        "ahci",
        "nvme",
        "xhci_pci",
        "usb_storage",
        "uas",
        "e1000e",
        "igb",
        "r8169",
    ] {
        assert!(
            modules.contains(&m),
            "metal image lacks module {m}: {modules:?}"
        );
    }
    let fw = info["firmware"].to_string();
    assert!(fw.contains("rtl_nic/rtl8168"), "no r8169 firmware: {fw}");

    let (vm, log) = boot("metal-ahci", "ahci", Some("16G"));
    assert!(!log.contains("vport"), "a virtio port appeared");
    let st = check_status(&vm, "sda");
    let action = s(&st, "state_action");
    assert!(action.contains("partition grown from 32 to "), "{action}");
    let grown_mib: u64 = action
        .rsplit("grown to ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // 16 GiB minus the ESP and both root slots (1.25 GiB), less ext4's rounding.
    assert!(
        grown_mib > 14_900,
        "filesystem not grown to the 16 GiB disk: {action}"
    );
    check_text_status(&vm);
}

/// NVMe disk + Intel e1000. Also: a host client that dies in the middle of a TLS
/// handshake does not break the next osctl session, and no osctl channel is on a UART.
#[test]
fn nvme_e1000() {
    let (vm, log) = boot("metal-nvme", "nvme", None);
    assert!(
        !log.contains("osctl bridge"),
        "a serial osctl channel is on: {log}"
    );
    check_status(&vm, "nvme0n1");

    let port = vm.remote.as_ref().map(|r| r.port).unwrap_or_default();
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("the forwarded API port");
    // The first bytes of a TLS 1.3 ClientHello record header, then gone.
    c.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_secs(3));
    check_status(&vm, "nvme0n1");
    check_text_status(&vm);
}

/// USB stick (usb-storage on xhci) + Intel e1000e: a slow disk that appears after the
/// USB bus is enumerated.
#[test]
fn usb_xhci_e1000e() {
    let (vm, _) = boot("metal-usb", "usb", None);
    check_status(&vm, "sda");
    check_text_status(&vm);
}

/// The arm64 metal image (`make image ARCH=arm64 PROFILE=metal`: Debian's generic arm64
/// kernel, the metal module list for arm64) on QEMU's virt machine with an NVMe disk and an
/// Intel e1000e: no virtio disk or NIC; osctl over TLS on the e1000e.
/// Input: `BERTH_IMAGE_ARM64_METAL` (set by `make system-test`).
#[test]
fn arm64_nvme_e1000e() {
    let image = std::env::var_os("BERTH_IMAGE_ARM64_METAL")
        .map(PathBuf::from)
        .expect(
            "BERTH_IMAGE_ARM64_METAL is not set: run `make system-test` (it builds the image \
         with `make image ARCH=arm64 PROFILE=metal`)",
        );
    let info = image_info(&image);
    assert_eq!(info["arch"], "arm64", "{info:#}");
    let modules = module_names(&info);
    for m in [
        "nvme",
        "e1000e",
        "xhci_pci",
        "genet",
        "ahci_platform",
        "sdhci_iproc",
    ] {
        assert!(
            modules.contains(&m),
            "{m} missing from the arm64 metal initramfs: {modules:?}"
        );
    }
    assert!(!modules.contains(&"crc32c_intel"), "{modules:?}");
    let (vm, _) = boot_image(
        "metal-arm64-nvme",
        &image,
        &["--arch", "arm64", "--hw", "nvme"],
        None,
    );
    let st = check_status(&vm, "nvme0n1");
    assert_eq!(st["arch"], "arm64", "{st:#}");
    check_text_status(&vm);
}
