//! systemd-boot configuration: `loader.conf` and Boot Loader Spec type 1 entries.

/// `\loader\loader.conf`. No `default`: with systemd-boot 252 an explicit default defeats
/// boot-counting fallback; the highest-sorting entry boots first.
pub fn loader_conf() -> &'static str {
    "timeout 0\neditor no\nconsole-mode keep\n"
}

/// One boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Generation counter: the newest install sorts highest.
    pub generation: u32,
    pub slot: char,
    pub version: String,
    pub options: String,
    /// Boot-counting tries left, `None` for a blessed (or factory) entry.
    pub tries_left: Option<u32>,
}

impl Entry {
    /// `berth-<generation>-<slot>[+<left>].conf`.
    pub fn file_name(&self) -> String {
        let counter = self.tries_left.map(|n| format!("+{n}")).unwrap_or_default();
        format!("berth-{:08}-{}{}.conf", self.generation, self.slot, counter)
    }

    /// Directory on the ESP holding this slot's kernel and initrd.
    pub fn slot_dir(&self) -> String {
        format!("/berth/{}", self.slot)
    }

    /// Entry file contents.
    pub fn render(&self) -> String {
        format!(
            "title Berth {v} (slot {s})\nversion {v}\nlinux {d}/vmlinuz\ninitrd {d}/initrd\noptions {o}\n",
            v = self.version,
            s = self.slot,
            d = self.slot_dir(),
            o = self.options
        )
    }
}

/// Kernel command line for a slot: the base line from `kernel-config/` plus Berth's own
/// parameters (slot and verity).
pub fn options(base: &str, slot: char, root_hash: &str, salt: &str, data_blocks: u64) -> String {
    format!(
        "{} berth.slot={slot} berth.verity={root_hash} berth.verity.salt={salt} berth.verity.blocks={data_blocks}",
        base.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_and_text() {
        let mut e = Entry {
            generation: 1,
            slot: 'a',
            version: "0.1.0".into(),
            options: options("console=ttyS0 quiet\n", 'a', "ab", "cd", 7),
            tries_left: None,
        };
        assert_eq!(e.file_name(), "berth-00000001-a.conf");
        e.tries_left = Some(3);
        assert_eq!(e.file_name(), "berth-00000001-a+3.conf");
        let t = e.render();
        assert!(t.contains("linux /berth/a/vmlinuz\n"));
        assert!(t.contains("initrd /berth/a/initrd\n"));
        assert!(t.contains(
            "options console=ttyS0 quiet berth.slot=a berth.verity=ab berth.verity.salt=cd berth.verity.blocks=7\n"
        ));
        assert!(!loader_conf().contains("default"));
        // Newer generations sort after older ones as plain strings.
        let newer = Entry {
            generation: 10,
            ..e.clone()
        };
        assert!(newer.file_name() > e.file_name());
    }
}
