//! Applying a config's host files and sysctls: used by PID 1 at every boot and by sysd
//! when `osctl config apply` changes the config on a running node.

use crate::Config;
use std::io;
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
            problems.push(format!("files[{i}] ({}): {e}", f.path));
        }
    }
    problems
}

/// `/etc/resolv.conf` from the config's DNS alone, unless the file (or a symlink) is there.
fn write_resolv_conf_if_missing(config: &Config, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(_) => return Ok(()),
    }
    crate::store::write_atomic(path, config.resolv_conf(&[], &[]).as_bytes())?;
    // Every process reads it, also unprivileged ones in host-network containers.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

fn write_file(root: &Path, f: &crate::FileSpec) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Validation already confined the path to /etc or /var; strip the leading '/'.
    let rel = f.path.trim_start_matches('/');
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::store::write_atomic(&path, f.content.as_bytes())?;
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
