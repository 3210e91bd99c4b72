//! Safe, streaming layer unpacker: one directory per layer, ready for overlayfs stacking.
//!
//! Whiteouts become overlayfs markers inside the layer's own directory, so they only act
//! on lower layers when stacked: `.wh.NAME` becomes a 0:0 character device `NAME`, and
//! `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
//!
//! Safety: every entry path is checked component by component. `..` and absolute paths
//! are refused, no parent component may be a symlink (so a symlink planted by an earlier
//! entry can never redirect a later write), hardlink targets must be inside the layer,
//! and device nodes follow [`DevicePolicy`]. The layer directory is expected to be a
//! fresh private directory that only this unpacker writes to.
//!
//! Resources: a layer is hostile input, and its compressed size (checked against the
//! manifest while downloading) says little about what it expands to. [`UnpackLimits`]
//! caps the decompressed tar stream, the number of entries, and the metadata the tar
//! reader holds in memory for one entry (GNU long names, PAX records, sparse maps, all
//! read whole by the `tar` crate). Path length and depth are bounded by the kernel
//! (every operation goes through a full path: `ENAMETOOLONG` past `PATH_MAX`, 4096
//! bytes, or `NAME_MAX`, 255 bytes, per component), hardlink counts by the filesystem
//! (`EMLINK`); both fail as [`UnpackError::Io`].

use crate::manifest::Compression;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags, CWD};
use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Errors of this module. Each names the tar entry involved.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive itself is malformed or truncated.
    #[error("layer archive is malformed or truncated")]
    Archive(#[source] io::Error),
    /// An entry tries to leave the layer directory.
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe {
        /// Entry path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A device node where the policy forbids them.
    #[error("layer entry {entry:?} is a device node, which this unpack does not allow")]
    Device {
        /// Entry path.
        entry: String,
    },
    /// An entry type we cannot represent (e.g. GNU sparse files).
    #[error("layer entry {entry:?} has an unsupported type ({kind})")]
    Unsupported {
        /// Entry path.
        entry: String,
        /// Its tar type.
        kind: String,
    },
    /// The layer is larger than an [`UnpackLimits`] allows; unpacking stopped there.
    #[error("layer is over the limit of {limit} {kind} (stopped at {reached})")]
    Limit {
        /// Which limit.
        kind: LimitKind,
        /// The limit.
        limit: u64,
        /// What was reached when unpacking stopped (the first value over the limit).
        reached: u64,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What to do with character and block devices in a layer (FIFOs are always allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Skip them with a warning (default: containers get devices from the runtime).
    #[default]
    Skip,
    /// Fail the unpack.
    Deny,
    /// Create them (trusted system images only).
    Allow,
}

/// Which [`UnpackLimits`] a layer went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// [`UnpackLimits::max_bytes`].
    Bytes,
    /// [`UnpackLimits::max_entries`].
    Entries,
    /// [`UnpackLimits::max_header_bytes`].
    HeaderBytes,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bytes => "decompressed bytes",
            Self::Entries => "tar entries",
            Self::HeaderBytes => "header bytes for one entry",
        })
    }
}

/// Resource caps for one layer. A layer over any of them fails with
/// [`UnpackError::Limit`] as soon as it crosses it, without reading further.
///
/// The defaults are far above real images (a full distribution base layer is a few
/// hundred MiB and some tens of thousands of entries) and only stop bombs: containerd
/// and podman (containers/storage) put no cap on the decompressed size or entry count
/// of a classic tar layer at all, and bound it only by the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of the decompressed tar stream (headers and padding included: what the
    /// layer's diff_id hashes). Default 8 GiB.
    pub max_bytes: u64,
    /// Tar entries (files, directories, links, whiteouts, devices, each counted once).
    /// Default 1,000,000.
    pub max_entries: u64,
    /// Bytes read for one entry before its data: its headers plus any GNU long name /
    /// long link and PAX records, which the tar reader keeps in memory. Default 1 MiB
    /// (a path is at most 4 KiB, an xattr value 64 KiB).
    pub max_header_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
            max_header_bytes: 1 << 20,
        }
    }
}

/// Unpack options.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Apply the archive's uid/gid (needs root; default: when running as root).
    pub same_owner: bool,
    /// Device node policy.
    pub devices: DevicePolicy,
    /// Apply xattrs from PAX headers (`trusted.overlay.*` ones are always dropped).
    pub xattrs: bool,
    /// Resource caps.
    pub limits: UnpackLimits,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        Self {
            same_owner: root,
            devices: DevicePolicy::default(),
            xattrs: true,
            limits: UnpackLimits::default(),
        }
    }
}

/// What an unpack produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries created.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts turned into overlay markers.
    pub whiteouts: u64,
}

const OPAQUE: &str = ".wh..wh..opq";
const WH_PREFIX: &str = ".wh.";

/// Decompress `reader` with `compression` and unpack the tar stream into `dest`
/// (an existing, empty directory). `reader` is borrowed so the caller can drain what
/// follows the tar end (for digest checks).
pub fn unpack<R: Read>(
    reader: &mut R,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let buffered = io::BufReader::with_capacity(256 << 10, reader);
    match compression {
        Compression::None => unpack_tar(buffered, dest, opts),
        Compression::Gzip => unpack_tar(flate2::bufread::MultiGzDecoder::new(buffered), dest, opts),
        Compression::Zstd => {
            let dec =
                zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Archive)?;
            unpack_tar(dec, dest, opts)
        }
    }
}

/// Guess the compression from the first bytes (gzip and zstd magic numbers).
pub fn detect_compression(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let limits = opts.limits;
    let budget = Rc::new(Budget::new(limits));
    let mut archive = tar::Archive::new(Metered {
        inner: reader,
        budget: budget.clone(),
    });
    let mut u = Unpacker {
        root: dest.to_path_buf(),
        opts: opts.clone(),
        dirs: HashSet::new(),
        seen: HashSet::new(),
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
        buf: vec![0u8; 256 << 10],
    };
    // A read refused by the meter surfaces as whatever the tar reader made of it: the
    // limit it crossed is the real cause.
    u.entries(&mut archive, &budget, limits.max_entries)
        .map_err(|e| budget.hit.take().unwrap_or(e))?;
    // Directory mtimes last: creating children changes them.
    for (path, ts) in u.dir_times.iter().rev() {
        set_times(path, *ts).map_err(|source| UnpackError::Io {
            op: "set the mtime of",
            path: path.clone(),
            source,
        })?;
    }
    Ok(u.stats)
}

/// What the tar reader has consumed, shared between the [`Metered`] reader under it
/// and the entry loop above it (which says where entry headers start and end).
struct Budget {
    limits: UnpackLimits,
    /// Decompressed bytes read so far.
    read: Cell<u64>,
    /// Where the current entry's headers began, while the reader is in them (the
    /// tar crate reads long names and PAX records whole into memory there).
    header_start: Cell<Option<u64>>,
    /// The limit crossed, once one is.
    hit: Cell<Option<UnpackError>>,
}

impl Budget {
    fn new(limits: UnpackLimits) -> Self {
        Self {
            limits,
            read: Cell::new(0),
            header_start: Cell::new(Some(0)),
            hit: Cell::new(None),
        }
    }
}

/// Counts the decompressed stream and refuses to read past a limit (it reads at most
/// one byte over, to tell a stream that ends exactly at the limit from a longer one).
struct Metered<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &*self.budget;
        let pos = b.read.get();
        let max = b.limits.max_bytes;
        let header_end = b
            .header_start
            .get()
            .map_or(u64::MAX, |s| s.saturating_add(b.limits.max_header_bytes));
        let stop = max.min(header_end);
        let room = stop.saturating_sub(pos).saturating_add(1);
        let want = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        let now = pos + n as u64;
        b.read.set(now);
        if now <= stop {
            return Ok(n);
        }
        let hit = if now > max {
            UnpackError::Limit {
                kind: LimitKind::Bytes,
                limit: max,
                reached: now,
            }
        } else {
            UnpackError::Limit {
                kind: LimitKind::HeaderBytes,
                limit: b.limits.max_header_bytes,
                reached: now - b.header_start.get().unwrap_or(0),
            }
        };
        let msg = hit.to_string();
        b.hit.set(Some(hit));
        Err(io::Error::other(msg))
    }
}

struct Unpacker {
    root: PathBuf,
    opts: UnpackOptions,
    /// Relative paths already known to be real directories (not symlinks).
    dirs: HashSet<PathBuf>,
    /// Relative paths this unpack created (the layer starts empty, so nothing else exists).
    seen: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, (i64, i64))>,
    stats: UnpackStats,
    buf: Vec<u8>,
}

/// Split an archive path into safe components: no `..`, not absolute.
fn clean(raw: &[u8], entry: &str) -> Result<Vec<PathBuf>, UnpackError> {
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::Unsafe {
            entry: entry.to_string(),
            reason: "absolute path",
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Unsafe {
                    entry: entry.to_string(),
                    reason: "path contains `..`",
                })
            }
            c => out.push(PathBuf::from(OsStr::from_bytes(c))),
        }
    }
    Ok(out)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Unpacker {
    fn entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<Metered<R>>,
        budget: &Budget,
        max_entries: u64,
    ) -> Result<(), UnpackError> {
        let mut count = 0u64;
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            budget.header_start.set(None);
            count += 1;
            if count > max_entries {
                return Err(UnpackError::Limit {
                    kind: LimitKind::Entries,
                    limit: max_entries,
                    reached: count,
                });
            }
            self.entry(&mut entry)?;
            // Data nobody read (non-file entries may carry some) counts as this entry's
            // data, not as header bytes of the next one.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Archive)?;
            budget.header_start.set(Some(budget.read.get()));
        }
        Ok(())
    }

    /// Make sure every component of `rel` is a real directory inside the root, creating
    /// missing ones (0755). Refuses to go through symlinks or non-directories.
    fn ensure_dir(&mut self, rel: &Path, entry: &str, create: bool) -> Result<(), UnpackError> {
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if self.dirs.contains(&cur) {
                continue;
            }
            let full = self.root.join(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::Unsafe {
                        entry: entry.to_string(),
                        reason: "a parent directory is a symlink",
                    })
                }
                Ok(_) => {
                    return Err(UnpackError::Unsafe {
                        entry: entry.to_string(),
                        reason: "a parent component is not a directory",
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&full).map_err(io_err("create directory", &full))?;
                }
                Err(e) => return Err(io_err("inspect", &full)(e)),
            }
            self.dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Remove whatever is at `rel` (unless `keep_dir` and it is a directory).
    /// Returns true when a directory was kept.
    fn clear(&mut self, rel: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
        if !self.seen.contains(rel) && !self.dirs.contains(rel) {
            return Ok(false); // never created here: nothing to remove (saves a stat per entry)
        }
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(&full).map_err(io_err("remove", &full))?;
                self.dirs.retain(|d| !d.starts_with(rel));
                self.seen.retain(|d| !d.starts_with(rel));
            }
            Ok(_) => fs::remove_file(&full).map_err(io_err("remove", &full))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &full)(e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let parts = clean(&raw, &name)?;
        let kind = e.header().entry_type();
        let Some((last, parents)) = parts.split_last() else {
            // The layer root itself ("./"): keep our own directory's attributes.
            return Ok(());
        };
        let parent: PathBuf = parents.iter().collect();
        let rel = parent.join(last);
        let last_s = last.as_os_str().as_bytes();

        // Whiteouts.
        if last_s == OPAQUE.as_bytes() {
            self.ensure_dir(&parent, &name, true)?;
            let dir = self.root.join(&parent);
            rustix::fs::lsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| io_err("mark opaque", &dir)(e.into()))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(target) = last_s.strip_prefix(WH_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(UnpackError::Unsafe {
                    entry: name,
                    reason: "malformed whiteout name",
                });
            }
            self.ensure_dir(&parent, &name, true)?;
            let wrel = parent.join(OsStr::from_bytes(target));
            let full = self.root.join(&wrel);
            if self.seen.contains(&wrel) || self.dirs.contains(&wrel) {
                // The same layer also creates NAME: whiteouts apply to lower layers only.
                return Ok(());
            }
            rustix::fs::mknodat(
                CWD,
                &full,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| io_err("create whiteout", &full)(e.into()))?;
            self.seen.insert(wrel);
            self.stats.whiteouts += 1;
            return Ok(());
        }

        self.ensure_dir(&parent, &name, true)?;
        let full = self.root.join(&rel);
        let header = e.header().clone();
        let mode = header.mode().map_err(UnpackError::Archive)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Archive)?;
        let gid = header.gid().map_err(UnpackError::Archive)?;
        let mtime = header.mtime().map_err(UnpackError::Archive)?;
        let xattrs = if self.opts.xattrs {
            pax_xattrs(e)?
        } else {
            Vec::new()
        };

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !self.clear(&rel, true)? {
                    fs::create_dir(&full).map_err(io_err("create directory", &full))?;
                }
                self.dirs.insert(rel.clone());
            }
            T::Regular | T::Continuous => {
                self.clear(&rel, false)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .mode(0o600)
                    .open(&full)
                    .map_err(io_err("create", &full))?;
                self.stats.bytes += copy(e, &mut f, &mut self.buf, &full)?;
                // Metadata through the open file: no further path lookups.
                if let Some((u, g)) = self.owner(uid, gid, &name)? {
                    rustix::fs::fchown(&f, Some(u), Some(g))
                        .map_err(|e| io_err("change the owner of", &full)(e.into()))?;
                }
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("set the mode of", &full))?;
                for (k, v) in xattrs.iter().filter(|(k, _)| !is_overlay_xattr(k)) {
                    let key = OsStr::from_bytes(k);
                    if let Err(err) = rustix::fs::fsetxattr(&f, key, v, XattrFlags::empty()) {
                        xattr_failed(err, &name, key, &full)?;
                    }
                }
                let t = rustix::fs::Timespec {
                    tv_sec: i64::try_from(mtime).unwrap_or(0),
                    tv_nsec: 0,
                };
                rustix::fs::futimens(
                    &f,
                    &Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                )
                .map_err(|e| io_err("set the mtime of", &full)(e.into()))?;
                self.seen.insert(rel);
                self.stats.entries += 1;
                return Ok(());
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::Unsafe {
                        entry: name.clone(),
                        reason: "symlink without a target",
                    })?
                    .into_owned();
                self.clear(&rel, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(io_err("create symlink", &full))?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let tparts = clean(&target, &name).map_err(|_| UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: "hardlink target outside the layer",
                })?;
                let Some((tlast, tparents)) = tparts.split_last() else {
                    return Err(UnpackError::Unsafe {
                        entry: name,
                        reason: "hardlink to the layer root",
                    });
                };
                let tparent: PathBuf = tparents.iter().collect();
                self.ensure_dir(&tparent, &name, false)
                    .map_err(|_| UnpackError::Unsafe {
                        entry: name.clone(),
                        reason: "hardlink target is not inside this layer",
                    })?;
                let tfull = self.root.join(&tparent).join(tlast);
                match fs::symlink_metadata(&tfull) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(UnpackError::Unsafe {
                            entry: name,
                            reason: "hardlink target is missing from this layer or is a directory",
                        })
                    }
                }
                if tfull == full {
                    return Ok(());
                }
                self.clear(&rel, false)?;
                fs::hard_link(&tfull, &full).map_err(io_err("create hardlink", &full))?;
                self.seen.insert(rel);
                // A hardlink shares the target's inode: its metadata is already set.
                self.stats.entries += 1;
                return Ok(());
            }
            T::Fifo | T::Char | T::Block => {
                let ft = match kind {
                    T::Fifo => FileType::Fifo,
                    T::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                if ft != FileType::Fifo {
                    match self.opts.devices {
                        DevicePolicy::Deny => return Err(UnpackError::Device { entry: name }),
                        DevicePolicy::Skip => {
                            tracing::warn!(entry = %name, "skipping device node in layer");
                            return Ok(());
                        }
                        DevicePolicy::Allow => {}
                    }
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                self.clear(&rel, false)?;
                rustix::fs::mknodat(
                    CWD,
                    &full,
                    ft,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| io_err("create device node", &full)(e.into()))?;
            }
            T::XGlobalHeader => return Ok(()),
            other => {
                return Err(UnpackError::Unsupported {
                    entry: name,
                    kind: format!("{other:?}"),
                })
            }
        }

        // Metadata: owner first (chown clears set-id bits), then mode, xattrs, times.
        let is_link = kind == T::Symlink;
        if let Some((u, g)) = self.owner(uid, gid, &name)? {
            rustix::fs::chownat(CWD, &full, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err("change the owner of", &full)(e.into()))?;
        }
        if !is_link {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", &full))?;
        }
        for (k, v) in xattrs.iter().filter(|(k, _)| !is_overlay_xattr(k)) {
            let key = OsStr::from_bytes(k);
            if let Err(err) = rustix::fs::lsetxattr(&full, key, v, XattrFlags::empty()) {
                xattr_failed(err, &name, key, &full)?;
            }
        }
        let ts = (i64::try_from(mtime).unwrap_or(0), 0);
        if kind == T::Directory {
            self.dir_times.push((full, ts));
        } else {
            set_times(&full, ts).map_err(io_err("set the mtime of", &full))?;
        }
        self.seen.insert(rel);
        self.stats.entries += 1;
        Ok(())
    }

    /// The owner to apply, when applying owners; ids that cannot be represented fail.
    fn owner(
        &self,
        uid: u64,
        gid: u64,
        name: &str,
    ) -> Result<Option<(rustix::fs::Uid, rustix::fs::Gid)>, UnpackError> {
        if !self.opts.same_owner {
            return Ok(None);
        }
        match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => Ok(Some((
                rustix::fs::Uid::from_raw(u),
                rustix::fs::Gid::from_raw(g),
            ))),
            _ => Err(UnpackError::Unsafe {
                entry: name.to_string(),
                reason: "uid or gid out of range",
            }),
        }
    }
}

/// overlayfs' own xattrs: a layer must never set them (fake opaque dirs, redirects).
fn is_overlay_xattr(k: &[u8]) -> bool {
    k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.")
}

/// Unsupported or forbidden xattrs are skipped with a warning; other failures are errors.
fn xattr_failed(
    err: rustix::io::Errno,
    name: &str,
    key: &OsStr,
    full: &Path,
) -> Result<(), UnpackError> {
    if err == rustix::io::Errno::PERM || err == rustix::io::Errno::NOTSUP {
        tracing::warn!(entry = %name, xattr = %key.to_string_lossy(), "xattr not applied: {err}");
        Ok(())
    } else {
        Err(io_err("set an xattr on", full)(err.into()))
    }
}

/// Extended attributes as (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn pax_xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Xattrs, UnpackError> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(UnpackError::Archive)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Archive)?;
            if let Some(k) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                if !k.is_empty() && !k.contains(&0) {
                    out.push((k.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

fn copy<R: Read>(
    src: &mut R,
    dst: &mut File,
    buf: &mut [u8],
    path: &Path,
) -> Result<u64, UnpackError> {
    let mut n = 0u64;
    loop {
        let k = match src.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Archive(e)),
        };
        dst.write_all(&buf[..k]).map_err(io_err("write", path))?;
        n += k as u64;
    }
}

fn set_times(path: &Path, (sec, nsec): (i64, i64)) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Build a tar in memory. Each item: (path, kind, data-or-link).
    pub(crate) fn tar_of(items: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in items {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_000_000);
            h.set_size(0);
            match kind {
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                }
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o750);
                }
                'l' => h.set_entry_type(tar::EntryType::Symlink),
                'h' => h.set_entry_type(tar::EntryType::Link),
                'c' => h.set_entry_type(tar::EntryType::Char),
                _ => unreachable!(),
            }
            // Write raw names so tests can craft `..` and absolute paths.
            let name = path.as_bytes();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            if matches!(kind, 'l' | 'h') {
                gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
            }
            h.set_cksum();
            let body: &[u8] = if *kind == 'f' { data.as_bytes() } else { &[] };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(items: &[(&str, char, &str)]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let data = tar_of(items);
        let r = unpack(
            &mut &data[..],
            Compression::None,
            &dest,
            &UnpackOptions::default(),
        );
        (dir, r)
    }

    fn only_layer(dir: &Path) {
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("layer")],
            "something escaped the layer dir"
        );
    }

    #[test]
    fn unpacks_files_dirs_links_and_metadata() {
        let (dir, r) = run(&[
            ("etc/", 'd', ""),
            ("etc/hostname", 'f', "berth\n"),
            ("etc/link", 'l', "hostname"),
            ("etc/hard", 'h', "etc/hostname"),
            ("usr/bin/tool", 'f', "#!/bin/sh\n"),
        ]);
        let s = r.unwrap();
        assert_eq!(s.entries, 5);
        let l = dir.path().join("layer");
        assert_eq!(
            fs::read_to_string(l.join("etc/hostname")).unwrap(),
            "berth\n"
        );
        assert_eq!(
            fs::read_link(l.join("etc/link")).unwrap(),
            Path::new("hostname")
        );
        let a = fs::metadata(l.join("etc/hostname")).unwrap();
        let b = fs::metadata(l.join("etc/hard")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o7777, 0o644);
        assert_eq!(a.mtime(), 1_000_000);
        let d = fs::metadata(l.join("etc")).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o750);
        assert_eq!(
            d.mtime(),
            1_000_000,
            "directory mtime restored after its children"
        );
        if rustix::process::geteuid().is_root() {
            assert_eq!((a.uid(), a.gid()), (1000, 1001));
        }
    }

    #[test]
    fn whiteouts_become_overlay_markers() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let (dir, r) = run(&[
            ("a/.wh..wh..opq", 'f', ""),
            ("a/keep", 'f', "x"),
            ("b/.wh.gone", 'f', ""),
            ("b/.wh.keep", 'f', ""),
            ("b/keep", 'f', "y"),
        ]);
        assert_eq!(r.unwrap().whiteouts, 3);
        let l = dir.path().join("layer");
        let m = fs::symlink_metadata(l.join("b/gone")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &m.file_type()
        ));
        assert_eq!(m.rdev(), 0);
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(l.join("a"), "trusted.overlay.opaque", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
        assert_eq!(fs::read_to_string(l.join("a/keep")).unwrap(), "x");
        // A whiteout for a name the same layer creates does not remove it.
        assert_eq!(fs::read_to_string(l.join("b/keep")).unwrap(), "y");
    }

    #[test]
    fn refuses_dotdot_absolute_symlink_and_hardlink_escapes() {
        let cases: &[&[(&str, char, &str)]] = &[
            &[("../evil", 'f', "x")],
            &[("a/../../evil", 'f', "x")],
            &[("/tmp/evil", 'f', "x")],
            &[("link", 'l', "/"), ("link/evil", 'f', "x")],
            &[("link", 'l', ".."), ("link/evil", 'f', "x")],
            &[("h", 'h', "../../etc/passwd")],
            &[("h", 'h', "/etc/passwd")],
            &[("l", 'l', "/etc"), ("h", 'h', "l/passwd")],
        ];
        for items in cases {
            let (dir, r) = run(items);
            let err = r.expect_err(&format!("{items:?} must fail"));
            assert!(
                matches!(err, UnpackError::Unsafe { .. }),
                "{items:?}: {err}"
            );
            only_layer(dir.path());
        }
    }

    #[test]
    fn device_policy() {
        let data = tar_of(&[("dev/null", 'c', "")]);
        let dir = tempfile::tempdir().unwrap();
        let deny = UnpackOptions {
            devices: DevicePolicy::Deny,
            ..Default::default()
        };
        let r = unpack(&mut &data[..], Compression::None, dir.path(), &deny);
        assert!(matches!(r, Err(UnpackError::Device { .. })));
        let dir = tempfile::tempdir().unwrap();
        unpack(
            &mut &data[..],
            Compression::None,
            dir.path(),
            &UnpackOptions::default(),
        )
        .unwrap();
        assert!(!dir.path().join("dev/null").exists());
    }

    #[test]
    fn gzip_and_zstd_and_truncation() {
        let data = tar_of(&[("f", 'f', "hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for (c, bytes) in [(Compression::Gzip, &gz), (Compression::Zstd, &zs)] {
            assert_eq!(detect_compression(bytes), c);
            let dir = tempfile::tempdir().unwrap();
            unpack(&mut &bytes[..], c, dir.path(), &UnpackOptions::default()).unwrap();
            assert_eq!(fs::read_to_string(dir.path().join("f")).unwrap(), "hello");
            let dir = tempfile::tempdir().unwrap();
            let cut = &bytes[..bytes.len() / 2];
            assert!(unpack(&mut &cut[..], c, dir.path(), &UnpackOptions::default()).is_err());
        }
    }

    fn gnu_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h
    }

    fn limited(max_bytes: u64, max_entries: u64, max_header_bytes: u64) -> UnpackOptions {
        UnpackOptions {
            limits: UnpackLimits {
                max_bytes,
                max_entries,
                max_header_bytes,
            },
            ..Default::default()
        }
    }

    #[test]
    fn decompressed_size_limit_is_exact() {
        let data = tar_of(&[("a", 'f', &"x".repeat(1000)), ("b", 'f', "y")]);
        // Read: header + 1024 (padded data), header + 512, the first end block.
        let read = 512 + 1024 + 512 + 512 + 512;
        assert_eq!(
            data.len() as u64,
            read + 512,
            "tar ends with two zero blocks"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        for (c, bytes) in [(Compression::None, &data), (Compression::Gzip, &gz)] {
            let dir = tempfile::tempdir().unwrap();
            let s = unpack(&mut &bytes[..], c, dir.path(), &limited(read, 10, 4096)).unwrap();
            assert_eq!(s.entries, 2);
            let dir = tempfile::tempdir().unwrap();
            let err =
                unpack(&mut &bytes[..], c, dir.path(), &limited(read - 1, 10, 4096)).unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::Limit {
                        kind: LimitKind::Bytes,
                        limit,
                        reached,
                    } if limit == read - 1 && reached == read
                ),
                "{c:?}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "layer is over the limit of {} decompressed bytes (stopped at {read})",
                    read - 1
                )
            );
        }
    }

    #[test]
    fn entry_count_limit() {
        let data = tar_of(&[("d/", 'd', ""), ("d/a", 'f', "1"), ("d/l", 'l', "a")]);
        let dir = tempfile::tempdir().unwrap();
        let s = unpack(
            &mut &data[..],
            Compression::None,
            dir.path(),
            &limited(1 << 20, 3, 4096),
        )
        .unwrap();
        assert_eq!(s.entries, 3);
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(
            &mut &data[..],
            Compression::None,
            dir.path(),
            &limited(1 << 20, 2, 4096),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer is over the limit of 2 tar entries (stopped at 3)"
        );
        assert!(
            !dir.path().join("d/l").exists(),
            "stops before the entry over the limit"
        );
    }

    /// A GNU long name is read whole into memory by the tar crate: the per-entry header
    /// cap stops it while it is read, before it can grow.
    #[test]
    fn huge_long_name_is_cut_off_while_read() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = gnu_header(tar::EntryType::Regular, 0o644, 0);
        let long = "a/".repeat(1 << 20) + "f"; // 2 MiB name
        b.append_data(&mut h, &long, &[][..]).unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(
            &mut &data[..],
            Compression::None,
            dir.path(),
            &UnpackOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Limit {
                    kind: LimitKind::HeaderBytes,
                    limit: 1048576,
                    reached: 1048577,
                }
            ),
            "{err:?}"
        );
    }

    /// Data carried by a non-file entry is entry data, not header bytes of the next one;
    /// long names under the cap go through.
    #[test]
    fn header_cap_counts_only_headers() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = gnu_header(tar::EntryType::Directory, 0o755, 200_000);
        b.append_data(&mut h, "d", &vec![0u8; 200_000][..]).unwrap();
        let mut h = gnu_header(tar::EntryType::Regular, 0o644, 2);
        let name = format!("d/{}", "n".repeat(250));
        b.append_data(&mut h, &name, &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = unpack(
            &mut &data[..],
            Compression::None,
            dir.path(),
            &limited(1 << 20, 10, 2048),
        )
        .unwrap();
        assert_eq!(s.entries, 2);
        assert_eq!(fs::read(dir.path().join(&name)).unwrap(), b"hi");
    }
}
