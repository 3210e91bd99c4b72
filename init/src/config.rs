//! The machine config in PID 1 (stage 2): at first boot read it from the datasources,
//! validate and persist it; at every boot apply what PID 1 owns (hostname, sysctls, files,
//! `/etc/hosts`). Networking and containers are sysd's. A bad config never stops the boot:
//! the error (with key path and line) goes to the console and `osctl status`, and the node
//! runs with the safe defaults.

use berth_config::datasource::{self, Access, Roots};
use berth_config::store::Store;
use berth_config::Config;
use rustix::mount::{MountFlags, UnmountFlags};
use std::io;
use std::path::{Path, PathBuf};

/// What was loaded and from where.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `persisted`, a datasource name, or `defaults`.
    pub source: String,
    /// Why the config in force is the defaults, if it is because of an error.
    pub error: Option<String>,
}

/// Mounting a CIDATA volume or the ESP read-only for one file; fetching by URL is not
/// possible in PID 1 (the network comes up later, in sysd), so that source is skipped.
struct NodeAccess;

fn with_mounted<T>(
    dev: &Path,
    fstypes: &[&str],
    f: impl Fn(&Path) -> io::Result<T>,
) -> io::Result<T> {
    let mnt = PathBuf::from("/run/berth/mnt-config");
    std::fs::create_dir_all(&mnt)?;
    let mut last = io::Error::other("no filesystem type tried");
    for t in fstypes {
        match rustix::mount::mount(dev, &mnt, *t, MountFlags::RDONLY | MountFlags::NOEXEC, None) {
            Ok(()) => {
                let r = f(&mnt);
                let _ = rustix::mount::unmount(&mnt, UnmountFlags::empty());
                return r;
            }
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

impl Access for NodeAccess {
    fn read_cidata(&mut self, device: &Path) -> io::Result<Option<Vec<u8>>> {
        with_mounted(device, &["vfat", "iso9660"], datasource::read_dir_config)
    }

    fn fetch(&mut self, url: &str) -> io::Result<Vec<u8>> {
        Err(io::Error::other(format!(
            "cannot fetch {url} at first boot yet: the network is brought up later by sysd"
        )))
    }
}

/// Load the config in force: the persisted one, or at first boot the first datasource
/// that has one (persisted when valid).
pub fn load(var: &Path, cmdline: &str) -> Loaded {
    let store = Store::new(var);
    match store.current() {
        Ok(Some(text)) => {
            return match berth_config::parse(&text) {
                Ok(config) => Loaded {
                    config,
                    source: "persisted".into(),
                    error: None,
                },
                Err(e) => Loaded {
                    config: Config::default(),
                    source: "defaults".into(),
                    error: Some(format!(
                        "persisted config {} is invalid (kept untouched): {e}",
                        store.current_path().display()
                    )),
                },
            };
        }
        Ok(None) => {}
        Err(e) => {
            return Loaded {
                config: Config::default(),
                source: "defaults".into(),
                error: Some(format!("cannot read the persisted config: {e}")),
            }
        }
    }
    let esp = crate::devices::find_partition(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        "berth-esp",
    );
    let roots = Roots {
        root: PathBuf::from("/"),
        esp: None,
        cmdline: cmdline.to_string(),
    };
    let mut found = datasource::discover(&roots, &mut NodeAccess);
    if found.is_none() {
        // The ESP is not mounted on a running node: look at it read-only, just for this.
        if let Some(esp) = esp {
            if let Ok(Some(bytes)) = with_mounted(&esp.dev, &["vfat"], datasource::read_dir_config)
            {
                found = Some(datasource::Found {
                    source: datasource::Source::Esp,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
        }
    }
    let Some(found) = found else {
        return Loaded {
            config: Config::default(),
            source: "defaults".into(),
            error: None,
        };
    };
    match berth_config::parse(&found.text) {
        Ok(config) => {
            let error = store.persist(&config).err().map(|e| {
                format!(
                    "config from {} accepted but not persisted: {e}",
                    found.source
                )
            });
            Loaded {
                config,
                source: found.source.to_string(),
                error,
            }
        }
        Err(e) => Loaded {
            config: Config::default(),
            source: "defaults".into(),
            error: Some(format!(
                "config from {} rejected, booting with safe defaults: {e}",
                found.source
            )),
        },
    }
}

/// Set the hostname from the config.
pub fn set_hostname(config: &Config) -> Result<(), String> {
    let hostname = config.host.hostname();
    nix::unistd::sethostname(hostname)
        .map_err(|e| format!("host.hostname: cannot set {hostname:?}: {e}"))
}

/// Apply the files PID 1 owns under `root` (`/etc/hosts`, `/etc/hostname`, `[[files]]`) and
/// the sysctls under `proc_sys`. Returns one message per problem (none stops the boot).
pub fn apply(config: &Config, proc_sys: &Path, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let hostname = config.host.hostname();
    let etc = root.join("etc");
    let hosts = berth_config::render::hosts(hostname);
    if let Err(e) = std::fs::write(etc.join("hosts"), hosts) {
        problems.push(format!("cannot write /etc/hosts: {e}"));
    }
    if let Err(e) = std::fs::write(etc.join("hostname"), format!("{hostname}\n")) {
        problems.push(format!("cannot write /etc/hostname: {e}"));
    }
    for (key, value) in &config.sysctl {
        let r = berth_config::render::sysctl_path(proc_sys, key)
            .map_err(|e| e.to_string())
            .and_then(|p| std::fs::write(&p, value.as_text()).map_err(|e| e.to_string()));
        if let Err(e) = r {
            problems.push(format!("sysctl.{key}: {e}"));
        }
    }
    for (i, f) in config.files.iter().enumerate() {
        if let Err(e) = write_file(root, f) {
            problems.push(format!("files[{i}] ({}): {e}", f.path));
        }
    }
    problems
}

fn write_file(root: &Path, f: &berth_config::FileSpec) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Validation already confined the path to /etc or /var; strip the leading '/'.
    let rel = f.path.trim_start_matches('/');
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    berth_config::store::write_atomic(&path, f.content.as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode.0))?;
    if let Some((uid, gid)) = f.owner_ids() {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_sysctls_and_files_into_a_fake_root() {
        let d = std::env::temp_dir().join(format!("berth-apply-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let proc_sys = d.join("proc/sys");
        std::fs::create_dir_all(proc_sys.join("vm")).unwrap();
        std::fs::write(proc_sys.join("vm/swappiness"), "60").unwrap();
        std::fs::create_dir_all(d.join("root/etc")).unwrap();
        let cfg = berth_config::parse(
            "[sysctl]\n\"vm.swappiness\" = 10\n\n[[files]]\npath = \"/etc/motd\"\ncontent = \"hi\\n\"\nmode = \"0600\"\n",
        )
        .unwrap();
        let problems = apply(&cfg, &proc_sys, &d.join("root"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            std::fs::read_to_string(proc_sys.join("vm/swappiness")).unwrap(),
            "10"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("root/etc/motd")).unwrap(),
            "hi\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("root/etc/motd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert!(std::fs::read_to_string(d.join("root/etc/hosts"))
            .unwrap()
            .contains("berth"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
