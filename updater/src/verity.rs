//! dm-verity (format 1, SHA-256, 4 KiB blocks) hash tree computation, so the updater can
//! prove that what it wrote to a slot is what the kernel will accept at boot.
//!
//! Layout written by `veritysetup format --hash-offset=<data size>` as `berth-image`
//! does: the data blocks, then one block holding the verity superblock, then the hash
//! tree with its top level first and the level hashing the data blocks last. Each hash is
//! `sha256(salt || block)`; the root hash is the hash of the single top-level block.

use sha2::{Digest as _, Sha256};
use std::io::Read;

/// Data and hash block size used by Berth images.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = (BLOCK / DIGEST) as u64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Reading the image failed (or it is shorter than its parameters say).
    #[error("cannot read the verity image at byte {offset}")]
    Read {
        /// Where.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The salt is not hex.
    #[error("verity salt {0:?} is not hex")]
    Salt(String),
    /// The superblock after the data does not describe this image.
    #[error("verity superblock at block {block}: {what}")]
    Superblock {
        /// Block number of the superblock.
        block: u64,
        /// What does not match.
        what: String,
    },
    /// A stored hash block differs from the one computed from the data.
    #[error("verity hash tree block {block} (level {level}) does not match the data")]
    TreeMismatch {
        /// Block number in the image.
        block: u64,
        /// Tree level (0 hashes the data blocks).
        level: usize,
    },
    /// The computed root hash is not the expected one.
    #[error("verity root hash of the written data is {actual}, expected {expected}")]
    RootMismatch {
        /// What the artifact's config says.
        expected: String,
        /// What the data hashes to.
        actual: String,
    },
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Number of tree levels for `data_blocks` (the kernel's rule: the smallest L with
/// 128^L >= data_blocks).
pub fn levels(data_blocks: u64) -> usize {
    let mut l = 0usize;
    while 7 * l < 64 && data_blocks.saturating_sub(1) >> (7 * l) != 0 {
        l += 1;
    }
    l
}

/// Decode a salt as `veritysetup` prints it (`-` for none).
pub fn parse_salt(salt: &str) -> Result<Vec<u8>, VerityError> {
    if salt == "-" || salt.is_empty() {
        return Ok(Vec::new());
    }
    hex::decode(salt).map_err(|_| VerityError::Salt(salt.to_string()))
}

/// Pack hashes into zero-padded hash blocks.
fn pack(hashes: &[[u8; DIGEST]]) -> Vec<Vec<u8>> {
    hashes
        .chunks(PER_BLOCK as usize)
        .map(|c| {
            let mut b = vec![0u8; BLOCK];
            for (i, h) in c.iter().enumerate() {
                b[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(h);
            }
            b
        })
        .collect()
}

/// The tree computed from the data: levels (index 0 = hashes of the data blocks) and the
/// root hash.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Hash blocks per level, lowest level first.
    pub levels: Vec<Vec<Vec<u8>>>,
    /// Root hash, lowercase hex.
    pub root_hash: String,
}

/// Compute the tree over `data_blocks` blocks read from `r`. `on_bytes` is told how many
/// bytes were read after each step (for progress).
pub fn compute(
    r: &mut dyn Read,
    data_blocks: u64,
    salt: &[u8],
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Tree, VerityError> {
    let mut hashes = Vec::with_capacity(data_blocks as usize);
    let mut buf = vec![0u8; BLOCK * 256];
    let mut left = data_blocks;
    let mut offset = 0u64;
    while left > 0 {
        let n = (left.min(256)) as usize;
        r.read_exact(&mut buf[..n * BLOCK])
            .map_err(|source| VerityError::Read { offset, source })?;
        for b in buf[..n * BLOCK].chunks(BLOCK) {
            hashes.push(salted(salt, b));
        }
        offset += (n * BLOCK) as u64;
        left -= n as u64;
        on_bytes((n * BLOCK) as u64);
    }
    let nlevels = levels(data_blocks);
    if nlevels == 0 {
        // One data block: the root is its own hash.
        let root = hashes.first().map(hex::encode).unwrap_or_default();
        return Ok(Tree {
            levels: Vec::new(),
            root_hash: root,
        });
    }
    let mut out = Vec::with_capacity(nlevels);
    let mut level = pack(&hashes);
    for _ in 1..nlevels {
        let next: Vec<[u8; DIGEST]> = level.iter().map(|b| salted(salt, b)).collect();
        out.push(level);
        level = pack(&next);
    }
    let root = level.first().map(|b| hex::encode(salted(salt, b)));
    out.push(level);
    Ok(Tree {
        levels: out,
        root_hash: root.unwrap_or_default(),
    })
}

/// Check the verity superblock found at block `block` against the parameters.
fn check_superblock(
    sb: &[u8],
    block: u64,
    data_blocks: u64,
    salt: &[u8],
) -> Result<(), VerityError> {
    let bad = |what: String| VerityError::Superblock { block, what };
    if &sb[0..8] != b"verity\0\0" {
        return Err(bad("no verity signature".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let version = u32_at(8);
    let hash_type = u32_at(12);
    if version != 1 || hash_type != 1 {
        return Err(bad(format!(
            "version {version}, hash type {hash_type}; expected 1, 1"
        )));
    }
    let alg_end = sb[32..64].iter().position(|b| *b == 0).unwrap_or(32);
    let alg = String::from_utf8_lossy(&sb[32..32 + alg_end]);
    if alg != "sha256" {
        return Err(bad(format!("hash algorithm {alg}, expected sha256")));
    }
    let (dbs, hbs) = (u32_at(64), u32_at(68));
    if dbs as usize != BLOCK || hbs as usize != BLOCK {
        return Err(bad(format!("block sizes {dbs}/{hbs}, expected 4096/4096")));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&sb[72..80]);
    let n = u64::from_le_bytes(n);
    if n != data_blocks {
        return Err(bad(format!("{n} data blocks, expected {data_blocks}")));
    }
    let salt_size = u16::from_le_bytes([sb[80], sb[81]]) as usize;
    if salt_size > 256 || &sb[88..88 + salt_size] != salt {
        return Err(bad("the salt differs".into()));
    }
    Ok(())
}

/// What [`verify_image`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The root hash (equal to the expected one).
    pub root_hash: String,
    /// Bytes read (data, superblock and tree).
    pub bytes: u64,
}

/// Verify a verity image (as written to a slot), `r` positioned at its start: recompute the tree from
/// the data blocks, check the superblock, compare every stored hash block with the
/// computed one, and compare the root hash with `expected_root`.
pub fn verify_image(
    r: &mut dyn Read,
    data_blocks: u64,
    salt_hex: &str,
    expected_root: &str,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Verified, VerityError> {
    let salt = parse_salt(salt_hex)?;
    let tree = compute(r, data_blocks, &salt, on_bytes)?;
    let mut bytes = data_blocks * BLOCK as u64;
    let mut sb = vec![0u8; BLOCK];
    r.read_exact(&mut sb).map_err(|source| VerityError::Read {
        offset: bytes,
        source,
    })?;
    check_superblock(&sb, data_blocks, data_blocks, &salt)?;
    bytes += BLOCK as u64;
    let mut block = data_blocks + 1;
    let mut buf = vec![0u8; BLOCK];
    for (level, blocks) in tree.levels.iter().enumerate().rev() {
        for want in blocks {
            r.read_exact(&mut buf).map_err(|source| VerityError::Read {
                offset: bytes,
                source,
            })?;
            if buf != *want {
                return Err(VerityError::TreeMismatch { block, level });
            }
            bytes += BLOCK as u64;
            block += 1;
        }
    }
    if !tree.root_hash.eq_ignore_ascii_case(expected_root.trim()) {
        return Err(VerityError::RootMismatch {
            expected: expected_root.to_string(),
            actual: tree.root_hash,
        });
    }
    Ok(Verified {
        root_hash: tree.root_hash,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts() {
        assert_eq!(levels(1), 0);
        assert_eq!(levels(2), 1);
        assert_eq!(levels(128), 1);
        assert_eq!(levels(129), 2);
        assert_eq!(levels(128 * 128), 2);
        assert_eq!(levels(128 * 128 + 1), 3);
    }
}
