//! System container images shipped in the root image as OCI image layouts under
//! `/usr/lib/berth/images/<name>/` (tag `latest`), with their service definitions under
//! `/usr/lib/berth/services/<name>.toml` (the `ContainerSpec` of the config crate).
//!
//! Built from Debian packages without Docker: the `admin` debug image is Debian's
//! `busybox-static` for the target architecture (fetched by
//! `kernel-config/fetch-kernel.sh` into the kernel dir) with symlinks for its applets.
//! Layers are plain tars with fixed owners and mtimes and sorted entries, so a rebuild
//! yields the same digests (the root image is compressed as a whole anyway).

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
pub const SERVICES: &[(&str, &str)] = &[("admin", include_str!("../../image/services/admin.toml"))];

/// Errors building the system images.
#[derive(Debug, thiserror::Error)]
pub enum SysImageError {
    #[error(
        "busybox for the system images not found at {0} (kernel-config/fetch-kernel.sh fetches it)"
    )]
    NoBusybox(std::path::PathBuf),
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

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let _ = h.set_path(path);
    h
}

/// The admin image's single layer (an uncompressed tar).
pub fn admin_layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ];
    for (d, mode) in dirs {
        let mut h = header(&format!("{d}/"), tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let mut h = header(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        busybox.len() as u64,
    );
    h.set_cksum();
    b.append(&h, busybox)?;
    let mut applets: Vec<&str> = APPLETS.to_vec();
    applets.sort_unstable();
    for a in applets {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let files: [(&str, &[u8]); 2] = [
        ("etc/group", b"root:x:0:\n"),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    ];
    for (p, data) in files {
        let mut h = header(p, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, data)?;
    }
    b.into_inner()
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

/// Build every system image and service definition into the root tree `root`.
pub fn install(root: &Path, arch: Arch, busybox: &Path) -> Result<(), SysImageError> {
    if !busybox.is_file() {
        return Err(SysImageError::NoBusybox(busybox.to_path_buf()));
    }
    let bb = io("reading", busybox, fs::read(busybox))?;
    let layer = io("building the admin layer for", busybox, admin_layer(&bb))?;
    write_layout(
        &root.join("usr/lib/berth/images/admin"),
        arch,
        &layer,
        &["/bin/sh"],
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
}
