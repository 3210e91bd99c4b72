//! Finding partitions without udev: `PARTNAME=` in `/sys/class/block/*/uevent`. Shared
//! by PID 1 (root, state and ESP at boot) and the updater (the two root slots).

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

/// Look up a partition by PARTLABEL under `sys_class_block` (normally `/sys/class/block`);
/// device nodes are reported under `dev_root` (normally `/dev`).
pub fn find_partition(sys_class_block: &Path, dev_root: &Path, label: &str) -> Option<Partition> {
    let mut found: Vec<Partition> = std::fs::read_dir(sys_class_block)
        .ok()?
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
    // Deterministic when a label appears twice (e.g. a second Berth disk attached).
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found.into_iter().next()
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
}
