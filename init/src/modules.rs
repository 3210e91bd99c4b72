//! Loading the kernel modules the image builder put in the initramfs.
//!
//! The builder resolves dependencies from `modules.dep` at build time and writes the load
//! order to [`LOAD_LIST`], one path per line relative to the modules directory; stage 1
//! only has to `finit_module` them in that order.

use std::path::Path;

/// Load order written by `berth-image`, relative to `/lib/modules/<release>/`.
pub const LOAD_LIST: &str = "berth.load";

/// Outcome of loading the list.
#[derive(Debug, Default)]
pub struct Loaded {
    pub loaded: u32,
    pub already: u32,
    /// Modules whose init said ENODEV: the machine lacks what they drive (efivarfs on a
    /// direct kernel boot without UEFI). Not a failure.
    pub absent: Vec<String>,
    pub failed: Vec<String>,
}

/// Load every module named in `dir/berth.load`. A missing list means nothing to load.
pub fn load_all(dir: &Path) -> Loaded {
    let mut out = Loaded::default();
    let Ok(list) = std::fs::read_to_string(dir.join(LOAD_LIST)) else {
        return out;
    };
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(rel);
        let res = std::fs::File::open(&path)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
            .and_then(|f| nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()));
        match res {
            Ok(()) => out.loaded += 1,
            Err(nix::Error::EEXIST) => out.already += 1,
            Err(nix::Error::ENODEV) => out.absent.push(rel.to_string()),
            Err(e) => out.failed.push(format!("{rel}: {e}")),
        }
    }
    out
}
