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

/// Whether this build boots a root that the command line gives no `berth.verity` for:
/// only with the cargo feature `dev-unverified-root` (off by default, development only).
pub const ALLOW_UNVERIFIED_ROOT: bool = cfg!(feature = "dev-unverified-root");

/// How the root slot is to be mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSource<'a> {
    /// Through dm-verity with these parameters.
    Verified(&'a VerityArgs),
    /// The partition itself (a development build booting a command line without verity).
    Unverified,
}

/// A command line without `berth.verity`, in a build that boots only a verified root.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error(
    "the command line has no berth.verity root hash; this release build boots only a \
     verified root (build with --features dev-unverified-root for development)"
)]
pub struct UnverifiedRootRefused;

/// Decide how to mount the root: verified whenever the command line has `berth.verity`;
/// without it, unverified only when `allow_unverified` (normally [`ALLOW_UNVERIFIED_ROOT`]).
pub fn root_source(
    verity: Option<&VerityArgs>,
    allow_unverified: bool,
) -> Result<RootSource<'_>, UnverifiedRootRefused> {
    match (verity, allow_unverified) {
        (Some(v), _) => Ok(RootSource::Verified(v)),
        (None, true) => Ok(RootSource::Unverified),
        (None, false) => Err(UnverifiedRootRefused),
    }
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

    #[test]
    fn a_root_without_verity_boots_only_in_a_dev_build() {
        let v = VerityArgs {
            root_hash: "ab".repeat(32),
            salt: "00".into(),
            data_blocks: 1,
        };
        assert_eq!(root_source(Some(&v), false), Ok(RootSource::Verified(&v)));
        assert_eq!(root_source(Some(&v), true), Ok(RootSource::Verified(&v)));
        assert_eq!(root_source(None, true), Ok(RootSource::Unverified));
        let e = root_source(None, false).unwrap_err();
        assert_eq!(
            format!("berth: FATAL: {e}"),
            "berth: FATAL: the command line has no berth.verity root hash; this release build \
             boots only a verified root (build with --features dev-unverified-root for \
             development)"
        );
    }

    /// The default build (what `make image` ships) refuses an unverified root.
    #[cfg(not(feature = "dev-unverified-root"))]
    #[test]
    fn the_default_build_refuses_an_unverified_root() {
        assert_eq!(
            root_source(None, ALLOW_UNVERIFIED_ROOT),
            Err(UnverifiedRootRefused)
        );
    }
}
