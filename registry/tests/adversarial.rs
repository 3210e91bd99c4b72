//! Hostile or broken registry content: every case fails with a clear error, nothing is
//! written outside the store, and the store stays consistent (no half-written blob, no
//! unpacked layer, no ref for the failed image).

mod common;

use berth_registry::manifest::{
    Descriptor, ImageManifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use berth_registry::{Digest, Platform, ProgressEvent, PullOptions, Reference, Store, StoreError};
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
        .chain(layers.iter().map(|l| (OCI_LAYER_GZIP, &l[..])))
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
