//! Hostile or broken registry content: every case fails with a clear error, nothing is
//! written outside the store, and the store stays consistent (no half-written blob, no
//! unpacked layer, no ref for the failed image).

mod common;

use berth_registry::manifest::{
    Descriptor, ImageManifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use berth_registry::{
    ClientError, Digest, LimitKind, Platform, ProgressEvent, PullOptions, Reference, Store,
    StoreError, UnpackError, UnpackLimits, UnpackOptions,
};
use common::*;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A gzip tar layer from raw (name, kind, data/link) items; names are written verbatim.
fn layer(items: &[(&str, char, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in items {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match kind {
            'f' => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
            }
            'l' => h.set_entry_type(tar::EntryType::Symlink),
            'h' => h.set_entry_type(tar::EntryType::Link),
            _ => unreachable!(),
        }
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if matches!(kind, 'l' | 'h') {
            gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
        }
        h.set_cksum();
        let body: &[u8] = if *kind == 'f' { data.as_bytes() } else { &[] };
        b.append(&h, body).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// Push an image made of these gzip layers with Berth's client; returns the reference.
async fn push_image(reg: &Registry, repo: &str, layers: &[Vec<u8>]) -> Reference {
    let typed: Vec<_> = layers.iter().map(|l| (OCI_LAYER_GZIP, l.clone())).collect();
    push_typed(reg, repo, &typed).await
}

/// Push an image made of these (media type, blob) layers; returns the reference.
async fn push_typed(reg: &Registry, repo: &str, layers: &[(&str, Vec<u8>)]) -> Reference {
    let c = insecure_client();
    let r = Reference::parse(&format!("{}/{repo}:t", reg.host())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut descs = Vec::new();
    let config = serde_json::to_vec(
        &serde_json::json!({"architecture": Platform::host().architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []}}),
    )
    .unwrap();
    let blobs: Vec<(&str, &[u8])> = std::iter::once((OCI_CONFIG, &config[..]))
        .chain(layers.iter().map(|(mt, l)| (*mt, &l[..])))
        .collect();
    for (mt, data) in blobs {
        let d = Descriptor::new(mt, Digest::of(data), data.len() as u64);
        let p = tmp.path().join(d.digest.hex());
        fs::write(&p, data).unwrap();
        c.push_blob_file(&r, &d, &p, None).await.unwrap();
        descs.push(d);
    }
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: descs.remove(0),
        layers: descs,
        annotations: Default::default(),
    };
    c.push_manifest(&r, serde_json::to_vec(&m).unwrap().into(), OCI_MANIFEST)
        .await
        .unwrap();
    r
}

fn assert_consistent(work: &Path, store: &Store, r: &Reference, bad: &Digest) {
    assert!(!store.has_blob(bad), "the failed blob must not be stored");
    assert!(
        !store.layer_dir(bad).exists(),
        "the failed layer must not be kept"
    );
    let names: Vec<_> = fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("store")],
        "something was written outside the store"
    );
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "temp files must be cleaned"
    );
    assert!(
        !store.refs().unwrap().contains_key(&r.to_string()),
        "no ref for a failed pull"
    );
    // Every visible blob is complete and verified.
    for e in fs::read_dir(store.root().join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        store
            .read_blob(&Digest::parse(&format!("sha256:{name}")).unwrap())
            .unwrap();
    }
}

async fn pull(store: &Store, r: &Reference) -> Result<berth_registry::Image, StoreError> {
    store
        .pull(&insecure_client(), r, &PullOptions::default())
        .await
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_layers_are_refused() {
    let reg = Registry::start("");
    let outside = format!("/tmp/berth-evil-{}", std::process::id());
    type Case<'a> = (&'a str, Vec<(&'a str, char, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            vec![("../../../../evil", 'f', "x")],
            "path contains `..`",
        ),
        (
            "absolute",
            vec![(outside.as_str(), 'f', "x")],
            "absolute path",
        ),
        (
            "symlink",
            vec![("d", 'l', "/tmp"), ("d/berth-evil-symlink", 'f', "x")],
            "symlink",
        ),
        (
            "hardlink",
            vec![("h", 'h', "../../../../etc/passwd")],
            "hardlink target outside the layer",
        ),
    ];
    for (repo, items, reason) in cases {
        let bad = layer(&items);
        let bad_digest = Digest::of(&bad);
        let r = push_image(&reg, repo, &[layer(&[("ok", 'f', "fine")]), bad]).await;
        let w = tempfile::tempdir().unwrap();
        let store = Store::open(w.path().join("store")).unwrap();
        let err = pull(&store, &r).await.unwrap_err();
        let msg = chain(&err);
        assert!(matches!(err, StoreError::Unpack { .. }), "{repo}: {msg}");
        assert!(
            msg.contains(reason) && msg.contains("was discarded"),
            "{repo}: {msg}"
        );
        assert_consistent(w.path(), &store, &r, &bad_digest);
    }
    assert!(!Path::new(&outside).exists());
    assert!(!Path::new("/tmp/berth-evil-symlink").exists());
}

/// Registry-side damage: flipped bytes (wrong digest), truncated blob, missing blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_missing_blobs() {
    let reg = Registry::start("");
    let big = "z".repeat(200_000);
    let l = layer(&[("a", 'f', big.as_str())]);
    let ld = Digest::of(&l);
    for (repo, damage, expect) in [
        ("flipped", 0, "is corrupt: its content hashes to"),
        ("truncated", 1, "wrong size"),
        ("missing", 2, "404"),
    ] {
        let r = push_image(&reg, repo, std::slice::from_ref(&l)).await;
        let data = reg.blob_data(ld.hex());
        match damage {
            0 => {
                let mut b = fs::read(&data).unwrap();
                let n = b.len();
                b[n / 2] ^= 0xff;
                fs::write(&data, b).unwrap();
            }
            1 => {
                let b = fs::read(&data).unwrap();
                fs::write(&data, &b[..b.len() / 2]).unwrap();
            }
            _ => fs::remove_file(&data).unwrap(),
        }
        let w = tempfile::tempdir().unwrap();
        let store = Store::open(w.path().join("store")).unwrap();
        let err = pull(&store, &r).await.unwrap_err();
        let msg = chain(&err);
        assert!(
            msg.contains(expect) && msg.contains(&ld.to_string()),
            "{repo}: {msg}"
        );
        assert_consistent(w.path(), &store, &r, &ld);
        // Put the good blob back for the next case (same content, shared storage).
        fs::write(&data, &l).unwrap();
    }
}

/// Two pulls of the same image at once download each blob once and both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_once() {
    let reg = Registry::start("");
    let layers: Vec<_> = (0..3)
        .map(|i| layer(&[(&*format!("f{i}"), 'f', &*"q".repeat(100_000 * (i + 1)))]))
        .collect();
    let r = push_image(&reg, "conc", &layers).await;
    let w = tempfile::tempdir().unwrap();
    let store = Store::open(w.path().join("store")).unwrap();
    let starts = Arc::new(AtomicUsize::new(0));
    let s2 = starts.clone();
    let opts = PullOptions {
        progress: Arc::new(move |e| {
            if matches!(e, ProgressEvent::BlobStart { .. }) {
                s2.fetch_add(1, Ordering::SeqCst);
            }
        }),
        ..Default::default()
    };
    let c = insecure_client();
    let (a, b) = tokio::join!(store.pull(&c, &r, &opts), store.pull(&c, &r, &opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.digest, b.digest);
    assert_eq!(
        starts.load(Ordering::SeqCst),
        3,
        "each layer downloaded once"
    );
    assert_eq!(
        fs::read_to_string(a.layers[2].join("f2")).unwrap().len(),
        300_000
    );
}

/// A full disk: a clear error, and nothing half-written is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_leaves_store_consistent() {
    let reg = Registry::start("");
    // Incompressible content so the blob itself does not fit.
    let mut x: u32 = 12345;
    let noise: String = (0..3_000_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'a' + ((x >> 16) % 26) as u8)
        })
        .collect();
    let big = layer(&[("noise", 'f', noise.as_str())]);
    let bd = Digest::of(&big);
    let r = push_image(&reg, "big", &[big]).await;
    let w = tempfile::tempdir().unwrap();
    let root = w.path().join("store");
    fs::create_dir(&root).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "tmpfs mount (needs root)");
    let store = Store::open(&root).unwrap();
    let err = pull(&store, &r).await.unwrap_err();
    let msg = chain(&err);
    let consistent = std::panic::catch_unwind(|| assert_consistent(w.path(), &store, &r, &bd));
    let _ = std::process::Command::new("umount").arg(&root).status();
    assert!(
        msg.contains("disk full") && msg.contains("free space"),
        "{msg}"
    );
    consistent.unwrap();
}

/// A tar from (path, data) regular files and (path/) directories, written with the
/// tar crate's builder (GNU long names for long paths).
fn tar_of(items: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
        }
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn small_limits(max_bytes: u64, max_entries: u64) -> PullOptions {
    PullOptions {
        unpack_options: UnpackOptions {
            limits: UnpackLimits {
                max_bytes,
                max_entries,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Gzip and zstd bombs (64 MiB of zeros in a few KiB) and a tar of 10,001 empty files,
/// pulled with a 16 MiB / 10,000-entry cap: refused with the limit and the digest
/// named, nothing left behind, and the same store then pulls a good image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_and_entry_floods_are_refused() {
    let reg = Registry::start("");
    const CAP: u64 = 16 << 20;
    // The bomb's first entry is a deep directory chain (1,500 levels, a GNU long name),
    // so the cleanup of the partial layer has to remove a deep tree too.
    let deep = "d/".repeat(1500);
    let bomb_tar = tar_of(&[(deep, Vec::new()), ("zeros".into(), vec![0u8; 64 << 20])]);
    let gz_bomb = gzip(&bomb_tar);
    let zst_bomb = zstd::encode_all(&bomb_tar[..], 19).unwrap();
    let flood: Vec<_> = (0..10_001)
        .map(|i| (format!("f/{i}"), Vec::new()))
        .collect();
    let flood_tar = tar_of(&flood);
    let flood = gzip(&flood_tar);
    eprintln!(
        "bomb: {} tar bytes as {} gzip / {} zstd bytes; flood: {} tar bytes as {} gzip bytes",
        bomb_tar.len(),
        gz_bomb.len(),
        zst_bomb.len(),
        flood_tar.len(),
        flood.len()
    );
    assert!(gz_bomb.len() < 128 << 10 && zst_bomb.len() < 16 << 10);
    let good = gzip(&tar_of(&[("ok".into(), b"fine".to_vec())]));
    let good_ref = push_image(&reg, "good", std::slice::from_ref(&good)).await;

    let w = tempfile::tempdir().unwrap();
    let store = Store::open(w.path().join("store")).unwrap();
    type Case<'a> = (&'a str, &'a str, Vec<u8>, LimitKind, u64, String);
    let cases: Vec<Case> = vec![
        (
            "gzbomb",
            OCI_LAYER_GZIP,
            gz_bomb,
            LimitKind::Bytes,
            CAP,
            format!(
                "over the limit of {CAP} decompressed bytes (stopped at {})",
                CAP + 1
            ),
        ),
        (
            "zstbomb",
            OCI_LAYER_ZSTD,
            zst_bomb,
            LimitKind::Bytes,
            CAP,
            format!(
                "over the limit of {CAP} decompressed bytes (stopped at {})",
                CAP + 1
            ),
        ),
        (
            "flood",
            OCI_LAYER_GZIP,
            flood,
            LimitKind::Entries,
            10_000,
            "over the limit of 10000 tar entries (stopped at 10001)".into(),
        ),
    ];
    for (repo, mt, blob, kind, cap, text) in cases {
        let bad = Digest::of(&blob);
        // A good layer first, so the failed pull also had something to keep.
        let r = push_typed(&reg, repo, &[(OCI_LAYER_GZIP, good.clone()), (mt, blob)]).await;
        let started = std::time::Instant::now();
        let err = store
            .pull(&insecure_client(), &r, &small_limits(CAP, 10_000))
            .await
            .unwrap_err();
        eprintln!("{repo}: refused in {:?}", started.elapsed());
        let msg = chain(&err);
        match &err {
            StoreError::Unpack {
                digest,
                source:
                    UnpackError::Limit {
                        kind: k,
                        limit,
                        reached,
                    },
            } => {
                assert_eq!(digest, &bad, "{repo}");
                assert_eq!((*k, *limit, *reached), (kind, cap, cap + 1), "{repo}");
            }
            e => panic!("{repo}: not a limit error: {e:?}"),
        }
        assert!(
            msg.starts_with(&format!(
                "layer {bad} could not be unpacked and was discarded: layer is {text}"
            )),
            "{repo}: {msg}"
        );
        // Nothing of the bad layer, no temp file or partial directory, no ref; the
        // store root holds only the store.
        assert_consistent(w.path(), &store, &r, &bad);
    }
    // The store is still usable: a good image pulls and unpacks.
    let img = store
        .pull(&insecure_client(), &good_ref, &small_limits(CAP, 10_000))
        .await
        .unwrap();
    assert_eq!(
        fs::read_to_string(img.layers[0].join("ok")).unwrap(),
        "fine"
    );
    let layer_dirs = fs::read_dir(store.root().join("layers/sha256"))
        .unwrap()
        .count();
    assert_eq!(layer_dirs, 1, "only the good layer is unpacked");
}

/// A registry that sends more bytes than the manifest's descriptor says is cut off
/// (client.rs `pump_blob` checks every chunk against the descriptor size) and nothing
/// of the blob is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_blob_is_cut_off() {
    let reg = Registry::start("");
    let l = layer(&[("a", 'f', "hello")]);
    let ld = Digest::of(&l);
    let r = push_image(&reg, "oversized", std::slice::from_ref(&l)).await;
    // The registry now serves the blob with 8 MiB of extra bytes after it.
    let data = reg.blob_data(ld.hex());
    let mut b = fs::read(&data).unwrap();
    b.extend(std::iter::repeat_n(0u8, 8 << 20));
    fs::write(&data, &b).unwrap();
    let w = tempfile::tempdir().unwrap();
    let store = Store::open(w.path().join("store")).unwrap();
    let err = pull(&store, &r).await.unwrap_err();
    let msg = chain(&err);
    let got = match &err {
        StoreError::Registry {
            source:
                ClientError::SizeMismatch {
                    digest,
                    expected,
                    got,
                    ..
                },
            ..
        } => {
            assert_eq!((digest, *expected), (&ld, l.len() as u64));
            *got
        }
        e => panic!("not a size mismatch: {e:?}"),
    };
    assert!(
        got > l.len() as u64 && got < l.len() as u64 + (1 << 20),
        "cut off within the first chunks over the size, got {got}"
    );
    assert!(msg.contains("wrong size"), "{msg}");
    assert_consistent(w.path(), &store, &r, &ld);
}
