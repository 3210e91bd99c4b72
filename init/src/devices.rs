//! Finding block devices without udev: `PARTNAME=` in `/sys/class/block/*/uevent`, and
//! deciding which disk this boot came from (every Berth partition is taken from that disk
//! only, so another disk carrying `berth-state` or `berth-root-a` is never used).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::block::parse_uevent;
pub use berth_api::block::{
    find_partition, find_partition_on, find_partitions, parent_disk, Partition,
};

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

/// How stage 1 chose the boot disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDiskSource {
    /// The disk holding the ESP whose PARTUUID the boot loader reported.
    Loader,
    /// No loader variable: the only disk carrying the slot's root partition.
    RootLabel,
    /// The loader named an ESP that is on no disk seen: the only disk carrying the slot's
    /// root partition (a warning is recorded).
    RootLabelLoaderEspMissing,
}

impl BootDiskSource {
    /// For the boot record (`boot_disk_source`).
    pub fn as_str(self) -> &'static str {
        match self {
            BootDiskSource::Loader => "loader",
            BootDiskSource::RootLabel | BootDiskSource::RootLabelLoaderEspMissing => "root label",
        }
    }
}

/// The disk this boot came from, and the slot's root partition on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Kernel name of the whole disk, e.g. `vda`.
    pub disk: String,
    pub source: BootDiskSource,
    pub root: Partition,
}

/// Why no boot disk (or no root on it) could be chosen. Each one stops the boot.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BootDiskError {
    #[error(
        "partition {label} is on more than one disk: {}. The boot loader did not say which \
         disk it started from, so Berth cannot tell its own disk from the other (a mistake \
         or an attack); detach the other disk or rename its partition, then boot again",
        found.join(", ")
    )]
    Ambiguous {
        label: String,
        /// `disk (partition)` for every partition carrying the label.
        found: Vec<String>,
    },
    #[error(
        "the boot disk {disk} has more than one partition labelled {label} ({}): its \
         partition table is broken",
        parts.join(", ")
    )]
    DuplicateOnBootDisk {
        disk: String,
        label: String,
        parts: Vec<String>,
    },
    #[error("cannot tell which disk partition {part} is on (no parent disk in sysfs)")]
    NoParentDisk { part: String },
    #[error(
        "root partition {label} not found on the boot disk {disk} (the disk holding the ESP \
         the boot loader started from) after {secs} s; block devices seen: {seen}"
    )]
    RootNotOnBootDisk {
        label: String,
        disk: String,
        secs: u64,
        seen: String,
    },
    #[error(
        "root partition {label} not found after {secs} s (berth.rootwait=); block devices \
         seen: {seen}. Is the disk's driver in the image's module list?"
    )]
    RootNotFound {
        label: String,
        secs: u64,
        seen: String,
    },
}

/// The whole disks under `sys_class_block` (`DEVTYPE=disk` in their uevent), sorted.
fn whole_disks(sys_class_block: &Path) -> Vec<String> {
    let mut disks: Vec<String> = std::fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("uevent")).ok())
                .filter(|t| t.lines().any(|l| l == "DEVTYPE=disk"))
                .filter_map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("DEVNAME="))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    disks.sort();
    disks
}

/// The GUIDs of the partitions in the GPT of `disk` (a block device or an image file);
/// empty when it has no readable GPT (no table, a CD, an empty drive).
fn gpt_partition_guids(disk: &Path) -> Vec<uuid::Uuid> {
    use gpt::disk::LogicalBlockSize;
    for lb in [LogicalBlockSize::Lb512, LogicalBlockSize::Lb4096] {
        let g = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open(disk);
        if let Ok(g) = g {
            return g
                .partitions()
                .values()
                .filter(|p| p.is_used())
                .map(|p| p.part_guid)
                .collect();
        }
    }
    Vec::new()
}

/// The whole disk whose GPT holds a partition with GUID `partuuid` (device nodes under
/// `dev_root`), the first by name.
pub fn disk_with_partuuid(
    sys_class_block: &Path,
    dev_root: &Path,
    partuuid: &uuid::Uuid,
) -> Option<String> {
    whole_disks(sys_class_block)
        .into_iter()
        .find(|d| gpt_partition_guids(&dev_root.join(d)).contains(partuuid))
}

fn on_disk(sys_class_block: &Path, p: &Partition) -> Result<String, BootDiskError> {
    parent_disk(sys_class_block, &p.name).ok_or_else(|| BootDiskError::NoParentDisk {
        part: p.name.clone(),
    })
}

/// The partition labelled `label` on `disk`: `None` while it is not there (yet), an error
/// when the disk has it twice.
pub fn label_on_disk(
    sys_class_block: &Path,
    dev_root: &Path,
    disk: &str,
    label: &str,
) -> Result<Option<Partition>, BootDiskError> {
    let mut mine = Vec::new();
    for p in find_partitions(sys_class_block, dev_root, label) {
        if on_disk(sys_class_block, &p)? == disk {
            mine.push(p);
        }
    }
    if mine.len() > 1 {
        return Err(BootDiskError::DuplicateOnBootDisk {
            disk: disk.to_string(),
            label: label.to_string(),
            parts: mine.into_iter().map(|p| p.name).collect(),
        });
    }
    Ok(mine.pop())
}

/// The only disk with a partition labelled `label`, and that partition: `None` while
/// there is none, an error naming every disk when there are several.
pub fn only_disk_with(
    sys_class_block: &Path,
    dev_root: &Path,
    label: &str,
) -> Result<Option<(String, Partition)>, BootDiskError> {
    let mut found = Vec::new();
    for p in find_partitions(sys_class_block, dev_root, label) {
        found.push((on_disk(sys_class_block, &p)?, p));
    }
    if found.len() > 1 {
        return Err(BootDiskError::Ambiguous {
            label: label.to_string(),
            found: found
                .iter()
                .map(|(d, p)| format!("{d} ({})", p.name))
                .collect(),
        });
    }
    Ok(found.pop())
}

/// Decide the boot disk and find the slot's root partition (`root_label`) on it, waiting
/// up to `timeout` for disks to appear.
///
/// With `loader_esp` (the ESP's PARTUUID from `LoaderDevicePartUUID`), the boot disk is
/// the disk holding that ESP and the root must be on it. If that ESP never shows up (a
/// firmware passing a stale variable), and without the variable (a direct kernel boot),
/// the boot disk is the only disk carrying `root_label`: a second one is refused, since
/// nothing says which of them is Berth's. `on_slow` is called once, after `slow`, while
/// the boot is still waiting.
pub fn wait_for_boot_disk(
    sys_class_block: &Path,
    dev_root: &Path,
    loader_esp: Option<&uuid::Uuid>,
    root_label: &str,
    timeout: Duration,
    slow: Duration,
    mut on_slow: impl FnMut(),
) -> Result<BootDisk, BootDiskError> {
    let start = Instant::now();
    let mut told = false;
    let mut esp_disk: Option<String> = None;
    loop {
        match (loader_esp, &esp_disk) {
            (Some(u), None) => esp_disk = disk_with_partuuid(sys_class_block, dev_root, u),
            (None, _) => {
                if let Some((disk, root)) = only_disk_with(sys_class_block, dev_root, root_label)? {
                    return Ok(BootDisk {
                        disk,
                        source: BootDiskSource::RootLabel,
                        root,
                    });
                }
            }
            (Some(_), Some(_)) => {}
        }
        if let Some(disk) = &esp_disk {
            if let Some(root) = label_on_disk(sys_class_block, dev_root, disk, root_label)? {
                return Ok(BootDisk {
                    disk: disk.clone(),
                    source: BootDiskSource::Loader,
                    root,
                });
            }
        }
        if start.elapsed() >= timeout {
            let seen = describe_block_devices(sys_class_block);
            let secs = timeout.as_secs();
            return match (loader_esp, esp_disk) {
                (Some(_), Some(disk)) => Err(BootDiskError::RootNotOnBootDisk {
                    label: root_label.to_string(),
                    disk,
                    secs,
                    seen,
                }),
                (Some(_), None) => match only_disk_with(sys_class_block, dev_root, root_label)? {
                    Some((disk, root)) => Ok(BootDisk {
                        disk,
                        source: BootDiskSource::RootLabelLoaderEspMissing,
                        root,
                    }),
                    None => Err(BootDiskError::RootNotFound {
                        label: root_label.to_string(),
                        secs,
                        seen,
                    }),
                },
                (None, _) => Err(BootDiskError::RootNotFound {
                    label: root_label.to_string(),
                    secs,
                    seen,
                }),
            };
        }
        if !told && start.elapsed() >= slow {
            told = true;
            on_slow();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

    const MIB: u64 = 1 << 20;

    /// A disk's kernel name and its partitions: (name, number, PARTLABEL).
    type FakeDisk<'a> = (&'a str, &'a [(&'a str, u32, &'a str)]);

    /// A fake sysfs (`class/block` symlinks into `devices/<disk>/<part>`) and, under
    /// `dev/`, a GPT image file for each disk whose ESP GUID is asked for. Returns
    /// (class/block dir, dev dir, the GPT partition GUID of each disk's first partition).
    fn fake_disks(t: &Path, disks: &[FakeDisk]) -> (PathBuf, PathBuf, Vec<uuid::Uuid>) {
        let class = t.join("class/block");
        let dev = t.join("dev");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let mut guids = Vec::new();
        for (disk, parts) in disks {
            let d = t.join("devices").join(disk);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("dev"), "254:0\n").unwrap();
            std::fs::write(d.join("uevent"), format!("DEVNAME={disk}\nDEVTYPE=disk\n")).unwrap();
            std::os::unix::fs::symlink(&d, class.join(disk)).unwrap();
            // The disk's GPT, with the same labels (the ESP's GUID is what the loader names).
            let img = dev.join(disk);
            std::fs::File::create(&img)
                .unwrap()
                .set_len(16 * MIB)
                .unwrap();
            let mut g = gpt::GptConfig::new().writable(true).create(&img).unwrap();
            for (part, n, label) in *parts {
                let p = d.join(part);
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("dev"), "254:1\n").unwrap();
                std::fs::write(
                    p.join("uevent"),
                    format!("DEVNAME={part}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
                )
                .unwrap();
                std::os::unix::fs::symlink(&p, class.join(part)).unwrap();
                g.add_partition(label, MIB, gpt::partition_types::LINUX_FS, 0, None)
                    .unwrap();
            }
            guids.push(g.partitions()[&1].part_guid);
            g.write().unwrap();
        }
        (class, dev, guids)
    }

    fn boot_disk(
        class: &Path,
        dev: &Path,
        loader: Option<&uuid::Uuid>,
    ) -> Result<BootDisk, BootDiskError> {
        wait_for_boot_disk(
            class,
            dev,
            loader,
            "berth-root-a",
            Duration::ZERO,
            Duration::ZERO,
            || {},
        )
    }

    const VDA: &[(&str, u32, &str)] = &[
        ("vda1", 1, "berth-esp"),
        ("vda2", 2, "berth-root-a"),
        ("vda3", 3, "berth-root-b"),
        ("vda4", 4, "berth-state"),
    ];

    /// A USB stick (sda, sorting before vda) with its own berth-esp and berth-state.
    #[test]
    fn two_disks_with_berth_state_the_boot_disks_wins() {
        let t = tempdir();
        let (class, dev, guids) = fake_disks(
            &t,
            &[
                (
                    "sda",
                    &[("sda1", 1, "berth-esp"), ("sda2", 2, "berth-state")],
                ),
                ("vda", VDA),
            ],
        );
        // What any-disk lookup would take: the stick's.
        assert_eq!(
            find_partition(&class, &dev, "berth-state").unwrap().name,
            "sda2"
        );
        let vda_esp = guids[1];
        for loader in [Some(&vda_esp), None] {
            let b = boot_disk(&class, &dev, loader).unwrap();
            assert_eq!(b.disk, "vda", "{loader:?}");
            assert_eq!(b.root.name, "vda2");
            let expected = if loader.is_some() {
                BootDiskSource::Loader
            } else {
                BootDiskSource::RootLabel
            };
            assert_eq!(b.source, expected);
            let state = label_on_disk(&class, &dev, &b.disk, "berth-state").unwrap();
            assert_eq!(state.unwrap().dev, dev.join("vda4"));
            let esp = find_partition_on(&class, &dev, Some(&b.disk), "berth-esp").unwrap();
            assert_eq!(esp.name, "vda1");
        }
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn a_second_disk_with_the_root_label_and_no_loader_variable_is_refused() {
        let t = tempdir();
        let (class, dev, guids) = fake_disks(
            &t,
            &[
                ("vda", VDA),
                ("sdb", &[("sdb1", 1, "x"), ("sdb2", 2, "berth-root-a")]),
            ],
        );
        let e = boot_disk(&class, &dev, None).unwrap_err();
        assert_eq!(
            e,
            BootDiskError::Ambiguous {
                label: "berth-root-a".into(),
                found: vec!["sdb (sdb2)".into(), "vda (vda2)".into()],
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("berth-root-a is on more than one disk: sdb (sdb2), vda (vda2)"),
            "{msg}"
        );
        // The loader's variable settles it: the disk holding the ESP it started from.
        let b = boot_disk(&class, &dev, Some(&guids[0])).unwrap();
        assert_eq!((b.disk.as_str(), b.root.name.as_str()), ("vda", "vda2"));
        // Booted from the stick's ESP: its root, never vda's.
        let b = boot_disk(&class, &dev, Some(&guids[1])).unwrap();
        assert_eq!((b.disk.as_str(), b.root.name.as_str()), ("sdb", "sdb2"));
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn the_root_must_be_on_the_loaders_disk() {
        let t = tempdir();
        // The loader started from the stick's ESP, but only vda has a berth-root-a.
        let (class, dev, guids) =
            fake_disks(&t, &[("sda", &[("sda1", 1, "berth-esp")]), ("vda", VDA)]);
        let e = boot_disk(&class, &dev, Some(&guids[0])).unwrap_err();
        assert!(
            matches!(&e, BootDiskError::RootNotOnBootDisk { disk, .. } if disk == "sda"),
            "{e:?}"
        );
        assert!(e.to_string().contains("vda2(berth-root-a)"), "{e}");
        // A loader ESP on no disk at all (stale variable): the only disk with the root.
        let b = boot_disk(&class, &dev, Some(&uuid::Uuid::new_v4())).unwrap();
        assert_eq!(b.disk, "vda");
        assert_eq!(b.source, BootDiskSource::RootLabelLoaderEspMissing);
        // No root anywhere.
        let (class2, dev2, _) = fake_disks(&t.join("2"), &[("sda", &[("sda1", 1, "x")])]);
        assert!(matches!(
            boot_disk(&class2, &dev2, None),
            Err(BootDiskError::RootNotFound { .. })
        ));
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn two_roots_on_the_boot_disk_are_refused() {
        let t = tempdir();
        let (class, dev, guids) = fake_disks(
            &t,
            &[(
                "vda",
                &[
                    ("vda1", 1, "berth-esp"),
                    ("vda2", 2, "berth-root-a"),
                    ("vda3", 3, "berth-root-a"),
                ],
            )],
        );
        let e = boot_disk(&class, &dev, Some(&guids[0])).unwrap_err();
        assert!(
            matches!(&e, BootDiskError::DuplicateOnBootDisk { parts, .. } if parts == &["vda2", "vda3"]),
            "{e:?}"
        );
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
