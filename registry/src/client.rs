//! OCI distribution API client: manifests, indexes with platform selection, blobs with
//! verification, retries and resume, anonymous/basic/bearer auth, mirrors, pushes.
//!
//! Built on reqwest with rustls and hickory DNS: no OpenSSL, no glibc resolver (the OS
//! binaries are static), and IP-literal registries such as `10.0.2.100:5000` need no DNS.

use crate::digest::{Digest, Hasher};
use crate::manifest::{
    Descriptor, ImageManifest, Manifest, ManifestError, Platform, ACCEPT_MANIFESTS,
    MAX_MANIFEST_BYTES,
};
use crate::progress::{Progress, ProgressEvent};
use crate::reference::Reference;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Registry credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (sent as Basic, or exchanged for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
}

/// Settings for one registry host (`host[:port]`).
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM) for this registry's TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// Credentials; anonymous when `None`.
    pub credentials: Option<Credentials>,
    /// Mirror hosts tried, in order, before this registry when pulling.
    pub mirrors: Vec<String>,
}

/// Errors of the client. Each names the registry and what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect (DNS, refused, timeout).
    #[error("cannot reach registry {registry}: check the address, that the registry is running, and the network")]
    Unreachable {
        /// Host.
        registry: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS with registry {registry} failed: trust its CA (ca_pem) or, for a plain-HTTP registry, mark it insecure")]
    Tls {
        /// Host.
        registry: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("registry {registry} answered {status} for {what}: {hint}")]
    Status {
        /// Host.
        registry: String,
        /// What was requested.
        what: String,
        /// HTTP status.
        status: u16,
        /// What to do about it.
        hint: &'static str,
    },
    /// The transfer broke off (after retries).
    #[error("transfer of {what} from {registry} failed")]
    Transfer {
        /// Host.
        registry: String,
        /// What was being transferred.
        what: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// A blob's content does not match its digest.
    #[error("blob {expected} is corrupt: its content hashes to {actual} ({len} bytes); it was discarded")]
    DigestMismatch {
        /// Digest asked for.
        expected: Digest,
        /// Digest received.
        actual: Digest,
        /// Bytes received.
        len: u64,
    },
    /// A blob is shorter or longer than its descriptor says.
    #[error("blob {digest} from {registry} has the wrong size: expected {expected} bytes, got {got}; it was discarded")]
    SizeMismatch {
        /// Host.
        registry: String,
        /// Digest.
        digest: Digest,
        /// Size in the descriptor.
        expected: u64,
        /// Bytes received (at least).
        got: u64,
    },
    /// A manifest could not be parsed.
    #[error("manifest of {reference} is invalid")]
    Manifest {
        /// Reference.
        reference: String,
        /// Cause.
        #[source]
        source: ManifestError,
    },
    /// An index has no entry for the wanted platform.
    #[error("{reference} has no image for {wanted} (it offers: {available}); pick one of those platforms or use an image built for {wanted}")]
    NoPlatform {
        /// Reference.
        reference: String,
        /// Platform wanted.
        wanted: String,
        /// Platforms offered.
        available: String,
    },
    /// A single-platform image is for another platform.
    #[error("{reference} is an image for {found}, not {wanted}; use an image built for {wanted}")]
    WrongPlatform {
        /// Reference.
        reference: String,
        /// Platform wanted.
        wanted: String,
        /// Platform of the image.
        found: String,
    },
    /// A registry response we cannot use (bad token answer, missing Location, ...).
    #[error("registry {registry} sent an unusable response for {what}: {detail}")]
    Protocol {
        /// Host.
        registry: String,
        /// What was requested.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// Local I/O while pushing from a file.
    #[error("cannot read {path} for upload")]
    Io {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The TLS configuration itself is unusable.
    #[error("cannot set up the HTTP client for {registry} (bad ca_pem?)")]
    Setup {
        /// Host.
        registry: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
}

fn status_hint(s: StatusCode) -> &'static str {
    match s.as_u16() {
        401 => "authentication failed; check the credentials for this registry",
        403 => "access denied; these credentials may not pull or push this repository",
        404 => "not found; check the repository name and tag (or digest)",
        429 => "rate-limited; try again later or configure a mirror",
        416 => "bad range request; retry the pull",
        500..=599 => "the registry failed; try again later",
        _ => "unexpected answer",
    }
}

/// What a manifest resolution produced.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The index, if the reference pointed at one: (raw bytes, digest).
    pub index: Option<(Bytes, Digest)>,
    /// The platform manifest's raw bytes.
    pub manifest_bytes: Bytes,
    /// Its digest.
    pub manifest_digest: Digest,
    /// Parsed.
    pub manifest: ImageManifest,
}

#[derive(Clone)]
enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Inner {
    default: RegistryConfig,
    registries: HashMap<String, RegistryConfig>,
    http: Mutex<HashMap<String, reqwest::Client>>,
    schemes: Mutex<HashMap<String, AuthScheme>>,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
    retries: u32,
}

/// Registry client. Cheap to clone; share one per process (it caches tokens).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Size of the chunks in a chunked upload, and the limit for monolithic ones.
pub const UPLOAD_CHUNK: u64 = 16 << 20;

impl Client {
    /// A client with per-host settings and defaults for every other host.
    pub fn new(registries: HashMap<String, RegistryConfig>, default: RegistryConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                default,
                registries,
                http: Mutex::new(HashMap::new()),
                schemes: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                retries: 4,
            }),
        }
    }

    /// Settings that apply to `host`.
    pub fn config(&self, host: &str) -> &RegistryConfig {
        let alias = if host == "registry-1.docker.io" {
            crate::reference::DOCKER_HUB
        } else {
            host
        };
        self.inner
            .registries
            .get(host)
            .or_else(|| self.inner.registries.get(alias))
            .unwrap_or(&self.inner.default)
    }

    fn http(&self, host: &str) -> Result<reqwest::Client, ClientError> {
        let mut map = self.inner.http.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(host) {
            return Ok(c.clone());
        }
        let cfg = self.config(host);
        let setup = |source| ClientError::Setup {
            registry: host.to_string(),
            source,
        };
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .hickory_dns(true)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("berth-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(setup)? {
                b = b.add_root_certificate(cert);
            }
        }
        let c = b.build().map_err(setup)?;
        map.insert(host.to_string(), c.clone());
        Ok(c)
    }

    fn base(&self, host: &str) -> String {
        let scheme = if self.config(host).insecure {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    fn classify(host: &str, e: reqwest::Error) -> ClientError {
        let chain = format!("{e:?}").to_ascii_lowercase();
        if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake") {
            ClientError::Tls {
                registry: host.to_string(),
                source: e,
            }
        } else {
            ClientError::Unreachable {
                registry: host.to_string(),
                source: e,
            }
        }
    }

    fn scheme(&self, host: &str) -> Option<AuthScheme> {
        self.inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    fn cached_auth(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        let scheme = self
            .inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()?;
        match scheme {
            AuthScheme::Basic => self.basic_header(host),
            AuthScheme::Bearer { .. } => {
                let tokens = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
                let (tok, exp) = tokens.get(&(host.to_string(), scope.to_string()))?;
                if *exp > Instant::now() {
                    HeaderValue::from_str(&format!("Bearer {tok}")).ok()
                } else {
                    None
                }
            }
        }
    }

    fn basic_header(&self, host: &str) -> Option<HeaderValue> {
        use base64::Engine as _;
        let Credentials::Basic { username, password } = self.config(host).credentials.as_ref()?;
        let enc =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        HeaderValue::from_str(&format!("Basic {enc}")).ok()
    }

    /// Answer a WWW-Authenticate challenge. Returns false when there is nothing to try.
    async fn authenticate(
        &self,
        host: &str,
        scope: &str,
        challenge: &str,
    ) -> Result<bool, ClientError> {
        let (kind, params) = parse_challenge(challenge);
        if kind.eq_ignore_ascii_case("basic") {
            if self.config(host).credentials.is_none() {
                return Ok(false);
            }
            self.inner
                .schemes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(host.to_string(), AuthScheme::Basic);
            return Ok(true);
        }
        if !kind.eq_ignore_ascii_case("bearer") {
            return Ok(false);
        }
        let Some(realm) = params.get("realm").cloned() else {
            return Err(ClientError::Protocol {
                registry: host.to_string(),
                what: "authentication".into(),
                detail: "bearer challenge without a realm".into(),
            });
        };
        let service = params.get("service").cloned();
        self.inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                host.to_string(),
                AuthScheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                },
            );
        self.fetch_token(host, &realm, service.as_deref(), scope)
            .await?;
        Ok(true)
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(), ClientError> {
        let proto = |detail: String| ClientError::Protocol {
            registry: host.to_string(),
            what: format!("a token from {realm}"),
            detail,
        };
        let mut url = Url::parse(realm).map_err(|e| proto(format!("bad realm URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let realm_host = url.host_str().unwrap_or(host).to_string();
        let http = self.http(host)?;
        let mut req = http.get(url.clone());
        if let Some(h) = self.basic_header(host) {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Self::classify(&realm_host, e))?;
        if !resp.status().is_success() {
            return Err(ClientError::Status {
                registry: host.to_string(),
                what: format!("a token for {scope}"),
                status: resp.status().as_u16(),
                hint: status_hint(resp.status()),
            });
        }
        #[derive(serde::Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Self::classify(&realm_host, e))?;
        let t: Tok =
            serde_json::from_slice(&body).map_err(|e| proto(format!("bad token JSON: {e}")))?;
        let tok = t
            .token
            .or(t.access_token)
            .ok_or_else(|| proto("no token in the answer".into()))?;
        // Renew a little early; the spec's default lifetime is 60 s.
        let life = t.expires_in.unwrap_or(60).max(10) - 5;
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (host.to_string(), scope.to_string()),
                (tok, Instant::now() + Duration::from_secs(life)),
            );
        Ok(())
    }

    /// Send a request with auth, retries (connection errors, 429, 5xx) and one
    /// re-authentication on 401. `make` builds the request for each attempt.
    async fn send<F>(
        &self,
        host: &str,
        scope: &str,
        what: &str,
        make: F,
    ) -> Result<reqwest::Response, ClientError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let http = self.http(host)?;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            let mut req = make(&http);
            if let Some(h) = self.cached_auth(host, scope) {
                req = req.header(AUTHORIZATION, h);
            } else if let Some(AuthScheme::Bearer { realm, service }) = self.scheme(host) {
                // Known bearer registry, new scope: get the token up front.
                self.fetch_token(host, &realm, service.as_deref(), scope)
                    .await?;
                if let Some(h) = self.cached_auth(host, scope) {
                    req = req.header(AUTHORIZATION, h);
                }
            }
            let result = req.send().await;
            let retry_after = match result {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if self.authenticate(host, scope, &challenge).await? {
                        continue;
                    }
                    return Err(status_err(host, what, resp.status()));
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    if attempt >= self.inner.retries {
                        return Err(status_err(host, what, resp.status()));
                    }
                    resp.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(10)))
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if attempt >= self.inner.retries
                        || !(e.is_connect() || e.is_timeout() || e.is_request())
                    {
                        return Err(Self::classify(host, e));
                    }
                    let err = Self::classify(host, e);
                    if matches!(err, ClientError::Tls { .. }) {
                        return Err(err);
                    }
                    tracing::debug!(%host, "retrying after: {err}");
                    None
                }
            };
            let backoff = retry_after.unwrap_or(Duration::from_millis(200 << attempt.min(5)));
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    fn hosts(&self, r: &Reference) -> Vec<String> {
        let mut v = self.config(&r.registry).mirrors.clone();
        v.push(r.api_host().to_string());
        v
    }

    /// Fetch a manifest or index (raw bytes, digest, parsed). A reference by digest is
    /// verified against it.
    pub async fn get_manifest(
        &self,
        r: &Reference,
    ) -> Result<(Bytes, Digest, Manifest), ClientError> {
        let mut last = None;
        for host in self.hosts(r) {
            match self.get_manifest_from(&host, r).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::debug!(%host, "manifest fetch failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol {
            registry: r.registry.clone(),
            what: r.to_string(),
            detail: "no registry to ask".into(),
        }))
    }

    async fn get_manifest_from(
        &self,
        host: &str,
        r: &Reference,
    ) -> Result<(Bytes, Digest, Manifest), ClientError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base(host),
            r.repository,
            r.object()
        );
        let what = format!("manifest {r}");
        let resp = self
            .send(host, &pull_scope(&r.repository), &what, |c| {
                c.get(&url).header(ACCEPT, ACCEPT_MANIFESTS)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_err(host, &what, resp.status()));
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(host, &what, resp, MAX_MANIFEST_BYTES).await?;
        let digest = Digest::of(&body);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(ClientError::DigestMismatch {
                    expected: want.clone(),
                    actual: digest,
                    len: body.len() as u64,
                });
            }
        }
        let m = Manifest::parse(&body, ct.as_deref()).map_err(|source| ClientError::Manifest {
            reference: r.to_string(),
            source,
        })?;
        Ok((body, digest, m))
    }

    /// Resolve a reference to one platform's image manifest (following an index).
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, ClientError> {
        let (bytes, digest, m) = self.get_manifest(r).await?;
        match m {
            Manifest::Image(manifest) => Ok(Resolved {
                index: None,
                manifest_bytes: bytes,
                manifest_digest: digest,
                manifest,
            }),
            Manifest::Index(index) => {
                let Some(d) = index.select(platform) else {
                    return Err(ClientError::NoPlatform {
                        reference: r.to_string(),
                        wanted: platform.to_string(),
                        available: index.platforms().join(", "),
                    });
                };
                let child = r.with_digest(&d.digest);
                let (mb, md, mm) = self.get_manifest(&child).await?;
                let Manifest::Image(manifest) = mm else {
                    return Err(ClientError::Protocol {
                        registry: r.registry.clone(),
                        what: child.to_string(),
                        detail: "an index entry points at another index".into(),
                    });
                };
                Ok(Resolved {
                    index: Some((bytes, digest)),
                    manifest_bytes: mb,
                    manifest_digest: md,
                    manifest,
                })
            }
        }
    }

    /// Fetch a small blob (a config) fully into memory, verified.
    pub async fn get_blob_bytes(
        &self,
        r: &Reference,
        d: &Descriptor,
    ) -> Result<Bytes, ClientError> {
        if d.size > MAX_MANIFEST_BYTES as u64 {
            return Err(ClientError::Protocol {
                registry: r.registry.clone(),
                what: d.digest.to_string(),
                detail: format!("config blob of {} bytes is over the 4 MiB limit", d.size),
            });
        }
        let mut s = self.blob_stream(r, d);
        let mut out = Vec::with_capacity(d.size as usize);
        while let Some(c) = s.next_chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }

    /// Stream a blob: download with retries and resume (HTTP Range), mirrors first.
    /// The stream verifies size and digest; the final [`BlobStream::next_chunk`] fails
    /// if they do not match, so treat data as provisional until it returns `Ok(None)`.
    pub fn blob_stream(&self, r: &Reference, d: &Descriptor) -> BlobStream {
        self.blob_stream_with(r, d, None)
    }

    /// [`Client::blob_stream`] reporting [`ProgressEvent::Bytes`].
    pub fn blob_stream_with(
        &self,
        r: &Reference,
        d: &Descriptor,
        progress: Option<Progress>,
    ) -> BlobStream {
        self.blob_stream_from(r, d, Hasher::new(), progress)
    }

    /// Resume a blob download: `prefix` has hashed the first `prefix.len()` bytes of the
    /// blob (data the caller already has, e.g. read back from where it was written), and
    /// the stream yields only the bytes after them (HTTP Range). The final chunk still
    /// verifies the digest and size of the whole blob.
    pub fn blob_stream_from(
        &self,
        r: &Reference,
        d: &Descriptor,
        prefix: Hasher,
        progress: Option<Progress>,
    ) -> BlobStream {
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let r = r.clone();
        let d2 = d.clone();
        let start = prefix.len();
        tokio::spawn(async move {
            if let Err(e) = me.pump_blob(&r, &d2, start, &tx, progress).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        BlobStream {
            rx,
            hasher: prefix,
            digest: d.digest.clone(),
            size: d.size,
            done: false,
        }
    }

    async fn pump_blob(
        &self,
        r: &Reference,
        d: &Descriptor,
        start: u64,
        tx: &mpsc::Sender<Result<Bytes, ClientError>>,
        progress: Option<Progress>,
    ) -> Result<(), ClientError> {
        let hosts = self.hosts(r);
        let mut offset = start;
        if offset >= d.size {
            return Ok(());
        }
        let mut failures = 0u32;
        let mut hi = 0usize;
        let what = format!("blob {}", d.digest);
        loop {
            let host = hosts[hi.min(hosts.len() - 1)].clone();
            let url = format!(
                "{}/v2/{}/blobs/{}",
                self.base(&host),
                r.repository,
                d.digest
            );
            let resp = self
                .send(&host, &pull_scope(&r.repository), &what, |c| {
                    let rq = c.get(&url);
                    if offset > 0 {
                        rq.header("range", format!("bytes={offset}-"))
                    } else {
                        rq
                    }
                })
                .await;
            let resp = match resp {
                Ok(resp) if resp.status().is_success() => resp,
                Ok(resp) if offset > 0 && resp.status() == StatusCode::RANGE_NOT_SATISFIABLE => {
                    // The server has no bytes past what we got: the blob is short.
                    return Err(ClientError::SizeMismatch {
                        registry: host,
                        digest: d.digest.clone(),
                        expected: d.size,
                        got: offset,
                    });
                }
                Ok(resp) if offset == 0 && hi + 1 < hosts.len() => {
                    tracing::debug!(%host, status = %resp.status(), "mirror failed; next");
                    hi += 1;
                    continue;
                }
                Ok(resp) => return Err(status_err(&host, &what, resp.status())),
                Err(e) if offset == 0 && hi + 1 < hosts.len() => {
                    tracing::debug!(%host, "mirror failed: {e}; next");
                    hi += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A server that ignores Range restarts from 0: skip what we already have.
            let mut skip = if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                offset
            } else {
                0
            };
            let mut stream = resp.bytes_stream();
            let mut broke = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(mut chunk) => {
                        if skip > 0 {
                            let k = skip.min(chunk.len() as u64);
                            chunk = chunk.slice(k as usize..);
                            skip -= k;
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        offset += chunk.len() as u64;
                        if offset > d.size {
                            return Err(ClientError::SizeMismatch {
                                registry: host,
                                digest: d.digest.clone(),
                                expected: d.size,
                                got: offset,
                            });
                        }
                        if let Some(p) = &progress {
                            p(ProgressEvent::Bytes {
                                digest: d.digest.clone(),
                                n: chunk.len() as u64,
                            });
                        }
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // consumer gone
                        }
                    }
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                }
            }
            if offset == d.size && broke.is_none() {
                return Ok(());
            }
            failures += 1;
            if failures > self.inner.retries {
                return Err(match broke {
                    Some(source) => ClientError::Transfer {
                        registry: host,
                        what,
                        source,
                    },
                    None => ClientError::SizeMismatch {
                        registry: host,
                        digest: d.digest.clone(),
                        expected: d.size,
                        got: offset,
                    },
                });
            }
            tracing::info!(digest = %d.digest, offset, "blob transfer interrupted; resuming");
            tokio::time::sleep(Duration::from_millis(200 << failures.min(5))).await;
        }
    }

    /// Whether `r`'s repository already has blob `digest`.
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, ClientError> {
        let host = r.api_host().to_string();
        let url = format!("{}/v2/{}/blobs/{}", self.base(&host), r.repository, digest);
        let what = format!("blob {digest}");
        let resp = self
            .send(&host, &push_scope(&r.repository), &what, |c| c.head(&url))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_err(&host, &what, s)),
        }
    }

    /// Try a cross-repository mount of `digest` from `from_repo` (same registry).
    /// Returns true when mounted; false when the registry declined (upload instead).
    pub async fn mount_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        from_repo: &str,
    ) -> Result<bool, ClientError> {
        let host = r.api_host().to_string();
        let base = self.base(&host);
        let url = format!(
            "{base}/v2/{}/blobs/uploads/?mount={digest}&from={from_repo}",
            r.repository
        );
        let scope = format!("{} {}", push_scope(&r.repository), pull_scope(from_repo));
        let what = format!("mount of {digest} from {from_repo}");
        let resp = self.send(&host, &scope, &what, |c| c.post(&url)).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // An upload session was opened instead; cancel it.
                if let Some(loc) = location(&base, &resp) {
                    let _ = self
                        .send(&host, &push_scope(&r.repository), &what, |c| {
                            c.delete(loc.clone())
                        })
                        .await;
                }
                Ok(false)
            }
            s => Err(status_err(&host, &what, s)),
        }
    }

    /// Upload a blob from a file: monolithic up to [`UPLOAD_CHUNK`], chunked above.
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        d: &Descriptor,
        path: &std::path::Path,
        progress: Option<Progress>,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncReadExt;
        let ioe = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let host = r.api_host().to_string();
        let base = self.base(&host);
        let scope = push_scope(&r.repository);
        let what = format!("upload of {}", d.digest);
        let start = format!("{base}/v2/{}/blobs/uploads/", r.repository);
        let resp = self.send(&host, &scope, &what, |c| c.post(&start)).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_err(&host, &what, resp.status()));
        }
        let mut loc = location(&base, &resp).ok_or_else(|| ClientError::Protocol {
            registry: host.clone(),
            what: what.clone(),
            detail: "no Location header".into(),
        })?;
        let mut file = tokio::fs::File::open(path).await.map_err(ioe)?;
        let report = |n: u64| {
            if let Some(p) = &progress {
                p(ProgressEvent::Bytes {
                    digest: d.digest.clone(),
                    n,
                })
            }
        };
        let mut finish = loc.clone();
        finish
            .query_pairs_mut()
            .append_pair("digest", &d.digest.to_string());
        if d.size <= UPLOAD_CHUNK {
            let mut buf = Vec::with_capacity(d.size as usize);
            file.read_to_end(&mut buf).await.map_err(ioe)?;
            let body = Bytes::from(buf);
            let resp = self
                .send(&host, &scope, &what, |c| {
                    c.put(finish.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(body.clone())
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(status_err(&host, &what, resp.status()));
            }
            report(d.size);
            return Ok(());
        }
        let mut sent = 0u64;
        while sent < d.size {
            let n = UPLOAD_CHUNK.min(d.size - sent);
            let mut buf = vec![0u8; n as usize];
            file.read_exact(&mut buf).await.map_err(ioe)?;
            let body = Bytes::from(buf);
            let range = format!("{}-{}", sent, sent + n - 1);
            let l = loc.clone();
            let resp = self
                .send(&host, &scope, &what, |c| {
                    c.patch(l.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("content-range", range.clone())
                        .body(body.clone())
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_err(&host, &what, resp.status()));
            }
            if let Some(next) = location(&base, &resp) {
                loc = next;
            }
            sent += n;
            report(n);
        }
        let mut finish = loc.clone();
        finish
            .query_pairs_mut()
            .append_pair("digest", &d.digest.to_string());
        let resp = self
            .send(&host, &scope, &what, |c| {
                c.put(finish.clone()).header("content-length", "0")
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_err(&host, &what, resp.status()));
        }
        Ok(())
    }

    /// Push a manifest or index under `r`'s tag (or digest). Returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, ClientError> {
        let host = r.api_host().to_string();
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base(&host),
            r.repository,
            r.object()
        );
        let what = format!("manifest {r}");
        let resp = self
            .send(&host, &push_scope(&r.repository), &what, |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_err(&host, &what, resp.status()));
        }
        Ok(Digest::of(&bytes))
    }
}

fn status_err(host: &str, what: &str, s: StatusCode) -> ClientError {
    ClientError::Status {
        registry: host.to_string(),
        what: what.to_string(),
        status: s.as_u16(),
        hint: status_hint(s),
    }
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn location(base: &str, resp: &reqwest::Response) -> Option<Url> {
    let loc = resp.headers().get("location")?.to_str().ok()?;
    Url::parse(base).ok()?.join(loc).ok()
}

async fn read_capped(
    host: &str,
    what: &str,
    resp: reqwest::Response,
    cap: usize,
) -> Result<Bytes, ClientError> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.map_err(|source| ClientError::Transfer {
            registry: host.to_string(),
            what: what.to_string(),
            source,
        })?;
        if out.len() + c.len() > cap {
            return Err(ClientError::Protocol {
                registry: host.to_string(),
                what: what.to_string(),
                detail: format!("larger than {cap} bytes"),
            });
        }
        out.extend_from_slice(&c);
    }
    Ok(out.into())
}

/// Parse `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (kind, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, after)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(k, v.to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    (kind.to_string(), params)
}

/// A verified blob download. See [`Client::blob_stream`].
pub struct BlobStream {
    rx: mpsc::Receiver<Result<Bytes, ClientError>>,
    hasher: Hasher,
    digest: Digest,
    size: u64,
    done: bool,
}

impl BlobStream {
    /// The next chunk; `Ok(None)` once everything arrived and verified.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let item = self.rx.recv().await;
        self.step(item)
    }

    /// Blocking variant, for a blocking thread (never call it on an async task).
    pub fn blocking_next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let item = self.rx.blocking_recv();
        self.step(item)
    }

    fn step(
        &mut self,
        item: Option<Result<Bytes, ClientError>>,
    ) -> Result<Option<Bytes>, ClientError> {
        match item {
            Some(Ok(c)) => {
                self.hasher.update(&c);
                Ok(Some(c))
            }
            Some(Err(e)) => {
                self.done = true;
                Err(e)
            }
            None => {
                self.done = true;
                let h = std::mem::take(&mut self.hasher);
                let len = h.len();
                let actual = h.finish();
                if len != self.size || actual != self.digest {
                    return Err(ClientError::DigestMismatch {
                        expected: self.digest.clone(),
                        actual,
                        len,
                    });
                }
                Ok(None)
            }
        }
    }

    /// A blocking [`io::Read`] over the verified stream; errors (including a digest
    /// mismatch at the end) come out as `io::Error` wrapping the [`ClientError`].
    pub fn into_reader(self) -> BlobReader {
        BlobReader {
            stream: self,
            cur: Bytes::new(),
        }
    }
}

/// See [`BlobStream::into_reader`].
pub struct BlobReader {
    stream: BlobStream,
    cur: Bytes,
}

impl io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.stream.blocking_next_chunk() {
                Ok(Some(c)) => self.cur = c,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (k, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(k, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "reg");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (k, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(k, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }
}
