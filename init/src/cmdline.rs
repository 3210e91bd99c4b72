//! Kernel command line parsing (`/proc/cmdline`).
//!
//! Berth's parameters:
//! * `berth.slot=a|b`: the A/B slot the boot entry belongs to (required);
//! * `berth.verity=<root hash>`, `berth.verity.salt=<hex>`, `berth.verity.blocks=<N>`: open the
//!   root through dm-verity (a hash tree appended after N 4 KiB data blocks);
//! * `berth.rootwait=<seconds>`: how long to wait for partitions to appear (default 10).

use std::time::Duration;

/// An A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// PARTLABEL of this slot's root partition.
    pub fn root_partlabel(self) -> &'static str {
        match self {
            Slot::A => "berth-root-a",
            Slot::B => "berth-root-b",
        }
    }
}

/// dm-verity parameters for the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityArgs {
    /// Hex SHA-256 root hash.
    pub root_hash: String,
    /// Hex salt.
    pub salt: String,
    /// Number of 4 KiB data blocks; the verity superblock follows, then the hash tree.
    pub data_blocks: u64,
}

/// Everything stage 1 needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    pub slot: Slot,
    /// `None` boots an unverified root (development images only; logged as a warning).
    pub verity: Option<VerityArgs>,
    pub root_wait: Duration,
}

/// A command line that cannot boot, with the parameter at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("berth.slot is missing from the kernel command line (the boot entry is broken)")]
    MissingSlot,
    #[error("berth.slot={0:?} is not a slot (expected a or b)")]
    BadSlot(String),
    #[error("berth.verity={0:?} is not a hex SHA-256 root hash")]
    BadRootHash(String),
    #[error("berth.verity.salt={0:?} is not hex")]
    BadSalt(String),
    #[error("berth.verity.blocks={0:?} is not a positive number")]
    BadBlocks(String),
    #[error("berth.verity is set but berth.verity.{0} is missing")]
    VerityIncomplete(&'static str),
    #[error("berth.rootwait={0:?} is not a number of seconds")]
    BadRootWait(String),
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Value of `key=` on the command line (the last one wins, as in the kernel).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// Parse Berth's parameters out of a kernel command line.
pub fn parse(cmdline: &str) -> Result<BootArgs, CmdlineError> {
    let slot = match value(cmdline, "berth.slot") {
        None => return Err(CmdlineError::MissingSlot),
        Some("a") => Slot::A,
        Some("b") => Slot::B,
        Some(other) => return Err(CmdlineError::BadSlot(other.to_string())),
    };
    let verity = match value(cmdline, "berth.verity") {
        None => None,
        Some(h) => {
            if h.len() != 64 || !is_hex(h) {
                return Err(CmdlineError::BadRootHash(h.to_string()));
            }
            let salt = value(cmdline, "berth.verity.salt")
                .ok_or(CmdlineError::VerityIncomplete("salt"))?;
            if !is_hex(salt) {
                return Err(CmdlineError::BadSalt(salt.to_string()));
            }
            let blocks = value(cmdline, "berth.verity.blocks")
                .ok_or(CmdlineError::VerityIncomplete("blocks"))?;
            let data_blocks = blocks
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| CmdlineError::BadBlocks(blocks.to_string()))?;
            Some(VerityArgs {
                root_hash: h.to_ascii_lowercase(),
                salt: salt.to_ascii_lowercase(),
                data_blocks,
            })
        }
    };
    let root_wait = match value(cmdline, "berth.rootwait") {
        None => Duration::from_secs(10),
        Some(s) => s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| CmdlineError::BadRootWait(s.to_string()))?,
    };
    Ok(BootArgs {
        slot,
        verity,
        root_wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn full_verity_line() {
        let line = format!(
            "console=ttyS0 berth.slot=b berth.verity={HASH} berth.verity.salt=AABB berth.verity.blocks=1234 quiet\n"
        );
        let a = parse(&line).unwrap();
        assert_eq!(a.slot, Slot::B);
        assert_eq!(a.slot.root_partlabel(), "berth-root-b");
        let v = a.verity.unwrap();
        assert_eq!(v.root_hash, HASH);
        assert_eq!(v.salt, "aabb");
        assert_eq!(v.data_blocks, 1234);
        assert_eq!(a.root_wait, Duration::from_secs(10));
    }

    #[test]
    fn unverified_root_and_rootwait() {
        let a = parse("berth.slot=a berth.rootwait=30").unwrap();
        assert_eq!(a.verity, None);
        assert_eq!(a.root_wait, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_parameter() {
        assert_eq!(parse("quiet"), Err(CmdlineError::MissingSlot));
        assert_eq!(
            parse("berth.slot=c"),
            Err(CmdlineError::BadSlot("c".into()))
        );
        assert_eq!(
            parse("berth.slot=a berth.verity=xyz"),
            Err(CmdlineError::BadRootHash("xyz".into()))
        );
        assert_eq!(
            parse(&format!(
                "berth.slot=a berth.verity={HASH} berth.verity.blocks=5"
            )),
            Err(CmdlineError::VerityIncomplete("salt"))
        );
        assert_eq!(
            parse(&format!(
                "berth.slot=a berth.verity={HASH} berth.verity.salt=00 berth.verity.blocks=0"
            )),
            Err(CmdlineError::BadBlocks("0".into()))
        );
        let msg = parse("berth.slot=a berth.rootwait=soon")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("berth.rootwait"), "{msg}");
    }

    #[test]
    fn last_value_wins() {
        assert_eq!(value("a=1 b=2 a=3", "a"), Some("3"));
        assert_eq!(value("ab=1", "a"), None);
    }
}
