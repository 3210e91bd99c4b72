//! The few system calls that need `unsafe`: device-mapper and ext4 ioctls. Everything else
//! goes through rustix/nix safe wrappers. Each block states the invariant it relies on.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// How to leave the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootKind {
    Reboot,
    PowerOff,
}

/// Flush all filesystems.
pub fn sync() {
    nix::unistd::sync();
}

/// reboot(2). Only returns if the kernel refused (not PID 1, or no privilege).
pub fn reboot(kind: RebootKind) {
    use nix::sys::reboot::{reboot, RebootMode};
    let mode = match kind {
        RebootKind::Reboot => RebootMode::RB_AUTOBOOT,
        RebootKind::PowerOff => RebootMode::RB_POWER_OFF,
    };
    let _ = reboot(mode);
}

// --- device-mapper (linux/dm-ioctl.h) -------------------------------------------------

const DM_IOCTL_SIZE: usize = 312; // sizeof(struct dm_ioctl)
const DM_TARGET_SPEC_SIZE: usize = 40; // sizeof(struct dm_target_spec)
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;
const DM_BUF_SIZE: usize = 16 * 1024;

/// A `struct dm_ioctl` header followed by its payload, 8-byte aligned.
struct DmBuf {
    words: Vec<u64>,
}

impl DmBuf {
    fn new(name: &str, uuid: &str) -> io::Result<Self> {
        if name.len() >= DM_NAME_LEN || uuid.len() >= DM_UUID_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device-mapper name or uuid too long",
            ));
        }
        let mut b = DmBuf {
            words: vec![0u64; DM_BUF_SIZE / 8],
        };
        let bytes = b.bytes_mut();
        // version 4.0.0: the kernel accepts any 4.x and reports its own back.
        bytes[0..4].copy_from_slice(&4u32.to_ne_bytes());
        bytes[12..16].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_size
        bytes[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
        bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
        bytes[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes());
        Ok(b)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.words.len() * 8;
        // SAFETY: a Vec<u64> of n elements is n*8 initialized bytes; u8 has no alignment or
        // validity requirements, and the borrow of `self` keeps the storage alive and unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        self.bytes_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn dev(&mut self) -> u64 {
        let b = self.bytes_mut();
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[40..48]);
        u64::from_ne_bytes(a)
    }

    /// Append one target spec + parameter string after the header.
    fn set_target(&mut self, len_sectors: u64, ttype: &str, params: &str) -> io::Result<()> {
        let spec_end = DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE;
        let total = (spec_end + params.len() + 1).next_multiple_of(8);
        if total > DM_BUF_SIZE || ttype.len() >= 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device-mapper table too long",
            ));
        }
        let b = self.bytes_mut();
        let s = DM_IOCTL_SIZE;
        b[s..s + 8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
        b[s + 8..s + 16].copy_from_slice(&len_sectors.to_ne_bytes()); // length
        b[s + 24..s + 24 + ttype.len()].copy_from_slice(ttype.as_bytes());
        b[spec_end..spec_end + params.len()].copy_from_slice(params.as_bytes());
        self.set_u32(12, total as u32); // data_size
        self.set_u32(20, 1); // target_count
        Ok(())
    }

    fn ioctl(&mut self, ctl: &File, cmd: u8) -> io::Result<()> {
        let req = nix::request_code_readwrite!(0xfd, cmd, DM_IOCTL_SIZE);
        // SAFETY: the buffer is DM_BUF_SIZE bytes, 8-byte aligned, starts with a valid
        // `struct dm_ioctl` whose data_size never exceeds the buffer, and stays alive for the
        // whole call; the kernel writes back at most data_size bytes.
        let r = unsafe {
            nix::libc::ioctl(
                ctl.as_raw_fd(),
                req as _,
                self.words.as_mut_ptr().cast::<u8>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Create and activate a read-only device-mapper device with a single target.
/// Returns the minor number: the node is `/dev/dm-<minor>` (devtmpfs creates it).
pub fn dm_create(
    name: &str,
    uuid: &str,
    len_sectors: u64,
    ttype: &str,
    params: &str,
) -> io::Result<u32> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")?;
    let mut create = DmBuf::new(name, uuid)?;
    create.ioctl(&ctl, DM_DEV_CREATE_CMD)?;
    let dev = create.dev();
    let loaded = (|| {
        let mut load = DmBuf::new(name, "")?;
        load.set_u32(28, DM_READONLY_FLAG);
        load.set_target(len_sectors, ttype, params)?;
        load.ioctl(&ctl, DM_TABLE_LOAD_CMD)?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
        let mut resume = DmBuf::new(name, "")?;
        resume.ioctl(&ctl, DM_DEV_SUSPEND_CMD)
    })();
    if let Err(e) = loaded {
        if let Ok(mut rm) = DmBuf::new(name, "") {
            let _ = rm.ioctl(&ctl, DM_DEV_REMOVE_CMD);
        }
        return Err(e);
    }
    // huge_encode_dev(): minor bits 0-7 and 20-31, major bits 8-19.
    Ok(((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32)
}

// --- ext4 ------------------------------------------------------------------------------

nix::ioctl_write_ptr!(ext4_ioc_resize_fs, b'f', 16, u64);

/// Grow a mounted ext4 filesystem online to `blocks` filesystem blocks.
pub fn ext4_resize(mountpoint: &std::path::Path, blocks: u64) -> io::Result<()> {
    let dir = File::open(mountpoint)?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 through the pointer, which points at a live
    // local for the duration of the call; the fd is an open directory on the filesystem.
    unsafe { ext4_ioc_resize_fs(dir.as_raw_fd(), &blocks) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Size of a block device in bytes (BLKGETSIZE64).
pub fn block_size_bytes(dev: &std::path::Path) -> io::Result<u64> {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let f = File::open(dev)?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, a live local; fd is open.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(size)
}

// --- partitions (linux/blkpg.h) ----------------------------------------------------------

/// BLKPG operations.
#[derive(Debug, Clone, Copy)]
pub enum BlkpgOp {
    Add = 1,
    Resize = 3,
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

/// Tell the kernel about a partition added or resized in the table of `disk` (works while
/// other partitions of the disk are in use, unlike BLKRRPART). Offsets in bytes.
pub fn blkpg(
    disk: &std::path::Path,
    op: BlkpgOp,
    pno: u32,
    start: u64,
    len: u64,
) -> io::Result<()> {
    let f = File::open(disk)?;
    let mut part = BlkpgPartition {
        start: start as i64,
        length: len as i64,
        pno: pno as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: op as i32,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    let req = nix::request_code_none!(0x12, 105);
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` whose `data` points at a
    // `struct blkpg_partition` of `datalen` bytes; both are #[repr(C)] locals with the
    // kernel's layout that outlive the call, and the fd is an open block device.
    let r = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, &mut arg as *mut BlkpgIoctlArg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Make a child start with the default signal state: PID 1 blocks every signal (it reads
/// them from a signalfd) and ignores SIGPIPE, and a child inherits both across exec.
pub fn default_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls (rt_sigprocmask and rt_sigaction); it allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            signal(Signal::SIGPIPE, SigHandler::SigDfl)?;
            Ok(())
        });
    }
}
