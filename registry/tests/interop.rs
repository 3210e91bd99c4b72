//! Interop with real peers on loopback: Debian's `docker-registry`, `umoci`, `skopeo`.

mod common;

use berth_registry::cli::{Command as Cli, RegistryArgs};
use berth_registry::{Platform, PullOptions, Reference, Store};
use common::*;
use std::fs;
use std::path::Path;

fn insecure() -> RegistryArgs {
    RegistryArgs {
        insecure: true,
        ..Default::default()
    }
}

/// umoci builds, skopeo pushes, Berth pulls and unpacks: same file tree.
#[test]
fn pull_unpack_matches_umoci_tree() {
    let reg = Registry::start("");
    let w = tempfile::tempdir().unwrap();
    let layout = w.path().join("layout");
    umoci_image(
        &layout,
        "t",
        "amd64",
        w.path(),
        &[&populate_base, &populate_change],
    );
    let expected = umoci_unpacked(&layout, "t", w.path());
    skopeo_push(&layout, "t", &format!("{}/test/app:t", reg.host()), &[]);

    let store = w.path().join("store");
    let to = w.path().join("out");
    berth_registry::cli::run(Cli::Unpack {
        reference: format!("{}/test/app:t", reg.host()),
        store: store.clone(),
        to: to.clone(),
        platform: Some("linux/amd64".into()),
        registry: insecure(),
    })
    .unwrap();
    let (want, got) = (tree(&expected), tree(&to));
    assert!(got.contains_key("etc/conf.d/c.conf") && !got.contains_key("etc/hostname"));
    assert!(
        !got.contains_key("etc/conf.d/a.conf"),
        "opaque directory must hide the lower layer's files"
    );
    assert_eq!(want, got);

    // The store: two unpacked layers, the ref, and the image gives overlay lower dirs.
    let s = Store::open(&store).unwrap();
    let name = format!("{}/test/app:t", reg.host());
    let img = s
        .image(&name, &Platform::parse("linux/amd64").unwrap())
        .unwrap();
    assert_eq!(img.manifest.layers.len(), 2, "{:?}", img.manifest);
    assert_eq!(img.layers.len(), 2);
    let lowers = berth_registry::rootfs::lower_dirs(&img);
    assert_eq!(lowers[0], img.layers[1], "top layer first");
    // The layer dirs stack in a real overlay mount to the same tree.
    let mnt = w.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let opts = berth_registry::rootfs::overlay_options(&img, None).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount failed");
    let mounted = tree(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(mounted, want);

    // gc keeps everything referenced; after removing the ref it removes it all.
    assert_eq!(s.gc().unwrap(), berth_registry::GcStats::default());
    s.remove_ref(&name).unwrap();
    let st = s.gc().unwrap();
    assert_eq!((st.blobs, st.layers), (4, 2));
    assert_eq!(fs::read_dir(store.join("blobs/sha256")).unwrap().count(), 0);
}

/// Berth pushes (from an OCI layout), skopeo pulls back with matching digests; chunked
/// upload for a large blob; cross-repository mount; OCI layout export round trip.
#[test]
fn push_then_skopeo_pulls_same_digests() {
    let reg = Registry::start("");
    let w = tempfile::tempdir().unwrap();
    let layout = w.path().join("layout");
    let big = |r: &Path| {
        // Incompressible, above the 16 MiB monolithic limit: forces a chunked upload.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let data: Vec<u8> = (0..17 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(r.join("big.bin"), data).unwrap();
    };
    umoci_image(&layout, "t", "amd64", w.path(), &[&populate_base, &big]);
    let want = layout_digest(&layout, "t");
    let dst = format!("{}/pushed/app:v1", reg.host());
    berth_registry::cli::run(Cli::Copy {
        source: format!("oci:{}:t", layout.display()),
        destination: format!("docker://{dst}"),
        store: None,
        platform: None,
        registry: insecure(),
    })
    .unwrap();
    assert_eq!(skopeo_raw_digest(&dst, &[]), want);
    let back = w.path().join("back");
    sh(std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{dst}"))
        .arg(format!("oci:{}:t", back.display())));
    assert_eq!(layout_digest(&back, "t"), want);

    // Registry to registry on the same host: blobs are mounted, digests kept.
    let dst2 = format!("{}/other/app:v1", reg.host());
    berth_registry::cli::run(Cli::Copy {
        source: dst.clone(),
        destination: dst2.clone(),
        store: None,
        platform: Some("linux/amd64".into()),
        registry: insecure(),
    })
    .unwrap();
    assert_eq!(skopeo_raw_digest(&dst2, &[]), want);

    // Export to an OCI layout that umoci can unpack.
    let store = Store::open(w.path().join("store")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = Reference::parse(&dst2).unwrap();
    let opts = PullOptions {
        platform: Platform::parse("linux/amd64").unwrap(),
        unpack: false,
        ..Default::default()
    };
    rt.block_on(store.pull(&insecure_client(), &r, &opts))
        .unwrap();
    let out = w.path().join("exported");
    store.export_layout(&r.to_string(), &out, "x").unwrap();
    assert_eq!(layout_digest(&out, "x"), want);
    sh(std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:x", out.display()))
        .arg(w.path().join("umoci-bundle")));
    assert!(w.path().join("umoci-bundle/rootfs/big.bin").is_file());
}

/// A multi-arch index pushed by Berth resolves to the right platform.
#[test]
fn multi_arch_index_selects_platform() {
    let reg = Registry::start("");
    let w = tempfile::tempdir().unwrap();
    let layout = w.path().join("layout");
    umoci_image(
        &layout,
        "amd",
        "amd64",
        w.path(),
        &[&|r: &Path| fs::write(r.join("arch"), "amd64\n").unwrap()],
    );
    umoci_image(
        &layout,
        "arm",
        "arm64",
        w.path(),
        &[&|r: &Path| fs::write(r.join("arch"), "arm64\n").unwrap()],
    );
    // Assemble an index over both and tag it in the layout.
    let entry = |tag: &str, arch: &str| {
        let d = layout_digest(&layout, tag);
        let size = fs::metadata(layout.join("blobs/sha256").join(&d[7..]))
            .unwrap()
            .len();
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": size,
            "platform": {"architecture": arch, "os": "linux"}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd", "amd64"), entry("arm", "arm64")]});
    let bytes = serde_json::to_vec(&index).unwrap();
    let d = berth_registry::Digest::of(&bytes);
    fs::write(layout.join("blobs/sha256").join(d.hex()), &bytes).unwrap();
    let mut top: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    top["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}));
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let dst = format!("{}/multi/app:1", reg.host());
    berth_registry::cli::run(Cli::Push {
        source: format!("oci:{}:multi", layout.display()),
        destination: dst.clone(),
        store: w.path().join("pushstore"),
        registry: insecure(),
    })
    .unwrap();
    assert_eq!(
        skopeo_raw_digest(&dst, &[]),
        d.to_string(),
        "index pushed byte for byte"
    );

    for arch in ["amd64", "arm64"] {
        let to = w.path().join(format!("out-{arch}"));
        berth_registry::cli::run(Cli::Unpack {
            reference: dst.clone(),
            store: w.path().join("store"),
            to: to.clone(),
            platform: Some(format!("linux/{arch}")),
            registry: insecure(),
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(to.join("arch")).unwrap(),
            format!("{arch}\n")
        );
    }
    let err = berth_registry::cli::run(Cli::Pull {
        reference: dst.clone(),
        store: w.path().join("store"),
        platform: Some("linux/s390x".into()),
        no_unpack: false,
        registry: insecure(),
    })
    .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("no image for linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );

    // A single-arch image for another architecture is refused before any layer is fetched.
    let arm_only = format!("{}/armonly/app:1", reg.host());
    skopeo_push(&layout, "arm", &arm_only, &[]);
    let err = berth_registry::cli::run(Cli::Pull {
        reference: arm_only,
        store: w.path().join("store2"),
        platform: Some("linux/amd64".into()),
        no_unpack: false,
        registry: insecure(),
    })
    .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("is an image for linux/arm64, not linux/amd64"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(w.path().join("store2/layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

/// Basic auth with an htpasswd file.
#[test]
fn basic_auth_htpasswd() {
    let w = tempfile::tempdir().unwrap();
    let htpasswd = w.path().join("htpasswd");
    let line = sh(std::process::Command::new("htpasswd").args(["-Bbn", "berth", "s3cret"]));
    fs::write(&htpasswd, line).unwrap();
    let reg = Registry::start(&format!(
        "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
        htpasswd.display()
    ));
    let layout = w.path().join("layout");
    umoci_image(&layout, "t", "amd64", w.path(), &[&populate_base]);
    let expected = umoci_unpacked(&layout, "t", w.path());
    let dst = format!("{}/private/app:t", reg.host());
    skopeo_push(&layout, "t", &dst, &["--dest-creds", "berth:s3cret"]);

    let pull = |creds: Option<&str>, store: &str| {
        berth_registry::cli::run(Cli::Unpack {
            reference: dst.clone(),
            store: w.path().join(store),
            to: w.path().join(format!("{store}-out")),
            platform: Some("linux/amd64".into()),
            registry: RegistryArgs {
                insecure: true,
                creds: creds.map(str::to_string),
                ..Default::default()
            },
        })
    };
    let msg = chain(&pull(None, "anon").unwrap_err());
    assert!(
        msg.contains("401") && msg.contains("check the credentials"),
        "{msg}"
    );
    let msg = chain(&pull(Some("berth:wrong"), "wrong").unwrap_err());
    assert!(msg.contains("401"), "{msg}");
    pull(Some("berth:s3cret"), "ok").unwrap();
    assert_eq!(tree(&expected), tree(&w.path().join("ok-out")));
}

/// Errors for a registry that is not there and a tag that does not exist.
#[test]
fn unreachable_and_missing() {
    let w = tempfile::tempdir().unwrap();
    let port = free_port();
    let err = berth_registry::cli::run(Cli::Pull {
        reference: format!("127.0.0.1:{port}/x/y:z"),
        store: w.path().join("s"),
        platform: None,
        no_unpack: false,
        registry: insecure(),
    })
    .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{msg}"
    );
    let reg = Registry::start("");
    let err = berth_registry::cli::run(Cli::Pull {
        reference: format!("{}/x/y:nope", reg.host()),
        store: w.path().join("s"),
        platform: None,
        no_unpack: false,
        registry: insecure(),
    })
    .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("404") && msg.contains("check the repository name and tag"),
        "{msg}"
    );
    // TLS against a plain-HTTP registry: a TLS error, said so.
    let err = berth_registry::cli::run(Cli::Pull {
        reference: format!("{}/x/y:nope", reg.host()),
        store: w.path().join("s"),
        platform: None,
        no_unpack: false,
        registry: RegistryArgs::default(),
    })
    .unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("TLS with registry") || msg.contains("cannot reach"),
        "{msg}"
    );
    assert_eq!(
        Store::open(w.path().join("s"))
            .unwrap()
            .refs()
            .unwrap()
            .len(),
        0
    );
}

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
