//! Finding partitions without udev: `PARTNAME=` in `/sys/class/block/*/uevent`. Shared
//! by PID 1 (root, state and ESP at boot) and the updater (the two root slots).
//!
//! Every lookup on a running node is restricted to the boot disk stage 1 chose and
//! recorded in [`crate::BootInfo::boot_disk`]: a second disk (a USB stick, another
//! Berth disk) carrying a partition labelled `berth-state` or `berth-root-b` must never
//! be mounted as `/var` or written by an update.

use std::path::{Path, PathBuf};

/// A partition found by its GPT PARTLABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, e.g. `vda2` or `nvme0n1p2`.
    pub name: String,
    /// Device node, e.g. `/dev/vda2`.
    pub dev: PathBuf,
    /// Partition number.
    pub number: u32,
}

/// Parse one `uevent` file: returns (DEVNAME, PARTNAME, PARTN) when it is a partition.
pub fn parse_uevent(text: &str) -> Option<(String, String, u32)> {
    let mut devname = None;
    let mut partname = None;
    let mut partn = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("DEVNAME", v)) => devname = Some(v.to_string()),
            Some(("PARTNAME", v)) => partname = Some(v.to_string()),
            Some(("PARTN", v)) => partn = v.parse().ok(),
            _ => {}
        }
    }
    Some((devname?, partname?, partn.unwrap_or(0)))
}

/// The whole disk a partition belongs to (`/sys/class/block/vda2` resolves into the
/// device tree as `.../vda/vda2`, and `.../vda` has a `dev` file): `vda`.
pub fn parent_disk(sys_class_block: &Path, part: &str) -> Option<String> {
    let real = std::fs::canonicalize(sys_class_block.join(part)).ok()?;
    let parent = real.parent()?;
    parent
        .join("dev")
        .exists()
        .then(|| parent.file_name().map(|n| n.to_string_lossy().into_owned()))?
}

/// Every partition labelled `label` under `sys_class_block` (normally
/// `/sys/class/block`), sorted by kernel name; device nodes are reported under `dev_root`
/// (normally `/dev`). More than one means several disks (or one broken table) carry it.
pub fn find_partitions(sys_class_block: &Path, dev_root: &Path, label: &str) -> Vec<Partition> {
    let Ok(dir) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut found: Vec<Partition> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("uevent")).ok())
        .filter_map(|t| parse_uevent(&t))
        .filter(|(_, p, _)| p == label)
        .map(|(name, _, number)| Partition {
            dev: dev_root.join(&name),
            name,
            number,
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The partition labelled `label` on the whole disk `disk` (kernel name, e.g. `vda`, as
/// recorded in [`crate::BootInfo::boot_disk`]). `None` for `disk` looks on every disk and
/// takes the first by name: only for a node whose boot record names no boot disk.
pub fn find_partition_on(
    sys_class_block: &Path,
    dev_root: &Path,
    disk: Option<&str>,
    label: &str,
) -> Option<Partition> {
    find_partitions(sys_class_block, dev_root, label)
        .into_iter()
        .find(|p| disk.is_none_or(|d| parent_disk(sys_class_block, &p.name).as_deref() == Some(d)))
}

/// Look up a partition by PARTLABEL on any disk (the first by name when several carry
/// it). Prefer [`find_partition_on`] with the boot disk.
pub fn find_partition(sys_class_block: &Path, dev_root: &Path, label: &str) -> Option<Partition> {
    find_partition_on(sys_class_block, dev_root, None, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uevent_of_a_partition_and_of_a_disk() {
        let part = "MAJOR=259\nMINOR=2\nDEVNAME=nvme0n1p2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=berth-root-a\n";
        assert_eq!(
            parse_uevent(part),
            Some(("nvme0n1p2".into(), "berth-root-a".into(), 2))
        );
        assert_eq!(parse_uevent("DEVNAME=vda\nDEVTYPE=disk\n"), None);
        // A partition without PARTN (old kernels) still matches by label.
        assert_eq!(
            parse_uevent("DEVNAME=sda1\nPARTNAME=x\n"),
            Some(("sda1".into(), "x".into(), 0))
        );
    }

    /// A sysfs-like tree: `devices/<disk>/<part>` directories with `dev` and `uevent`
    /// files, and `class/block/<name>` symlinks into it, as the kernel lays it out.
    /// A disk's kernel name and its partitions: (name, number, PARTLABEL).
    type FakeDisk<'a> = (&'a str, &'a [(&'a str, u32, &'a str)]);

    fn fake_sys(root: &Path, disks: &[FakeDisk]) -> PathBuf {
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (disk, parts) in disks {
            let d = root.join("devices").join(disk);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("dev"), "254:0\n").unwrap();
            std::fs::write(d.join("uevent"), format!("DEVNAME={disk}\nDEVTYPE=disk\n")).unwrap();
            std::os::unix::fs::symlink(&d, class.join(disk)).unwrap();
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
            }
        }
        class
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-api-block-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_boot_disk_restricts_the_lookup() {
        let t = tempdir("restrict");
        // sda is a USB stick with a berth-state and a berth-esp that sort before vda's.
        let class = fake_sys(
            &t,
            &[
                (
                    "vda",
                    &[
                        ("vda1", 1, "berth-esp"),
                        ("vda2", 2, "berth-root-a"),
                        ("vda4", 4, "berth-state"),
                    ],
                ),
                (
                    "sda",
                    &[("sda1", 1, "berth-esp"), ("sda2", 2, "berth-state")],
                ),
            ],
        );
        let dev = Path::new("/dev");
        let on = |disk: Option<&str>, label: &str| {
            find_partition_on(&class, dev, disk, label).map(|p| p.dev)
        };
        assert_eq!(
            on(Some("vda"), "berth-state"),
            Some(PathBuf::from("/dev/vda4"))
        );
        assert_eq!(
            on(Some("vda"), "berth-esp"),
            Some(PathBuf::from("/dev/vda1"))
        );
        assert_eq!(
            on(Some("sda"), "berth-state"),
            Some(PathBuf::from("/dev/sda2"))
        );
        // Not on the boot disk: not found, even though the stick has it.
        assert_eq!(on(Some("vda"), "berth-root-b"), None);
        assert_eq!(on(Some("sda"), "berth-root-a"), None);
        // Unrestricted (no boot disk recorded): the first by name, here the stick's.
        assert_eq!(on(None, "berth-state"), Some(PathBuf::from("/dev/sda2")));
        assert_eq!(
            find_partitions(&class, dev, "berth-esp")
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["sda1", "vda1"]
        );
        assert_eq!(parent_disk(&class, "vda4").as_deref(), Some("vda"));
        // A whole disk has no parent disk.
        assert_eq!(parent_disk(&class, "vda"), None);
        std::fs::remove_dir_all(&t).unwrap();
    }
}
