//! Finding block devices without udev: `PARTNAME=` in `/sys/class/block/*/uevent`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
fn parse_uevent(text: &str) -> Option<(String, String, u32)> {
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

/// Wait until every label is present or the timeout passes. Returns the partitions found, in
/// the order asked, `None` for the ones still missing.
pub fn wait_for(labels: &[&str], timeout: Duration) -> Vec<Option<Partition>> {
    let start = Instant::now();
    loop {
        let found: Vec<Option<Partition>> = labels
            .iter()
            .map(|l| find_partition(Path::new("/sys/class/block"), Path::new("/dev"), l))
            .collect();
        if found.iter().all(Option::is_some) || start.elapsed() >= timeout {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
