//! Applying a config's host files and sysctls: used by PID 1 at every boot and by sysd
//! when `osctl config apply` changes the config on a running node.

use crate::Config;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Apply the files PID 1 owns under `root` (`/etc/hosts`, `/etc/hostname`, `[[files]]`,
/// and `/etc/resolv.conf` when there is none yet) and the sysctls under `proc_sys`.
/// Returns one message per problem (none stops the boot).
///
/// `/etc/resolv.conf` gets the config's own DNS here, so host-network containers have one
/// from the start. It is written only when missing: sysd's network task owns it after
/// that and rewrites it with the DHCP leases' DNS (and again after a live apply, when the
/// network task restarts), so a live apply must not put back a file without them.
pub fn apply(config: &Config, proc_sys: &Path, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let hostname = config.host.hostname();
    let etc = root.join("etc");
    let hosts = crate::render::hosts(hostname);
    if let Err(e) = std::fs::write(etc.join("hosts"), hosts) {
        problems.push(format!("cannot write /etc/hosts: {e}"));
    }
    if let Err(e) = std::fs::write(etc.join("hostname"), format!("{hostname}\n")) {
        problems.push(format!("cannot write /etc/hostname: {e}"));
    }
    if let Err(e) = write_resolv_conf_if_missing(config, &etc.join("resolv.conf")) {
        problems.push(format!("cannot write /etc/resolv.conf: {e}"));
    }
    for (key, value) in &config.sysctl {
        let r = crate::render::sysctl_path(proc_sys, key)
            .map_err(|e| e.to_string())
            .and_then(|p| std::fs::write(&p, value.as_text()).map_err(|e| e.to_string()));
        if let Err(e) = r {
            problems.push(format!("sysctl.{key}: {e}"));
        }
    }
    for (i, f) in config.files.iter().enumerate() {
        if let Err(e) = write_file(root, f) {
            problems.push(format!(
                "files[{i}] ({}): {}",
                f.path,
                crate::error_chain(&e)
            ));
        }
    }
    problems
}

/// `/etc/resolv.conf` from the config's DNS alone, unless the file (or a symlink) is there.
fn write_resolv_conf_if_missing(config: &Config, path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(_) => return Ok(()),
    }
    crate::store::write_atomic(path, config.resolv_conf(&[], &[]).as_bytes())?;
    // Every process reads it, also unprivileged ones in host-network containers.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// Writing one `[[files]]` entry failed; each variant names the path (inside the root).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path (validation should have refused it) is not below a directory.
    #[error("{path} is not a path below the root")]
    BadPath {
        /// The path.
        path: String,
    },
    /// A symlink sits at the target or at one of its parent directories.
    #[error("{path} is a symbolic link; files are never written through one (remove it)")]
    Symlink {
        /// The symlink.
        path: String,
    },
    /// A parent is something other than a directory.
    #[error("{path} is not a directory")]
    NotDirectory {
        /// The parent.
        path: String,
    },
    /// Opening or creating a parent directory failed.
    #[error("cannot open or create directory {path}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the new contents (temporary file, mode, owner, rename) failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
    })
}

/// Writes one `[[files]]` entry below `root` without following any symlink below `root`:
/// the parents are opened (and created, 0755) one component at a time with
/// `O_NOFOLLOW|O_DIRECTORY`, the contents go to a new file next to the target, which gets
/// its owner and mode through its descriptor, is synced and renamed over the target.
/// A symlink at the target or at a parent is refused: PID 1 writes as root, and a link
/// planted on /var (`/var/x -> /etc/shadow`) must not redirect it.
fn write_file(root: &Path, f: &crate::FileSpec) -> Result<(), FileError> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Write;
    let bad = || FileError::BadPath {
        path: f.path.clone(),
    };
    // Validation already confined the path to /etc or /var; strip the leading '/'.
    let rel = f.path.trim_start_matches('/');
    let parts: Vec<&str> = rel.split('/').collect();
    let (name, parents) = parts.split_last().ok_or_else(bad)?;
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(bad());
    }
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The root itself is PID 1's own choice ("/"), not something from the config.
    let root_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir: OwnedFd =
        rustix::fs::open(root, root_flags, Mode::empty()).map_err(|e| FileError::Dir {
            path: root.display().to_string(),
            source: e.into(),
        })?;
    let mut shown = String::new();
    for c in parents {
        shown.push('/');
        shown.push_str(c);
        let derr = |e: rustix::io::Errno| FileError::Dir {
            path: shown.clone(),
            source: e.into(),
        };
        let next = match rustix::fs::openat(&dir, *c, dir_flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, *c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(derr(e)),
                }
                rustix::fs::openat(&dir, *c, dir_flags, Mode::empty())
            }
            r => r,
        };
        dir = match next {
            Ok(d) => d,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) if is_symlink(&dir, c) => {
                return Err(FileError::Symlink { path: shown });
            }
            Err(rustix::io::Errno::NOTDIR) => return Err(FileError::NotDirectory { path: shown }),
            Err(e) => return Err(derr(e)),
        };
    }
    let path = format!("{shown}/{name}");
    if is_symlink(&dir, name) {
        return Err(FileError::Symlink { path });
    }
    let werr = |e: io::Error| FileError::Write {
        path: path.clone(),
        source: e,
    };
    let tmp = format!(".{name}.berth-new");
    // A leftover of an interrupted write (or anything planted under that name) goes.
    match rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(werr(e.into())),
    }
    let fd = rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| werr(e.into()))?;
    let mut file = std::fs::File::from(fd);
    let written = (|| -> io::Result<()> {
        file.write_all(f.content.as_bytes())?;
        // Owner first: chown clears the set-id bits a mode may carry.
        if let Some((uid, gid)) = f.owner_ids() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(f.mode.0))?;
        file.sync_all()?;
        // rename replaces whatever is at `name` (a symlink planted since the check above
        // included) and never follows it.
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, *name)?;
        rustix::fs::fsync(&dir)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    written.map_err(werr)
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
        let cfg = crate::parse(
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

    fn file_config(path: &str, content: &str, mode: &str, owner: &str) -> Config {
        crate::parse(&format!(
            "[[files]]\npath = {path:?}\ncontent = {content:?}\nmode = {mode:?}\nowner = {owner:?}\n"
        ))
        .unwrap()
    }

    #[test]
    fn files_are_written_with_mode_and_owner_creating_parents() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("var")).unwrap();
        let cfg = file_config("/var/lib/app/conf/app.toml", "x = 1\n", "0640", "1000:1001");
        let f = &cfg.files[0];
        write_file(d.path(), f).unwrap();
        let p = d.path().join("var/lib/app/conf/app.toml");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x = 1\n");
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        // (Tests run as root, like PID 1: fchown to another owner works.)
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
        let dm = std::fs::metadata(d.path().join("var/lib/app/conf")).unwrap();
        assert_eq!(dm.mode() & 0o777, 0o755);
        // Rewritten in place of the old file; no temporary file left behind.
        let cfg = file_config("/var/lib/app/conf/app.toml", "x = 2\n", "0600", "0:0");
        write_file(d.path(), &cfg.files[0]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x = 2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(d.path().join("var/lib/app/conf"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["app.toml"]);
    }

    #[test]
    fn a_symlink_at_the_target_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let shadow = outside.path().join("shadow");
        std::fs::write(&shadow, "root:secret\n").unwrap();
        std::fs::create_dir_all(d.path().join("var")).unwrap();
        std::os::unix::fs::symlink(&shadow, d.path().join("var/x")).unwrap();
        let cfg = file_config("/var/x", "pwned\n", "0644", "0:0");
        let problems = apply(&cfg, &d.path().join("proc/sys"), d.path());
        assert!(
            problems.contains(&"files[0] (/var/x): /var/x is a symbolic link; files are never written through one (remove it)".to_string()),
            "{problems:?}"
        );
        assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:secret\n");
        assert!(std::fs::symlink_metadata(d.path().join("var/x"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link is refused the same way (nothing created where it points).
        let target = outside.path().join("new");
        std::fs::remove_file(d.path().join("var/x")).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("var/x")).unwrap();
        let e = write_file(d.path(), &cfg.files[0]).unwrap_err();
        assert!(
            matches!(e, FileError::Symlink { ref path } if path == "/var/x"),
            "{e}"
        );
        assert!(!target.exists());
    }

    #[test]
    fn a_symlinked_parent_directory_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var/lib")).unwrap();
        // A directory link to "/" (here: to a directory outside the root), at the first
        // and at a deeper level.
        std::os::unix::fs::symlink(outside.path(), d.path().join("var/evil")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("var/lib/deep")).unwrap();
        for (path, link) in [
            ("/var/evil/etc/shadow", "/var/evil"),
            ("/var/evil/motd", "/var/evil"),
            ("/var/lib/deep/x/y", "/var/lib/deep"),
        ] {
            let cfg = file_config(path, "pwned\n", "0644", "0:0");
            let e = write_file(d.path(), &cfg.files[0]).unwrap_err();
            assert!(
                matches!(e, FileError::Symlink { path: ref p } if p == link),
                "{path}: {e}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "{link} is a symbolic link; files are never written through one (remove it)"
                )
            );
        }
        // Nothing was written or created outside the root.
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A regular file where a directory is expected is named too.
        std::fs::write(d.path().join("var/file"), "").unwrap();
        let cfg = file_config("/var/file/x", "", "0644", "0:0");
        let e = write_file(d.path(), &cfg.files[0]).unwrap_err();
        assert_eq!(e.to_string(), "/var/file is not a directory");
    }

    #[test]
    fn resolv_conf_is_written_from_the_config_only_when_missing() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("berth-apply-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let proc_sys = d.join("proc/sys");
        std::fs::create_dir_all(&proc_sys).unwrap();
        std::fs::create_dir_all(d.join("root/etc")).unwrap();
        let resolv = d.join("root/etc/resolv.conf");
        let cfg = crate::parse(
            "[network.dns]\nservers = [\"192.0.2.53\"]\nsearch = [\"example.test\"]\n",
        )
        .unwrap();

        // Boot: no resolv.conf yet; the config's DNS, readable by everyone.
        let problems = apply(&cfg, &proc_sys, &d.join("root"));
        assert!(problems.is_empty(), "{problems:?}");
        let text = std::fs::read_to_string(&resolv).unwrap();
        assert!(
            text.ends_with("nameserver 192.0.2.53\nsearch example.test\n"),
            "{text}"
        );
        let mode = std::fs::metadata(&resolv).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);

        // Live apply: the network task has written the lease's DNS; it stays.
        let leased = cfg.resolv_conf(&["10.0.2.3".parse().unwrap()], &["lan".into()]);
        std::fs::write(&resolv, &leased).unwrap();
        let problems = apply(&cfg, &proc_sys, &d.join("root"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(std::fs::read_to_string(&resolv).unwrap(), leased);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
