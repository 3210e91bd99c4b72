//! Kernel module selection: resolve the wanted modules and their dependencies from
//! `modules.dep` into a load order (dependencies first).

use std::collections::{HashMap, HashSet};

/// Resolution failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("kernel module {0:?} is not in modules.dep (built in, misspelled, or wrong kernel?)")]
    Unknown(String),
    #[error("modules.dep line {line}: {text:?} is not `path: deps...`")]
    BadLine { line: usize, text: String },
}

/// `dm-verity` and `dm_verity` name the same module.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// Name of a module from its path in modules.dep (`kernel/drivers/md/dm-verity.ko`).
pub fn name_of(path: &str) -> String {
    normalize(path.rsplit('/').next().unwrap_or(path))
}

/// Parsed `modules.dep`: module name -> (path, dependency paths), plus the modules built
/// into the kernel (`modules.builtin`), which need no loading.
pub struct ModulesDep {
    by_name: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModulesDep {
    /// Parse the text of `modules.dep`.
    pub fn parse(text: &str) -> Result<Self, ModuleError> {
        let mut by_name = HashMap::new();
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let (path, deps) = l.split_once(':').ok_or_else(|| ModuleError::BadLine {
                line: i + 1,
                text: l.to_string(),
            })?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            by_name.insert(name_of(path), (path.trim().to_string(), deps));
        }
        Ok(ModulesDep {
            by_name,
            builtin: HashSet::new(),
        })
    }

    /// Record the modules listed in `modules.builtin` (one path per line): asking for one of
    /// them is not an error, there is just nothing to load.
    pub fn with_builtin(mut self, text: &str) -> Self {
        self.builtin = text.lines().map(name_of).collect();
        self
    }

    /// Load order for `wanted`: every module after all of its dependencies, each once, in the
    /// order first needed. Returns paths relative to the modules directory.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for w in wanted {
            self.visit(&normalize(w), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let (path, deps) = self
            .by_name
            .get(name)
            .ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        // modules.dep lists deps so that the last must load first; walk them in reverse.
        for d in deps.iter().rev() {
            self.visit(&name_of(d), seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Read a module list file for `arch` (`x86_64`, `arm64`): one name per line, `#`
/// comments; a name followed by `[x86_64]` or `[arm64]` (several allowed) is only for
/// those architectures, e.g. `crc32c-intel  [x86_64]  # SSE4.2 crc32c`.
pub fn parse_list(text: &str, arch: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split('#').next().unwrap_or("").split_whitespace();
            let name = words.next()?;
            let arches: Vec<&str> = words
                .filter_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
                .collect();
            (arches.is_empty() || arches.contains(&arch)).then(|| name.to_string())
        })
        .collect()
}

/// Firmware files a module says it may load (`modinfo -F firmware`): the NUL-separated
/// `firmware=<path>` strings of its `.modinfo` section, found in the raw `.ko` bytes (Debian's
/// modules are uncompressed). Sorted, each once.
pub fn firmware_names(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"firmware=";
    let mut out: Vec<String> = ko
        .split(|b| *b == 0)
        .filter_map(|s| s.strip_prefix(KEY))
        .filter_map(|v| std::str::from_utf8(v).ok())
        // A relative path inside /lib/firmware, nothing that could climb out of it.
        .filter(|v| {
            !v.is_empty()
                && !v.starts_with('/')
                && v.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
";

    #[test]
    fn dependencies_first_each_once() {
        let d = ModulesDep::parse(DEP).unwrap();
        let order = d
            .resolve(&["virtio_blk".into(), "dm-verity".into(), "virtio".into()])
            .unwrap();
        let names: Vec<String> = order.iter().map(|p| name_of(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "reed_solomon",
                "dm_mod",
                "dm_bufio",
                "dm_verity"
            ]
        );
        for (i, n) in names.iter().enumerate() {
            let (_, deps) = &d.by_name[n];
            for dep in deps {
                let pos = names.iter().position(|x| *x == name_of(dep)).unwrap();
                assert!(pos < i, "{n} loads before its dependency {dep}");
            }
        }
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let d = ModulesDep::parse(DEP)
            .unwrap()
            .with_builtin("kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/ext4/ext4.ko\n");
        let order = d.resolve(&["virtio_pci".into(), "dm-mod".into()]).unwrap();
        assert_eq!(order, ["kernel/drivers/md/dm-mod.ko"]);
    }

    #[test]
    fn unknown_module_is_an_error() {
        let d = ModulesDep::parse(DEP).unwrap();
        assert_eq!(
            d.resolve(&["ext4".into()]),
            Err(ModuleError::Unknown("ext4".into()))
        );
        assert!(ModulesDep::parse("no colon here").is_err());
    }

    #[test]
    fn list_file() {
        assert_eq!(
            parse_list("# disks\nvirtio_blk\n\n erofs # root\n", "x86_64"),
            ["virtio_blk", "erofs"]
        );
        let tagged = "crc32c-intel [x86_64] # sse4.2\ngenet [arm64]\nahci\nboth [x86_64] [arm64]\n";
        assert_eq!(
            parse_list(tagged, "x86_64"),
            ["crc32c-intel", "ahci", "both"]
        );
        assert_eq!(parse_list(tagged, "arm64"), ["genet", "ahci", "both"]);
    }

    #[test]
    fn firmware_from_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0firmware=rtl_nic/rtl8168d-1.fw\0\
firmware=rtl_nic/rtl8125a-3.fw\0firmware=rtl_nic/rtl8168d-1.fw\0firmware=../etc/passwd\0\
firmware=/abs\0firmware=\0notfirmware=x.fw\0depends=mii\0";
        assert_eq!(
            firmware_names(ko),
            ["rtl_nic/rtl8125a-3.fw", "rtl_nic/rtl8168d-1.fw"]
        );
        assert!(firmware_names(b"no modinfo here").is_empty());
    }
}
