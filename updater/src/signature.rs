//! Signatures in cosign's key-based "simple signing" format, so `cosign sign --key` and
//! `cosign verify --key` interoperate with Berth.
//!
//! For a manifest digest `sha256:<hex>` in repository `R`, the signatures live in an OCI
//! image manifest tagged `sha256-<hex>.sig` in `R`. Each of its layers (media type
//! [`SIMPLESIGNING_MEDIA_TYPE`]) is a JSON payload ([`payload`]) naming the signed digest;
//! the layer's annotation [`SIGNATURE_ANNOTATION`] is the base64 of an ECDSA P-256 /
//! SHA-256 signature (ASN.1 DER) over the exact payload bytes. Keys are PEM: PKCS#8
//! private keys (`-----BEGIN PRIVATE KEY-----`, SEC1 `EC PRIVATE KEY` is read too) and
//! PKIX public keys (`-----BEGIN PUBLIC KEY-----`, like `cosign.pub`).
//!
//! What Berth signs: the digest of the tag's top manifest, i.e. the OS image index, so one
//! signature covers every architecture (and, through the digests inside, every config and
//! layer). Verification also accepts a signature on the per-arch manifest digest (what
//! `cosign sign` produces when pointed at one platform's manifest).

use base64::Engine as _;
use berth_registry::manifest::{OCI_CONFIG, OCI_MANIFEST};
use berth_registry::{Client, ClientError, Descriptor, Digest, ImageManifest, Manifest, Reference};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use std::collections::BTreeMap;

/// Media type of a signature layer.
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign image signature.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A key could not be parsed.
    #[error("{what} is not a PEM P-256 {kind} key")]
    Key {
        /// Where the key came from (a path or "config key 2").
        what: String,
        /// `public` or `private`.
        kind: &'static str,
    },
    /// Encoding a new key failed.
    #[error("cannot encode the new key")]
    Encode,
    /// Registry access failed.
    #[error("registry request for the signatures of {reference} failed")]
    Registry {
        /// Reference.
        reference: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// No signature manifest exists.
    #[error("{reference} ({digest}) is not signed: no {tag} in the repository; sign it with `berth-image sign` or `cosign sign --key`")]
    Unsigned {
        /// Reference.
        reference: String,
        /// Digest looked up.
        digest: Digest,
        /// Signature tag.
        tag: String,
    },
    /// Signatures exist but none verifies with a trusted key.
    #[error("{reference} ({digest}): none of its {count} signature(s) verifies with the {keys} trusted key(s){detail}")]
    Untrusted {
        /// Reference.
        reference: String,
        /// Digest.
        digest: Digest,
        /// Signatures seen.
        count: usize,
        /// Trusted keys tried.
        keys: usize,
        /// Why the last one failed.
        detail: String,
    },
    /// No trusted keys configured.
    #[error("no trusted update keys: add a PEM public key under /usr/lib/berth/keys/ or to update.trusted_keys")]
    NoKeys,
}

/// A trusted public key with a short id for messages (first 16 hex digits of the
/// SHA-256 of its DER encoding).
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// The key.
    pub key: VerifyingKey,
    /// Short id.
    pub id: String,
}

impl PublicKey {
    /// Parse a PEM PKIX public key; `what` names its source in errors.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, SignatureError> {
        let key =
            VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| SignatureError::Key {
                what: what.to_string(),
                kind: "public",
            })?;
        let der = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let id = Digest::of(&der).hex()[..16].to_string();
        Ok(Self { key, id })
    }
}

/// Parse a PEM private key (PKCS#8, or SEC1 `EC PRIVATE KEY`).
pub fn private_key_from_pem(pem: &str, what: &str) -> Result<SigningKey, SignatureError> {
    let pem = pem.trim();
    SigningKey::from_pkcs8_pem(pem)
        .or_else(|_| p256::SecretKey::from_sec1_pem(pem).map(SigningKey::from))
        .map_err(|_| SignatureError::Key {
            what: what.to_string(),
            kind: "private",
        })
}

/// A new key pair as (PKCS#8 private PEM, PKIX public PEM).
pub fn generate() -> Result<(String, String), SignatureError> {
    let sk = SigningKey::random(&mut rand_core::OsRng);
    let private = sk
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| SignatureError::Encode)?
        .to_string();
    let public = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| SignatureError::Encode)?;
    Ok((private, public))
}

/// The public PEM of a private key.
pub fn public_pem(sk: &SigningKey) -> Result<String, SignatureError> {
    sk.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| SignatureError::Encode)
}

/// The signature tag for a digest: `sha256-<hex>.sig`.
pub fn signature_tag(d: &Digest) -> String {
    format!("{}-{}.sig", d.algorithm(), d.hex())
}

/// The simple-signing payload for `digest` in `reference`'s repository (cosign's
/// `docker-reference` is the repository without tag or digest).
pub fn payload(reference: &Reference, digest: &Digest) -> Vec<u8> {
    let v = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{}", reference.registry, reference.repository)},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Sign payload bytes: base64 of the DER ECDSA signature.
pub fn sign_payload(sk: &SigningKey, payload: &[u8]) -> String {
    let sig: Signature = sk.sign(payload);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Why one signature layer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The signature does not verify with any trusted key.
    BadSignature,
    /// The payload verifies but names another digest (or is not a cosign payload).
    WrongPayload(String),
}

/// Check one payload + base64 signature against `keys` for `digest`. Returns the id of the
/// key that verified it.
pub fn verify_payload(
    payload: &[u8],
    sig_b64: &str,
    digest: &Digest,
    keys: &[PublicKey],
) -> Result<String, Rejected> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig_b64.trim())
        .map_err(|_| Rejected::BadSignature)?;
    let sig = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|_| Rejected::BadSignature)?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(payload, &sig).is_ok())
        .ok_or(Rejected::BadSignature)?;
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|_| Rejected::WrongPayload("payload is not JSON".into()))?;
    let ty = v["critical"]["type"].as_str().unwrap_or("");
    if ty != PAYLOAD_TYPE {
        return Err(Rejected::WrongPayload(format!("payload type {ty:?}")));
    }
    let named = v["critical"]["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or("");
    if named != digest.to_string() {
        return Err(Rejected::WrongPayload(format!(
            "the signed payload is for {named}, not {digest}"
        )));
    }
    Ok(key.id.clone())
}

/// One signature layer as stored.
#[derive(Debug, Clone)]
pub struct StoredSignature {
    /// Payload layer descriptor (its annotations hold the signature).
    pub layer: Descriptor,
    /// Payload bytes (verified against the layer digest).
    pub payload: Vec<u8>,
}

/// Fetch the signature manifest for `digest` (None when there is none) and its payloads.
pub async fn fetch(
    client: &Client,
    r: &Reference,
    digest: &Digest,
) -> Result<Option<(ImageManifest, Vec<StoredSignature>)>, SignatureError> {
    let reg = |source| SignatureError::Registry {
        reference: r.to_string(),
        source,
    };
    let sig_ref = Reference {
        tag: Some(signature_tag(digest)),
        digest: None,
        ..r.clone()
    };
    let m = match client.get_manifest(&sig_ref).await {
        Ok((_, _, Manifest::Image(m))) => m,
        Ok((_, _, Manifest::Index(_))) => return Ok(None),
        Err(ClientError::Status { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(reg(e)),
    };
    let mut out = Vec::new();
    for l in &m.layers {
        if l.media_type != SIMPLESIGNING_MEDIA_TYPE || l.size > 1 << 20 {
            continue;
        }
        let payload = client.get_blob_bytes(r, l).await.map_err(reg)?;
        out.push(StoredSignature {
            layer: l.clone(),
            payload: payload.to_vec(),
        });
    }
    Ok(Some((m, out)))
}

/// Verify that `digest` in `r`'s repository carries a signature by one of `keys`.
/// Returns the id of the key that verified.
pub async fn verify(
    client: &Client,
    r: &Reference,
    digest: &Digest,
    keys: &[PublicKey],
) -> Result<String, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let Some((_, sigs)) = fetch(client, r, digest).await? else {
        return Err(SignatureError::Unsigned {
            reference: r.to_string(),
            digest: digest.clone(),
            tag: signature_tag(digest),
        });
    };
    let mut detail = String::new();
    for s in &sigs {
        let Some(sig) = s.layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        match verify_payload(&s.payload, sig, digest, keys) {
            Ok(id) => return Ok(id),
            Err(Rejected::WrongPayload(w)) => detail = format!(": {w}"),
            Err(Rejected::BadSignature) => {}
        }
    }
    Err(SignatureError::Untrusted {
        reference: r.to_string(),
        digest: digest.clone(),
        count: sigs.len(),
        keys: keys.len(),
        detail,
    })
}

/// cosign's config blob for a signature manifest (an image config whose one "layer" is
/// the payload).
fn sig_config(layer_digests: &[Digest]) -> Vec<u8> {
    let v = serde_json::json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": layer_digests.iter().map(|_| serde_json::json!({"created": "0001-01-01T00:00:00Z"})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layer_digests.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        "config": {},
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Sign `digest` in `r`'s repository with `sk` and push the signature (added to any
/// signatures already there; signing twice with the same key is a no-op). Returns the
/// signature manifest's reference.
pub async fn sign(
    client: &Client,
    r: &Reference,
    digest: &Digest,
    sk: &SigningKey,
) -> Result<Reference, SignatureError> {
    let reg = |source| SignatureError::Registry {
        reference: r.to_string(),
        source,
    };
    let payload = payload(r, digest);
    let sig = sign_payload(sk, &payload);
    let payload_digest = Digest::of(&payload);
    let mut layers: Vec<Descriptor> = match fetch(client, r, digest).await? {
        Some((m, _)) => m.layers,
        None => Vec::new(),
    };
    let me = PublicKey {
        key: *sk.verifying_key(),
        id: String::new(),
    };
    let sig_ref = Reference {
        tag: Some(signature_tag(digest)),
        digest: None,
        ..r.clone()
    };
    // Drop earlier signatures by this key (re-signing replaces them).
    layers.retain(|l| {
        let mine = l.digest == payload_digest
            && l.annotations.get(SIGNATURE_ANNOTATION).is_some_and(|s| {
                verify_payload(&payload, s, digest, std::slice::from_ref(&me)).is_ok()
            });
        !mine
    });
    let mut annotations = BTreeMap::new();
    annotations.insert(SIGNATURE_ANNOTATION.to_string(), sig);
    layers.push(Descriptor {
        annotations,
        ..Descriptor::new(
            SIMPLESIGNING_MEDIA_TYPE,
            payload_digest.clone(),
            payload.len() as u64,
        )
    });
    let tmp = tempfile::NamedTempFile::new().map_err(|source| SignatureError::Registry {
        reference: r.to_string(),
        source: ClientError::Io {
            path: std::env::temp_dir(),
            source,
        },
    })?;
    push_bytes(client, r, &payload, tmp.path())
        .await
        .map_err(reg)?;
    let digests: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
    let cfg = sig_config(&digests);
    push_bytes(client, r, &cfg, tmp.path()).await.map_err(reg)?;
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor::new(OCI_CONFIG, Digest::of(&cfg), cfg.len() as u64),
        layers,
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&m).unwrap_or_default();
    client
        .push_manifest(&sig_ref, bytes.into(), OCI_MANIFEST)
        .await
        .map_err(reg)?;
    Ok(sig_ref)
}

/// Push a small blob from memory (through a scratch file: the client uploads files).
pub async fn push_bytes(
    client: &Client,
    r: &Reference,
    data: &[u8],
    scratch: &std::path::Path,
) -> Result<Descriptor, ClientError> {
    let d = Descriptor::new(
        "application/octet-stream",
        Digest::of(data),
        data.len() as u64,
    );
    if client.blob_exists(r, &d.digest).await? {
        return Ok(d);
    }
    std::fs::write(scratch, data).map_err(|source| ClientError::Io {
        path: scratch.to_path_buf(),
        source,
    })?;
    client.push_blob_file(r, &d, scratch, None).await?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let (private, public) = generate().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let sk = private_key_from_pem(&private, "test").unwrap();
        let pk = PublicKey::from_pem(&public, "test").unwrap();
        assert_eq!(pk.id.len(), 16);
        let r = Reference::parse("127.0.0.1:5000/berth/os:stable").unwrap();
        let d = Digest::of(b"index");
        let p = payload(&r, &d);
        let text = String::from_utf8(p.clone()).unwrap();
        assert!(text.contains(r#""docker-reference":"127.0.0.1:5000/berth/os""#));
        assert!(text.contains(&format!(r#""docker-manifest-digest":"{d}""#)));
        assert!(text.contains(r#""type":"cosign container image signature""#));
        let sig = sign_payload(&sk, &p);
        assert_eq!(
            verify_payload(&p, &sig, &d, std::slice::from_ref(&pk)),
            Ok(pk.id.clone())
        );
        // Another digest, another key, a changed payload: refused.
        assert!(matches!(
            verify_payload(&p, &sig, &Digest::of(b"other"), std::slice::from_ref(&pk)),
            Err(Rejected::WrongPayload(_))
        ));
        let (_, other_pub) = generate().unwrap();
        let other = PublicKey::from_pem(&other_pub, "other").unwrap();
        assert_eq!(
            verify_payload(&p, &sig, &d, &[other]),
            Err(Rejected::BadSignature)
        );
        let mut p2 = p.clone();
        p2[5] ^= 1;
        assert_eq!(
            verify_payload(&p2, &sig, &d, std::slice::from_ref(&pk)),
            Err(Rejected::BadSignature)
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
        assert!(PublicKey::from_pem("junk", "x").is_err());
        assert!(private_key_from_pem(&public, "x").is_err());
    }
}
