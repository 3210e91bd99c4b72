//! The counting semaphore airlock keeps in etcd, as JSON:
//! `{"total_slots":2,"holders":["id-a","id-b"]}`. Holders are kept sorted, as airlock
//! keeps them, so both servers write the same bytes for the same state.

use serde::{Deserialize, Serialize};

/// One group's semaphore, the value of `com.coreos.airlock/groups/<group>/v1/semaphore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// How many nodes may hold a reboot slot at once.
    pub total_slots: u64,
    /// Ids of the nodes holding a slot, sorted.
    #[serde(default)]
    pub holders: Vec<String>,
}

/// Every slot is held by someone else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("semaphore currently full: all {total_slots} slots are locked ({holders})")]
pub struct Full {
    /// The semaphore's slot count.
    pub total_slots: u64,
    /// Who holds them, comma separated.
    pub holders: String,
}

impl Semaphore {
    /// An empty semaphore with `total_slots` slots.
    pub fn new(total_slots: u64) -> Self {
        Semaphore {
            total_slots,
            holders: Vec::new(),
        }
    }

    /// Parses the stored value; `None` when it is not a semaphore.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let mut s: Semaphore = serde_json::from_slice(bytes).ok()?;
        s.holders.sort();
        s.holders.dedup();
        Some(s)
    }

    /// The stored form (compact JSON, like airlock's `json.Marshal`).
    pub fn to_json(&self) -> String {
        // Serializing a struct of a number and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `id` holds a slot.
    pub fn holds(&self, id: &str) -> bool {
        self.holders
            .binary_search_by(|h| h.as_str().cmp(id))
            .is_ok()
    }

    /// Takes a slot for `id`: `Ok(false)` when it was added, `Ok(true)` when it held one
    /// already (locking is recursive), [`Full`] when every slot is taken.
    pub fn recursive_lock(&mut self, id: &str) -> Result<bool, Full> {
        match self.holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(_) => Ok(true),
            Err(at) => {
                if self.holders.len() as u64 >= self.total_slots {
                    return Err(Full {
                        total_slots: self.total_slots,
                        holders: self.holders.join(", "),
                    });
                }
                self.holders.insert(at, id.to_string());
                Ok(false)
            }
        }
    }

    /// Releases `id`'s slot; whether it held one.
    pub fn unlock_if_held(&mut self, id: &str) -> bool {
        match self.holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(at) => {
                self.holders.remove(at);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airlock_json_round_trip() {
        let s = Semaphore::parse(br#"{"total_slots":2,"holders":["b","a"]}"#).unwrap();
        assert_eq!(s.holders, ["a", "b"]);
        assert_eq!(s.to_json(), r#"{"total_slots":2,"holders":["a","b"]}"#);
        assert_eq!(
            Semaphore::new(1).to_json(),
            r#"{"total_slots":1,"holders":[]}"#
        );
        // A missing holders field is read as no holders.
        assert_eq!(
            Semaphore::parse(br#"{"total_slots":3}"#),
            Some(Semaphore::new(3))
        );
        assert_eq!(Semaphore::parse(b"not json"), None);
        assert_eq!(Semaphore::parse(br#"{"holders":[]}"#), None);
        assert_eq!(Semaphore::parse(br#"{"total_slots":-1}"#), None);
    }

    #[test]
    fn recursive_lock_and_unlock() {
        let mut s = Semaphore::new(2);
        assert_eq!(s.recursive_lock("n2"), Ok(false));
        assert_eq!(s.recursive_lock("n2"), Ok(true));
        assert_eq!(s.recursive_lock("n1"), Ok(false));
        assert_eq!(s.holders, ["n1", "n2"]);
        let full = s.recursive_lock("n3").unwrap_err();
        assert_eq!(full.total_slots, 2);
        assert_eq!(full.holders, "n1, n2");
        // A holder locks again even when full.
        assert_eq!(s.recursive_lock("n1"), Ok(true));
        assert!(s.unlock_if_held("n1"));
        assert!(!s.unlock_if_held("n1"));
        assert_eq!(s.recursive_lock("n3"), Ok(false));
        assert_eq!(s.holders, ["n2", "n3"]);
        // Zero slots: nobody reboots.
        assert!(Semaphore::new(0).recursive_lock("x").is_err());
    }
}
