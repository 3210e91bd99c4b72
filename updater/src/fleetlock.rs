//! The FleetLock client (`[update] strategy = "fleetlock"`): the reboot-lock protocol of
//! Fedora CoreOS's Zincati, served by airlock and by `berth-fleetlock`.
//!
//! Before rebooting into an installed update a node takes a reboot slot of its group
//! (`POST <url>v1/pre-reboot`); once it is healthy again, on any boot, it gives any slot
//! it holds back (`POST <url>v1/steady-state`). Both carry the header
//! `fleet-lock-protocol: true` and the body `{"client_params":{"group":..,"id":..}}`,
//! pretty-printed as Zincati sends it and as the protocol document shows it. 200 is
//! success; anything else (an error status, a refused connection, a timeout) is retried
//! with a growing, jittered delay, moving to the next configured URL each time, for as
//! long as it takes: a node never reboots for an update without its slot.
//!
//! The node id is the machine id Berth keeps in `/var/lib/berth/machine-id` ([`node_id`]).

use rand_core::RngCore;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Where a node keeps its id (the state partition; it survives updates and rollbacks).
pub const MACHINE_ID_PATH: &str = "/var/lib/berth/machine-id";
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The two FleetLock operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Take (or keep) a reboot slot.
    PreReboot,
    /// Give back any slot held.
    SteadyState,
}

impl Op {
    /// The endpoint, relative to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Op::PreReboot => "v1/pre-reboot",
            Op::SteadyState => "v1/steady-state",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::PreReboot => "pre-reboot",
            Op::SteadyState => "steady-state",
        })
    }
}

/// The request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The client's identity.
    pub client_params: ClientParams,
}

/// `client_params`, in the order of the protocol document's example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The reboot group.
    pub group: String,
    /// The node id.
    pub id: String,
}

/// The exact body bytes sent (pretty-printed JSON, as Zincati sends it).
pub fn request_body(id: &str, group: &str) -> String {
    let b = Body {
        client_params: ClientParams {
            group: group.into(),
            id: id.into(),
        },
    };
    // Serializing two strings cannot fail.
    serde_json::to_string_pretty(&b).unwrap_or_default()
}

/// A server's error body (`{"kind":..,"value":..}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct ErrorBody {
    kind: String,
    value: String,
}

/// Why a URL did not parse (`url::ParseError`, which reqwest does not re-export).
pub type UrlError = <Url as std::str::FromStr>::Err;

/// A failed FleetLock request.
#[derive(Debug, thiserror::Error)]
pub enum FleetLockError {
    /// A configured URL is not a usable base URL.
    #[error("invalid FleetLock URL {url:?}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: UrlError,
    },
    /// The server answered, but not 200.
    #[error("{url}: the lock server refused {op} (HTTP {status}, {kind}): {value}")]
    Refused {
        /// The endpoint.
        url: String,
        /// The operation.
        op: Op,
        /// The HTTP status.
        status: u16,
        /// The error kind (`generic_http_<status>` when the body is not a FleetLock error).
        kind: String,
        /// The server's explanation.
        value: String,
    },
    /// No answer (connection refused, timeout, ...).
    #[error("{url}: {op} request failed")]
    Request {
        /// The endpoint.
        url: String,
        /// The operation.
        op: Op,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Delays between failed tries: `first`, doubling up to `max`, each plus up to half of
/// itself at random (so a fleet that failed together does not retry together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
        }
    }
}

impl Backoff {
    /// The delay after the `tries`-th failure (1-based), jitter included.
    pub fn delay(&self, tries: u64) -> Duration {
        let exp = tries.saturating_sub(1).min(32) as u32;
        let base = self
            .first
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max);
        let jitter_ms = (base.as_millis() as u64 / 2).max(1);
        base + Duration::from_millis(rand_core::OsRng.next_u64() % jitter_ms)
    }
}

/// A FleetLock client for one node.
#[derive(Debug, Clone)]
pub struct Client {
    bases: Vec<Url>,
    body: String,
    id: String,
    group: String,
    http: reqwest::Client,
    backoff: Backoff,
}

impl Client {
    /// A client for the servers at `urls` (tried in turn; a missing final `/` is added,
    /// so `http://h:3333/base` means `http://h:3333/base/v1/pre-reboot`).
    pub fn new(urls: &[&str], id: &str, group: &str) -> Result<Self, FleetLockError> {
        let mut bases = Vec::new();
        for u in urls {
            let with_slash = if u.ends_with('/') {
                u.to_string()
            } else {
                format!("{u}/")
            };
            let url = Url::parse(&with_slash).map_err(|source| FleetLockError::Url {
                url: u.to_string(),
                source,
            })?;
            bases.push(url);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // The protocol header exists so that a redirected request is not taken
            // for one meant for the lock server: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(FleetLockError::Client)?;
        Ok(Client {
            bases,
            body: request_body(id, group),
            id: id.into(),
            group: group.into(),
            http,
            backoff: Backoff::default(),
        })
    }

    /// A client from `[update.fleetlock]`.
    pub fn from_config(f: &berth_config::FleetLock, id: &str) -> Result<Self, FleetLockError> {
        Client::new(&f.url.list(), id, &f.group)
    }

    /// Replaces the retry delays.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The node id sent.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The reboot group sent.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The body sent with every request.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The endpoint URL of `op` on the `i`-th server (modulo their number).
    pub fn endpoint(&self, op: Op, i: usize) -> Url {
        let base = &self.bases[i % self.bases.len()];
        // A relative path without `..` joins onto a base ending in `/`.
        base.join(op.path()).unwrap_or_else(|_| base.clone())
    }

    /// One request to the `i`-th server.
    pub async fn try_once(&self, op: Op, i: usize) -> Result<(), FleetLockError> {
        let url = self.endpoint(op, i);
        let request = |source| FleetLockError::Request {
            url: url.to_string(),
            op,
            source,
        };
        let resp = self
            .http
            .post(url.clone())
            .header("fleet-lock-protocol", "true")
            .body(self.body.clone())
            .send()
            .await
            .map_err(request)?;
        let status = resp.status();
        if status == reqwest::StatusCode::OK {
            return Ok(());
        }
        // At most 64 KiB of error body.
        let mut body = Vec::new();
        let mut resp = resp;
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > 64 << 10 {
                break;
            }
        }
        let (kind, value) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.kind, e.value),
            Err(_) => (
                format!("generic_http_{}", status.as_u16()),
                "(unknown server error)".to_string(),
            ),
        };
        Err(FleetLockError::Refused {
            url: url.to_string(),
            op,
            status: status.as_u16(),
            kind,
            value,
        })
    }

    /// Repeats `op` until a server answers 200, moving to the next URL and waiting
    /// ([`Backoff`]) after each failure; `on_failure(tries, error)` is told of each.
    /// Returns how many tries failed first. Never gives up: drop the future to stop.
    pub async fn until_ok(&self, op: Op, mut on_failure: impl FnMut(u64, &FleetLockError)) -> u64 {
        let mut failed = 0u64;
        loop {
            match self.try_once(op, failed as usize).await {
                Ok(()) => return failed,
                Err(e) => {
                    failed += 1;
                    on_failure(failed, &e);
                    tokio::time::sleep(self.backoff.delay(failed)).await;
                }
            }
        }
    }
}

/// Where a node stands with the fleet lock, for `osctl update status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStatus {
    /// What it is doing.
    pub state: LockState,
    /// Its reboot group.
    pub group: String,
    /// Its id.
    pub id: String,
    /// Failed tries of the current operation.
    pub tries: u64,
    /// The last failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The states of [`LockStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockState {
    /// Nothing asked yet.
    #[default]
    Idle,
    /// Asking for a reboot slot (an update is installed).
    WaitingForLock,
    /// Holding a slot: rebooting as soon as the reboot window allows.
    Held,
    /// Healthy: giving back any slot held.
    Releasing,
    /// Holds no slot.
    Released,
}

impl LockStatus {
    /// One line for people: `waiting for the fleet lock (group default, 3 tries)`.
    pub fn describe(&self) -> String {
        let g = &self.group;
        let err = self
            .last_error
            .as_deref()
            .map(|e| format!("; last: {e}"))
            .unwrap_or_default();
        match self.state {
            LockState::Idle => format!("fleet lock: nothing asked yet (group {g}, id {})", self.id),
            LockState::WaitingForLock => format!(
                "waiting for the fleet lock (group {g}, {} tries{err})",
                self.tries
            ),
            LockState::Held => {
                format!("holding the fleet lock (group {g}): rebooting in the reboot window")
            }
            LockState::Releasing => format!(
                "releasing the fleet lock (group {g}, {} tries{err})",
                self.tries
            ),
            LockState::Released => format!("fleet lock released (group {g})"),
        }
    }
}

/// [`LockStatus`], shared between the task that works and the status reader.
pub type SharedStatus = std::sync::Arc<std::sync::Mutex<LockStatus>>;

fn set(status: &SharedStatus, f: impl FnOnce(&mut LockStatus)) {
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut s);
}

impl Client {
    /// A status for this client, idle.
    pub fn new_status(&self) -> SharedStatus {
        std::sync::Arc::new(std::sync::Mutex::new(LockStatus {
            group: self.group.clone(),
            id: self.id.clone(),
            ..LockStatus::default()
        }))
    }

    /// [`Op::PreReboot`] until granted, recorded in `status`; returns the failed tries.
    pub async fn acquire(&self, status: &SharedStatus) -> u64 {
        self.run(
            Op::PreReboot,
            status,
            LockState::WaitingForLock,
            LockState::Held,
        )
        .await
    }

    /// [`Op::SteadyState`] until done, recorded in `status`; returns the failed tries.
    pub async fn release(&self, status: &SharedStatus) -> u64 {
        self.run(
            Op::SteadyState,
            status,
            LockState::Releasing,
            LockState::Released,
        )
        .await
    }

    async fn run(&self, op: Op, status: &SharedStatus, during: LockState, after: LockState) -> u64 {
        set(status, |s| {
            s.state = during;
            s.tries = 0;
            s.last_error = None;
        });
        let failed = self
            .until_ok(op, |tries, e| {
                let msg = berth_config::error_chain(e);
                if tries == 1 || tries.is_power_of_two() {
                    tracing::warn!("fleet lock: {op} try {tries} failed: {msg}");
                }
                set(status, |s| {
                    s.tries = tries;
                    s.last_error = Some(msg);
                });
            })
            .await;
        set(status, |s| s.state = after);
        tracing::info!(
            "fleet lock: {op} done (group {}, id {}, after {failed} failed tries)",
            self.group,
            self.id
        );
        failed
    }
}

/// The reboot into an installed update under `strategy = "fleetlock"`: take a reboot
/// slot first (for as long as it takes), then wait for the reboot window of `update`
/// (`now` gives Unix seconds), then call `reboot`. Returns what the policy said at the
/// end: [`crate::RebootDecision::Now`] once `reboot` was called,
/// [`crate::RebootDecision::Manual`] when the policy does not (or no longer) reboot by
/// itself: then the slot is given back at once rather than held for nothing.
pub async fn lock_then_reboot(
    client: &Client,
    status: &SharedStatus,
    update: &berth_config::Update,
    now: impl Fn() -> u64,
    reboot: impl FnOnce(),
) -> crate::RebootDecision {
    client.acquire(status).await;
    loop {
        let t = now();
        match crate::reboot_decision(update, t) {
            crate::RebootDecision::Now => {
                reboot();
                return crate::RebootDecision::Now;
            }
            crate::RebootDecision::At(at) => {
                tracing::info!(
                    "fleet lock held; the reboot window opens in {} s",
                    at.saturating_sub(t)
                );
                // Wake at least hourly, so a changed clock cannot oversleep the window.
                let secs = at.saturating_sub(t).clamp(1, 3600);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            crate::RebootDecision::Manual => {
                tracing::info!(
                    "fleet lock: the policy does not reboot by itself; giving the slot back"
                );
                client.release(status).await;
                return crate::RebootDecision::Manual;
            }
        }
    }
}

/// This node's id: the machine id in `path` (32 lowercase hex digits, as systemd's
/// machine-id), created on first use from 16 random bytes and written crash-safely.
/// A file that holds anything else is replaced (and that is logged).
pub fn node_id(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let id = s.trim();
            if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Ok(id.to_string());
            }
            tracing::warn!(
                "{}: not a machine id (32 lowercase hex digits); making a new one",
                path.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut raw = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut raw);
    let id = hex::encode(raw);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_the_protocol_example() {
        // docs/development/fleetlock/protocol.md (coreos/zincati), "Request body".
        let doc = "{\n  \"client_params\": {\n    \"group\": \"default\",\n    \"id\": \"c988d2509fdf5cdcbed39037c56406fb\"\n  }\n}";
        assert_eq!(
            request_body("c988d2509fdf5cdcbed39037c56406fb", "default"),
            doc
        );
    }

    #[test]
    fn endpoints_join_onto_the_base() {
        let c = Client::new(
            &[
                "http://127.0.0.1:3333/",
                "http://lock.example.com:3333/base",
            ],
            "x",
            "default",
        )
        .unwrap();
        assert_eq!(
            c.endpoint(Op::PreReboot, 0).as_str(),
            "http://127.0.0.1:3333/v1/pre-reboot"
        );
        assert_eq!(
            c.endpoint(Op::SteadyState, 1).as_str(),
            "http://lock.example.com:3333/base/v1/steady-state"
        );
        assert_eq!(
            c.endpoint(Op::SteadyState, 2).as_str(),
            "http://127.0.0.1:3333/v1/steady-state"
        );
        assert!(Client::new(&["not a url"], "x", "g").is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        for (tries, base) in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 8), (1000, 8)] {
            let d = b.delay(tries);
            let base = Duration::from_secs(base);
            assert!(d >= base && d <= base + base / 2, "{tries}: {d:?}");
        }
    }

    #[test]
    fn status_lines() {
        let mut s = LockStatus {
            state: LockState::WaitingForLock,
            group: "default".into(),
            id: "x".into(),
            tries: 3,
            last_error: None,
        };
        assert_eq!(
            s.describe(),
            "waiting for the fleet lock (group default, 3 tries)"
        );
        s.last_error = Some("HTTP 500".into());
        assert_eq!(
            s.describe(),
            "waiting for the fleet lock (group default, 3 tries; last: HTTP 500)"
        );
        s.state = LockState::Released;
        assert_eq!(s.describe(), "fleet lock released (group default)");
        assert_eq!(serde_json::to_value(&s).unwrap()["state"], "released",);
    }

    #[test]
    fn node_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lib/berth/machine-id");
        let a = node_id(&p).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(node_id(&p).unwrap(), a);
        std::fs::write(&p, "garbage\n").unwrap();
        let b = node_id(&p).unwrap();
        assert_ne!(b, a);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{b}\n"));
    }
}
