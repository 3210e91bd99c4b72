//! The GPT disk layout shared by every Berth image (see `docs/ARCHITECTURE.md`).

use sha2::{Digest, Sha256};

pub const MIB: u64 = 1024 * 1024;
pub const SECTOR: u64 = 512;
/// Space before the first partition (protective MBR, GPT header and entries, alignment).
pub const FIRST_OFFSET: u64 = MIB;
/// Space after the last partition for the backup GPT.
pub const TAIL: u64 = MIB;

/// CPU architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Discoverable Partitions Specification "root" type for this arch.
    pub fn root_type(self) -> &'static str {
        match self {
            Arch::X86_64 => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            Arch::Arm64 => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        }
    }

    /// File name of the removable-media EFI loader.
    pub fn efi_boot_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }
}

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// DPS "/var" partition type.
pub const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub label: &'static str,
    pub type_guid: &'static str,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
}

/// Partition sizes in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub esp: u64,
    pub root: u64,
    pub state: u64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            esp: 256 * MIB,
            root: 512 * MIB,
            state: 32 * MIB,
        }
    }
}

/// A deterministic UUID derived from the build id and a purpose.
pub fn uuid_for(build_id: &str, what: &str) -> String {
    let h = Sha256::digest(format!("berth:{build_id}:{what}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// The four partitions in disk order, and the total disk size.
pub fn layout(arch: Arch, sizes: Sizes, build_id: &str) -> (Vec<Part>, u64) {
    let specs: [(&'static str, &'static str, u64); 4] = [
        ("berth-esp", ESP_TYPE, sizes.esp),
        ("berth-root-a", arch.root_type(), sizes.root),
        ("berth-root-b", arch.root_type(), sizes.root),
        ("berth-state", VAR_TYPE, sizes.state),
    ];
    let mut off = FIRST_OFFSET;
    let parts = specs
        .iter()
        .map(|(label, ty, size)| {
            let p = Part {
                label,
                type_guid: ty,
                uuid: uuid_for(build_id, label),
                offset: off,
                size: *size,
            };
            off += size;
            p
        })
        .collect();
    (parts, off + TAIL)
}

/// An `sfdisk` script creating the table (sector units).
pub fn sfdisk_script(parts: &[Part], build_id: &str) -> String {
    let mut s = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: {}\n",
        uuid_for(build_id, "disk"),
        FIRST_OFFSET / SECTOR
    );
    for p in parts {
        s.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.offset / SECTOR,
            p.size / SECTOR,
            p.type_guid,
            p.uuid,
            p.label
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_layout() {
        let (parts, total) = layout(Arch::X86_64, Sizes::default(), "b1");
        let labels: Vec<&str> = parts.iter().map(|p| p.label).collect();
        assert_eq!(
            labels,
            ["berth-esp", "berth-root-a", "berth-root-b", "berth-state"]
        );
        assert_eq!(parts[0].offset, MIB);
        assert_eq!(parts[0].size, 256 * MIB);
        assert_eq!(parts[1].offset, 257 * MIB);
        assert_eq!(parts[2].offset, 769 * MIB);
        assert_eq!(parts[3].offset, 1281 * MIB);
        assert_eq!(total, 1314 * MIB);
        // Partitions are 1 MiB aligned and do not overlap.
        for w in parts.windows(2) {
            assert_eq!(w[0].offset + w[0].size, w[1].offset);
        }
        assert!(parts.iter().all(|p| p.offset % MIB == 0));
        assert_eq!(parts[1].type_guid, Arch::X86_64.root_type());
        assert_eq!(
            layout(Arch::Arm64, Sizes::default(), "b1").0[2].type_guid,
            Arch::Arm64.root_type()
        );
    }

    #[test]
    fn script_and_uuids_are_deterministic() {
        let (parts, _) = layout(Arch::X86_64, Sizes::default(), "b1");
        let s = sfdisk_script(&parts, "b1");
        assert!(s.starts_with("label: gpt\n"));
        assert!(s.contains("start=2048, size=524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
        assert!(s.contains("name=\"berth-state\""));
        assert_eq!(
            s,
            sfdisk_script(&layout(Arch::X86_64, Sizes::default(), "b1").0, "b1")
        );
        assert_ne!(uuid_for("b1", "x"), uuid_for("b2", "x"));
        let u = uuid_for("b1", "x");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
