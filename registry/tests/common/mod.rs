//! Test helpers: a real `docker-registry` on a free loopback port, images built with
//! `umoci` and pushed with `skopeo`, tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry` process, stopped and removed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// Start with an extra YAML `auth:` section (or "").
    pub fn start(auth: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Path of a blob's data file inside the registry's storage.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
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

/// Build an OCI layout image with umoci: `steps` are run against the bundle rootfs,
/// each followed by a repack (one layer per step). Returns the final rootfs path.
pub fn umoci_image(
    layout: &Path,
    tag: &str,
    arch: &str,
    work: &Path,
    steps: &[&dyn Fn(&Path)],
) -> PathBuf {
    if !layout.join("index.json").exists() {
        sh(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let img = format!("{}:{tag}", layout.display());
    sh(Command::new("umoci").args(["new", "--image", &img]));
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--architecture",
        arch,
        "--os",
        "linux",
    ]));
    let mut rootfs = PathBuf::new();
    for (i, step) in steps.iter().enumerate() {
        // A fresh bundle per layer: repack diffs against what this unpack produced.
        let bundle = work.join(format!("bundle-{tag}-{i}"));
        sh(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        rootfs = bundle.join("rootfs");
        step(&rootfs);
        sh(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
    }
    rootfs
}

/// What `umoci unpack` makes of `layout:tag` (the reference tree for comparisons:
/// tar stores whole seconds, so the bundle umoci packed from differs in mtimes).
pub fn umoci_unpacked(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    let bundle = work.join(format!("ref-{tag}"));
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

pub fn skopeo_push(layout: &Path, tag: &str, dst: &str, extra: &[&str]) {
    sh(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dst}")));
}

/// A comparable description of a tree: path -> (type, mode, uid, gid, content/target, mtime for non-dirs).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = m.file_type();
        let desc = if ft.is_dir() {
            walk(root, &p, out);
            format!("dir {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
        } else if ft.is_symlink() {
            format!(
                "link {} {}:{} -> {}",
                m.mtime(),
                m.uid(),
                m.gid(),
                fs::read_link(&p).unwrap().display()
            )
        } else if ft.is_file() {
            let mut data = Vec::new();
            fs::File::open(&p).unwrap().read_to_end(&mut data).unwrap();
            format!(
                "file {:o} {}:{} {} {} {}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                data.len(),
                berth_registry::Digest::of(&data)
            )
        } else {
            format!("other {:o} {}", m.mode(), m.rdev())
        };
        out.insert(rel, desc);
    }
}

/// Digest of the manifest tagged `tag` in an OCI layout.
pub fn layout_digest(layout: &Path, tag: &str) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// sha256 of `skopeo inspect --raw` (the manifest bytes as the registry serves them).
pub fn skopeo_raw_digest(reference: &str, extra: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    berth_registry::Digest::of(&out.stdout).to_string()
}

pub fn insecure_client() -> berth_registry::Client {
    berth_registry::Client::new(
        Default::default(),
        berth_registry::RegistryConfig {
            insecure: true,
            ..Default::default()
        },
    )
}

/// Populate a rootfs with a mix of entry kinds and metadata.
pub fn populate_base(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("var/lib/app")).unwrap();
    fs::write(root.join("etc/hostname"), "berth\n").unwrap();
    fs::write(root.join("etc/conf.d/a.conf"), "a=1\n").unwrap();
    fs::write(root.join("etc/conf.d/b.conf"), "b=2\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", root.join("usr/hostname-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", root.join("usr/abs-link")).unwrap();
    fs::write(root.join("var/lib/app/data"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::chown(root.join("var/lib/app"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(root.join("var/lib/app/data"), Some(1000), Some(1001)).unwrap();
    fs::set_permissions(root.join("var/lib/app"), fs::Permissions::from_mode(0o700)).unwrap();
}

/// Second layer: delete a file (whiteout), replace a directory's content (opaque), add files.
pub fn populate_change(root: &Path) {
    fs::remove_file(root.join("etc/hostname")).unwrap();
    fs::remove_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("etc/conf.d/c.conf"), "c=3\n").unwrap();
    fs::write(root.join("etc/new"), "new\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho v2\n").unwrap();
}
