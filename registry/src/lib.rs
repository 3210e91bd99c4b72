//! Berth's image distribution: an OCI registry client ([`client`]), a content-addressed
//! store ([`store`]), a safe streaming layer unpacker ([`unpack`]) and overlayfs rootfs
//! helpers ([`rootfs`]). `berth-image` exposes the same code as `pull`, `unpack`, `push`
//! and `copy` ([`cli`]), so host tests and benchmarks drive exactly what sysd runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_registry::{Client, Reference, Store, PullOptions};
//! let client = Client::new(Default::default(), Default::default());
//! let store = Store::open("/var/lib/berth/images")?;
//! let r = Reference::parse("10.0.2.100:5000/apps/web:1")?;
//! let image = store.pull(&client, &r, &PullOptions::default()).await?;
//! let lowers = berth_registry::rootfs::lower_dirs(&image);
//! # let _ = lowers; Ok(()) }
//! ```

pub mod cli;
pub mod client;
pub mod digest;
pub mod manifest;
pub mod progress;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use client::{BlobStream, Client, ClientError, Credentials, RegistryConfig};
pub use digest::Digest;
pub use manifest::{Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest, Platform};
pub use progress::{Progress, ProgressEvent};
pub use reference::Reference;
pub use store::{GcStats, Image, PullOptions, Store, StoreError};
pub use unpack::{DevicePolicy, LimitKind, UnpackError, UnpackLimits, UnpackOptions};

/// Fuzz entry point: manifest, index and config parsing must never panic.
pub fn fuzz_manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data, None) {
        let _ = m.children();
        let _ = m.media_type();
        if let Manifest::Index(i) = &m {
            let _ = i.select(&Platform::host());
            let _ = i.platforms();
        }
    }
    let _ = Manifest::parse(data, Some(manifest::OCI_INDEX));
    let _ = ImageConfig::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Reference::parse(s);
        let _ = Digest::parse(s);
        let _ = Platform::parse(s);
        let _ = client::parse_challenge(s);
    }
}

/// Fuzz entry point: unpack arbitrary bytes (compression detected from magic numbers)
/// into a temporary directory. Never panics, and nothing may appear outside the layer.
/// Small limits keep a bomb the fuzzer finds from filling the disk, and exercise them.
pub fn fuzz_unpack(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let layer = dir.path().join("layer");
    if std::fs::create_dir(&layer).is_err() {
        return;
    }
    let c = unpack::detect_compression(data);
    let opts = UnpackOptions {
        limits: UnpackLimits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
            max_header_bytes: 64 << 10,
        },
        ..Default::default()
    };
    let _ = unpack::unpack(&mut &data[..], c, &layer, &opts);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        names.len() == 1,
        "an entry escaped the layer directory: {names:?}"
    );
}
