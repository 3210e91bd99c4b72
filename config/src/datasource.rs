//! First-boot datasources, first match wins:
//! 1. QEMU fw_cfg `opt/org.berth/config`;
//! 2. a volume labelled `CIDATA` (vfat or iso9660, any case) holding `berth.toml`;
//! 3. `\berth.toml` on the ESP;
//! 4. `berth.config=<http URL>` on the kernel command line.
//!
//! Every path is taken relative to an injectable root, so tests run on tempdirs. Mounting
//! the CIDATA volume and fetching the URL are the caller's job, through [`Access`]. A source
//! that is absent is skipped quietly (debug log); one that is present but unreadable is
//! skipped with a warning. Validation is the caller's job too: the first source that yields
//! text wins even when the text turns out to be invalid (the node then boots with safe
//! defaults and reports the error rather than silently using a lower-priority source).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// fw_cfg file, relative to the root.
pub const FW_CFG: &str = "sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config/raw";
/// File name on a CIDATA volume and on the ESP.
pub const FILE_NAME: &str = "berth.toml";
/// Label of the NoCloud-style volume (compared case-insensitively).
pub const CIDATA_LABEL: &str = "CIDATA";
/// Largest config accepted from any source.
pub const MAX_SIZE: u64 = 4 << 20;

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// QEMU fw_cfg.
    FwCfg,
    /// A CIDATA volume on this block device.
    Cidata(PathBuf),
    /// `\berth.toml` on the ESP.
    Esp,
    /// Fetched from this URL (kernel command line).
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::FwCfg => write!(f, "fw_cfg opt/org.berth/config"),
            Source::Cidata(d) => write!(f, "CIDATA volume {}", d.display()),
            Source::Esp => write!(f, "ESP \\berth.toml"),
            Source::Url(u) => write!(f, "URL {u}"),
        }
    }
}

/// A config found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which source matched.
    pub source: Source,
    /// The config text (not yet validated).
    pub text: String,
}

/// Privileged steps [`discover`] leaves to the caller.
pub trait Access {
    /// Mounts `device` read-only (vfat or iso9660), returns [`read_dir_config`] of the mount
    /// point, and unmounts it.
    fn read_cidata(&mut self, device: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Fetches `url` (http only); at most [`MAX_SIZE`] bytes. `Ok(None)`: not here, a
    /// later stage with a network fetches it (PID 1 leaves it to sysd).
    fn fetch(&mut self, url: &str) -> io::Result<Option<Vec<u8>>>;
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The root that holds `sys/` and `dev/` (`/` on a node).
    pub root: PathBuf,
    /// The mounted ESP, if it is mounted.
    pub esp: Option<PathBuf>,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: String,
}

/// Reads a small file; `Ok(None)` when it does not exist.
fn read_limited(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_SIZE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than 4 MiB",
        ));
    }
    Ok(Some(buf))
}

/// Reads the fw_cfg config under `root`.
pub fn read_fw_cfg(root: &Path) -> io::Result<Option<Vec<u8>>> {
    read_limited(&root.join(FW_CFG))
}

/// Reads `berth.toml` from a mounted CIDATA volume or ESP (the name is matched
/// case-insensitively, as FAT does).
pub fn read_dir_config(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    if let Some(found) = read_limited(&dir.join(FILE_NAME))? {
        return Ok(Some(found));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_name()
            .to_string_lossy()
            .eq_ignore_ascii_case(FILE_NAME)
        {
            return read_limited(&e.path());
        }
    }
    Ok(None)
}

/// The `berth.config=` URL from a kernel command line, if any (the last one wins, as with
/// other kernel parameters). Only `http://` URLs are accepted; anything else is an error.
pub fn cmdline_url(cmdline: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for w in cmdline.split_ascii_whitespace() {
        if let Some(v) = w.strip_prefix("berth.config=") {
            let v = v.trim_matches('"');
            let rest = v
                .strip_prefix("http://")
                .ok_or_else(|| format!("berth.config={v}: only http:// URLs are supported"))?;
            let host = rest.split('/').next().unwrap_or_default();
            if host.is_empty() {
                return Err(format!("berth.config={v}: the URL has no host"));
            }
            found = Some(v.to_string());
        }
    }
    Ok(found)
}

/// The filesystem label in the first 34 KiB of a block device, for vfat (boot sector) and
/// iso9660 (primary volume descriptor), spaces trimmed.
pub fn filesystem_label(head: &[u8]) -> Option<String> {
    fn text(b: &[u8]) -> Option<String> {
        let s = String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_string();
        (!s.is_empty()).then_some(s)
    }
    if head.len() >= 0x8800 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return text(&head[0x8028..0x8048]);
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        let bps = u16::from_le_bytes([head[11], head[12]]);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return None;
        }
        if &head[0x52..0x57] == b"FAT32" && head[0x42] == 0x29 {
            return text(&head[0x47..0x52]).filter(|l| l != "NO NAME");
        }
        if &head[0x36..0x39] == b"FAT" && head[0x26] == 0x29 {
            return text(&head[0x2B..0x36]).filter(|l| l != "NO NAME");
        }
    }
    None
}

/// Block devices under `root` (`sys/class/block/*` -> `dev/<name>`) whose filesystem label
/// is `label` (case-insensitive), in name order. Unreadable devices are skipped.
pub fn find_labeled(root: &Path, label: &str) -> Vec<PathBuf> {
    let mut names: Vec<String> = match std::fs::read_dir(root.join("sys/class/block")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("ram") && !n.starts_with("dm-") && !n.starts_with("zram"))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no block devices listed");
            return Vec::new();
        }
    };
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let size = std::fs::read_to_string(root.join("sys/class/block").join(&n).join("size"));
        if size.as_deref().is_ok_and(|s| s.trim() == "0") {
            continue;
        }
        let dev = root.join("dev").join(&n);
        let mut head = Vec::with_capacity(0x8800);
        match File::open(&dev).and_then(|f| f.take(0x8800).read_to_end(&mut head)) {
            Ok(_) => {
                if filesystem_label(&head).is_some_and(|l| l.eq_ignore_ascii_case(label)) {
                    out.push(dev);
                }
            }
            Err(e) => {
                tracing::debug!(device = %dev.display(), error = %e, "cannot read block device")
            }
        }
    }
    out
}

fn accept(source: Source, r: io::Result<Option<Vec<u8>>>) -> Option<Found> {
    match r {
        Ok(None) => {
            tracing::debug!(%source, "config source absent");
            None
        }
        Ok(Some(bytes)) => match String::from_utf8(bytes) {
            Ok(text) => {
                tracing::info!(%source, "config source found");
                Some(Found { source, text })
            }
            Err(_) => {
                tracing::warn!(%source, "config source skipped: not UTF-8 text");
                None
            }
        },
        Err(e) => {
            tracing::warn!(%source, error = %e, "config source skipped: unreadable");
            None
        }
    }
}

/// Tries every datasource in order and returns the first that yields text.
pub fn discover(roots: &Roots, access: &mut dyn Access) -> Option<Found> {
    if let Some(f) = accept(Source::FwCfg, read_fw_cfg(&roots.root)) {
        return Some(f);
    }
    for dev in find_labeled(&roots.root, CIDATA_LABEL) {
        let r = access.read_cidata(&dev);
        if let Some(f) = accept(Source::Cidata(dev), r) {
            return Some(f);
        }
    }
    match &roots.esp {
        Some(esp) => {
            if let Some(f) = accept(Source::Esp, read_dir_config(esp)) {
                return Some(f);
            }
        }
        None => tracing::debug!("ESP not mounted; skipped"),
    }
    match cmdline_url(&roots.cmdline) {
        Ok(Some(url)) => {
            let r = access.fetch(&url);
            if let Some(f) = accept(Source::Url(url), r) {
                return Some(f);
            }
        }
        Ok(None) => tracing::debug!("no berth.config= on the kernel command line"),
        Err(e) => tracing::warn!(error = %e, "berth.config= skipped"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[derive(Default)]
    struct Fake {
        mounted: Vec<PathBuf>,
        fetched: Vec<String>,
        cidata: Option<PathBuf>,
        fetch_result: Option<Vec<u8>>,
    }

    impl Access for Fake {
        fn read_cidata(&mut self, device: &Path) -> io::Result<Option<Vec<u8>>> {
            self.mounted.push(device.to_path_buf());
            match &self.cidata {
                Some(d) => read_dir_config(d),
                None => Err(io::Error::other("mount failed")),
            }
        }
        fn fetch(&mut self, url: &str) -> io::Result<Option<Vec<u8>>> {
            self.fetched.push(url.to_string());
            self.fetch_result
                .clone()
                .map(Some)
                .ok_or_else(|| io::Error::other("connection refused"))
        }
    }

    fn write(p: &Path, b: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }

    /// A fake block device `name` under `root` with the given contents.
    fn device(root: &Path, name: &str, contents: &[u8]) {
        write(
            &root.join("sys/class/block").join(name).join("size"),
            b"100\n",
        );
        write(&root.join("dev").join(name), contents);
    }

    fn mkfs_vfat(dir: &Path, label: &str, fat32: bool) -> Vec<u8> {
        let img = dir.join(format!("{label}.img"));
        let _ = std::fs::remove_file(&img);
        let mut cmd = Command::new("mkfs.vfat");
        if fat32 {
            cmd.args(["-F", "32"]);
        }
        let st = cmd
            .arg("-n")
            .arg(label)
            .arg("-C")
            .arg(&img)
            .arg("40000")
            .output()
            .expect("mkfs.vfat (dosfstools) is needed");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::read(&img).unwrap()
    }

    #[test]
    fn labels_from_real_filesystems() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            filesystem_label(&mkfs_vfat(t.path(), "CIDATA", false)).as_deref(),
            Some("CIDATA")
        );
        assert_eq!(
            filesystem_label(&mkfs_vfat(t.path(), "cidata", true)).as_deref(),
            Some("cidata")
        );
        assert_eq!(
            filesystem_label(&mkfs_vfat(t.path(), "OTHER", true)).as_deref(),
            Some("OTHER")
        );
        // iso9660 primary volume descriptor, as genisoimage -V cidata writes it.
        let mut iso = vec![0u8; 0x8800];
        iso[0x8000] = 1;
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[0x8028..0x8048].copy_from_slice(format!("{:<32}", "cidata").as_bytes());
        assert_eq!(filesystem_label(&iso).as_deref(), Some("cidata"));
        assert_eq!(filesystem_label(&[0u8; 0x8800]), None);
        assert_eq!(filesystem_label(&[0u8; 10]), None);
    }

    #[test]
    fn finds_cidata_devices() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        device(&root, "vda", &[0u8; 4096]);
        device(&root, "vdb", &mkfs_vfat(t.path(), "OTHER", false)[..0x8800]);
        device(
            &root,
            "vdc",
            &mkfs_vfat(t.path(), "cidata", false)[..0x8800],
        );
        // Listed in sysfs but no device node: skipped.
        write(&root.join("sys/class/block/vdd/size"), b"8\n");
        assert_eq!(
            find_labeled(&root, CIDATA_LABEL),
            vec![root.join("dev/vdc")]
        );
        assert!(find_labeled(&t.path().join("nothing"), CIDATA_LABEL).is_empty());
    }

    #[test]
    fn cmdline_urls() {
        assert_eq!(cmdline_url("quiet berth.slot=a").unwrap(), None);
        assert_eq!(
            cmdline_url("quiet berth.config=http://10.0.2.2:8000/berth.toml ro")
                .unwrap()
                .as_deref(),
            Some("http://10.0.2.2:8000/berth.toml")
        );
        assert!(cmdline_url("berth.config=https://x/y").is_err());
        assert!(cmdline_url("berth.config=http:///y").is_err());
        assert!(cmdline_url("berth.config=").is_err());
    }

    #[test]
    fn first_match_wins_in_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let esp = t.path().join("esp");
        let cidir = t.path().join("cidata-mnt");
        write(&esp.join("BERTH.TOML"), b"# esp\n");
        write(&cidir.join("berth.toml"), b"# cidata\n");
        device(
            &root,
            "vdb",
            &mkfs_vfat(t.path(), "CIDATA", false)[..0x8800],
        );
        let roots = Roots {
            root: root.clone(),
            esp: Some(esp.clone()),
            cmdline: "berth.config=http://192.0.2.1/c.toml".into(),
        };

        // fw_cfg beats everything; nothing is mounted or fetched.
        write(&root.join(FW_CFG), b"# fw_cfg\n");
        let mut fake = Fake {
            cidata: Some(cidir.clone()),
            ..Default::default()
        };
        let f = discover(&roots, &mut fake).unwrap();
        assert_eq!((f.source, f.text.as_str()), (Source::FwCfg, "# fw_cfg\n"));
        assert!(fake.mounted.is_empty() && fake.fetched.is_empty());

        // Without fw_cfg: the CIDATA volume.
        std::fs::remove_file(root.join(FW_CFG)).unwrap();
        let f = discover(&roots, &mut fake).unwrap();
        assert_eq!(f.source, Source::Cidata(root.join("dev/vdb")));
        assert_eq!(f.text, "# cidata\n");

        // CIDATA unreadable (mount fails): skipped, the ESP wins (file name in any case).
        fake.cidata = None;
        let f = discover(&roots, &mut fake).unwrap();
        assert_eq!((f.source, f.text.as_str()), (Source::Esp, "# esp\n"));

        // No ESP file: the URL, fetched by the caller.
        std::fs::remove_file(esp.join("BERTH.TOML")).unwrap();
        fake.fetch_result = Some(b"# url\n".to_vec());
        let f = discover(&roots, &mut fake).unwrap();
        assert_eq!(f.source, Source::Url("http://192.0.2.1/c.toml".into()));
        assert_eq!(fake.fetched, ["http://192.0.2.1/c.toml"]);

        // Fetch fails: nothing found.
        fake.fetch_result = None;
        assert_eq!(discover(&roots, &mut fake), None);

        // A fw_cfg file that is not UTF-8 is skipped.
        write(&root.join(FW_CFG), &[0xff, 0xfe]);
        fake.fetch_result = Some(b"# url\n".to_vec());
        assert_eq!(discover(&roots, &mut fake).unwrap().text, "# url\n");
    }
}
