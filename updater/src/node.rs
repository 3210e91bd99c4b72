//! What the updater needs to know about the node: the running system, the slot
//! partitions, the trusted keys.

use crate::bls::Slot;
use crate::signature::PublicKey;
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The boot record is malformed.
    #[error("boot record {path} is malformed")]
    BootInfo {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The boot record names no slot.
    #[error("boot record {path} names no slot (slot {slot:?}): was this boot from a slot?")]
    NoSlot {
        /// Path.
        path: PathBuf,
        /// What it says.
        slot: String,
    },
    /// os-release has no version.
    #[error("{path} has no VERSION_ID")]
    NoVersion {
        /// Path.
        path: PathBuf,
    },
}

/// The running system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Running {
    /// Slot the root came from.
    pub slot: Slot,
    /// OS version (`VERSION_ID`).
    pub version: String,
    /// Berth arch (`x86_64`, `arm64`).
    pub arch: String,
    /// dm-verity root hash the root was opened with (empty if none).
    pub root_hash: String,
    /// Partition the root lives on (the updater refuses to write it), if known.
    pub root_partition: Option<PathBuf>,
}

/// A `KEY=value` from an os-release file.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

impl Running {
    /// From PID 1's boot record (`/run/berth/boot.json`) and os-release
    /// (`/usr/lib/berth/os-release`).
    pub fn detect(boot_json: &Path, os_release: &Path) -> Result<Self, NodeError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| NodeError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let info = berth_api::BootInfo::from_json(&read(boot_json)?).map_err(|source| {
            NodeError::BootInfo {
                path: boot_json.to_path_buf(),
                source,
            }
        })?;
        let slot = Slot::parse(&info.slot).ok_or_else(|| NodeError::NoSlot {
            path: boot_json.to_path_buf(),
            slot: info.slot.clone(),
        })?;
        let rel = read(os_release)?;
        let version = os_release_value(&rel, "VERSION_ID").ok_or_else(|| NodeError::NoVersion {
            path: os_release.to_path_buf(),
        })?;
        let arch = os_release_value(&rel, "BERTH_ARCH")
            .unwrap_or_else(|| crate::artifact::berth_arch(std::env::consts::ARCH).to_string());
        Ok(Self {
            slot,
            version,
            arch,
            root_hash: info.verity_root_hash,
            root_partition: (!info.root_partition.is_empty())
                .then(|| PathBuf::from(&info.root_partition)),
        })
    }
}

/// The partitions (or, in tests, files) of the two slots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotDevices {
    /// Slot A (`berth-root-a`).
    pub a: PathBuf,
    /// Slot B (`berth-root-b`).
    pub b: PathBuf,
}

impl SlotDevices {
    /// The device of `slot`.
    pub fn get(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Find both by GPT PARTLABEL ([`find_partition`]) on the boot disk `disk` (normally
    /// `/sys/class/block`, `/dev` and [`berth_api::BootInfo::recorded_boot_disk`]).
    pub fn find(sys_class_block: &Path, dev_root: &Path, disk: Option<&str>) -> Option<Self> {
        Some(Self {
            a: find_partition(sys_class_block, dev_root, disk, Slot::A.partlabel())?,
            b: find_partition(sys_class_block, dev_root, disk, Slot::B.partlabel())?,
        })
    }
}

/// The device node of the partition with GPT PARTLABEL `label` (`PARTNAME=` in
/// `<sys_class_block>/*/uevent`, as stage 1 looks it up), under `dev_root`, on the whole
/// disk `disk` (the boot disk; `None`: any disk, the first by name).
pub fn find_partition(
    sys_class_block: &Path,
    dev_root: &Path,
    disk: Option<&str>,
    label: &str,
) -> Option<PathBuf> {
    berth_api::block::find_partition_on(sys_class_block, dev_root, disk, label).map(|p| p.dev)
}

/// Load trusted keys: every `*.pub` in `dir` (normally `/usr/lib/berth/keys`) plus the PEM
/// strings from the config (`update.trusted_keys`). Returns the keys and one message per
/// key that could not be used (a bad key is reported, not fatal).
pub fn load_trusted_keys(dir: &Path, extra: &[String]) -> (Vec<PublicKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for p in files {
        match std::fs::read_to_string(&p) {
            Ok(t) => match PublicKey::from_pem(&t, &p.display().to_string()) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) => problems.push(format!("cannot read {}: {e}", p.display())),
        }
    }
    for (i, pem) in extra.iter().enumerate() {
        match PublicKey::from_pem(pem, &format!("update.trusted_keys[{i}]")) {
            Ok(k) => keys.push(k),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (keys, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_and_find() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot.json");
        let info = berth_api::BootInfo {
            slot: "b".into(),
            verity_root_hash: "ab".into(),
            root_partition: "/dev/vda3".into(),
            ..Default::default()
        };
        std::fs::write(&boot, info.to_json()).unwrap();
        let rel = d.path().join("os-release");
        std::fs::write(&rel, "NAME=\"Berth\"\nVERSION_ID=0.2.0\nBERTH_ARCH=arm64\n").unwrap();
        let r = Running::detect(&boot, &rel).unwrap();
        assert_eq!(r.slot, Slot::B);
        assert_eq!(r.version, "0.2.0");
        assert_eq!(r.arch, "arm64");
        assert_eq!(r.root_partition.as_deref(), Some(Path::new("/dev/vda3")));

        let sys = d.path().join("sys");
        for (n, label) in [
            ("vda2", "berth-root-a"),
            ("vda3", "berth-root-b"),
            ("vda", ""),
        ] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
            let mut t = format!("MAJOR=254\nDEVNAME={n}\nDEVTYPE=partition\n");
            if !label.is_empty() {
                t.push_str(&format!("PARTN=2\nPARTNAME={label}\n"));
            }
            std::fs::write(sys.join(n).join("uevent"), t).unwrap();
        }
        let s = SlotDevices::find(&sys, Path::new("/dev"), None).unwrap();
        assert_eq!(s.a, Path::new("/dev/vda2"));
        assert_eq!(s.get(Slot::B), Path::new("/dev/vda3"));
    }
}
