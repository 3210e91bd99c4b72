//! The semaphores in etcd v3, in airlock's layout, so airlock and berth-fleetlock can
//! serve the same fleet from the same etcd:
//!
//! * `com.coreos.airlock/groups/<group>/v1/semaphore` = `{"total_slots":N,"holders":[..]}`,
//!   created when missing with a transaction on `version == 0`, changed only by a
//!   transaction that compares the key's `version` with the one read (compare-and-swap;
//!   a lost race reads again).
//!
//! With a holder TTL (`--holder-ttl`), two side keys per holder, which airlock never
//! reads (it only reads the semaphore key):
//!
//! * `com.coreos.airlock/groups/<group>/v1/berth/ttl/<id>` (no lease; value: the TTL in
//!   seconds): the mark that this holder's slot expires;
//! * `com.coreos.airlock/groups/<group>/v1/berth/alive/<id>`, attached to an etcd lease
//!   of that TTL: etcd deletes it when the lease runs out, timed by etcd's leader, so the
//!   lock servers' clocks do not matter.
//!
//! A holder whose mark is present and whose `alive` key is gone has expired: any lock
//! server removes it from the semaphore (compare-and-swap again) together with the mark.
//! Holders taken through airlock, or without a TTL, have no mark and never expire.
//! The side keys are written in the same transaction as the semaphore.

use crate::semaphore::{Full, Semaphore};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use std::time::Duration;

/// Where airlock keeps the groups.
pub const PREFIX: &str = "com.coreos.airlock/groups/";
/// How often a lost compare-and-swap race is retried within one request.
const CAS_TRIES: usize = 16;

/// The semaphore key of `group` (group names are `[a-zA-Z0-9.-]+`, which airlock's URL
/// query escaping leaves unchanged).
pub fn semaphore_key(group: &str) -> String {
    format!("{PREFIX}{group}/v1/semaphore")
}

fn ttl_prefix(group: &str) -> String {
    format!("{PREFIX}{group}/v1/berth/ttl/")
}

fn alive_prefix(group: &str) -> String {
    format!("{PREFIX}{group}/v1/berth/alive/")
}

/// A failed semaphore operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd did not answer, or refused.
    #[error("etcd request ({what}) failed")]
    Etcd {
        /// The operation.
        what: &'static str,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The key holds something that is not a semaphore.
    #[error("the value at {key} is not a semaphore ({{\"total_slots\":N,\"holders\":[...]}})")]
    Corrupt {
        /// The key.
        key: String,
    },
    /// Every slot is taken.
    #[error(transparent)]
    Full(#[from] Full),
    /// Other writers won every compare-and-swap.
    #[error("the semaphore at {key} changed under every one of {CAS_TRIES} tries")]
    Contended {
        /// The key.
        key: String,
    },
}

fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |source| StoreError::Etcd { what, source }
}

/// What a lock or unlock did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The semaphore after the operation.
    pub semaphore: Semaphore,
    /// Whether etcd was written (`false`: the id held a slot already / held none).
    pub changed: bool,
}

/// etcd, and the holder TTL.
#[derive(Clone)]
pub struct Store {
    client: Client,
    holder_ttl: Option<Duration>,
}

impl Store {
    /// A client for `endpoints` (`http://host:port`); every request times out after
    /// `timeout`. etcd is not contacted until the first request.
    pub async fn connect(
        endpoints: &[String],
        timeout: Duration,
        holder_ttl: Option<Duration>,
    ) -> Result<Self, StoreError> {
        let opts = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout);
        let client = Client::connect(endpoints, Some(opts))
            .await
            .map_err(etcd("connect"))?;
        Ok(Store { client, holder_ttl })
    }

    /// The semaphore of `group` and its version; `None` when the key does not exist.
    pub async fn get(&self, group: &str) -> Result<Option<(Semaphore, i64)>, StoreError> {
        let key = semaphore_key(group);
        let resp = self
            .client
            .clone()
            .get(key.as_bytes(), None)
            .await
            .map_err(etcd("get"))?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((
                Semaphore::parse(kv.value()).ok_or(StoreError::Corrupt { key })?,
                kv.version(),
            ))),
        }
    }

    /// Creates `group`'s semaphore with `slots` slots unless it exists (an existing one
    /// keeps its `total_slots`, as with airlock), and returns it with its version.
    async fn get_or_init(&self, group: &str, slots: u64) -> Result<(Semaphore, i64), StoreError> {
        if let Some(s) = self.get(group).await? {
            return Ok(s);
        }
        let key = semaphore_key(group);
        let txn = Txn::new()
            .when([Compare::version(key.as_bytes(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_bytes(),
                Semaphore::new(slots).to_json(),
                None,
            )]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd("create semaphore"))?;
        // Whoever won, read what is there now.
        self.get(group).await?.ok_or(StoreError::Contended { key })
    }

    /// Takes a slot of `group` for `id` (recursive: a holder gets it again). `slots` is
    /// used when the semaphore does not exist yet. When every slot is taken, expired
    /// holders are removed first.
    pub async fn lock(&self, group: &str, slots: u64, id: &str) -> Result<Outcome, StoreError> {
        let key = semaphore_key(group);
        let mut reaped = false;
        for _ in 0..CAS_TRIES {
            let (mut sem, version) = self.get_or_init(group, slots).await?;
            match sem.recursive_lock(id) {
                Ok(true) => {
                    return Ok(Outcome {
                        semaphore: sem,
                        changed: false,
                    })
                }
                Ok(false) => {}
                Err(full) => {
                    if !reaped && self.holder_ttl.is_some() {
                        reaped = true;
                        if self.reap(group).await? > 0 {
                            continue;
                        }
                    }
                    return Err(full.into());
                }
            }
            let mut ops = vec![TxnOp::put(key.as_bytes(), sem.to_json(), None)];
            let mut lease = None;
            if let Some(ttl) = self.holder_ttl {
                let secs = ttl.as_secs().max(1) as i64;
                let l = self
                    .client
                    .clone()
                    .lease_grant(secs, None)
                    .await
                    .map_err(etcd("lease grant"))?;
                lease = Some(l.id());
                ops.push(TxnOp::put(
                    format!("{}{id}", ttl_prefix(group)),
                    secs.to_string(),
                    None,
                ));
                ops.push(TxnOp::put(
                    format!("{}{id}", alive_prefix(group)),
                    "",
                    Some(PutOptions::new().with_lease(l.id())),
                ));
            }
            let txn = Txn::new()
                .when([Compare::version(key.as_bytes(), CompareOp::Equal, version)])
                .and_then(ops);
            let resp = self.client.clone().txn(txn).await.map_err(etcd("lock"))?;
            if resp.succeeded() {
                return Ok(Outcome {
                    semaphore: sem,
                    changed: true,
                });
            }
            if let Some(l) = lease {
                // Unused; it would expire by itself anyway.
                let _ = self.client.clone().lease_revoke(l).await;
            }
        }
        Err(StoreError::Contended { key })
    }

    /// Releases `id`'s slot of `group`, if it holds one, with its TTL keys.
    pub async fn unlock(&self, group: &str, slots: u64, id: &str) -> Result<Outcome, StoreError> {
        self.unlock_if(group, slots, id, false).await
    }

    /// [`Store::unlock`]; with `only_expired`, only while `id`'s `alive` key is absent
    /// (the same transaction checks it, so a holder that locked again is left alone).
    async fn unlock_if(
        &self,
        group: &str,
        slots: u64,
        id: &str,
        only_expired: bool,
    ) -> Result<Outcome, StoreError> {
        let key = semaphore_key(group);
        let alive = format!("{}{id}", alive_prefix(group));
        for _ in 0..CAS_TRIES {
            let (mut sem, version) = self.get_or_init(group, slots).await?;
            let held = sem.unlock_if_held(id);
            let mut ops = vec![
                TxnOp::delete(format!("{}{id}", ttl_prefix(group)), None),
                TxnOp::delete(alive.as_bytes(), None),
            ];
            if held {
                ops.push(TxnOp::put(key.as_bytes(), sem.to_json(), None));
            }
            let mut when = vec![Compare::version(key.as_bytes(), CompareOp::Equal, version)];
            if only_expired {
                when.push(Compare::version(alive.as_bytes(), CompareOp::Equal, 0));
            }
            let txn = Txn::new().when(when).and_then(ops);
            let resp = self.client.clone().txn(txn).await.map_err(etcd("unlock"))?;
            if resp.succeeded() {
                return Ok(Outcome {
                    semaphore: sem,
                    changed: held,
                });
            }
            if only_expired && !self.expired(group).await?.iter().any(|e| e == id) {
                // It locked again meanwhile: alive.
                return Ok(Outcome {
                    semaphore: sem,
                    changed: false,
                });
            }
        }
        Err(StoreError::Contended { key })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd("list"))?;
        Ok(resp.take_kvs())
    }

    /// Holders of `group` whose TTL ran out (their `ttl` mark is there, their `alive`
    /// key is not).
    pub async fn expired(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let (tp, ap) = (ttl_prefix(group), alive_prefix(group));
        let marks = self.list(&tp).await?;
        let alive = self.list(&ap).await?;
        let alive: std::collections::BTreeSet<&[u8]> = alive
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(ap.as_bytes()))
            .collect();
        Ok(marks
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(tp.as_bytes()))
            .filter(|id| !alive.contains(id))
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect())
    }

    /// Removes the expired holders of `group` from its semaphore; how many held a slot.
    pub async fn reap(&self, group: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for id in self.expired(group).await? {
            let Some((sem, _)) = self.get(group).await? else {
                break;
            };
            let out = self.unlock_if(group, sem.total_slots, &id, true).await?;
            if out.changed {
                tracing::warn!("group {group}: the slot of {id} expired (holder TTL); released");
                n += 1;
            }
        }
        Ok(n)
    }
}
