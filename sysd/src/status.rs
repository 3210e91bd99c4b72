//! Gathering `osctl status`: OS release, boot record, mounts, cgroups.

use berth_api::mountinfo::{self, MountInfo};
use berth_api::{BootInfo, MountStatus, Status};
use std::path::Path;

/// `KEY=value` pairs of an os-release file (quotes removed).
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn mount_status(m: Option<&MountInfo>) -> MountStatus {
    m.map(|m| MountStatus {
        target: m.target.clone(),
        source: m.source.clone(),
        fstype: m.fstype.clone(),
        read_only: m.read_only,
    })
    .unwrap_or_default()
}

/// Device-mapper name and uuid of a `/dev/dm-N` node, from sysfs.
fn dm_identity(dev: &str) -> (String, String) {
    let Some(name) = Path::new(dev).file_name() else {
        return Default::default();
    };
    let base = Path::new("/sys/class/block").join(name).join("dm");
    let read = |f: &str| {
        std::fs::read_to_string(base.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    (read("name"), read("uuid"))
}

/// The whole disk a partition (`/dev/vda2`, `/dev/nvme0n1p2`) belongs to, from sysfs:
/// `/sys/class/block/<part>` links into its disk's directory.
pub fn disk_of(sys_block: &Path, partition: &str) -> String {
    let Some(name) = Path::new(partition).file_name() else {
        return String::new();
    };
    std::fs::canonicalize(sys_block.join(name))
        .ok()
        .and_then(|p| {
            p.parent()?
                .file_name()
                .map(|d| format!("/dev/{}", d.to_string_lossy()))
        })
        .unwrap_or_default()
}

/// `VmRSS` of a `/proc/<pid>/status` file, KiB (0 when unknown).
pub fn rss_kib(status: &Path) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The node's Berth architecture (`x86_64`, `arm64`): `BERTH_ARCH` from os-release, else
/// the one this binary was built for (the updater decides the same way).
pub fn arch(os_release: &[(String, String)]) -> String {
    match get(os_release, "BERTH_ARCH") {
        "" => berth_updater::artifact::berth_arch(std::env::consts::ARCH).to_string(),
        a => a.to_string(),
    }
}

/// Seconds since the kernel started (`/proc/uptime`), 0 when unreadable.
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Collect the machine status. `sysd_start` is how often PID 1 has started sysd.
pub fn collect(sysd_start: u32) -> Status {
    let mut warnings = Vec::new();
    let os = match std::fs::read_to_string(berth_api::OS_RELEASE_PATH) {
        Ok(t) => parse_os_release(&t),
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", berth_api::OS_RELEASE_PATH));
            Vec::new()
        }
    };
    let boot = std::fs::read_to_string(berth_api::BOOT_INFO_PATH)
        .ok()
        .and_then(|s| BootInfo::from_json(&s).ok())
        .unwrap_or_default();
    warnings.extend(boot.warnings.iter().cloned());
    let mounts = mountinfo::read();
    let root = mount_status(mountinfo::find(&mounts, "/"));
    let (root_dm_name, root_dm_uuid) = dm_identity(&root.source);
    let uptime = uptime();
    let cgroup_controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Status {
        os: get(&os, "PRETTY_NAME").to_string(),
        version: get(&os, "VERSION_ID").to_string(),
        arch: arch(&os),
        build_id: get(&os, "BUILD_ID").to_string(),
        slot: boot.slot.clone(),
        hostname: hostname(),
        kernel: boot.kernel.clone(),
        uptime_seconds: uptime,
        boot_count: boot.boot_count,
        state_was_clean: boot.state_was_clean,
        state_action: boot.state_action.clone(),
        root,
        root_dm_name,
        root_dm_uuid,
        verity_root_hash: boot.verity_root_hash.clone(),
        var: mount_status(mountinfo::find(&mounts, "/var")),
        cgroup_controllers,
        sysd_pid: std::process::id(),
        sysd_starts: sysd_start,
        config_source: boot.config_source.clone(),
        config_error: boot.config_error.clone(),
        phases: boot.phases.iter().map(|p| (p.name.clone(), p.t)).collect(),
        warnings,
        boot_disk: disk_of(Path::new("/sys/class/block"), &boot.root_partition),
        init_rss_kib: rss_kib(Path::new("/proc/1/status")),
        sysd_rss_kib: rss_kib(Path::new("/proc/self/status")),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let kv = parse_os_release("NAME=Berth\nPRETTY_NAME=\"Berth 0.1.0\"\nBUILD_ID=abc\n");
        assert_eq!(get(&kv, "PRETTY_NAME"), "Berth 0.1.0");
        assert_eq!(get(&kv, "BUILD_ID"), "abc");
        assert_eq!(get(&kv, "MISSING"), "");
    }

    #[test]
    fn arch_from_os_release_else_the_build() {
        let kv = parse_os_release("NAME=Berth\nBERTH_ARCH=arm64\n");
        assert_eq!(arch(&kv), "arm64");
        let built_for = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            a => a,
        };
        assert_eq!(arch(&parse_os_release("NAME=Berth\n")), built_for);
        assert_eq!(arch(&parse_os_release("BERTH_ARCH=\"\"\n")), built_for);
    }

    #[test]
    fn disk_of_a_partition() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("devices/pci0/nvme/nvme0n1");
        std::fs::create_dir_all(dev.join("nvme0n1p2")).unwrap();
        let cls = d.path().join("class");
        std::fs::create_dir_all(&cls).unwrap();
        std::os::unix::fs::symlink(dev.join("nvme0n1p2"), cls.join("nvme0n1p2")).unwrap();
        assert_eq!(disk_of(&cls, "/dev/nvme0n1p2"), "/dev/nvme0n1");
        assert_eq!(disk_of(&cls, "/dev/missing1"), "");
    }
}
