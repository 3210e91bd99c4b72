//! Finding block devices without udev: `PARTNAME=` in `/sys/class/block/*/uevent`.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::block::parse_uevent;
pub use berth_api::block::{find_partition, Partition};

/// Wait until every label is present or the timeout passes. Returns the partitions found, in
/// the order asked, `None` for the ones still missing. `on_slow` is called once, after
/// `slow` has passed with labels still missing, with those labels (to tell a person at the
/// console what the boot is waiting for: USB disks take seconds to appear).
pub fn wait_for(
    labels: &[&str],
    timeout: Duration,
    slow: Duration,
    mut on_slow: impl FnMut(&[&str]),
) -> Vec<Option<Partition>> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let found: Vec<Option<Partition>> = labels
            .iter()
            .map(|l| find_partition(Path::new("/sys/class/block"), Path::new("/dev"), l))
            .collect();
        if found.iter().all(Option::is_some) || start.elapsed() >= timeout {
            return found;
        }
        if !told && start.elapsed() >= slow {
            told = true;
            let missing: Vec<&str> = labels
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(l, _)| *l)
                .collect();
            on_slow(&missing);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every block device the kernel knows, sorted, with the PARTLABEL of each partition:
/// `sda sda1(berth-esp) sda2(berth-root-a) sr0`, or `none` - for messages that must say
/// what was seen when a partition is missing.
pub fn describe_block_devices(sys_class_block: &Path) -> String {
    let mut seen: Vec<String> = std::fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let label = std::fs::read_to_string(e.path().join("uevent"))
                        .ok()
                        .and_then(|t| parse_uevent(&t))
                        .map(|(_, p, _)| p);
                    match label {
                        Some(l) => format!("{name}({l})"),
                        None => name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    seen.sort();
    if seen.is_empty() {
        "none".into()
    } else {
        seen.join(" ")
    }
}

/// Kernel name of partition `number` of `disk`: `sda4`, but `nvme0n1p4` and `mmcblk0p4`
/// (a `p` separates the number when the disk name ends in a digit).
pub fn partition_name(disk: &str, number: u32) -> String {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("{disk}{sep}{number}")
}

/// The whole disk a partition belongs to (`/sys/class/block/vda2/..` is `vda`).
pub fn parent_disk(sys_class_block: &Path, part: &str) -> Option<String> {
    let real = std::fs::canonicalize(sys_class_block.join(part)).ok()?;
    let parent = real.parent()?;
    parent
        .join("dev")
        .exists()
        .then(|| parent.file_name().map(|n| n.to_string_lossy().into_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fake_sys(dir: &Path) {
        for (name, extra) in [
            ("vda", "DEVTYPE=disk\n"),
            ("vda1", "DEVTYPE=partition\nPARTN=1\nPARTNAME=berth-esp\n"),
            (
                "vda2",
                "DEVTYPE=partition\nPARTN=2\nPARTNAME=berth-root-a\n",
            ),
            ("vda4", "DEVTYPE=partition\nPARTN=4\nPARTNAME=berth-state\n"),
        ] {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={name}\n{extra}"),
            )
            .unwrap();
        }
    }

    #[test]
    fn partition_names_for_every_disk_kind() {
        assert_eq!(partition_name("sda", 4), "sda4");
        assert_eq!(partition_name("vda", 2), "vda2");
        assert_eq!(partition_name("nvme0n1", 4), "nvme0n1p4");
        assert_eq!(partition_name("mmcblk0", 4), "mmcblk0p4");
    }

    /// The layout of the real sysfs: /sys/class/block/<part> is a symlink into the device
    /// tree, where the partition's directory sits inside its disk's.
    #[test]
    fn parent_disk_and_labels_for_sata_nvme_mmc() {
        let t = tempdir();
        let class = t.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (dev_path, disk, part, label) in [
            (
                "devices/pci0/ata1/host0/block",
                "sda",
                "sda4",
                "berth-state",
            ),
            (
                "devices/pci0/nvme/nvme0",
                "nvme0n1",
                "nvme0n1p2",
                "berth-root-a",
            ),
            (
                "devices/pci0/mmc0/mmc0:0001/block",
                "mmcblk0",
                "mmcblk0p1",
                "x",
            ),
        ] {
            let d = t.join(dev_path).join(disk);
            std::fs::create_dir_all(d.join(part)).unwrap();
            std::fs::write(d.join("dev"), "8:0\n").unwrap();
            std::fs::write(d.join("uevent"), format!("DEVNAME={disk}\nDEVTYPE=disk\n")).unwrap();
            std::fs::write(d.join(part).join("dev"), "8:4\n").unwrap();
            std::fs::write(
                d.join(part).join("uevent"),
                format!("DEVNAME={part}\nDEVTYPE=partition\nPARTN=4\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&d, class.join(disk)).unwrap();
            std::os::unix::fs::symlink(d.join(part), class.join(part)).unwrap();
            assert_eq!(parent_disk(&class, part).as_deref(), Some(disk), "{part}");
        }
        let p = find_partition(&class, Path::new("/dev"), "berth-root-a").unwrap();
        assert_eq!(p.dev, PathBuf::from("/dev/nvme0n1p2"));
        assert_eq!(
            describe_block_devices(&class),
            "mmcblk0 mmcblk0p1(x) nvme0n1 nvme0n1p2(berth-root-a) sda sda4(berth-state)"
        );
        assert_eq!(describe_block_devices(&t.join("nope")), "none");
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn finds_by_partlabel() {
        let t = tempdir();
        fake_sys(&t);
        let p = find_partition(&t, Path::new("/dev"), "berth-root-a").unwrap();
        assert_eq!(p.name, "vda2");
        assert_eq!(p.dev, PathBuf::from("/dev/vda2"));
        assert_eq!(p.number, 2);
        assert!(find_partition(&t, Path::new("/dev"), "berth-root-b").is_none());
        // The whole disk has no PARTNAME and is never matched.
        assert!(find_partition(&t, Path::new("/dev"), "").is_none());
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "berth-init-dev-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
