//! Boot Loader Spec entries on the ESP: `loader/entries/berth-<gen>-<slot>[+<left>[-<done>]].conf`.
//!
//! The same names and text as `berth-image build` writes (`image/src/bls.rs`; a test in
//! `image/tests/` keeps the two in step). systemd-boot (no `default` in `loader.conf`,
//! no `sort-key` in the entries) boots the entry whose name sorts highest among those
//! with tries left; an entry at `+0-<n>` is skipped. The generation is zero-padded, so the
//! newest install sorts highest.

use crate::fsutil;
use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

/// Boot-counting tries a new install gets.
pub const TRIES: u32 = 3;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BlsError {
    /// Reading or changing the entries directory failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, BlsError> {
    r.map_err(|source| BlsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A/B slot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `berth-root-a`.
    A,
    /// `berth-root-b`.
    B,
}

impl Slot {
    /// Parse `a`/`b` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// `a` or `b`.
    pub fn as_char(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
    /// GPT PARTLABEL of the slot's partition.
    pub fn partlabel(self) -> &'static str {
        match self {
            Slot::A => "berth-root-a",
            Slot::B => "berth-root-b",
        }
    }
    /// Directory on the ESP (relative) holding the slot's kernel and initrd.
    pub fn esp_dir(self) -> String {
        format!("berth/{}", self.as_char())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// The parts of an entry's file name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryName {
    /// Generation counter.
    pub generation: u64,
    /// Slot.
    pub slot: Slot,
    /// Tries left; `None` when blessed (no counter).
    pub tries_left: Option<u32>,
    /// Tries done (`-<done>`), when counting.
    pub tries_done: Option<u32>,
}

impl EntryName {
    /// Parse `berth-<gen>-<slot>[+<left>[-<done>]].conf`.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_prefix("berth-")?.strip_suffix(".conf")?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (gen, slot) = base.split_once('-')?;
        if gen.is_empty() || !gen.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let generation = gen.parse().ok()?;
        if slot.len() != 1 {
            return None;
        }
        let slot = Slot::parse(slot)?;
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d.parse().ok()?)),
                    None => (c, None),
                };
                (Some(l.parse().ok()?), d)
            }
        };
        Some(Self {
            generation,
            slot,
            tries_left,
            tries_done,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        let counter = match (self.tries_left, self.tries_done) {
            (Some(l), Some(d)) => format!("+{l}-{d}"),
            (Some(l), None) => format!("+{l}"),
            (None, _) => String::new(),
        };
        format!(
            "berth-{:08}-{}{}.conf",
            self.generation,
            self.slot.as_char(),
            counter
        )
    }

    /// The name without the counter (what blessing renames to).
    pub fn blessed(&self) -> Self {
        Self {
            tries_left: None,
            tries_done: None,
            ..self.clone()
        }
    }

    /// True when boot counting ran out: systemd-boot will not pick it.
    pub fn exhausted(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// The text of an entry for `slot` (same as `berth-image build`).
pub fn render(slot: Slot, version: &str, options: &str) -> String {
    let d = format!("/{}", slot.esp_dir());
    format!(
        "title Berth {version} (slot {s})\nversion {version}\nlinux {d}/vmlinuz\ninitrd {d}/initrd\noptions {options}\n",
        s = slot.as_char()
    )
}

/// The kernel command line for a slot: the artifact's base line plus Berth's parameters.
pub fn options(base: &str, slot: Slot, root_hash: &str, salt: &str, data_blocks: u64) -> String {
    format!(
        "{} berth.slot={} berth.verity={root_hash} berth.verity.salt={salt} berth.verity.blocks={data_blocks}",
        base.trim(),
        slot.as_char()
    )
}

/// An entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Parsed file name.
    pub name: EntryName,
    /// File name.
    pub file: String,
    /// `version` line, if any.
    pub version: Option<String>,
    /// `options` line, if any.
    pub options: Option<String>,
}

/// systemd-boot's order for our entries: exhausted entries last, then by name, highest
/// first (generations are zero-padded, so this is the generation order). The first entry
/// of the sorted list is the one that boots next.
pub fn boot_order(a: &Entry, b: &Entry) -> Ordering {
    a.name
        .exhausted()
        .cmp(&b.name.exhausted())
        .then_with(|| b.name.generation.cmp(&a.name.generation))
        .then_with(|| b.file.cmp(&a.file))
}

/// The `loader/entries` directory of an ESP mounted at `esp`.
pub fn entries_dir(esp: &Path) -> PathBuf {
    esp.join("loader").join("entries")
}

/// All Berth entries, in boot order (see [`boot_order`]). Files that are not Berth
/// entries (and temporary files) are ignored.
pub fn list(esp: &Path) -> Result<Vec<Entry>, BlsError> {
    let dir = entries_dir(esp);
    let mut out = Vec::new();
    for e in io("reading", &dir, fs::read_dir(&dir))? {
        let e = io("reading", &dir, e)?;
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = EntryName::parse(&file) else {
            continue;
        };
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let line = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        out.push(Entry {
            name,
            file,
            version: line("version "),
            options: line("options "),
        });
    }
    out.sort_by(boot_order);
    Ok(out)
}

/// The next generation number: one above every entry present.
pub fn next_generation(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.name.generation).max().unwrap_or(0) + 1
}

/// Remove every entry of `slot`, then sync the directory. Returns the removed names.
pub fn remove_slot(esp: &Path, slot: Slot) -> Result<Vec<String>, BlsError> {
    let dir = entries_dir(esp);
    let mut removed = Vec::new();
    for e in list(esp)?.into_iter().filter(|e| e.name.slot == slot) {
        let p = dir.join(&e.file);
        io("removing", &p, fs::remove_file(&p))?;
        removed.push(e.file);
    }
    if !removed.is_empty() {
        io("syncing", &dir, fsutil::sync_dir(&dir))?;
    }
    Ok(removed)
}

/// Write an entry atomically (temporary file, fsync, rename, fsync the directory).
pub fn write(esp: &Path, name: &EntryName, text: &str) -> Result<PathBuf, BlsError> {
    let p = entries_dir(esp).join(name.file_name());
    io("writing", &p, fsutil::write_atomic(&p, text.as_bytes()))?;
    Ok(p)
}

/// Rename an entry (same directory) and sync the directory.
pub fn rename(esp: &Path, from: &str, to: &EntryName) -> Result<(), BlsError> {
    let dir = entries_dir(esp);
    let (a, b) = (dir.join(from), dir.join(to.file_name()));
    io("renaming", &a, fs::rename(&a, &b))?;
    io("syncing", &dir, fsutil::sync_dir(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(file: &str) -> Entry {
        Entry {
            name: EntryName::parse(file).unwrap(),
            file: file.into(),
            version: None,
            options: None,
        }
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "berth-00000001-a.conf",
            "berth-00000002-b+3.conf",
            "berth-00000002-b+2-1.conf",
            "berth-00000012-a+0-3.conf",
        ] {
            assert_eq!(EntryName::parse(n).unwrap().file_name(), n);
        }
        let n = EntryName::parse("berth-00000002-b+2-1.conf").unwrap();
        assert_eq!(n.generation, 2);
        assert_eq!(n.slot, Slot::B);
        assert_eq!((n.tries_left, n.tries_done), (Some(2), Some(1)));
        assert_eq!(n.blessed().file_name(), "berth-00000002-b.conf");
        for bad in [
            "berth-x-a.conf",
            "berth-1-c.conf",
            "berth-1-a+x.conf",
            "other.conf",
            ".berth-00000001-a.conf.tmp",
            "berth-1-ab.conf",
        ] {
            assert!(EntryName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn order_follows_generation_and_skips_exhausted() {
        let mut v = vec![
            e("berth-00000001-a.conf"),
            e("berth-00000003-b+0-3.conf"),
            e("berth-00000002-a.conf"),
            e("berth-00000010-b+3.conf"),
        ];
        v.sort_by(boot_order);
        let files: Vec<_> = v.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "berth-00000010-b+3.conf",
                "berth-00000002-a.conf",
                "berth-00000001-a.conf",
                "berth-00000003-b+0-3.conf"
            ]
        );
        assert_eq!(next_generation(&v), 11);
        // Zero padding keeps string order equal to generation order.
        assert!(e("berth-00000010-a.conf").file > e("berth-00000009-b.conf").file);
    }

    #[test]
    fn text_and_options() {
        let o = options("console=ttyS0 quiet\n", Slot::B, "ab", "cd", 7);
        assert_eq!(
            o,
            "console=ttyS0 quiet berth.slot=b berth.verity=ab berth.verity.salt=cd berth.verity.blocks=7"
        );
        let t = render(Slot::B, "0.2.0", &o);
        assert!(t.contains("linux /berth/b/vmlinuz\n"));
        assert!(t.contains("initrd /berth/b/initrd\n"));
        assert!(t.contains("version 0.2.0\n"));
    }
}
