//! Container root filesystems: an overlay of an image's read-only layer directories
//! (shared by every container of the image) plus a per-container upper directory.

use crate::store::Image;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A filesystem operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The image has no unpacked layers in the store.
    #[error("image {0} is not unpacked; pull it with unpacking enabled")]
    NotUnpacked(String),
}

/// overlayfs `lowerdir` order: the top layer first.
pub fn lower_dirs(image: &Image) -> Vec<PathBuf> {
    image.layers.iter().rev().cloned().collect()
}

/// Mount options for overlayfs: `lowerdir=TOP:...:BASE,upperdir=U,workdir=W`
/// (read-only when `upper` is `None`; a single layer then gets no overlay in practice).
pub fn overlay_options(
    image: &Image,
    upper: Option<(&Path, &Path)>,
) -> Result<String, RootfsError> {
    let lowers = lower_dirs(image);
    if lowers.is_empty() && !image.manifest.layers.is_empty() {
        return Err(RootfsError::NotUnpacked(image.name.clone()));
    }
    let mut s = format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|p| p.to_string_lossy().replace(':', "\\:").replace(',', "\\,"))
            .collect::<Vec<_>>()
            .join(":")
    );
    if let Some((u, w)) = upper {
        s.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    Ok(s)
}

fn ioe<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Flatten layer directories (base first) into `dest`, applying whiteouts and opaque
/// markers the way overlayfs would. Used to build OS images and to compare trees in
/// tests; ownership, modes, mtimes, xattrs and hardlinks are kept.
pub fn flatten(layers: &[PathBuf], dest: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(dest).map_err(ioe("create", dest))?;
    let mut dirs = Vec::new();
    for layer in layers {
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        copy_tree(layer, dest, &mut links, &mut dirs)?;
    }
    for (p, m) in dirs.iter().rev() {
        set_times(p, m);
    }
    Ok(())
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let mut b = [0u8; 2];
    matches!(rustix::fs::lgetxattr(p, "trusted.overlay.opaque", &mut b), Ok(1) if b[0] == b'y')
}

fn copy_tree(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dirs: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<(), RootfsError> {
    for e in fs::read_dir(src).map_err(ioe("list", src))? {
        let e = e.map_err(ioe("list", src))?;
        let s = e.path();
        let d = dst.join(e.file_name());
        let m = fs::symlink_metadata(&s).map_err(ioe("inspect", &s))?;
        let existing = fs::symlink_metadata(&d).ok();
        if is_whiteout(&m) {
            if let Some(x) = existing {
                remove(&d, &x)?;
            }
            continue;
        }
        if m.is_dir() {
            match existing {
                Some(x) if x.is_dir() => {
                    if is_opaque(&s) {
                        remove(&d, &x)?;
                        fs::create_dir(&d).map_err(ioe("create", &d))?;
                    }
                }
                Some(x) => {
                    remove(&d, &x)?;
                    fs::create_dir(&d).map_err(ioe("create", &d))?;
                }
                None => fs::create_dir(&d).map_err(ioe("create", &d))?,
            }
            copy_tree(&s, &d, links, dirs)?;
            meta(&s, &d, &m)?;
            dirs.push((d, m));
            continue;
        }
        if let Some(x) = existing {
            remove(&d, &x)?;
        }
        let key = (m.dev(), m.ino());
        if m.nlink() > 1 {
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &d).map_err(ioe("link", &d))?;
                continue;
            }
            links.insert(key, d.clone());
        }
        let ft = m.file_type();
        if ft.is_symlink() {
            let t = fs::read_link(&s).map_err(ioe("read", &s))?;
            std::os::unix::fs::symlink(t, &d).map_err(ioe("create", &d))?;
        } else if ft.is_file() {
            fs::copy(&s, &d).map_err(ioe("copy to", &d))?;
        } else {
            let ftype = rustix::fs::FileType::from_raw_mode(m.mode());
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &d,
                ftype,
                rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777),
                m.rdev(),
            )
            .map_err(|e| ioe("create", &d)(e.into()))?;
        }
        meta(&s, &d, &m)?;
        set_times(&d, &m);
    }
    Ok(())
}

fn remove(p: &Path, m: &fs::Metadata) -> Result<(), RootfsError> {
    if m.is_dir() {
        fs::remove_dir_all(p).map_err(ioe("remove", p))
    } else {
        fs::remove_file(p).map_err(ioe("remove", p))
    }
}

fn meta(src: &Path, d: &Path, m: &fs::Metadata) -> Result<(), RootfsError> {
    if rustix::process::geteuid().is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            d,
            Some(rustix::fs::Uid::from_raw(m.uid())),
            Some(rustix::fs::Gid::from_raw(m.gid())),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ioe("chown", d)(e.into()))?;
    }
    if !m.file_type().is_symlink() {
        fs::set_permissions(d, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(ioe("chmod", d))?;
    }
    let mut names = vec![0u8; 64 << 10];
    if let Ok(n) = rustix::fs::llistxattr(src, &mut names[..]) {
        for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if name.starts_with(b"trusted.overlay.") {
                continue;
            }
            let key = std::ffi::OsStr::new(std::str::from_utf8(name).unwrap_or(""));
            let mut v = vec![0u8; 64 << 10];
            if let Ok(k) = rustix::fs::lgetxattr(src, key, &mut v[..]) {
                let _ = rustix::fs::lsetxattr(d, key, &v[..k], rustix::fs::XattrFlags::empty());
            }
        }
    }
    Ok(())
}

fn set_times(p: &Path, m: &fs::Metadata) {
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime(),
        tv_nsec: m.mtime_nsec(),
    };
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    );
}
