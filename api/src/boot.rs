//! What PID 1 knows about the current boot, handed to sysd through [`crate::BOOT_INFO_PATH`].

use serde::{Deserialize, Serialize};

/// One boot phase and the CLOCK_BOOTTIME second it was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub t: f64,
}

/// How this boot went, as far as PID 1 can tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootInfo {
    /// Slot the root came from (`a` or `b`).
    pub slot: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// dm-verity root hash the root was opened with (empty if the root is not verity-protected).
    pub verity_root_hash: String,
    /// Device-mapper node backing `/`, e.g. `/dev/dm-0`.
    pub root_device: String,
    /// Partition the root slot lives on, e.g. `/dev/vda2`.
    pub root_partition: String,
    /// Kernel name of the disk this boot came from (e.g. `vda`, `nvme0n1`). Stage 1 takes
    /// the root and the state partition from this disk only, and sysd and the updater look
    /// up the ESP and the other root slot on it only. Empty in a record from an older init.
    pub boot_disk: String,
    /// How stage 1 chose [`Self::boot_disk`]: `loader` (the disk holding the ESP the boot
    /// loader reported in the EFI variable `LoaderDevicePartUUID`) or `root label` (no
    /// such variable, e.g. a direct kernel boot: the only disk with the slot's root).
    pub boot_disk_source: String,
    /// Partition mounted on `/var`.
    pub state_partition: String,
    /// Whether the state filesystem had been cleanly unmounted before this boot.
    pub state_was_clean: bool,
    /// What happened to the state partition during stage 1 (e.g. "mounted", "recreated: ...").
    pub state_action: String,
    /// Boots recorded on this state partition, including this one.
    pub boot_count: u64,
    /// Kernel modules loaded by stage 1.
    pub modules_loaded: u32,
    /// Boot phases with their timestamps.
    pub phases: Vec<Phase>,
    /// Where the machine config in force came from (`persisted`, a datasource, `defaults`).
    pub config_source: String,
    /// Why the config in force is the defaults, when it is because of an error.
    pub config_error: String,
    /// Problems noticed during boot that did not stop it.
    pub warnings: Vec<String>,
}

impl BootInfo {
    /// Parse the JSON record.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The boot disk recorded in the boot record at `path` (normally
    /// [`crate::BOOT_INFO_PATH`]); `None` when the record is missing, malformed or names
    /// none. Callers pass it to [`crate::block::find_partition_on`].
    pub fn recorded_boot_disk(path: &std::path::Path) -> Option<String> {
        let info = Self::from_json(&std::fs::read_to_string(path).ok()?).ok()?;
        (!info.boot_disk.is_empty()).then_some(info.boot_disk)
    }

    /// Serialize to JSON.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let mut b = BootInfo {
            slot: "a".into(),
            boot_count: 3,
            ..Default::default()
        };
        b.phases.push(Phase {
            name: "stage1".into(),
            t: 1.5,
        });
        let back = BootInfo::from_json(&b.to_json()).unwrap();
        assert_eq!(back, b);
        // Older or partial records still parse.
        let partial = BootInfo::from_json(r#"{"slot":"b"}"#).unwrap();
        assert_eq!(partial.slot, "b");
        assert_eq!(partial.boot_count, 0);
        assert_eq!(partial.boot_disk, "");
    }

    #[test]
    fn recorded_boot_disk() {
        let d = std::env::temp_dir().join(format!("berth-api-boot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("boot.json");
        let b = BootInfo {
            boot_disk: "nvme0n1".into(),
            ..Default::default()
        };
        std::fs::write(&p, b.to_json()).unwrap();
        assert_eq!(BootInfo::recorded_boot_disk(&p).as_deref(), Some("nvme0n1"));
        // An older record, a broken one, or none: no restriction can be derived.
        std::fs::write(&p, r#"{"slot":"a"}"#).unwrap();
        assert_eq!(BootInfo::recorded_boot_disk(&p), None);
        std::fs::write(&p, "{").unwrap();
        assert_eq!(BootInfo::recorded_boot_disk(&p), None);
        assert_eq!(BootInfo::recorded_boot_disk(&d.join("missing.json")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
