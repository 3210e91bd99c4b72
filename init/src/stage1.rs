//! Stage 1: the initramfs `/init`. Ends by exec'ing stage 2 on the real root.

use crate::cmdline::{self, BootArgs};
use crate::console::{self, phase};
use crate::{devices, disk, efi, ext4, modules, mounts, sys, verity};
use berth_api::{BootInfo, Phase};
use rustix::mount::MountFlags;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const SYSROOT: &str = "/sysroot";
const STAGE2: &str = "/usr/bin/init";
const STATE_LABEL: &str = disk::STATE_LABEL;
/// Empty ext4 filesystem (gzip) used to recreate a missing or destroyed state filesystem.
const STATE_TEMPLATE: &str = "/lib/berth/state.img.gz";

/// Stop the boot with a clear message, then reboot deliberately (so boot counting can fall
/// back to the other slot). Never returns.
pub fn fatal(msg: &str) -> ! {
    console::error(msg);
    console::line("berth: the boot cannot continue; rebooting in 10 s");
    std::thread::sleep(Duration::from_secs(10));
    sys::sync();
    sys::reboot(sys::RebootKind::Reboot);
    // reboot(2) only fails when we are not PID 1: nothing sensible is left to do.
    std::process::exit(1)
}

fn record(info: &mut BootInfo, name: &str) {
    let t = phase(name);
    info.phases.push(Phase {
        name: name.to_string(),
        t,
    });
}

/// Run stage 1. Never returns: it either execs stage 2 or reboots.
pub fn run() -> ! {
    for m in mounts::early() {
        if let Err(e) = mounts::mount(&m) {
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            if !matches!(e.cause.raw_os_error(), Some(16)) {
                fatal(&format!("{e}: {}", e.cause));
            }
        }
    }
    let mut info = BootInfo::default();
    record(&mut info, "stage1");
    info.kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let args = match cmdline::parse(&cmdline) {
        Ok(a) => a,
        Err(e) => fatal(&format!("bad kernel command line: {e}")),
    };
    info.slot = args.slot.as_str().to_string();

    let moddir = Path::new("/lib/modules").join(&info.kernel);
    let loaded = modules::load_all(&moddir);
    info.modules_loaded = loaded.loaded;
    for f in &loaded.failed {
        console::warn(&format!("module {f}"));
        info.warnings.push(format!("module {f}"));
    }
    record(&mut info, "modules");

    let root_label = args.slot.root_partlabel();
    let sys_block = Path::new("/sys/class/block");
    let loader_esp = loader_esp(&mut info);
    let boot = match devices::wait_for_boot_disk(
        sys_block,
        Path::new("/dev"),
        loader_esp.as_ref(),
        root_label,
        args.root_wait,
        Duration::from_secs(3),
        || {
            console::info(&format!(
                "waiting up to {} s for partition {root_label}{} (slow disks such as USB take \
                 a while); block devices so far: {}",
                args.root_wait.as_secs(),
                match &loader_esp {
                    Some(u) => format!(" on the disk holding the boot loader's ESP {u}"),
                    None => String::new(),
                },
                devices::describe_block_devices(sys_block)
            ))
        },
    ) {
        Ok(b) => b,
        Err(e) => fatal(&format!("slot {}: {e}", info.slot)),
    };
    if boot.source == devices::BootDiskSource::RootLabelLoaderEspMissing {
        let w = format!(
            "the ESP the boot loader started from ({}) is on no disk seen; took {} as the boot \
             disk, the only disk with {root_label}",
            loader_esp.map(|u| u.to_string()).unwrap_or_default(),
            boot.disk
        );
        console::warn(&w);
        info.warnings.push(w);
    }
    console::info(&format!(
        "boot disk {} ({}); every partition is taken from it",
        boot.disk,
        boot.source.as_str()
    ));
    info.boot_disk = boot.disk.clone();
    info.boot_disk_source = boot.source.as_str().to_string();
    let root = boot.root.clone();
    info.root_partition = root.dev.display().to_string();
    mount_root(&args, &root, &mut info);
    record(&mut info, "root");

    let (state_part, table_action) = state_partition(&boot.disk, &mut info);
    mount_state(state_part.as_ref(), &mut info);
    if let Some(a) = table_action {
        info.state_action = format!("{a}; {}", info.state_action);
    }
    record(&mut info, "state");

    let sysroot = Path::new(SYSROOT);
    // The plan mounts the /run tmpfs first; the overlay's dirs are created on it in between.
    let plan = mounts::run_and_etc(sysroot);
    if let Err(e) = mounts::mount(&plan[0]) {
        fatal(&format!("{e}: {}", e.cause));
    }
    for d in mounts::etc_overlay_dirs(sysroot) {
        if let Err(e) = std::fs::create_dir_all(&d) {
            fatal(&format!("cannot create {}: {e}", d.display()));
        }
    }
    if let Err(e) = mounts::mount(&plan[1]) {
        fatal(&format!("{e}: {}", e.cause));
    }
    record(&mut info, "switch-root");
    let boot_json = sysroot.join("run/berth/boot.json");
    if let Err(e) = write_file(&boot_json, info.to_json().as_bytes()) {
        console::warn(&format!("cannot write {}: {e}", boot_json.display()));
    }
    let e = switch_root(sysroot);
    fatal(&format!("switch to the real root failed: {e}"))
}

fn mount_root(args: &BootArgs, root: &devices::Partition, info: &mut BootInfo) {
    let part = root.dev.display().to_string();
    let source = match verity::root_source(args.verity.as_ref(), verity::ALLOW_UNVERIFIED_ROOT) {
        Ok(s) => s,
        Err(e) => fatal(&e.to_string()),
    };
    let dev = match source {
        verity::RootSource::Verified(v) => match verity::open(&part, args.slot.as_str(), v) {
            Ok(d) => {
                info.verity_root_hash = v.root_hash.clone();
                d
            }
            Err(e) => fatal(&format!(
                "cannot open dm-verity for the root of slot {} on {part}: {e}",
                info.slot
            )),
        },
        verity::RootSource::Unverified => {
            let w = "no berth.verity on the command line: the root is NOT verified \
                     (development build, feature dev-unverified-root)"
                .to_string();
            console::warn(&w);
            info.warnings.push(w);
            part.clone()
        }
    };
    let m = mounts::Mount {
        source: dev.clone(),
        target: SYSROOT.into(),
        fstype: "erofs".into(),
        flags: MountFlags::RDONLY,
        data: String::new(),
    };
    if let Err(e) = mounts::mount(&m) {
        fatal(&format!(
            "cannot mount the root of slot {} ({part} via {dev}): {}. The root image is \
             missing, corrupt, or does not match its verity root hash",
            info.slot, e.cause
        ));
    }
    info.root_device = dev;
    if !Path::new(SYSROOT)
        .join(STAGE2.trim_start_matches('/'))
        .exists()
    {
        fatal(&format!(
            "the root of slot {} has no {STAGE2}: not a Berth root image",
            info.slot
        ));
    }
}

/// The ESP's partition UUID from the boot loader (`LoaderDevicePartUUID`), reading the
/// variable through a short-lived read-only efivarfs mount (stage 2 mounts it for good).
/// `None` without UEFI or without the variable (a direct kernel boot).
fn loader_esp(info: &mut BootInfo) -> Option<uuid::Uuid> {
    if !Path::new("/sys/firmware/efi").exists() {
        return None;
    }
    let vars = Path::new(efi::EFIVARS);
    let m = mounts::Mount {
        source: "efivarfs".into(),
        target: vars.into(),
        fstype: "efivarfs".into(),
        flags: MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        data: String::new(),
    };
    let mounted = match mounts::mount(&m) {
        Ok(()) => true,
        // Already mounted (by the kernel or a previous attempt): read it where it is.
        Err(e) if e.cause.raw_os_error() == Some(16) => false,
        Err(e) => {
            let w = format!(
                "{e}: {}; the boot disk is chosen without the boot loader's help",
                e.cause
            );
            console::warn(&w);
            info.warnings.push(w);
            return None;
        }
    };
    let r = efi::loader_partuuid(vars);
    if mounted {
        if let Err(e) = rustix::mount::unmount(vars, rustix::mount::UnmountFlags::empty()) {
            console::warn(&format!("unmounting {}: {e}", vars.display()));
        }
    }
    match r {
        Ok(u) => u,
        Err(e) => {
            let w = format!("{e}; the boot disk is chosen without the boot loader's help");
            console::warn(&w);
            info.warnings.push(w);
            None
        }
    }
}

/// Find the state partition on the boot disk, recreating it when it is missing and
/// growing it to the end of the disk when there is room. Returns the partition and what
/// was done to the partition table. A `berth-state` on any other disk is never used.
fn state_partition(
    disk_name: &str,
    info: &mut BootInfo,
) -> (Option<devices::Partition>, Option<String>) {
    let sys_block = Path::new("/sys/class/block");
    let dev_root = Path::new("/dev");
    let existing = match devices::label_on_disk(sys_block, dev_root, disk_name, STATE_LABEL) {
        Ok(p) => p,
        Err(e) => {
            // Two on our own disk: a broken table, not another disk. Keep the first.
            let w = format!("{e}; using the first");
            console::warn(&w);
            info.warnings.push(w);
            devices::find_partition_on(sys_block, dev_root, Some(disk_name), STATE_LABEL)
        }
    };
    let disk_dev = Path::new("/dev").join(disk_name);
    let change = match disk::ensure_state(&disk_dev) {
        Ok(c) => c,
        Err(e) => {
            let w = format!("state partition table check on {}: {e}", disk_dev.display());
            console::warn(&w);
            info.warnings.push(w);
            return (existing, None);
        }
    };
    match change {
        None => (existing, None),
        Some(disk::Change::Grown {
            number,
            start,
            old_len,
            len,
        }) => {
            if let Err(e) = sys::blkpg(&disk_dev, sys::BlkpgOp::Resize, number, start, len) {
                console::warn(&format!("telling the kernel the state partition grew: {e}"));
            }
            let a = format!(
                "partition grown from {} to {} MiB",
                old_len >> 20,
                len >> 20
            );
            console::info(&format!("state: {a}"));
            (existing, Some(a))
        }
        Some(disk::Change::Created { number, start, len }) => {
            let w = format!(
                "state partition {STATE_LABEL} was missing from {}; created it as partition                  {number} ({} MiB)",
                disk_dev.display(),
                len >> 20
            );
            console::warn(&w);
            info.warnings.push(w);
            if let Err(e) = sys::blkpg(&disk_dev, sys::BlkpgOp::Add, number, start, len) {
                console::warn(&format!("telling the kernel about the new partition: {e}"));
            }
            // BLKPG carries no partition name: address the new partition by number.
            let name = devices::partition_name(disk_name, number);
            let dev = Path::new("/dev").join(&name);
            let start_wait = std::time::Instant::now();
            while !dev.exists() && start_wait.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            (
                Some(devices::Partition { name, dev, number }),
                Some("partition created".into()),
            )
        }
    }
}

fn mount_state(part: Option<&devices::Partition>, info: &mut BootInfo) {
    let var = Path::new(SYSROOT).join("var");
    let Some(part) = part else {
        let w = format!(
            "state partition {STATE_LABEL} not found: /var is a tmpfs for this boot and \
             nothing will persist. Restore the partition table or reinstall."
        );
        console::warn(&w);
        info.warnings.push(w);
        info.state_action = "missing; /var is temporary".into();
        tmpfs_var(&var);
        return;
    };
    info.state_partition = part.dev.display().to_string();
    let sb = match ext4::Superblock::read(&part.dev) {
        Ok(sb) => sb,
        Err(e) => {
            console::warn(&format!("cannot read {}: {e}", part.dev.display()));
            None
        }
    };
    let mut action = match &sb {
        Some(sb) => {
            info.state_was_clean = sb.clean();
            if sb.clean() {
                "mounted".to_string()
            } else {
                "mounted after an unclean shutdown (journal replayed)".to_string()
            }
        }
        None => {
            recreate_state(part, "it has no ext4 filesystem", info);
            "recreated (no filesystem was found)".to_string()
        }
    };
    if let Err(e) = mount_ext4(&part.dev, &var) {
        if sb.is_some() {
            recreate_state(part, &format!("mounting it failed ({})", e.cause), info);
            action = format!("recreated (mount failed: {})", e.cause);
            if let Err(e) = mount_ext4(&part.dev, &var) {
                let w = format!("state partition unusable even after recreating it: {e}");
                console::warn(&w);
                info.warnings.push(w);
                tmpfs_var(&var);
                info.state_action = "unusable; /var is temporary".into();
                return;
            }
        } else {
            let w = format!("recreated state partition does not mount: {}", e.cause);
            console::warn(&w);
            info.warnings.push(w);
            tmpfs_var(&var);
            info.state_action = "unusable; /var is temporary".into();
            return;
        }
    }
    if let Some(grown) = grow_state(&part.dev, &var) {
        action = format!("{action}, grown to {grown} MiB");
    }
    info.state_action = action;
}

fn mount_ext4(dev: &Path, target: &Path) -> Result<(), mounts::MountError> {
    mounts::mount(&mounts::Mount {
        source: dev.display().to_string(),
        target: target.into(),
        fstype: "ext4".into(),
        flags: MountFlags::NOATIME,
        data: String::new(),
    })
}

fn tmpfs_var(var: &Path) {
    let m = mounts::Mount {
        source: "tmpfs".into(),
        target: var.into(),
        fstype: "tmpfs".into(),
        flags: MountFlags::NOSUID | MountFlags::NODEV,
        data: "mode=0755".into(),
    };
    if let Err(e) = mounts::mount(&m) {
        fatal(&format!("cannot even mount a tmpfs on /var: {e}"));
    }
}

/// Write the empty-filesystem template over the start of the partition.
fn recreate_state(part: &devices::Partition, why: &str, info: &mut BootInfo) {
    let w = format!(
        "state partition {} is unusable ({why}); recreating an empty /var on it",
        part.dev.display()
    );
    console::warn(&w);
    info.warnings.push(w);
    let res = (|| -> std::io::Result<u64> {
        let tpl = std::fs::File::open(STATE_TEMPLATE)?;
        let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::new(tpl));
        let mut dev = std::fs::OpenOptions::new().write(true).open(&part.dev)?;
        let n = std::io::copy(&mut gz, &mut dev)?;
        dev.sync_all()?;
        Ok(n)
    })();
    if let Err(e) = res {
        console::warn(&format!(
            "writing a new state filesystem to {} failed: {e}",
            part.dev.display()
        ));
    }
}

/// Grow the filesystem to fill its partition (first boot, or after the partition grew).
/// Returns the new size in MiB when it grew.
fn grow_state(dev: &Path, var: &Path) -> Option<u64> {
    let sb = ext4::Superblock::read(dev).ok()??;
    let size = sys::block_size_bytes(dev).ok()?;
    let want = size / sb.block_size;
    // Leave small differences alone (alignment), grow when at least 1 MiB is unused.
    if want <= sb.blocks_count || (want - sb.blocks_count) * sb.block_size < (1 << 20) {
        return None;
    }
    match sys::ext4_resize(var, want) {
        Ok(()) => Some((want * sb.block_size) >> 20),
        Err(e) => {
            console::warn(&format!("growing the state filesystem failed: {e}"));
            None
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Move the API filesystems into the new root, free the initramfs, make the new root `/`
/// and exec stage 2. Only returns on failure.
fn switch_root(new_root: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    for api in ["dev", "proc", "sys"] {
        if let Err(e) = rustix::mount::mount_move(Path::new("/").join(api), new_root.join(api)) {
            return std::io::Error::other(format!("moving /{api}: {e}"));
        }
    }
    free_initramfs(new_root);
    let r = (|| -> std::io::Result<()> {
        std::env::set_current_dir(new_root)?;
        rustix::mount::mount_move(".", "/")?;
        std::os::unix::fs::chroot(".")?;
        std::env::set_current_dir("/")
    })();
    if let Err(e) = r {
        return e;
    }
    std::process::Command::new(STAGE2).exec()
}

/// Delete the initramfs contents (they live in RAM), without crossing into other mounts.
fn free_initramfs(keep: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root_dev) = std::fs::metadata("/").map(|m| m.dev()) else {
        return;
    };
    fn rm(dir: &Path, dev: u64, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p == keep {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                rm(&p, dev, keep);
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    rm(Path::new("/"), root_dev, keep);
}
