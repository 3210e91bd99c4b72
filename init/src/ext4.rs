//! Just enough of the ext4 superblock to tell whether the state filesystem exists and was
//! shut down cleanly.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const SB_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;
/// `EXT4_FEATURE_INCOMPAT_RECOVER`: the journal holds transactions not yet replayed.
const INCOMPAT_RECOVER: u32 = 0x4;

/// The parts of an ext4 superblock Berth looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub label: String,
    /// `s_state` has `EXT2_VALID_FS` and not `EXT2_ERROR_FS`.
    pub valid: bool,
    /// The journal needs recovery: the filesystem was not unmounted cleanly.
    pub needs_recovery: bool,
}

impl Superblock {
    /// Was the filesystem cleanly unmounted and free of recorded errors?
    pub fn clean(&self) -> bool {
        self.valid && !self.needs_recovery
    }

    /// Parse the 1024-byte superblock (starting at byte 1024 of the device).
    pub fn parse(sb: &[u8]) -> Option<Self> {
        if sb.len() < 1024 {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        if u16_at(0x38) != MAGIC {
            return None;
        }
        let log_block_size = u32_at(0x18);
        if log_block_size > 6 {
            return None;
        }
        let block_size = 1024u64 << log_block_size;
        let incompat = u32_at(0x60);
        let mut blocks_count = u64::from(u32_at(0x04));
        // 64bit feature: high half of the block count.
        if incompat & 0x80 != 0 {
            blocks_count |= u64::from(u32_at(0x150)) << 32;
        }
        let state = u16_at(0x3A);
        let label_raw = &sb[0x78..0x88];
        let end = label_raw.iter().position(|b| *b == 0).unwrap_or(16);
        Some(Superblock {
            block_size,
            blocks_count,
            label: String::from_utf8_lossy(&label_raw[..end]).into_owned(),
            valid: state & 1 != 0 && state & 2 == 0,
            needs_recovery: incompat & INCOMPAT_RECOVER != 0,
        })
    }

    /// Read the superblock of a device or image file; `None` when it is not ext4.
    pub fn read(dev: &Path) -> std::io::Result<Option<Self>> {
        let mut f = std::fs::File::open(dev)?;
        f.seek(SeekFrom::Start(SB_OFFSET))?;
        let mut buf = vec![0u8; 1024];
        f.read_exact(&mut buf)?;
        Ok(Self::parse(&buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(state: u16, incompat: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0x04..0x08].copy_from_slice(&8192u32.to_le_bytes());
        b[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        b[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
        b[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        b[0x78..0x7D].copy_from_slice(b"state");
        b
    }

    #[test]
    fn clean_and_unclean() {
        let clean = Superblock::parse(&sb(1, 0x2)).unwrap();
        assert_eq!(clean.block_size, 4096);
        assert_eq!(clean.blocks_count, 8192);
        assert_eq!(clean.label, "state");
        assert!(clean.clean());
        let dirty = Superblock::parse(&sb(1, 0x2 | INCOMPAT_RECOVER)).unwrap();
        assert!(!dirty.clean());
        let errors = Superblock::parse(&sb(3, 0)).unwrap();
        assert!(!errors.clean());
    }

    #[test]
    fn not_ext4() {
        assert_eq!(Superblock::parse(&[0u8; 1024]), None);
        assert_eq!(Superblock::parse(&[0u8; 10]), None);
    }
}
