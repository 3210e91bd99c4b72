//! Subordinate id ranges for containers with `user_namespace = true`.
//!
//! Each such container gets one range of [`SIZE`] host uids and gids (the same numbers for
//! both): range `k` starts at host id `FIRST + k * SIZE`, and container ids `0..SIZE` map
//! onto it. The allocation is kept by container name in `/var/lib/berth/userns.json`
//! (write-new, fsync, rename, fsync the directory), so a container keeps its range, and
//! the owner of its writable layer stays right, across sysd restarts and reboots. A range
//! is released when its container is removed (`osctl rm`, or its config entry is
//! dropped); the lowest free range is handed out next.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The first host id handed out (ids below are the host's own users).
pub const FIRST: u32 = 100_000;
/// Ids per container: a full 16-bit range, so images with `nobody` (65534) work.
pub const SIZE: u32 = 65_536;
/// Ranges that fit below `u32::MAX` (which is `(uid_t)-1`, never a valid id).
pub const MAX_RANGES: u32 = (u32::MAX - FIRST) / SIZE;

/// Errors of the allocator; each names the file or the container.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot read the id allocations {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the id allocations {} are corrupt", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the id allocations {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {name}: no free id range for a user namespace (all {max} are in use; remove a user-namespace container)")]
    Exhausted { name: String, max: u32 },
}

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// Container name -> first host id of its range.
    ranges: BTreeMap<String, u32>,
}

/// The allocations, backed by a JSON file.
#[derive(Debug)]
pub struct Allocator {
    path: PathBuf,
    ranges: BTreeMap<String, u32>,
    max: u32,
}

impl Allocator {
    /// The allocations saved at `path` (none when the file does not exist yet).
    pub fn load(path: &Path) -> Result<Self, UsernsError> {
        Self::load_with_max(path, MAX_RANGES)
    }

    /// As [`Allocator::load`], handing out at most `max` ranges.
    pub fn load_with_max(path: &Path, max: u32) -> Result<Self, UsernsError> {
        let ranges = match std::fs::read(path) {
            Ok(b) => {
                serde_json::from_slice::<File>(&b)
                    .map_err(|source| UsernsError::Parse {
                        path: path.into(),
                        source,
                    })?
                    .ranges
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(UsernsError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(Allocator {
            path: path.into(),
            ranges,
            max,
        })
    }

    /// The first host id of `name`'s range, if it has one.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ranges.get(name).copied()
    }

    /// `name`'s range: the one it has, else the lowest free one (saved before returning).
    pub fn allocate(&mut self, name: &str) -> Result<u32, UsernsError> {
        if let Some(b) = self.get(name) {
            return Ok(b);
        }
        let used: std::collections::BTreeSet<u32> = self.ranges.values().copied().collect();
        let base = (0..self.max)
            .map(|k| FIRST + k * SIZE)
            .find(|b| !used.contains(b))
            .ok_or_else(|| UsernsError::Exhausted {
                name: name.into(),
                max: self.max,
            })?;
        self.ranges.insert(name.into(), base);
        if let Err(e) = self.save() {
            self.ranges.remove(name);
            return Err(e);
        }
        Ok(base)
    }

    /// Give `name`'s range back; whether it had one.
    pub fn release(&mut self, name: &str) -> Result<bool, UsernsError> {
        let Some(base) = self.ranges.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.ranges.insert(name.into(), base);
            return Err(e);
        }
        Ok(true)
    }

    /// Names that hold a range.
    pub fn names(&self) -> Vec<String> {
        self.ranges.keys().cloned().collect()
    }

    fn save(&self) -> Result<(), UsernsError> {
        let f = File {
            ranges: self.ranges.clone(),
        };
        let err = |source| UsernsError::Write {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(&f).map_err(|e| err(io::Error::other(e)))?;
        berth_config::store::write_atomic(&self.path, &json).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_stable_and_start_at_100000() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lib/userns.json");
        let mut a = Allocator::load(&p).unwrap();
        assert_eq!(a.get("web"), None);
        assert_eq!(a.allocate("web").unwrap(), 100_000);
        assert_eq!(a.allocate("db").unwrap(), 100_000 + 65_536);
        assert_eq!(a.allocate("web").unwrap(), 100_000, "asking again keeps it");
        assert_eq!(a.names(), ["db", "web"]);
        // The last range ends below (uid_t)-1.
        assert!(u64::from(FIRST) + u64::from(MAX_RANGES) * u64::from(SIZE) <= u64::from(u32::MAX));
    }

    #[test]
    fn allocations_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("userns.json");
        {
            let mut a = Allocator::load(&p).unwrap();
            a.allocate("a").unwrap();
            a.allocate("b").unwrap();
            a.allocate("c").unwrap();
            assert!(a.release("a").unwrap());
        }
        assert!(!p.with_extension("json.new").exists());
        let mut a = Allocator::load(&p).unwrap();
        assert_eq!(a.get("a"), None);
        assert_eq!(a.get("b"), Some(100_000 + 65_536));
        assert_eq!(a.get("c"), Some(100_000 + 2 * 65_536));
        // The released range is the lowest free one: the next container gets it.
        assert_eq!(a.allocate("d").unwrap(), 100_000);
        assert!(!a.release("gone").unwrap());
        let a = Allocator::load(&p).unwrap();
        assert_eq!(a.get("d"), Some(100_000));
    }

    #[test]
    fn exhaustion_and_corruption_are_errors_naming_what() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("userns.json");
        let mut a = Allocator::load_with_max(&p, 2).unwrap();
        a.allocate("a").unwrap();
        a.allocate("b").unwrap();
        let e = a.allocate("c").unwrap_err();
        assert!(matches!(e, UsernsError::Exhausted { .. }), "{e:?}");
        assert!(e.to_string().contains("container c"), "{e}");
        assert_eq!(a.get("c"), None);
        a.release("a").unwrap();
        assert_eq!(a.allocate("c").unwrap(), 100_000);

        std::fs::write(&p, b"{not json").unwrap();
        let e = Allocator::load(&p).unwrap_err();
        assert!(matches!(e, UsernsError::Parse { .. }), "{e:?}");
        assert!(e.to_string().contains("userns.json"), "{e}");
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("userns.json");
        let mut a = Allocator::load(&p).unwrap();
        a.allocate("a").unwrap();
        // The new file's name is taken by a directory: every save fails (even for root).
        std::fs::create_dir(d.path().join("userns.json.new")).unwrap();
        let e = a.allocate("b").unwrap_err();
        assert!(matches!(e, UsernsError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains("userns.json"), "{e}");
        assert_eq!(a.get("b"), None);
        assert!(a.release("a").is_err());
        assert_eq!(a.get("a"), Some(FIRST), "kept, as the file still says");
        assert_eq!(Allocator::load(&p).unwrap().get("a"), Some(FIRST));
    }
}
