//! dm-verity for the root slot: the table line, and opening the device.

use crate::cmdline::VerityArgs;

/// Data and hash block size used by `berth-image` (4 KiB for both).
pub const BLOCK_SIZE: u64 = 4096;

/// The dm table parameters for a verity device whose hash tree is appended to the data on
/// the same partition, after one block holding the verity superblock:
/// `1 <dev> <dev> 4096 4096 <N> <N+1> sha256 <root hash> <salt>`.
pub fn table_params(dev: &str, v: &VerityArgs) -> String {
    format!(
        "1 {dev} {dev} {bs} {bs} {n} {hash_start} sha256 {root} {salt}",
        bs = BLOCK_SIZE,
        n = v.data_blocks,
        hash_start = v.data_blocks + 1,
        root = v.root_hash,
        salt = v.salt,
    )
}

/// Length of the verity device in 512-byte sectors.
pub fn sectors(v: &VerityArgs) -> u64 {
    v.data_blocks * (BLOCK_SIZE / 512)
}

/// Open the verity device `berth-root` for a slot and return its node (`/dev/dm-N`).
pub fn open(dev: &str, slot: &str, v: &VerityArgs) -> std::io::Result<String> {
    let name = format!("berth-root-{slot}");
    let uuid = format!("BERTH-VERITY-{slot}");
    let minor = crate::sys::dm_create(&name, &uuid, sectors(v), "verity", &table_params(dev, v))?;
    Ok(format!("/dev/dm-{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_line() {
        let v = VerityArgs {
            root_hash: "ab".repeat(32),
            salt: "0011".into(),
            data_blocks: 100,
        };
        assert_eq!(
            table_params("/dev/vda2", &v),
            format!(
                "1 /dev/vda2 /dev/vda2 4096 4096 100 101 sha256 {} 0011",
                "ab".repeat(32)
            )
        );
        assert_eq!(sectors(&v), 800);
    }
}
