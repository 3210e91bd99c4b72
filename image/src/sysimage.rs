//! System container images shipped in the root image as OCI image layouts under
//! `/usr/lib/berth/images/<name>/` (tag `latest`), with their service definitions under
//! `/usr/lib/berth/services/<name>.toml` (the `ContainerSpec` of the config crate).
//!
//! Built from Debian packages of the target architecture without Docker, fetched by
//! `kernel-config/fetch-kernel.sh` into the kernel dir:
//! - `admin`, the debug toolbox: `busybox-static` with symlinks for its applets;
//! - `ntpd`, time sync: OpenNTPD (`openntpd`; Debian's busybox builds have no `ntpd`
//!   applet) with the three files of `libc6` it needs (loader, libc, libm).
//!
//! Each image is one plain tar layer with fixed owners and mtimes and sorted entries, so a
//! rebuild yields the same digests (the root image is compressed as a whole anyway).

use crate::layout::Arch;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::path::Path;

/// Applets linked in `/bin` of the admin image.
pub const APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "diff",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "gunzip",
    "gzip",
    "head",
    "hexdump",
    "hostname",
    "id",
    "ip",
    "kill",
    "less",
    "ln",
    "ls",
    "mkdir",
    "more",
    "mount",
    "mv",
    "nc",
    "netstat",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "top",
    "touch",
    "tr",
    "traceroute",
    "true",
    "umount",
    "uname",
    "uniq",
    "uptime",
    "vi",
    "watch",
    "wc",
    "wget",
    "which",
    "xargs",
];

/// The service definitions shipped with the OS (`image/services/*.toml`).
pub const SERVICES: &[(&str, &str)] = &[
    ("admin", include_str!("../../image/services/admin.toml")),
    ("ntpd", include_str!("../../image/services/ntpd.toml")),
];

/// Errors building the system images.
#[derive(Debug, thiserror::Error)]
pub enum SysImageError {
    #[error(
        "busybox for the system images not found at {0} (kernel-config/fetch-kernel.sh fetches it)"
    )]
    NoBusybox(std::path::PathBuf),
    #[error("{0} not found (kernel-config/fetch-kernel.sh unpacks the system image packages)")]
    Missing(std::path::PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, SysImageError> {
    r.map_err(|source| SysImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir(String, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir(p, _) | Entry::File(p, _, _) | Entry::Symlink(p, _) => p,
        }
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_path(path)?;
    Ok(h)
}

/// A layer tar of `entries` sorted by path (owner root, mtime 0): the same entries always
/// give the same bytes.
pub fn layer_tar(mut entries: Vec<Entry>) -> std::io::Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut b = tar::Builder::new(Vec::new());
    for e in &entries {
        match e {
            Entry::Dir(p, mode) => {
                let mut h = header(&format!("{p}/"), tar::EntryType::Directory, *mode, 0)?;
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
            Entry::File(p, mode, data) => {
                let mut h = header(p, tar::EntryType::Regular, *mode, data.len() as u64)?;
                h.set_cksum();
                b.append(&h, data.as_slice())?;
            }
            Entry::Symlink(p, target) => {
                let mut h = header(p, tar::EntryType::Symlink, 0o777, 0)?;
                h.set_link_name(target)?;
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
        }
    }
    b.into_inner()
}

fn dir(p: &str, mode: u32) -> Entry {
    Entry::Dir(p.into(), mode)
}

fn file(p: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
    Entry::File(p.into(), mode, data.into())
}

/// The admin image's single layer (an uncompressed tar).
pub fn admin_layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = vec![
        dir("bin", 0o755),
        dir("etc", 0o755),
        dir("root", 0o700),
        dir("tmp", 0o1777),
        file("bin/busybox", 0o755, busybox),
        file("etc/group", 0o644, "root:x:0:\n"),
        file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
    ];
    for a in APPLETS {
        e.push(Entry::Symlink(format!("bin/{a}"), "busybox".into()));
    }
    layer_tar(e)
}

/// The ntpd config shipped in the image: the NTP pool. On a node sysd mounts the one it
/// renders from `host.ntp_servers` over it. OpenNTPD retries a failed name lookup by
/// itself (no crash loop without DNS).
pub const NTPD_CONF: &str =
    "# Shipped default; the node mounts /run/berth/ntpd.conf over it.\nservers pool.ntp.org\n";

/// Where the C library of `arch` lives in Debian's `libc6`: its multiarch dir, the
/// dynamic loader's file name, and the loader path programs name (`PT_INTERP`) relative
/// to `/`, with the symlink target that path needs.
fn libc_layout(arch: Arch) -> (&'static str, &'static str, &'static str, &'static str) {
    match arch {
        Arch::X86_64 => (
            "lib/x86_64-linux-gnu",
            "ld-linux-x86-64.so.2",
            "lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        Arch::Arm64 => (
            "lib/aarch64-linux-gnu",
            "ld-linux-aarch64.so.1",
            "lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        ),
    }
}

/// Files of unpacked Debian packages the ntpd image is made of.
pub struct NtpdInputs {
    /// `/usr/sbin/ntpd` of `openntpd`.
    pub ntpd: Vec<u8>,
    /// The loader, `libc.so.6` and `libm.so.6` of `libc6`.
    pub loader: Vec<u8>,
    pub libc: Vec<u8>,
    pub libm: Vec<u8>,
}

impl NtpdInputs {
    /// Read them from `debs/openntpd` and `debs/libc6` (fetch-kernel.sh unpacks both).
    pub fn read(debs: &Path, arch: Arch) -> Result<Self, SysImageError> {
        let (libdir, ld, _, _) = libc_layout(arch);
        let rd = |p: std::path::PathBuf| {
            if !p.is_file() {
                return Err(SysImageError::Missing(p));
            }
            io("reading", &p, fs::read(&p))
        };
        let lib = debs.join("libc6").join(libdir);
        Ok(NtpdInputs {
            ntpd: rd(debs.join("openntpd/usr/sbin/ntpd"))?,
            loader: rd(lib.join(ld))?,
            libc: rd(lib.join("libc.so.6"))?,
            libm: rd(lib.join("libm.so.6"))?,
        })
    }
}

/// The ntpd image's single layer: OpenNTPD, the C library, the `ntpd` privilege-separation
/// user whose home `/run/openntpd` is its chroot, and the state dirs it writes.
pub fn ntpd_layer(arch: Arch, i: &NtpdInputs) -> std::io::Result<Vec<u8>> {
    let (libdir, ld, interp, interp_target) = libc_layout(arch);
    let mut e =
        vec![
        dir("etc", 0o755),
        dir("etc/openntpd", 0o755),
        dir("lib", 0o755),
        dir(libdir, 0o755),
        dir("run", 0o755),
        dir("run/openntpd", 0o755),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/sbin", 0o755),
        dir("var", 0o755),
        dir("var/lib", 0o755),
        dir("var/lib/openntpd", 0o755),
        dir("var/lib/openntpd/db", 0o755),
        dir("var/lib/openntpd/run", 0o755),
        file("usr/sbin/ntpd", 0o755, i.ntpd.as_slice()),
        file(&format!("{libdir}/{ld}"), 0o755, i.loader.as_slice()),
        file(&format!("{libdir}/libc.so.6"), 0o755, i.libc.as_slice()),
        file(&format!("{libdir}/libm.so.6"), 0o644, i.libm.as_slice()),
        Entry::Symlink("usr/sbin/ntpctl".into(), "ntpd".into()),
        Entry::Symlink(interp.into(), interp_target.into()),
        file("etc/openntpd/ntpd.conf", 0o644, NTPD_CONF),
        file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/false\nntpd:x:100:101:OpenNTPD:/run/openntpd:/bin/false\n",
        ),
        file("etc/group", 0o644, "root:x:0:\nntpd:x:101:\n"),
        // getservbyname("ntp") and name lookups via DNS then files.
        file("etc/services", 0o644, "ntp\t\t123/udp\n"),
        file("etc/nsswitch.conf", 0o644, "hosts: dns files\nservices: files\n"),
    ];
    if let Some(parent) = Path::new(interp).parent() {
        let p = parent.to_string_lossy();
        if p != "lib" {
            e.push(dir(&p, 0o755));
        }
    }
    layer_tar(e)
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Write an OCI image layout with one single-layer image tagged `latest` into `dir`.
pub fn write_layout(
    dir: &Path,
    arch: Arch,
    layer: &[u8],
    cmd: &[&str],
) -> Result<(), SysImageError> {
    let blobs = dir.join("blobs/sha256");
    io("creating", &blobs, fs::create_dir_all(&blobs))?;
    let put = |data: &[u8]| -> Result<(String, u64), SysImageError> {
        let d = sha(data);
        let p = blobs.join(d.trim_start_matches("sha256:"));
        io("writing", &p, fs::write(&p, data))?;
        Ok((d, data.len() as u64))
    };
    let oci_arch = match arch {
        Arch::X86_64 => "amd64",
        Arch::Arm64 => "arm64",
    };
    let (layer_d, layer_n) = put(layer)?;
    let config = serde_json::json!({
        "architecture": oci_arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_d] },
    });
    let (config_d, config_n) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_d, "size": config_n,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_d, "size": layer_n,
        }],
    });
    let (man_d, man_n) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_d, "size": man_n,
            "platform": { "architecture": oci_arch, "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    let ip = dir.join("index.json");
    io("writing", &ip, fs::write(&ip, index.to_string()))?;
    let lp = dir.join("oci-layout");
    io(
        "writing",
        &lp,
        fs::write(&lp, br#"{"imageLayoutVersion":"1.0.0"}"#),
    )
}

/// Build every system image and service definition into the root tree `root` from the
/// packages `kernel-config/fetch-kernel.sh` put into `kernel_dir` (`busybox`, `debs/`).
pub fn install(root: &Path, arch: Arch, kernel_dir: &Path) -> Result<(), SysImageError> {
    let busybox = kernel_dir.join("busybox");
    if !busybox.is_file() {
        return Err(SysImageError::NoBusybox(busybox));
    }
    let bb = io("reading", &busybox, fs::read(&busybox))?;
    let layer = io("building the admin layer for", &busybox, admin_layer(&bb))?;
    let images = root.join("usr/lib/berth/images");
    write_layout(&images.join("admin"), arch, &layer, &["/bin/sh"])?;
    let debs = kernel_dir.join("debs");
    let inputs = NtpdInputs::read(&debs, arch)?;
    let layer = io(
        "building the ntpd layer from",
        &debs,
        ntpd_layer(arch, &inputs),
    )?;
    write_layout(
        &images.join("ntpd"),
        arch,
        &layer,
        &["/usr/sbin/ntpd", "-d", "-f", "/etc/openntpd/ntpd.conf"],
    )?;
    let services = root.join("usr/lib/berth/services");
    io("creating", &services, fs::create_dir_all(&services))?;
    for (name, text) in SERVICES {
        let p = services.join(format!("{name}.toml"));
        io("writing", &p, fs::write(&p, text))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_imports_and_unpacks_with_the_store_sysd_uses() {
        let d = tempfile::tempdir().unwrap();
        // Any static executable stands in for busybox's bytes here.
        let fake = b"\x7fELF fake busybox".to_vec();
        let layer = admin_layer(&fake).unwrap();
        assert_eq!(layer, admin_layer(&fake).unwrap(), "not reproducible");
        let lay = d.path().join("admin");
        write_layout(&lay, Arch::X86_64, &layer, &["/bin/sh"]).unwrap();
        let store = berth_registry::Store::open(d.path().join("store")).unwrap();
        store.import_layout(&lay, "latest", "admin:latest").unwrap();
        let platform = berth_registry::Platform::parse("linux/amd64").unwrap();
        let img = store
            .unpack_image("admin:latest", &platform, &Default::default())
            .unwrap();
        assert_eq!(img.layers.len(), 1);
        let l = &img.layers[0];
        assert_eq!(fs::read(l.join("bin/busybox")).unwrap(), fake);
        assert_eq!(
            fs::read_link(l.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(l.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert_eq!(img.config.config.unwrap().cmd.unwrap(), ["/bin/sh"]);
    }

    #[test]
    fn shipped_services_are_valid_definitions() {
        for (name, text) in SERVICES {
            let s = berth_config::parse_service(text)
                .unwrap_or_else(|e| panic!("image/services/{name}.toml: {e}"));
            assert_eq!(s.name, *name);
        }
    }

    fn fake_ntpd_inputs() -> NtpdInputs {
        NtpdInputs {
            ntpd: b"ntpd".to_vec(),
            loader: b"ld".to_vec(),
            libc: b"libc".to_vec(),
            libm: b"libm".to_vec(),
        }
    }

    #[test]
    fn ntpd_layout_for_arm64_imports_and_unpacks() {
        let d = tempfile::tempdir().unwrap();
        let i = fake_ntpd_inputs();
        let layer = ntpd_layer(Arch::Arm64, &i).unwrap();
        assert_eq!(
            layer,
            ntpd_layer(Arch::Arm64, &i).unwrap(),
            "not reproducible"
        );
        let lay = d.path().join("ntpd");
        write_layout(&lay, Arch::Arm64, &layer, &["/usr/sbin/ntpd"]).unwrap();
        let store = berth_registry::Store::open(d.path().join("store")).unwrap();
        store.import_layout(&lay, "latest", "ntpd").unwrap();
        let arm = berth_registry::Platform::parse("linux/arm64").unwrap();
        let img = store
            .unpack_image("ntpd", &arm, &Default::default())
            .unwrap();
        let l = &img.layers[0];
        assert_eq!(fs::read(l.join("usr/sbin/ntpd")).unwrap(), b"ntpd");
        assert_eq!(
            fs::read(l.join("lib/ld-linux-aarch64.so.1")).unwrap(),
            b"ld",
            "PT_INTERP path does not lead to the loader"
        );
        assert_eq!(
            fs::read(l.join("usr/sbin/ntpctl")).unwrap(),
            b"ntpd",
            "ntpctl (the health check) is the same program"
        );
        let passwd = fs::read_to_string(l.join("etc/passwd")).unwrap();
        assert!(passwd.contains("ntpd:x:100:101:OpenNTPD:/run/openntpd:"));
        assert!(l.join("run/openntpd").is_dir() && l.join("var/lib/openntpd/db").is_dir());
        assert_eq!(img.config.architecture, "arm64");
        // The store picks by platform: an amd64 node refuses the arm64 image.
        let amd = berth_registry::Platform::parse("linux/amd64").unwrap();
        assert!(store
            .unpack_image("ntpd", &amd, &Default::default())
            .is_err());
    }

    /// The real packages (`make kernel` fetches them): install the system images into a
    /// root tree, import the ntpd layout with the store, unpack it and run the unpacked
    /// OpenNTPD's config check with its own loader and libc in a chroot (root only, as in CI).
    #[test]
    fn real_ntpd_image_runs_from_the_unpacked_layer() {
        let kdir = std::env::var_os("BERTH_KERNEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/x86_64/kernel")
            });
        assert!(
            kdir.join("debs/openntpd/usr/sbin/ntpd").is_file(),
            "{} has no unpacked openntpd: run `make kernel` (kernel-config/fetch-kernel.sh)",
            kdir.display()
        );
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        install(&root, Arch::X86_64, &kdir).unwrap();
        for s in ["admin", "ntpd"] {
            assert!(root
                .join(format!("usr/lib/berth/services/{s}.toml"))
                .is_file());
        }
        let store = berth_registry::Store::open(d.path().join("store")).unwrap();
        store
            .import_layout(&root.join("usr/lib/berth/images/ntpd"), "latest", "ntpd")
            .unwrap();
        let amd = berth_registry::Platform::parse("linux/amd64").unwrap();
        let img = store
            .unpack_image("ntpd", &amd, &Default::default())
            .unwrap();
        let out = std::process::Command::new("chroot")
            .arg(&img.layers[0])
            .args(["/usr/sbin/ntpd", "-n", "-f", "/etc/openntpd/ntpd.conf"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ntpd -n in the image failed: {text}");
        assert!(text.contains("configuration OK"), "{text}");
    }
}
