//! `berth-image`: builds Berth's bootable disk image (and, as the registry and updater land,
//! signs and publishes OS images).
//!
//! The build needs no loop devices and no mounts: the root is an EROFS image made by
//! `mkfs.erofs` with a dm-verity hash tree appended by `veritysetup format`, the ESP a FAT32
//! image filled with mtools, the state partition an ext4 image from `mkfs.ext4 -d`, the
//! initramfs a newc cpio written here, and the GPT written by `sfdisk` into a sparse file the
//! partition images are copied into.

pub mod bls;
pub mod build;
pub mod cmdline;
pub mod cpio;
pub mod inspect;
pub mod layout;
pub mod modules;
pub mod oscli;
pub mod publish;
pub mod signing;
pub mod sysimage;
pub mod tools;

pub use build::{build, BuildOptions, BuildOutput};
