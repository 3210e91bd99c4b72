//! Crash-safe file updates: write-new, fsync, rename, fsync the directory.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Write `data` to `path` atomically: a temporary file next to it is written and synced,
/// renamed over `path`, and the directory is synced. After a power cut `path` holds
/// either the old or the new content (on FAT, a rename is not journaled, but the
/// temporary name is never one the boot loader reads).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Copy `src` to `dst` atomically (see [`write_atomic`]) without holding it in memory.
pub fn copy_atomic(src: &Path, dst: &Path) -> std::io::Result<()> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut from = fs::File::open(src)?;
        let mut to = fs::File::create(&tmp)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    fs::rename(&tmp, dst)?;
    sync_dir(dir)
}

/// fsync a directory (makes renames, creations and removals in it durable).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Remove a file if present, then sync its directory. Returns whether it existed.
pub fn remove_synced(path: &Path) -> std::io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
