//! The FleetLock HTTP API (Zincati's `docs/development/fleetlock/protocol.md`), with
//! airlock's error kinds and status codes:
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/pre-reboot` | 200: the id holds a slot of its group (again, if it held one) |
//! | `POST /v1/steady-state` | 200: the id holds no slot of its group (any more) |
//! | no `fleet-lock-protocol: true`, a body that is not `{"client_params":{"id":..,"group":..}}` | 400 `invalid_client_identity` |
//! | a group the server is not configured for | 400 `unknown_group` |
//! | every slot held by others | 500 `failed_lock_semaphore_full` (airlock: `failed_lock`, same code) |
//! | etcd unreachable, or the key corrupt | 500 `failed_lock` |
//! | `GET /metrics` | Prometheus text: slots and holders per group, read from etcd |
//!
//! Errors are JSON `{"kind":"..","value":".."}`. The server keeps no state of its own.

use crate::store::{Store, StoreError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest request body read (a FleetLock body is well under 200 bytes).
pub const MAX_BODY: usize = 4096;
/// Longest client id accepted.
pub const MAX_ID: usize = 256;

/// The request body of both endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client's identity.
    pub client_params: ClientParams,
}

/// `client_params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The client's id (the lock holder's name).
    pub id: String,
    /// Its reboot group.
    pub group: String,
}

/// A FleetLock error body, with its status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// HTTP status (not in the body).
    #[serde(skip)]
    pub status: u16,
    /// Machine-readable kind, from a small fixed set.
    pub kind: String,
    /// What happened, for people.
    pub value: String,
}

impl ApiError {
    fn new(status: u16, kind: &str, value: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// Whether `g` is a valid group name (`^[a-zA-Z0-9.-]+$`, the protocol's rule).
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Checks the header and the body: the client's identity, or the 400 to answer.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<ClientParams, ApiError> {
    let bad = |m: String| {
        ApiError::new(
            400,
            "invalid_client_identity",
            format!("failed to validate client identity: {m}"),
        )
    };
    if headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok())
        != Some("true")
    {
        return Err(bad("wrong 'fleet-lock-protocol' header".into()));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let p = req.client_params;
    if p.group.is_empty() {
        return Err(bad("empty client group".into()));
    }
    if !valid_group(&p.group) {
        return Err(bad(format!(
            "invalid group {:?} (letters, digits, '.' and '-', at most 128)",
            p.group
        )));
    }
    if p.id.is_empty() {
        return Err(bad("empty client ID".into()));
    }
    if p.id.len() > MAX_ID || p.id.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "invalid client ID (at most {MAX_ID} bytes, no control characters)"
        )));
    }
    Ok(p)
}

/// What the handlers share.
pub struct App {
    /// etcd.
    pub store: Store,
    /// Configured groups and their slot counts.
    pub groups: BTreeMap<String, u64>,
}

/// The router: the two FleetLock endpoints and `/metrics`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn slots_of(app: &App, p: &ClientParams) -> Result<u64, ApiError> {
    app.groups
        .get(&p.group)
        .copied()
        .ok_or_else(|| ApiError::new(400, "unknown_group", format!("unknown group {:?}", p.group)))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Full(f) => ApiError::new(500, "failed_lock_semaphore_full", f.to_string()),
        e => {
            let msg = berth_config::error_chain(&e);
            tracing::error!("{msg}");
            ApiError::new(500, "failed_lock", msg)
        }
    }
}

/// Runs `op` again when etcd failed quickly (a member that is down answers with a refused
/// connection until the client's balancer stops choosing it), for up to 2 s: the client
/// then sees the answer of a member that is up. Lock and unlock are safe to repeat.
async fn retried<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match op().await {
            Err(StoreError::Etcd { what, source })
                if start.elapsed() < std::time::Duration::from_secs(2) =>
            {
                tracing::debug!("etcd ({what}): {source}; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

async fn pre_reboot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    change(&app, &headers, &body, true).await
}

async fn steady_state(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    change(&app, &headers, &body, false).await
}

/// Take (`lock`) or give back a reboot slot for the request's node.
async fn change(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
    lock: bool,
) -> Result<StatusCode, ApiError> {
    let p = parse_request(headers, body)?;
    let slots = slots_of(app, &p)?;
    let out = if lock {
        retried(|| app.store.lock(&p.group, slots, &p.id)).await
    } else {
        retried(|| app.store.unlock(&p.group, slots, &p.id)).await
    }
    .map_err(store_error)?;
    if out.changed {
        tracing::info!(
            "group {}: {} {} ({}/{} held)",
            p.group,
            p.id,
            if lock {
                "took a reboot slot"
            } else {
                "released its reboot slot"
            },
            out.semaphore.holders.len(),
            out.semaphore.total_slots
        );
    }
    Ok(StatusCode::OK)
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let mut up = 1;
    let mut lines = BTreeMap::<&str, Vec<String>>::new();
    for (group, slots) in &app.groups {
        let g = label(group);
        lines
            .entry("berth_fleetlock_config_slots")
            .or_default()
            .push(format!("{{group=\"{g}\"}} {slots}"));
        match app.store.get(group).await {
            Ok(Some((sem, _))) => {
                lines
                    .entry("berth_fleetlock_semaphore_slots")
                    .or_default()
                    .push(format!("{{group=\"{g}\"}} {}", sem.total_slots));
                lines
                    .entry("berth_fleetlock_semaphore_holders")
                    .or_default()
                    .push(format!("{{group=\"{g}\"}} {}", sem.holders.len()));
                for h in &sem.holders {
                    lines
                        .entry("berth_fleetlock_holder")
                        .or_default()
                        .push(format!("{{group=\"{g}\",id=\"{}\"}} 1", label(h)));
                }
            }
            Ok(None) => lines
                .entry("berth_fleetlock_semaphore_holders")
                .or_default()
                .push(format!("{{group=\"{g}\"}} 0")),
            Err(e) => {
                tracing::warn!("metrics: group {group}: {}", berth_config::error_chain(&e));
                up = 0;
            }
        }
    }
    let help = [
        (
            "berth_fleetlock_etcd_up",
            "Whether etcd answered for every group (1) or not (0).",
        ),
        (
            "berth_fleetlock_config_slots",
            "Slots configured for the group on this server (used when the semaphore is created).",
        ),
        (
            "berth_fleetlock_semaphore_slots",
            "total_slots of the group's semaphore in etcd.",
        ),
        (
            "berth_fleetlock_semaphore_holders",
            "How many ids hold a slot of the group.",
        ),
        (
            "berth_fleetlock_holder",
            "One series per id holding a slot.",
        ),
    ];
    for (name, text) in help {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} gauge");
        if name == "berth_fleetlock_etcd_up" {
            let _ = writeln!(out, "{name} {up}");
        }
        for l in lines.get(name).into_iter().flatten() {
            let _ = writeln!(out, "{name}{l}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        if let Some(v) = v {
            m.insert("fleet-lock-protocol", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn requests_are_checked() {
        let ok =
            br#"{"client_params":{"group":"default","id":"c988d2509fdf5cdcbed39037c56406fb"}}"#;
        assert_eq!(
            parse_request(&h(Some("true")), ok).unwrap(),
            ClientParams {
                id: "c988d2509fdf5cdcbed39037c56406fb".into(),
                group: "default".into()
            }
        );
        for (headers, body, why) in [
            (h(None), &ok[..], "header"),
            (h(Some("yes")), &ok[..], "header"),
            (h(Some("TRUE")), &ok[..], "header"),
            (h(Some("true")), &b"{"[..], "EOF"),
            (h(Some("true")), &b"[]"[..], "invalid length"),
            (h(Some("true")), &b"7"[..], "invalid type"),
            (
                h(Some("true")),
                br#"{"client_params":{"group":"default","node_uuid":"x"}}"#,
                "missing field `id`",
            ),
            (
                h(Some("true")),
                br#"{"client_params":{"group":"","id":"x"}}"#,
                "empty client group",
            ),
            (
                h(Some("true")),
                br#"{"client_params":{"group":"a/b","id":"x"}}"#,
                "invalid group",
            ),
            (
                h(Some("true")),
                br#"{"client_params":{"group":"g","id":""}}"#,
                "empty client ID",
            ),
            (
                h(Some("true")),
                br#"{"client_params":{"group":"g","id":"a\nb"}}"#,
                "invalid client ID",
            ),
        ] {
            let e = parse_request(&headers, body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.kind, "invalid_client_identity");
            assert!(e.value.contains(why), "{} lacks {why}", e.value);
        }
        let long = format!(
            r#"{{"client_params":{{"group":"g","id":"{}"}}}}"#,
            "x".repeat(MAX_ID + 1)
        );
        assert!(parse_request(&h(Some("true")), long.as_bytes()).is_err());
    }

    #[test]
    fn error_body_is_kind_and_value() {
        let e = ApiError::new(500, "failed_lock_semaphore_full", "full");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"failed_lock_semaphore_full","value":"full"}"#
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
