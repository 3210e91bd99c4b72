//! Mount plans: pure lists of what to mount where, and one executor.

use rustix::mount::MountFlags;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// One mount to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MountFlags,
    pub data: String,
}

impl Mount {
    fn new(source: &str, target: impl Into<PathBuf>, fstype: &str, flags: MountFlags) -> Self {
        Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: String::new(),
        }
    }

    fn data(mut self, data: &str) -> Self {
        self.data = data.into();
        self
    }
}

/// A mount that failed, with what was asked.
#[derive(Debug, thiserror::Error)]
#[error("cannot mount {fstype} {source_dev} on {target}")]
pub struct MountError {
    pub source_dev: String,
    pub target: String,
    pub fstype: String,
    #[source]
    pub cause: std::io::Error,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// The API filesystems stage 1 needs before anything else.
pub fn early() -> Vec<Mount> {
    vec![
        Mount::new("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID).data("mode=0755"),
        Mount::new("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC),
        Mount::new("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC),
    ]
}

/// `/run` and the `/etc` overlay on the new root (stage 1, before switch_root). The overlay's
/// upper layer lives on the `/run` tmpfs, so `/etc` is rebuilt from the image at every boot.
pub fn run_and_etc(sysroot: &Path) -> Vec<Mount> {
    let run = sysroot.join("run");
    vec![
        Mount::new(
            "tmpfs",
            &run,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
        )
        .data("mode=0755"),
        Mount::new(
            "overlay",
            sysroot.join("etc"),
            "overlay",
            MountFlags::NOSUID,
        )
        .data(&format!(
            "lowerdir={},upperdir={},workdir={}",
            sysroot.join("etc").display(),
            run.join("berth/etc/upper").display(),
            run.join("berth/etc/work").display()
        )),
    ]
}

/// Directories that must exist on `/run` before [`run_and_etc`]'s overlay is mounted.
pub fn etc_overlay_dirs(sysroot: &Path) -> [PathBuf; 2] {
    let b = sysroot.join("run/berth/etc");
    [b.join("upper"), b.join("work")]
}

/// The rest of the API filesystems, mounted by stage 2 on the real root.
pub fn stage2(efi: bool) -> Vec<Mount> {
    let mut v = vec![
        Mount::new(
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
        )
        .data("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount::new(
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
        )
        .data("mode=1777"),
        Mount::new("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC)
            .data("nsdelegate,memory_recursiveprot"),
        Mount::new(
            "tmpfs",
            "/tmp",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
        )
        .data("mode=1777"),
    ];
    if efi {
        v.push(Mount::new(
            "efivarfs",
            "/sys/firmware/efi/efivars",
            "efivarfs",
            NOSUID_NODEV_NOEXEC,
        ));
    }
    v
}

/// Make one mount, creating the target directory if it is missing (on a writable parent).
pub fn mount(m: &Mount) -> Result<(), MountError> {
    let err = |cause| MountError {
        source_dev: m.source.clone(),
        target: m.target.display().to_string(),
        fstype: m.fstype.clone(),
        cause,
    };
    if !m.target.exists() {
        std::fs::create_dir_all(&m.target).map_err(err)?;
    }
    let data = CString::new(m.data.as_str())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let data = (!m.data.is_empty()).then_some(data.as_c_str());
    rustix::mount::mount(
        m.source.as_str(),
        &m.target,
        m.fstype.as_str(),
        m.flags,
        data,
    )
    .map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_overlay_uses_run() {
        let plan = run_and_etc(Path::new("/sysroot"));
        assert_eq!(plan[0].target, PathBuf::from("/sysroot/run"));
        assert_eq!(plan[1].fstype, "overlay");
        assert_eq!(
            plan[1].data,
            "lowerdir=/sysroot/etc,upperdir=/sysroot/run/berth/etc/upper,workdir=/sysroot/run/berth/etc/work"
        );
        for d in etc_overlay_dirs(Path::new("/sysroot")) {
            assert!(d.starts_with("/sysroot/run/berth/etc"));
        }
    }

    #[test]
    fn stage2_plan() {
        let p = stage2(false);
        assert!(p.iter().any(|m| m.fstype == "cgroup2"
            && m.target == Path::new("/sys/fs/cgroup")
            && m.data.contains("nsdelegate")));
        assert!(!p.iter().any(|m| m.fstype == "efivarfs"));
        assert!(stage2(true).iter().any(|m| m.fstype == "efivarfs"));
        // Nothing the plan mounts is executable-and-device-capable by accident.
        for m in early() {
            assert!(m.flags.contains(MountFlags::NOSUID), "{m:?}");
        }
    }
}
