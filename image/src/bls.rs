//! systemd-boot configuration: `loader.conf` and Boot Loader Spec type 1 entries.

use berth_updater::bls::{self, Slot};

/// `\loader\loader.conf`. No `default`: with systemd-boot 252 an explicit default defeats
/// boot-counting fallback; the highest-sorting entry boots first.
pub fn loader_conf() -> &'static str {
    "timeout 0\neditor no\nconsole-mode keep\n"
}

/// One boot entry as the image builder writes it. Names, text and command line come from
/// `berth_updater::bls`, the one definition the updater also writes and parses.
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

fn slot(c: char) -> Slot {
    if c == 'b' {
        Slot::B
    } else {
        Slot::A
    }
}

impl Entry {
    /// `berth-<generation>-<slot>[+<left>].conf`.
    pub fn file_name(&self) -> String {
        bls::EntryName {
            generation: self.generation.into(),
            slot: slot(self.slot),
            tries_left: self.tries_left,
            tries_done: None,
        }
        .file_name()
    }

    /// Directory on the ESP holding this slot's kernel and initrd.
    pub fn slot_dir(&self) -> String {
        format!("/{}", slot(self.slot).esp_dir())
    }

    /// Entry file contents.
    pub fn render(&self) -> String {
        bls::render(slot(self.slot), &self.version, &self.options)
    }
}

/// Kernel command line for a slot: the base line from `kernel-config/` plus Berth's own
/// parameters (slot and verity).
pub fn options(base: &str, slot_c: char, root_hash: &str, salt: &str, data_blocks: u64) -> String {
    bls::options(base, slot(slot_c), root_hash, salt, data_blocks)
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
