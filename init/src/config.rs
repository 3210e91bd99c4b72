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

    fn fetch(&mut self, _url: &str) -> io::Result<Option<Vec<u8>>> {
        // PID 1 has no network: sysd fetches it once DHCP is up (`pending_config_url`).
        Ok(None)
    }
}

/// Load the config in force: the persisted one, or at first boot the first datasource
/// that has one (persisted when valid). The ESP datasource is read from the ESP on
/// `boot_disk` (the boot record's; `None`: any disk, for a record without one).
pub fn load(var: &Path, cmdline: &str, boot_disk: Option<&str>) -> Loaded {
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
    let esp = crate::devices::find_partition_on(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        boot_disk,
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

/// Apply the files and sysctls of the config (shared with sysd's `osctl config apply`).
pub use berth_config::apply::apply;
