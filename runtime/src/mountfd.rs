//! Mounts made by file descriptor, so a container cannot redirect them with
//! symlinks (the CVE-2021-30465 family).
//!
//! Stage 2 sets up the container's mounts before `pivot_root`, in a mount
//! namespace that still sees the host. Resolving a destination by path and
//! then mounting on that path leaves a window in which the container (or a
//! second container sharing a volume) can replace a directory with a symlink
//! to a host path. Here every path is resolved once, into a file descriptor,
//! and the mount acts on that descriptor:
//!
//! * A bind **source** is the operator's path: it is opened with
//!   `openat2(RESOLVE_NO_SYMLINKS)` and a symlink anywhere in it is refused
//!   ([`MountFdError::SourceSymlink`]).
//! * A **destination** is resolved inside the rootfs as if the rootfs were
//!   `/` ([`open_in_root`]): `openat2(RESOLVE_IN_ROOT)` when everything
//!   exists, else one component at a time through directory fds with
//!   `O_NOFOLLOW`, resolving symlinks by hand against the rootfs and creating
//!   missing directories (and the final file for a file bind) as it goes.
//! * A bind mount is `open_tree(OPEN_TREE_CLONE)` of the source fd plus
//!   `move_mount` onto the destination fd; the tree fd then *is* the new
//!   mount, and remounts and propagation changes go through its
//!   `/proc/self/fd/N`. Other filesystems are mounted with `mount(2)` on the
//!   destination's `/proc/self/fd/N` (as runc does): the kernel resolves that
//!   magic link to exactly the opened directory. When `open_tree` is missing
//!   (Linux < 5.2) binds take the same `mount(2)` path.
//!
//! After a `mount(2)` the new mount is reopened through the destination's
//! parent fd and checked to be a different mount than the directory it
//! covers, so later remounts act on the mount just made or fail.

use nix::mount::MsFlags;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one destination (Linux's
/// `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Most times a missing component is created and looked up again (a
/// container deleting it in a loop must not keep us here forever).
const MAX_CREATES: usize = 256;

/// A failed step of a mount by file descriptor.
#[derive(Debug, thiserror::Error)]
pub enum MountFdError {
    #[error(
        "bind source {path} contains a symbolic link; give the path it points to (a link \
         could be swapped while the mount is made)"
    )]
    SourceSymlink { path: PathBuf },
    #[error("opening bind source {path}")]
    OpenSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening the rootfs {path}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dest} is the container's root directory; nothing can be mounted over it")]
    RootDestination { dest: PathBuf },
    #[error("resolving {dest} in the rootfs (at {at})")]
    Resolve {
        dest: PathBuf,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {at} in the rootfs for {dest}")]
    Create {
        dest: PathBuf,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolving {dest} in the rootfs: more than {MAX_LINKS} symbolic links")]
    TooManyLinks { dest: PathBuf },
    #[error("resolving {dest} in the rootfs: {at} keeps disappearing while it is created")]
    Unstable { dest: PathBuf, at: PathBuf },
    #[error("cloning the mount of {path}")]
    OpenTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching the mount on {dest}")]
    MoveMount {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {what} on {dest}")]
    Mount {
        what: String,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reopening the new mount on {dest}")]
    Reopen {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the mount on {dest} was replaced while it was made")]
    Replaced { dest: PathBuf },
    #[error("remounting {dest}")]
    Remount {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("changing the propagation of {dest}")]
    Propagation {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl MountFdError {
    /// The errno of a failed `mount(2)`, so callers can choose a fallback.
    pub fn mount_errno(&self) -> Option<i32> {
        match self {
            MountFdError::Mount { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl From<MountFdError> for io::Error {
    fn from(e: MountFdError) -> io::Error {
        io::Error::other(e)
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `/proc/self/fd/N` for `fd`: a path the kernel resolves to exactly the
/// file the descriptor refers to, without looking at names again.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens the (operator-given) rootfs directory as an `O_PATH` fd.
pub fn open_root(path: &Path) -> Result<OwnedFd, MountFdError> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| MountFdError::OpenRoot {
        path: path.to_path_buf(),
        source: errno(e),
    })
}

/// Opens a bind source as an `O_PATH` fd, refusing any symlink in the path.
pub fn open_source(path: &Path) -> Result<OwnedFd, MountFdError> {
    let how = OFlags::PATH | OFlags::CLOEXEC;
    match rustix::fs::openat2(CWD, path, how, Mode::empty(), ResolveFlags::NO_SYMLINKS) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP) => Err(MountFdError::SourceSymlink {
            path: path.to_path_buf(),
        }),
        // No openat2 (Linux < 5.6): the same check by hand.
        Err(Errno::NOSYS) => open_source_by_components(path),
        Err(e) => Err(MountFdError::OpenSource {
            path: path.to_path_buf(),
            source: errno(e),
        }),
    }
}

/// [`open_source`] without `openat2`: one `O_NOFOLLOW` open per component.
fn open_source_by_components(path: &Path) -> Result<OwnedFd, MountFdError> {
    let fail = |e: Errno| MountFdError::OpenSource {
        path: path.to_path_buf(),
        source: errno(e),
    };
    let how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let start = if path.is_absolute() { "/" } else { "." };
    let mut cur = rustix::fs::open(start, how, Mode::empty()).map_err(fail)?;
    for c in path.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::ParentDir => "..".as_ref(),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        let next = rustix::fs::openat(&cur, name, how, Mode::empty()).map_err(fail)?;
        if file_type(next.as_fd()).map_err(fail)? == FileType::Symlink {
            return Err(MountFdError::SourceSymlink {
                path: path.to_path_buf(),
            });
        }
        cur = next;
    }
    Ok(cur)
}

fn file_type(fd: BorrowedFd<'_>) -> Result<FileType, Errno> {
    rustix::fs::fstat(fd).map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Whether `fd` is a directory.
pub fn is_dir(fd: BorrowedFd<'_>, path: &Path) -> Result<bool, MountFdError> {
    file_type(fd)
        .map(|t| t == FileType::Directory)
        .map_err(|e| MountFdError::OpenSource {
            path: path.to_path_buf(),
            source: errno(e),
        })
}

/// What to create when the last component of a destination is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Dir,
    File,
}

/// A destination opened inside the rootfs.
#[derive(Debug)]
pub struct Target {
    /// The directory holding it (for reopening after a `mount(2)`).
    parent: OwnedFd,
    /// Its name in `parent`.
    name: OsString,
    /// `O_PATH` fd of the destination itself.
    fd: OwnedFd,
    /// The destination as the spec gave it (for messages).
    dest: PathBuf,
}

impl Target {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The parts of a container path, `..` kept (resolved against the walk).
fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Opens `dest` (a path in the container) below `root` as if `root` were `/`:
/// symlinks, absolute or relative, never lead out of it. Missing components
/// are created: directories, and for the last one a directory or an empty
/// file (mode 0644 before the umask) as `create` says.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    dest: &Path,
    create: Create,
) -> Result<Target, MountFdError> {
    let parts = parts(dest);
    if parts.is_empty() {
        return Err(MountFdError::RootDestination {
            dest: dest.to_path_buf(),
        });
    }
    if let Some(t) = open_existing(root, dest, &parts) {
        return Ok(t);
    }
    walk(root, dest, parts, create)
}

/// The common case, all in the kernel: the parent resolved with
/// `openat2(RESOLVE_IN_ROOT)`, the last component opened without following
/// it. `None` when anything is missing, the last component is a symlink or
/// `..`, or `openat2` is not available: [`walk`] handles those.
fn open_existing(root: BorrowedFd<'_>, dest: &Path, parts: &[OsString]) -> Option<Target> {
    let (name, dirs) = parts.split_last()?;
    if name == ".." {
        return None;
    }
    let parent_path: PathBuf = if dirs.is_empty() {
        PathBuf::from(".")
    } else {
        dirs.iter().collect()
    };
    let parent = rustix::fs::openat2(
        root,
        &parent_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&parent, name.as_os_str(), how, Mode::empty()).ok()?;
    if file_type(fd.as_fd()).ok()? == FileType::Symlink {
        return None;
    }
    Some(Target {
        parent,
        name: name.clone(),
        fd,
        dest: dest.to_path_buf(),
    })
}

/// Resolves `dest` one component at a time through directory fds, never
/// following a symlink in the kernel: a symlink's target is pushed back onto
/// the path and walked from the rootfs (absolute) or the current directory
/// (relative); `..` pops the walked directories, stopping at the rootfs.
fn walk(
    root: BorrowedFd<'_>,
    dest: &Path,
    parts: Vec<OsString>,
    create: Create,
) -> Result<Target, MountFdError> {
    let how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The directories walked below the root, and their names (messages).
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut at = PathBuf::from("/");
    let mut todo: Vec<OsString> = parts.into_iter().rev().collect();
    let (mut links, mut creates) = (0, 0);
    let resolve_err = |at: &Path, e: Errno| MountFdError::Resolve {
        dest: dest.to_path_buf(),
        at: at.to_path_buf(),
        source: errno(e),
    };
    while let Some(part) = todo.pop() {
        if part == ".." {
            stack.pop();
            at.pop();
            continue;
        }
        let last = todo.is_empty();
        let cur = stack.last().map(AsFd::as_fd).unwrap_or(root);
        let here = at.join(&part);
        let fd = match rustix::fs::openat(cur, part.as_os_str(), how, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                creates += 1;
                if creates > MAX_CREATES {
                    return Err(MountFdError::Unstable {
                        dest: dest.to_path_buf(),
                        at: here,
                    });
                }
                create_one(cur, &part, last && create == Create::File).map_err(|e| {
                    MountFdError::Create {
                        dest: dest.to_path_buf(),
                        at: here.clone(),
                        source: errno(e),
                    }
                })?;
                // Look it up again: whatever is there now is walked the same way.
                todo.push(part);
                continue;
            }
            Err(e) => return Err(resolve_err(&here, e)),
        };
        match file_type(fd.as_fd()).map_err(|e| resolve_err(&here, e))? {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(MountFdError::TooManyLinks {
                        dest: dest.to_path_buf(),
                    });
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())
                    .map_err(|e| resolve_err(&here, e))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.is_absolute() {
                    stack.clear();
                    at = PathBuf::from("/");
                }
                todo.extend(self::parts(&target).into_iter().rev());
            }
            _ if last => {
                let parent = match stack.pop() {
                    Some(p) => p,
                    None => root
                        .try_clone_to_owned()
                        .map_err(|e| MountFdError::Resolve {
                            dest: dest.to_path_buf(),
                            at: at.clone(),
                            source: e,
                        })?,
                };
                return Ok(Target {
                    parent,
                    name: part,
                    fd,
                    dest: dest.to_path_buf(),
                });
            }
            FileType::Directory => {
                stack.push(fd);
                at = here;
            }
            _ => return Err(resolve_err(&here, Errno::NOTDIR)),
        }
    }
    // Only reachable when the path ends in `..`.
    Err(MountFdError::Resolve {
        dest: dest.to_path_buf(),
        at,
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path must end in a name"),
    })
}

/// Creates one missing component in `dir`: a directory (0755 before the
/// umask), or an empty file (0644) when `file`. Someone else creating it
/// first is fine: the caller looks the name up again.
fn create_one(dir: BorrowedFd<'_>, name: &OsString, file: bool) -> Result<(), Errno> {
    let r = if file {
        rustix::fs::openat(
            dir,
            name.as_os_str(),
            OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOFOLLOW
                | OFlags::WRONLY
                | OFlags::CLOEXEC
                | OFlags::NOCTTY,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    } else {
        rustix::fs::mkdirat(dir, name.as_os_str(), Mode::from_raw_mode(0o755))
    };
    match r {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Which mount system calls to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `open_tree` + `move_mount` for binds, `mount(2)` on `/proc/self/fd/N`
    /// when they are missing.
    Auto,
    /// Always `mount(2)` on `/proc/self/fd/N` (what kernels before 5.2 get).
    Legacy,
}

/// A mount made by this module: `fd` refers to its root.
#[derive(Debug)]
pub struct Mounted {
    fd: OwnedFd,
    dest: PathBuf,
}

impl Mounted {
    /// `/proc/self/fd/N` of the mount's root.
    pub fn proc_path(&self) -> PathBuf {
        fd_path(self.fd.as_fd())
    }

    /// `mount(NULL, /proc/self/fd/N, NULL, flags, NULL)` on this mount.
    fn mount_flags(&self, flags: MsFlags) -> Result<(), io::Error> {
        nix::mount::mount(
            None::<&str>,
            &self.proc_path(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    /// A (bind) remount of this mount.
    pub fn remount(&self, flags: MsFlags) -> Result<(), MountFdError> {
        self.mount_flags(flags)
            .map_err(|source| MountFdError::Remount {
                dest: self.dest.clone(),
                source,
            })
    }

    /// Applies one propagation change (`MS_PRIVATE`, `MS_SLAVE | MS_REC`, ...).
    pub fn set_propagation(&self, flags: MsFlags) -> Result<(), MountFdError> {
        self.mount_flags(flags)
            .map_err(|source| MountFdError::Propagation {
                dest: self.dest.clone(),
                source,
            })
    }
}

/// Bind-mounts the source `src` (an fd from [`open_source`]; `src_path`
/// only names it in errors) onto `target`.
pub fn bind(
    src: BorrowedFd<'_>,
    src_path: &Path,
    target: &Target,
    recursive: bool,
    api: Api,
) -> Result<Mounted, MountFdError> {
    if api == Api::Auto {
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        if recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        match rustix::mount::open_tree(src, "", flags) {
            Ok(tree) => {
                rustix::mount::move_mount(
                    &tree,
                    "",
                    &target.fd,
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(|e| MountFdError::MoveMount {
                    dest: target.dest.clone(),
                    source: errno(e),
                })?;
                return Ok(Mounted {
                    fd: tree,
                    dest: target.dest.clone(),
                });
            }
            Err(Errno::NOSYS) => {}
            Err(e) => {
                return Err(MountFdError::OpenTree {
                    path: src_path.to_path_buf(),
                    source: errno(e),
                })
            }
        }
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    let what = src_path.display().to_string();
    mount_on(target, Some(&fd_path(src)), what, None, flags, None)
}

/// Mounts a filesystem (`mount(2)` with a type) on `target`.
pub fn mount_fs(
    source: &Path,
    target: &Target,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Mounted, MountFdError> {
    mount_on(
        target,
        Some(source),
        fstype.to_string(),
        Some(fstype),
        flags,
        data,
    )
}

/// `mount(2)` on the target's `/proc/self/fd/N`, then the new mount reopened.
fn mount_on(
    target: &Target,
    source: Option<&Path>,
    what: String,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Mounted, MountFdError> {
    nix::mount::mount(source, &fd_path(target.fd()), fstype, flags, data).map_err(|e| {
        MountFdError::Mount {
            what,
            dest: target.dest.clone(),
            source: e.into(),
        }
    })?;
    reopen(target)
}

/// The mount just made on `target`: its name looked up again in the held
/// parent directory (the lookup steps onto the new mount), checked to be a
/// mount other than the one `target` itself is on.
fn reopen(target: &Target) -> Result<Mounted, MountFdError> {
    let how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&target.parent, target.name.as_os_str(), how, Mode::empty())
        .map_err(|e| MountFdError::Reopen {
            dest: target.dest.clone(),
            source: errno(e),
        })?;
    let mnt_id = |fd: BorrowedFd<'_>| {
        rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
            .ok()
            .filter(|s| StatxFlags::from_bits_retain(s.stx_mask).contains(StatxFlags::MNT_ID))
            .map(|s| s.stx_mnt_id)
    };
    // Without STATX_MNT_ID (Linux < 5.8) there is nothing to compare.
    if let (Some(new), Some(old)) = (mnt_id(fd.as_fd()), mnt_id(target.fd())) {
        if new == old {
            return Err(MountFdError::Replaced {
                dest: target.dest.clone(),
            });
        }
    }
    Ok(Mounted {
        fd,
        dest: target.dest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, OwnedFd) {
        let d = tempfile::tempdir().unwrap();
        let fd = open_root(d.path()).unwrap();
        (d, fd)
    }

    /// Where `t` is, as a path on the host.
    fn host_path(t: &Target) -> PathBuf {
        fs::read_link(fd_path(t.fd())).unwrap()
    }

    #[test]
    fn existing_paths_are_opened_in_place() {
        let (d, r) = root();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/f"), "").unwrap();
        let t = open_in_root(r.as_fd(), Path::new("/a/b"), Create::Dir).unwrap();
        assert_eq!(host_path(&t), d.path().join("a/b"));
        assert_eq!(t.name, "b");
        assert_eq!(
            fs::read_link(fd_path(t.parent.as_fd())).unwrap(),
            d.path().join("a")
        );
        let t = open_in_root(r.as_fd(), Path::new("/a/f"), Create::Dir).unwrap();
        assert_eq!(host_path(&t), d.path().join("a/f"));
    }

    #[test]
    fn missing_components_are_created_inside_the_root() {
        let (d, r) = root();
        let t = open_in_root(r.as_fd(), Path::new("/x/y/z"), Create::Dir).unwrap();
        assert_eq!(host_path(&t), d.path().join("x/y/z"));
        assert!(d.path().join("x/y/z").is_dir());
        let t = open_in_root(r.as_fd(), Path::new("/x/new/file"), Create::File).unwrap();
        assert_eq!(host_path(&t), d.path().join("x/new/file"));
        assert!(d.path().join("x/new/file").is_file());
        assert!(d.path().join("x/new").is_dir());
    }

    #[test]
    fn absolute_and_relative_symlinks_cannot_leave_the_root() {
        let (d, r) = root();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        symlink("/", d.path().join("abs")).unwrap();
        symlink("../../../../../../..", d.path().join("a/b/up")).unwrap();
        symlink(outside.path(), d.path().join("out")).unwrap();
        let o = outside.path().strip_prefix("/").unwrap();
        for (dest, want) in [
            (
                format!("/abs{}/m", outside.path().display()),
                d.path().join(o).join("m"),
            ),
            (
                format!("/a/b/up{}/n", outside.path().display()),
                d.path().join(o).join("n"),
            ),
            ("/out/p".to_string(), d.path().join(o).join("p")),
            ("/../../../q".to_string(), d.path().join("q")),
        ] {
            let t = open_in_root(r.as_fd(), Path::new(&dest), Create::Dir).unwrap();
            assert_eq!(host_path(&t), want, "{dest}");
        }
        // Nothing was created next to the real target.
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_final_symlink_is_followed_in_the_root_even_when_dangling() {
        let (d, r) = root();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        // Like an image's /etc/resolv.conf -> ../run/resolv.conf.
        symlink("../run/resolv.conf", d.path().join("etc/resolv.conf")).unwrap();
        let t = open_in_root(r.as_fd(), Path::new("/etc/resolv.conf"), Create::File).unwrap();
        assert_eq!(host_path(&t), d.path().join("run/resolv.conf"));
        assert!(d.path().join("run/resolv.conf").is_file());
        // And a dangling absolute one pointing at a host path.
        symlink("/nonexistent-berth-host-dir/x", d.path().join("dangling")).unwrap();
        let t = open_in_root(r.as_fd(), Path::new("/dangling"), Create::Dir).unwrap();
        assert_eq!(host_path(&t), d.path().join("nonexistent-berth-host-dir/x"));
        assert!(!Path::new("/nonexistent-berth-host-dir").exists());
    }

    #[test]
    fn symlink_loops_and_files_in_the_way_are_errors() {
        let (d, r) = root();
        symlink("loop2", d.path().join("loop1")).unwrap();
        symlink("loop1", d.path().join("loop2")).unwrap();
        let e = open_in_root(r.as_fd(), Path::new("/loop1/x"), Create::Dir).unwrap_err();
        assert!(matches!(e, MountFdError::TooManyLinks { .. }), "{e:?}");
        fs::write(d.path().join("file"), "").unwrap();
        let e = open_in_root(r.as_fd(), Path::new("/file/x"), Create::Dir).unwrap_err();
        match e {
            MountFdError::Resolve { at, source, .. } => {
                assert_eq!(at, Path::new("/file"));
                assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR));
            }
            e => panic!("{e:?}"),
        }
        let e = open_in_root(r.as_fd(), Path::new("/"), Create::Dir).unwrap_err();
        assert!(matches!(e, MountFdError::RootDestination { .. }), "{e:?}");
    }

    #[test]
    fn the_kernel_path_and_the_walk_agree() {
        let (d, r) = root();
        fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        symlink("usr/lib", d.path().join("lib")).unwrap();
        symlink("/usr", d.path().join("u")).unwrap();
        for dest in ["/lib", "/lib/x", "/u/lib", "/usr/../lib"] {
            let p = parts(Path::new(dest));
            // Create everything first, then compare both resolutions.
            let walked = walk(r.as_fd(), Path::new(dest), p.clone(), Create::Dir).unwrap();
            let fast = open_in_root(r.as_fd(), Path::new(dest), Create::Dir).unwrap();
            assert_eq!(host_path(&walked), host_path(&fast), "{dest}");
        }
        assert!(d.path().join("usr/lib/x").is_dir());
    }

    #[test]
    fn bind_sources_with_a_symlink_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("real/dir")).unwrap();
        symlink(d.path().join("real"), d.path().join("link")).unwrap();
        symlink(d.path().join("real/dir"), d.path().join("last")).unwrap();
        let real = d.path().join("real/dir");
        for open in [open_source, open_source_by_components] {
            let fd = open(&real).unwrap();
            assert!(is_dir(fd.as_fd(), &real).unwrap());
            assert_eq!(fs::read_link(fd_path(fd.as_fd())).unwrap(), real);
            for bad in [d.path().join("link/dir"), d.path().join("last")] {
                let e = open(&bad).unwrap_err();
                assert!(matches!(&e, MountFdError::SourceSymlink { path } if *path == bad));
                assert!(e.to_string().contains(&bad.display().to_string()));
            }
            let missing = d.path().join("missing");
            let e = open(&missing).unwrap_err();
            assert!(matches!(e, MountFdError::OpenSource { .. }), "{e:?}");
        }
    }
}
