//! OS updates on the host: a real `docker-registry` on loopback, small real EROFS+verity
//! root images (mkfs.erofs + veritysetup), `berth-image keygen/publish/sign/verify/inspect`,
//! and the updater applying onto file-backed slots with a temporary directory as the ESP.

use berth_image::publish;
use berth_registry::{Client, Digest, Reference, RegistryConfig};
use berth_updater::bls::{self, Slot};
use berth_updater::engine::UpdateError;
use berth_updater::signature::{self, PublicKey, SignatureError};
use berth_updater::{
    ApplyEvent, ApplyOptions, Blessed, BootCheck, OtherSlotState, Running, Settings, SlotDevices,
    Step, Updater,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry` on a free loopback port, stopped on drop.
struct Registry {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }

    fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("127.0.0.1:{}/{repo_tag}", self.port)).unwrap()
    }

    fn blob_data(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::new(
        Default::default(),
        RegistryConfig {
            insecure: true,
            ..Default::default()
        },
    )
}

/// Pseudo-random bytes (incompressible, different per seed).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A build directory like `berth-image build` leaves: a real EROFS root with an appended
/// dm-verity tree, a kernel, an initrd and image.json.
fn fake_build(dir: &Path, version: &str, arch: &str, root_kib: usize) -> PathBuf {
    let out = dir.join(format!("build-{version}-{arch}"));
    let tree = out.join("rootfs");
    fs::create_dir_all(tree.join("usr/lib/berth")).unwrap();
    fs::write(
        tree.join("usr/lib/berth/os-release"),
        format!("ID=berth\nVERSION_ID={version}\nBERTH_ARCH={arch}\n"),
    )
    .unwrap();
    let seed = version
        .bytes()
        .chain(arch.bytes())
        .map(u64::from)
        .sum::<u64>();
    fs::write(
        tree.join("usr/lib/berth/payload"),
        noise(seed, root_kib * 1024),
    )
    .unwrap();
    let root = out.join("root.img");
    sh(Command::new("mkfs.erofs")
        .args(["--all-root", "-T0", "--quiet"])
        .arg(&root)
        .arg(&tree));
    let blocks = fs::metadata(&root).unwrap().len().div_ceil(4096);
    fs::OpenOptions::new()
        .write(true)
        .open(&root)
        .unwrap()
        .set_len(blocks * 4096)
        .unwrap();
    let salt = format!("{:064x}", seed);
    let o = sh(Command::new("veritysetup")
        .arg("format")
        .args(["--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--hash-offset={}", blocks * 4096))
        .arg(format!("--salt={salt}"))
        .arg(&root)
        .arg(&root));
    let root_hash = o
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string();
    fs::create_dir_all(out.join("kernel")).unwrap();
    fs::write(out.join("kernel/vmlinuz"), noise(seed + 1, 96 * 1024)).unwrap();
    fs::write(out.join("initrd.img"), noise(seed + 2, 48 * 1024)).unwrap();
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    let rec = berth_image::BuildOutput {
        arch: arch.into(),
        version: version.into(),
        build_id: format!("test-{version}"),
        kernel: "6.1.0-test".into(),
        disk: out.join("berth.img"),
        root_image: root.clone(),
        root_hash,
        verity_salt: salt,
        data_blocks: blocks,
        initrd: out.join("initrd.img"),
        kernel_image: out.join("kernel/vmlinuz"),
        disk_bytes: 0,
        root_bytes: size(&root),
        initrd_bytes: size(&out.join("initrd.img")),
        kernel_bytes: size(&out.join("kernel/vmlinuz")),
        modules: Vec::new(),
        firmware: Vec::new(),
        boot_options: String::new(),
        direct_boot: out.join("direct"),
    };
    fs::write(out.join("image.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
    out
}

const CMDLINE: &str = "console=ttyS0,115200 quiet panic=10";

async fn publish_build(c: &Client, r: &Reference, build: &Path) -> publish::Published {
    let art = publish::read_build(build, Some(CMDLINE.into())).unwrap();
    publish::publish(c, r, &art, None).await.unwrap()
}

/// A node: an ESP directory with slot A's factory entry and boot files, two 8 MiB
/// file-backed slots, a state directory.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        fs::create_dir_all(bls::entries_dir(&esp)).unwrap();
        fs::create_dir_all(esp.join("berth/a")).unwrap();
        fs::write(esp.join("berth/a/vmlinuz"), b"factory kernel").unwrap();
        fs::write(esp.join("berth/a/initrd"), b"factory initrd").unwrap();
        fs::write(esp.join("loader/loader.conf"), "timeout 0\n").unwrap();
        let opts = bls::options(CMDLINE, Slot::A, &"11".repeat(32), "22", 100);
        fs::write(
            bls::entries_dir(&esp).join("berth-00000001-a.conf"),
            bls::render(Slot::A, "0.1.0", &opts),
        )
        .unwrap();
        for s in ["a.img", "b.img"] {
            fs::File::create(dir.path().join(s))
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
        }
        Self { dir }
    }
    fn esp(&self) -> PathBuf {
        self.dir.path().join("esp")
    }
    fn slot(&self, s: Slot) -> PathBuf {
        self.dir.path().join(format!("{s}.img"))
    }
    fn updater(
        &self,
        slot: Slot,
        version: &str,
        arch: &str,
        keys: &[PublicKey],
        source: &Reference,
    ) -> Updater {
        Updater::new(
            Settings {
                source: Some(source.clone()),
                trusted_keys: keys.to_vec(),
                state_dir: self.dir.path().join("state"),
                esp: self.esp(),
                slots: SlotDevices {
                    a: self.slot(Slot::A),
                    b: self.slot(Slot::B),
                },
                running: Running {
                    slot,
                    version: version.into(),
                    arch: arch.into(),
                    root_hash: String::new(),
                    root_partition: Some(self.slot(slot)),
                },
            },
            client(),
        )
    }
    /// Every file on the ESP with its digest.
    fn esp_files(&self) -> BTreeMap<String, Digest> {
        fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Digest>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.insert(rel, Digest::of(&fs::read(&p).unwrap()));
                }
            }
        }
        let mut m = BTreeMap::new();
        walk(&self.esp(), &self.esp(), &mut m);
        m
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(bls::entries_dir(&self.esp()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    fn slot_digest(&self, s: Slot, len: u64) -> Digest {
        let mut data = vec![0u8; len as usize];
        fs::File::open(self.slot(s))
            .unwrap()
            .read_exact(&mut data)
            .unwrap();
        Digest::of(&data)
    }
}

fn keypair() -> (p256::ecdsa::SigningKey, PublicKey) {
    let (private, public) = signature::generate().unwrap();
    (
        signature::private_key_from_pem(&private, "test").unwrap(),
        PublicKey::from_pem(&public, "test").unwrap(),
    )
}

/// Every way to offer a bad update is refused with a clear error and changes nothing; a
/// good one installs onto slot B (resuming after an interruption), boots, is blessed, can
/// be rolled back; a version whose tries run out is recorded as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refusals_resume_bless_rollback_fallback() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let c = client();
    let (sk, pk) = keypair();
    let (other_sk, _) = keypair();
    let v2 = fake_build(work.path(), "0.2.0", "x86_64", 3 * 1024);
    let v3 = fake_build(work.path(), "0.3.0", "x86_64", 512);
    let stable = reg.reference("berth/os:stable");
    let p2 = publish_build(&c, &stable, &v2).await;
    let root_size = p2.config.root_size;
    assert!(root_size > 3 << 20, "root image of {root_size} bytes");

    let node = Node::new();
    let keys = [pk.clone()];
    let up = node.updater(Slot::A, "0.1.0", "x86_64", &keys, &stable);
    let before = node.esp_files();
    let b_before = node.slot_digest(Slot::B, 8 << 20);
    let unchanged = |what: &str| {
        assert_eq!(node.esp_files(), before, "{what}: the ESP changed");
        assert_eq!(
            node.slot_digest(Slot::B, 8 << 20),
            b_before,
            "{what}: slot B changed"
        );
    };

    // Unsigned.
    let e = up.apply(None, &ApplyOptions::default()).await.unwrap_err();
    assert!(
        matches!(e, UpdateError::Signature(SignatureError::Unsigned { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("is not signed"), "{e}");
    unchanged("unsigned");
    assert!(up.check(None).await.is_err());
    assert!(up.status().unwrap().last_check.unwrap().error.is_some());

    // Signed with an untrusted key.
    signature::sign(&c, &stable, &p2.index_digest, &other_sk)
        .await
        .unwrap();
    let e = up.apply(None, &ApplyOptions::default()).await.unwrap_err();
    assert!(
        matches!(e, UpdateError::Signature(SignatureError::Untrusted { .. })),
        "{e}"
    );
    unchanged("untrusted key");

    // Signed by the trusted key too (signatures accumulate): check offers it.
    signature::sign(&c, &stable, &p2.index_digest, &sk)
        .await
        .unwrap();
    let chk = up.check(None).await.unwrap();
    assert_eq!(chk.version, "0.2.0");
    assert!(chk.newer && chk.update_available && !chk.failed_before);
    assert_eq!(chk.signed_by, pk.id);
    assert_eq!(chk.top_digest, p2.index_digest);

    // A modified index carrying the original signature: the payload names another digest.
    let tampered = reg.reference("berth/os:tampered");
    let (ibytes, _, _) = c.get_manifest(&stable).await.unwrap();
    let mut idx: serde_json::Value = serde_json::from_slice(&ibytes).unwrap();
    idx["manifests"][0]["annotations"]["org.opencontainers.image.version"] = "9.9.9".into();
    let tbytes = serde_json::to_vec(&idx).unwrap();
    let tdigest = c
        .push_manifest(
            &tampered,
            tbytes.into(),
            berth_registry::manifest::OCI_INDEX,
        )
        .await
        .unwrap();
    let sig_tag = |d: &Digest| Reference {
        tag: Some(signature::signature_tag(d)),
        ..stable.clone()
    };
    let (sbytes, _, _) = c.get_manifest(&sig_tag(&p2.index_digest)).await.unwrap();
    c.push_manifest(
        &sig_tag(&tdigest),
        sbytes,
        berth_registry::manifest::OCI_MANIFEST,
    )
    .await
    .unwrap();
    let e = up
        .apply(Some(&tampered), &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, UpdateError::Signature(SignatureError::Untrusted { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("not "), "{e}");
    unchanged("modified index");

    // Wrong architecture: an arm64 node finds no image for it.
    let arm = node.updater(Slot::A, "0.1.0", "arm64", &keys, &stable);
    let e = arm.apply(None, &ApplyOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("no OS image for arm64"), "{e}");
    unchanged("wrong arch");

    // Older than the running version.
    let newer_node = node.updater(Slot::A, "0.3.0", "x86_64", &keys, &stable);
    let e = newer_node
        .apply(None, &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, UpdateError::NotNewer { .. }), "{e}");
    unchanged("older version");

    // A tampered layer (same size, one byte changed in the registry's storage), then a
    // truncated one: the download fails verification, no boot entry is written.
    let blob = reg.blob_data(&chk_root_digest(&c, &stable).await);
    let good = fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[root_size as usize / 2] ^= 0xff;
    fs::write(&blob, &bad).unwrap();
    let e = up.apply(None, &ApplyOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("root image"), "{e}");
    assert_eq!(node.entries(), ["berth-00000001-a.conf"], "tampered layer");
    fs::write(&blob, &good[..good.len() - 5000]).unwrap();
    let e = up.apply(None, &ApplyOptions::default()).await.unwrap_err();
    assert!(matches!(e, UpdateError::Download { .. }), "{e}");
    assert_eq!(node.entries(), ["berth-00000001-a.conf"], "truncated layer");
    let st = up.status().unwrap();
    assert_eq!(st.in_progress.as_ref().unwrap().written, 0);
    assert!(!st.last_apply.as_ref().unwrap().ok);
    fs::write(&blob, &good).unwrap();

    // Interrupted during the slot write (cancel at a checkpoint), then resumed.
    let cancel = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let (cancel2, seen2) = (cancel.clone(), seen.clone());
    let opts = ApplyOptions {
        cancel: Some(cancel.clone()),
        checkpoint_bytes: 256 << 10,
        progress: Some(Arc::new(move |e| {
            if let ApplyEvent::Download(berth_registry::ProgressEvent::Bytes { n, .. }) = e {
                if seen2.fetch_add(n, Ordering::SeqCst) + n > (3 << 19) {
                    cancel2.store(true, Ordering::SeqCst);
                }
            }
        })),
        ..Default::default()
    };
    let e = up.apply(None, &opts).await.unwrap_err();
    assert!(
        matches!(
            e,
            UpdateError::Cancelled {
                step: Step::Writing
            }
        ),
        "{e}"
    );
    assert_eq!(node.entries(), ["berth-00000001-a.conf"], "interrupted");
    let st = up.status().unwrap();
    let job = st.in_progress.clone().unwrap();
    assert_eq!(st.other_state, OtherSlotState::Installing);
    assert!(job.written > 0 && job.written < root_size, "{job:?}");
    cancel.store(false, Ordering::SeqCst);
    let out = up
        .apply(
            None,
            &ApplyOptions {
                checkpoint_bytes: 256 << 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.timings.resumed_from, job.written);
    assert_eq!(out.timings.downloaded_bytes, root_size - job.written);
    assert_eq!(out.slot, Slot::B);
    assert_eq!(out.entry, "berth-00000002-b+3.conf");
    assert_eq!(
        node.entries(),
        ["berth-00000001-a.conf", "berth-00000002-b+3.conf"]
    );
    let art = publish::read_build(&v2, Some(CMDLINE.into())).unwrap();
    assert_eq!(
        node.slot_digest(Slot::B, root_size),
        Digest::of(&fs::read(&art.root).unwrap())
    );
    assert_eq!(
        fs::read(node.esp().join("berth/b/vmlinuz")).unwrap(),
        fs::read(&art.kernel).unwrap()
    );
    assert_eq!(
        fs::read(node.esp().join("berth/b/initrd")).unwrap(),
        fs::read(&art.initrd).unwrap()
    );
    let entry =
        fs::read_to_string(bls::entries_dir(&node.esp()).join("berth-00000002-b+3.conf")).unwrap();
    assert!(entry.contains("version 0.2.0\n"), "{entry}");
    assert!(entry.contains("linux /berth/b/vmlinuz\n"), "{entry}");
    assert!(
        entry.contains(&format!(
            "options {CMDLINE} berth.slot=b berth.verity={} berth.verity.salt={} berth.verity.blocks={}\n",
            art.config.verity_root_hash, art.config.verity_salt, art.config.verity_data_blocks
        )),
        "{entry}"
    );
    // Slot A and its entry are untouched.
    assert_eq!(
        node.esp_files()["loader/entries/berth-00000001-a.conf"],
        before["loader/entries/berth-00000001-a.conf"]
    );
    assert_eq!(
        node.esp_files()["berth/a/vmlinuz"],
        before["berth/a/vmlinuz"]
    );
    let st = up.status().unwrap();
    assert_eq!(st.other_state, OtherSlotState::Pending);
    assert_eq!(st.next_boot.unwrap().file, "berth-00000002-b+3.conf");
    assert!(st.in_progress.is_none());
    assert!(st.last_apply.unwrap().ok);
    // Applying again is a no-op; check no longer offers it.
    assert!(
        up.apply(None, &ApplyOptions::default())
            .await
            .unwrap()
            .already_installed
    );
    assert!(!up.check(None).await.unwrap().update_available);
    assert_eq!(
        up.boot_check().unwrap(),
        BootCheck::UpdatePending {
            version: Some("0.2.0".into())
        }
    );

    // Reboot into B (systemd-boot counts the try), healthy: bless.
    let counted = bls::entries_dir(&node.esp());
    fs::rename(
        counted.join("berth-00000002-b+3.conf"),
        counted.join("berth-00000002-b+2-1.conf"),
    )
    .unwrap();
    let on_b = node.updater(Slot::B, "0.2.0", "x86_64", &keys, &stable);
    assert_eq!(
        on_b.boot_check().unwrap(),
        BootCheck::AwaitingBless {
            tries_left: Some(2)
        }
    );
    assert_eq!(
        on_b.bless().unwrap(),
        Blessed::Blessed {
            from: "berth-00000002-b+2-1.conf".into(),
            to: "berth-00000002-b.conf".into()
        }
    );
    assert!(matches!(
        on_b.bless().unwrap(),
        Blessed::AlreadyBlessed { .. }
    ));
    let st = on_b.status().unwrap();
    assert!(st.blessed);
    assert_eq!(st.other_state, OtherSlotState::Fallback);
    assert_eq!(st.other_version.as_deref(), Some("0.1.0"));

    // Roll back to A: it becomes the newest entry, blessed.
    let rb = on_b.rollback(false).unwrap();
    assert_eq!(rb.file, "berth-00000003-a.conf");
    assert_eq!(
        node.entries(),
        ["berth-00000002-b.conf", "berth-00000003-a.conf"]
    );
    assert_eq!(on_b.status().unwrap().other_state, OtherSlotState::Next);
    // ... and forward again to B (the rollback of the rollback), for the next part.
    let on_a = node.updater(Slot::A, "0.1.0", "x86_64", &keys, &stable);
    assert_eq!(on_a.rollback(false).unwrap().file, "berth-00000004-b.conf");

    // v3 on B's other slot (A); its tries run out, systemd-boot falls back to B.
    let p3 = publish_build(&c, &stable, &v3).await;
    signature::sign(&c, &stable, &p3.index_digest, &sk)
        .await
        .unwrap();
    let out = on_b.apply(None, &ApplyOptions::default()).await.unwrap();
    assert_eq!(out.entry, "berth-00000005-a+3.conf");
    assert_eq!(out.timings.resumed_from, 0);
    assert_eq!(
        node.entries(),
        ["berth-00000004-b.conf", "berth-00000005-a+3.conf"]
    );
    fs::rename(
        counted.join("berth-00000005-a+3.conf"),
        counted.join("berth-00000005-a+0-3.conf"),
    )
    .unwrap();
    assert_eq!(
        on_b.boot_check().unwrap(),
        BootCheck::FellBack {
            failed_version: "0.3.0".into(),
            slot: Slot::A
        }
    );
    let st = on_b.status().unwrap();
    assert_eq!(st.other_state, OtherSlotState::Failed);
    assert_eq!(st.failed_versions.len(), 1);
    assert_eq!(st.failed_versions[0].version, "0.3.0");
    assert_eq!(st.next_boot.unwrap().file, "berth-00000004-b.conf");
    let chk = on_b.check(None).await.unwrap();
    assert!(chk.newer && chk.failed_before && !chk.update_available);
    let e = on_b
        .apply(None, &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, UpdateError::FailedBefore { .. }), "{e}");
    assert!(matches!(
        on_b.rollback(false),
        Err(UpdateError::NoRollbackTarget { .. })
    ));
    // Forced, it installs again.
    let out = on_b
        .apply(
            None,
            &ApplyOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.entry, "berth-00000005-a+3.conf");
}

/// A signature by the trusted key for another repository (the image and its signature
/// re-hosted) is refused naming both repositories; once v2 was installed, a v1.5 offered
/// after a rollback to v1 is below the version floor and refused; both change nothing.
/// v2 offered again passes the floor; allow-downgrade installs v1.5 without lowering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_identity_and_version_floor_refused() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let c = client();
    let (sk, pk) = keypair();
    let keys = [pk.clone()];
    let v2 = fake_build(work.path(), "0.2.0", "x86_64", 512);
    let v15 = fake_build(work.path(), "0.1.5", "x86_64", 512);
    let stable = reg.reference("berth/os:stable");
    let mirror = reg.reference("berth/mirror:stable");
    let p2 = publish_build(&c, &stable, &v2).await;
    let m2 = publish_build(&c, &mirror, &v2).await;
    assert_eq!(p2.index_digest, m2.index_digest);
    signature::sign(&c, &stable, &p2.index_digest, &sk)
        .await
        .unwrap();
    // The same signature, made for berth/os, placed in berth/mirror.
    signature::sign_as(
        &c,
        &mirror,
        &m2.index_digest,
        &sk,
        &signature::identity(&stable),
    )
    .await
    .unwrap();

    let node = Node::new();
    let state = node.dir.path().join("state");
    let floor_file = berth_updater::state::VersionFloor::path(&state);
    let snapshot = |n: &Node| (n.esp_files(), n.slot_digest(Slot::B, 8 << 20));

    let from_mirror = node.updater(Slot::A, "0.1.0", "x86_64", &keys, &mirror);
    let before = snapshot(&node);
    let e = from_mirror
        .apply(None, &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UpdateError::Signature(SignatureError::WrongIdentity { .. })
        ),
        "{e}"
    );
    let msg = e.to_string();
    let (os_repo, mirror_repo) = (
        format!("127.0.0.1:{}/berth/os", reg.port),
        format!("127.0.0.1:{}/berth/mirror", reg.port),
    );
    assert!(
        msg.contains(&format!(
            "for the repository {os_repo}, not for {mirror_repo}"
        )),
        "{msg}"
    );
    assert!(from_mirror.check(None).await.is_err());
    assert_eq!(snapshot(&node), before, "foreign identity changed the node");
    assert!(!floor_file.exists());

    // v2 from the right repository installs on B and raises the floor.
    let up = node.updater(Slot::A, "0.1.0", "x86_64", &keys, &stable);
    let out = up.apply(None, &ApplyOptions::default()).await.unwrap();
    assert_eq!(out.entry, "berth-00000002-b+3.conf");
    assert_eq!(up.status().unwrap().version_floor.unwrap().version, "0.2.0");
    // Booted, blessed, rolled back to v1 on A.
    let on_b = node.updater(Slot::B, "0.2.0", "x86_64", &keys, &stable);
    assert!(matches!(on_b.bless().unwrap(), Blessed::Blessed { .. }));
    assert_eq!(on_b.rollback(false).unwrap().file, "berth-00000003-a.conf");
    let on_a = node.updater(Slot::A, "0.1.0", "x86_64", &keys, &stable);

    // v1.5, signed by the trusted key for this repository: newer than the running v1 but
    // below the floor.
    let p15 = publish_build(&c, &stable, &v15).await;
    signature::sign(&c, &stable, &p15.index_digest, &sk)
        .await
        .unwrap();
    let floor_before = fs::read(&floor_file).unwrap();
    let before = snapshot(&node);
    let chk = on_a.check(None).await.unwrap();
    assert_eq!(chk.version, "0.1.5");
    assert!(
        chk.newer && chk.below_floor && !chk.update_available,
        "{chk:?}"
    );
    assert_eq!(chk.version_floor.as_deref(), Some("0.2.0"));
    let e = on_a
        .apply(None, &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, UpdateError::BelowFloor { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("version floor 0.2.0") && msg.contains("allow-downgrade"),
        "{msg}"
    );
    assert_eq!(snapshot(&node), before, "below-floor changed the node");
    assert_eq!(fs::read(&floor_file).unwrap(), floor_before);
    assert_eq!(
        node.entries(),
        ["berth-00000002-b.conf", "berth-00000003-a.conf"]
    );

    // v2 offered again: at the floor, allowed (it is still on B, so nothing to do).
    let again = publish_build(&c, &stable, &v2).await;
    signature::sign(&c, &stable, &again.index_digest, &sk)
        .await
        .unwrap();
    let out = on_a.apply(None, &ApplyOptions::default()).await.unwrap();
    assert!(out.already_installed && out.version == "0.2.0", "{out:?}");

    // An explicit downgrade installs v1.5; the floor stays at 0.2.0.
    let p15 = publish_build(&c, &stable, &v15).await;
    signature::sign(&c, &stable, &p15.index_digest, &sk)
        .await
        .unwrap();
    let out = on_a
        .apply(
            None,
            &ApplyOptions {
                allow_downgrade: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((out.version.as_str(), out.slot), ("0.1.5", Slot::B));
    assert_eq!(
        on_a.status().unwrap().version_floor.unwrap().version,
        "0.2.0"
    );
}

async fn chk_root_digest(c: &Client, r: &Reference) -> Digest {
    let os = berth_updater::artifact::resolve(c, r, "x86_64")
        .await
        .unwrap();
    os.root.digest
}

/// The CLI end to end: keygen, publish two arches to one tag, sign, verify (and a wrong
/// key refused), inspect; the signature manifest has cosign's shape.
#[test]
fn cli_publish_sign_verify_inspect() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_berth-image");
    let run = |args: &[&str]| -> (bool, String) {
        let o = Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let key = work.path().join("berth");
    let wrong = work.path().join("wrong");
    for k in [&key, &wrong] {
        let (ok, out) = run(&["keygen", "--out", k.to_str().unwrap()]);
        assert!(ok, "{out}");
    }
    let private = fs::read_to_string(work.path().join("berth.key")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(fs::read_to_string(work.path().join("berth.pub"))
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    let (ok, out) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok && out.contains("refusing to overwrite"), "{out}");

    let r = format!("127.0.0.1:{}/berth/os:stable", reg.port);
    let cmdline = work.path().join("cmdline.txt");
    fs::write(&cmdline, format!("{CMDLINE}\n")).unwrap();
    for arch in ["x86_64", "arm64"] {
        let b = fake_build(work.path(), "0.2.0", arch, 64);
        let (ok, out) = run(&[
            "publish",
            &r,
            "--build",
            b.to_str().unwrap(),
            "--cmdline",
            cmdline.to_str().unwrap(),
            "--insecure",
        ]);
        assert!(ok, "{out}");
    }
    let pubkey = work.path().join("berth.pub");
    let (ok, out) = run(&[
        "verify",
        "--key",
        pubkey.to_str().unwrap(),
        &r,
        "--insecure",
    ]);
    assert!(!ok && out.contains("is not signed"), "{out}");
    let (ok, out) = run(&[
        "sign",
        "--key",
        work.path().join("berth.key").to_str().unwrap(),
        &r,
        "--insecure",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "verify",
        "--key",
        pubkey.to_str().unwrap(),
        &r,
        "--insecure",
    ]);
    assert!(ok && out.contains("verified"), "{out}");
    // --identity names the repository as the nodes see it; a bare name is refused.
    let (ok, out) = run(&[
        "sign",
        "--key",
        work.path().join("berth.key").to_str().unwrap(),
        "--identity",
        "berth/os",
        &r,
        "--insecure",
    ]);
    assert!(!ok && out.contains("is not a repository"), "{out}");
    let (ok, out) = run(&[
        "verify",
        "--key",
        work.path().join("wrong.pub").to_str().unwrap(),
        &r,
        "--insecure",
    ]);
    assert!(
        !ok && out.contains("none of its 1 signature(s) verifies"),
        "{out}"
    );

    let (ok, out) = run(&[
        "inspect",
        &r,
        "--insecure",
        "-o",
        "json",
        "--key",
        pubkey.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["signature"]["status"], "verified");
    let arches: Vec<String> = v["arches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["platform"].as_str().unwrap(),
                a["config"]["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(arches, ["linux/amd64 0.2.0", "linux/arm64 0.2.0"]);
    assert_eq!(v["arches"][1]["config"]["arch"], "arm64");
    assert_eq!(v["arches"][0]["config"]["cmdline"], CMDLINE);

    // The signature manifest as cosign writes it.
    let c = client();
    let rr = Reference::parse(&r).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_, top, _) = c.get_manifest(&rr).await.unwrap();
        assert_eq!(v["digest"], top.to_string());
        let sig_ref = Reference {
            tag: Some(format!("sha256-{}.sig", top.hex())),
            ..rr.clone()
        };
        let (bytes, _, _) = c.get_manifest(&sig_ref).await.unwrap();
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let layer = &m["layers"][0];
        assert_eq!(
            layer["mediaType"],
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        assert!(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap()
                .len()
                > 80
        );
        let d: berth_registry::Descriptor = serde_json::from_value(layer.clone()).unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(&c.get_blob_bytes(&rr, &d).await.unwrap()).unwrap();
        assert_eq!(
            payload["critical"]["type"],
            "cosign container image signature"
        );
        assert_eq!(
            payload["critical"]["image"]["docker-manifest-digest"],
            top.to_string()
        );
        assert_eq!(
            payload["critical"]["identity"]["docker-reference"],
            format!("127.0.0.1:{}/berth/os", reg.port)
        );
    });

    let (ok, out) = run(&["inspect", &r, "--insecure"]);
    assert!(
        ok && out.contains("signature unverified (1 found)") && out.contains("linux/arm64"),
        "{out}"
    );
}

/// The updater writes entries exactly as `berth-image build` does.
#[test]
fn entries_match_the_builder() {
    let built = berth_image::bls::Entry {
        generation: 7,
        slot: 'b',
        version: "0.2.0".into(),
        options: berth_image::bls::options(CMDLINE, 'b', "ab", "cd", 9),
        tries_left: Some(3),
    };
    let name = bls::EntryName {
        generation: 7,
        slot: Slot::B,
        tries_left: Some(3),
        tries_done: None,
    };
    assert_eq!(name.file_name(), built.file_name());
    let opts = bls::options(CMDLINE, Slot::B, "ab", "cd", 9);
    assert_eq!(opts, built.options);
    assert_eq!(bls::render(Slot::B, "0.2.0", &opts), built.render());
    let _ = std::io::stdout().flush();
}
