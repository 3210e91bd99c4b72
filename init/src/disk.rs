//! The state partition in the GPT: recreate it when it is missing, grow it to the end of the
//! disk when there is room (first boot after `dd` to a larger disk).

use std::path::Path;

/// DPS "/var" partition type, as written by `berth-image`.
pub const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
pub const STATE_LABEL: &str = "berth-state";
const MIB: u64 = 1 << 20;
/// Smallest state partition we are willing to create.
const MIN_STATE: u64 = 16 * MIB;

/// What happened to the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created as partition `number`, bytes `start..start+len`.
    Created { number: u32, start: u64, len: u64 },
    /// Partition `number` grew from `old_len` to `len` bytes (it starts at `start`).
    Grown {
        number: u32,
        start: u64,
        old_len: u64,
        len: u64,
    },
}

/// Partition table problems.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot read the partition table of {disk}")]
    Read {
        disk: String,
        #[source]
        source: gpt::GptError,
    },
    #[error("cannot write the partition table of {disk}")]
    Write {
        disk: String,
        #[source]
        source: gpt::GptError,
    },
    #[error(
        "no room on {disk} for a state partition ({free} bytes free after the last partition)"
    )]
    NoRoom { disk: String, free: u64 },
}

/// Make sure the disk has a state partition filling the space after the last partition.
/// Works on a disk image file or a block device; returns what it changed, if anything.
pub fn ensure_state(disk: &Path) -> Result<Option<Change>, DiskError> {
    let name = disk.display().to_string();
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .open(disk)
        .map_err(|source| DiskError::Read {
            disk: name.clone(),
            source,
        })?;
    let lb = g.logical_block_size().as_u64();
    // The backup header goes at the (possibly new) end of the disk: recompute the headers
    // for the current device size first, so last_usable covers the whole disk.
    let mut parts = g.partitions().clone();
    g.update_partitions(parts.clone())
        .map_err(|source| DiskError::Write {
            disk: name.clone(),
            source,
        })?;
    let last_usable = g.header().last_usable;
    let align = MIB / lb;
    let end_used = parts
        .values()
        .filter(|p| p.is_used())
        .map(|p| p.last_lba)
        .max()
        .unwrap_or(0);
    // The last LBA a partition may use, rounded down to whole MiB of the disk.
    let last_aligned = (last_usable + 1) / align * align - 1;

    let state = parts
        .iter()
        .find(|(_, p)| p.is_used() && p.name == STATE_LABEL)
        .map(|(id, p)| (*id, p.clone()));
    let change = match state {
        Some((id, p)) => {
            if p.last_lba != end_used || last_aligned <= p.last_lba + align {
                return Ok(None); // not the last partition, or less than 1 MiB to gain
            }
            let old_len = (p.last_lba + 1 - p.first_lba) * lb;
            let mut np = p.clone();
            np.last_lba = last_aligned;
            let len = (np.last_lba + 1 - np.first_lba) * lb;
            parts.insert(id, np);
            Change::Grown {
                number: id,
                start: p.first_lba * lb,
                old_len,
                len,
            }
        }
        None => {
            let first = (end_used + 1).div_ceil(align) * align;
            let free = (last_aligned + 1).saturating_sub(first) * lb;
            if free < MIN_STATE {
                return Err(DiskError::NoRoom { disk: name, free });
            }
            let id = (1..=128u32)
                .find(|i| parts.get(i).is_none_or(|p| !p.is_used()))
                .unwrap_or(128);
            let ty = gpt::partition_types::Type {
                guid: uuid::Uuid::parse_str(VAR_TYPE).unwrap_or_default(),
                os: gpt::partition_types::OperatingSystem::Custom("Berth".into()),
            };
            parts.insert(
                id,
                gpt::partition::Partition {
                    part_type_guid: ty,
                    part_guid: uuid::Uuid::new_v4(),
                    first_lba: first,
                    last_lba: last_aligned,
                    flags: 0,
                    name: STATE_LABEL.into(),
                },
            );
            Change::Created {
                number: id,
                start: first * lb,
                len: free,
            }
        }
    };
    g.update_partitions(parts)
        .map_err(|source| DiskError::Write {
            disk: name.clone(),
            source,
        })?;
    g.write()
        .map_err(|source| DiskError::Write { disk: name, source })?;
    Ok(Some(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_disk(path: &Path, size: u64, with_state: bool) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let mut g = gpt::GptConfig::new().writable(true).create(path).unwrap();
        let lin = gpt::partition_types::LINUX_FS;
        g.add_partition(
            "berth-esp",
            8 * MIB,
            gpt::partition_types::EFI,
            0,
            Some(MIB / 512),
        )
        .unwrap();
        g.add_partition("berth-root-a", 8 * MIB, lin.clone(), 0, Some(MIB / 512))
            .unwrap();
        if with_state {
            g.add_partition(STATE_LABEL, 32 * MIB, lin, 0, Some(MIB / 512))
                .unwrap();
        }
        g.write().unwrap();
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("berth-disk-{}-{name}", std::process::id()))
    }

    #[test]
    fn grows_state_to_the_end_of_a_larger_disk() {
        let p = tmp("grow");
        make_disk(&p, 64 * MIB, true);
        // The image is "dd'ed" onto a bigger disk.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(256 * MIB)
            .unwrap();
        let c = ensure_state(&p).unwrap().expect("a change");
        let Change::Grown {
            old_len,
            len,
            start,
            ..
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(old_len, 32 * MIB);
        assert!(
            start + len > 250 * MIB && start + len <= 256 * MIB - 33 * 512,
            "{start} {len}"
        );
        // Idempotent: nothing left to do, and the table is valid on reopen.
        assert_eq!(ensure_state(&p).unwrap(), None);
        let g = gpt::GptConfig::new().open(&p).unwrap();
        assert_eq!(g.backup_header().unwrap().current_lba, 256 * MIB / 512 - 1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn recreates_a_missing_state_partition() {
        let p = tmp("create");
        make_disk(&p, 64 * MIB, false);
        let c = ensure_state(&p).unwrap().expect("a change");
        let Change::Created { number, len, .. } = c else {
            panic!("{c:?}")
        };
        assert_eq!(number, 3);
        assert!(len >= 40 * MIB, "{len}");
        let g = gpt::GptConfig::new().open(&p).unwrap();
        assert!(g.partitions().values().any(|p| p.name == STATE_LABEL));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn no_room_is_a_clear_error() {
        let p = tmp("full");
        make_disk(&p, 18 * MIB, false);
        let e = ensure_state(&p).unwrap_err().to_string();
        assert!(e.contains("no room"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
