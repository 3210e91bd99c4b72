//! Signatures in cosign's key-based "simple signing" format, so `cosign sign --key` and
//! `cosign verify --key` interoperate with Berth.
//!
//! For a manifest digest `sha256:<hex>` in repository `R`, the signatures live in an OCI
//! image manifest tagged `sha256-<hex>.sig` in `R`. Each of its layers (media type
//! [`SIMPLESIGNING_MEDIA_TYPE`]) is a JSON payload ([`payload`]) naming the signed digest;
//! the layer's annotation [`SIGNATURE_ANNOTATION`] is the base64 of an ECDSA P-256 /
//! SHA-256 signature (ASN.1 DER) over the exact payload bytes. The payload names the
//! repository too (`critical.identity.docker-reference`, [`identity`]); a signature is
//! accepted only for the repository the update is fetched from, so a signed image
//! re-hosted elsewhere with its signature is refused ([`SignatureError::WrongIdentity`]).
//! Keys are PEM: PKCS#8 private keys (`-----BEGIN PRIVATE KEY-----`, SEC1 `EC PRIVATE
//! KEY` is read too) and PKIX public keys (`-----BEGIN PUBLIC KEY-----`, like
//! `cosign.pub`).
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
    /// A trusted key signed this digest, but for another repository: the payload's
    /// `critical.identity.docker-reference` is not the repository the update comes from
    /// (an image re-hosted together with its signature, or a signature copied over).
    #[error("{reference} ({digest}) is signed by trusted key {key} for the repository {signed_for}, not for {expected}; re-sign it for {expected} (`berth-image sign`, or `berth-image sign --identity` when the node reaches the registry under another name)")]
    WrongIdentity {
        /// Reference.
        reference: String,
        /// Digest.
        digest: Digest,
        /// Key id that made the signature.
        key: String,
        /// The repository the signature names.
        signed_for: String,
        /// The repository the update comes from.
        expected: String,
    },
    /// The identity to sign for is not a repository reference.
    #[error("{identity:?} is not a repository (registry host[:port]/path) to sign for")]
    BadIdentity {
        /// What was given.
        identity: String,
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

/// The identity a signature for `r` names: cosign's `docker-reference`, the repository
/// `registry host[:port]/path` without tag or digest.
pub fn identity(r: &Reference) -> String {
    format!("{}/{}", r.registry.to_ascii_lowercase(), r.repository)
}

/// `docker-reference` of a payload in the form [`identity`] gives, so that equal
/// repositories compare equal: the host is case-insensitive, and a tag or digest (which
/// cosign never writes there) is dropped. `None` when it is not a repository reference.
/// There is no default registry to fill in: `update.source` always names its registry,
/// so a payload naming `berth/os` (Docker Hub's short form) simply does not match.
pub fn normalize_identity(docker_reference: &str) -> Option<String> {
    let s = docker_reference.trim();
    let first = s.split('/').next().unwrap_or("");
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        // No registry host: not a name the configured source can have.
        return None;
    }
    Reference::parse(s).ok().map(|r| identity(&r))
}

/// The simple-signing payload for `digest` in `reference`'s repository (cosign's
/// `docker-reference` is the repository without tag or digest).
pub fn payload(reference: &Reference, digest: &Digest) -> Vec<u8> {
    payload_for(&identity(reference), digest)
}

/// The simple-signing payload for `digest` naming the repository `identity` (cosign's
/// `--sign-container-identity`: for a registry that nodes reach under another name).
pub fn payload_for(identity: &str, digest: &Digest) -> Vec<u8> {
    let v = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": identity},
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
    /// The payload verifies and names the digest, but for another repository.
    WrongIdentity {
        /// Id of the key that made it.
        key: String,
        /// The payload's `docker-reference`, as written.
        signed_for: String,
    },
}

/// Check one payload + base64 signature against `keys` for `digest` in the repository
/// `identity` (see [`identity`]). Returns the id of the key that verified it.
///
/// The payload must name both the digest and the repository: a digest alone would let
/// anyone re-host a signed image (with its signature manifest) under another repository
/// and have it accepted there, e.g. a build meant for another product line or channel
/// signed with the same key.
pub fn verify_payload(
    payload: &[u8],
    sig_b64: &str,
    digest: &Digest,
    identity: &str,
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
    let signed_for = v["critical"]["identity"]["docker-reference"]
        .as_str()
        .unwrap_or("");
    let expected = normalize_identity(identity);
    if expected.is_none() || normalize_identity(signed_for) != expected {
        return Err(Rejected::WrongIdentity {
            key: key.id.clone(),
            signed_for: signed_for.to_string(),
        });
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

/// Verify that `digest` in `r`'s repository carries a signature by one of `keys` that
/// names that repository ([`identity`]). Returns the id of the key that verified.
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
    let expected = identity(r);
    let mut detail = String::new();
    let mut wrong_identity = None;
    for s in &sigs {
        let Some(sig) = s.layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        match verify_payload(&s.payload, sig, digest, &expected, keys) {
            Ok(id) => return Ok(id),
            Err(Rejected::WrongPayload(w)) => detail = format!(": {w}"),
            Err(Rejected::WrongIdentity { key, signed_for }) => {
                wrong_identity = Some((key, signed_for))
            }
            Err(Rejected::BadSignature) => {}
        }
    }
    // A trusted key's signature on this very digest for another repository says more
    // than "untrusted": name both repositories.
    if let Some((key, signed_for)) = wrong_identity {
        return Err(SignatureError::WrongIdentity {
            reference: r.to_string(),
            digest: digest.clone(),
            key,
            signed_for,
            expected,
        });
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
    sign_as(client, r, digest, sk, &identity(r)).await
}

/// [`sign`], with the payload naming the repository `identity` instead of `r`'s: for a
/// registry that the nodes reach under another name than the signer does (cosign's
/// `--sign-container-identity`). Nodes accept it only when `identity` is the repository
/// of their `update.source`.
pub async fn sign_as(
    client: &Client,
    r: &Reference,
    digest: &Digest,
    sk: &SigningKey,
    identity: &str,
) -> Result<Reference, SignatureError> {
    let reg = |source| SignatureError::Registry {
        reference: r.to_string(),
        source,
    };
    let identity = normalize_identity(identity).ok_or_else(|| SignatureError::BadIdentity {
        identity: identity.to_string(),
    })?;
    let identity = identity.as_str();
    let payload = payload_for(identity, digest);
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
                verify_payload(&payload, s, digest, identity, std::slice::from_ref(&me)).is_ok()
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

    const OS: &str = "127.0.0.1:5000/berth/os";

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
            verify_payload(&p, &sig, &d, OS, std::slice::from_ref(&pk)),
            Ok(pk.id.clone())
        );
        // Another digest, another key, a changed payload: refused.
        assert!(matches!(
            verify_payload(
                &p,
                &sig,
                &Digest::of(b"other"),
                OS,
                std::slice::from_ref(&pk)
            ),
            Err(Rejected::WrongPayload(_))
        ));
        let (_, other_pub) = generate().unwrap();
        let other = PublicKey::from_pem(&other_pub, "other").unwrap();
        assert_eq!(
            verify_payload(&p, &sig, &d, OS, &[other]),
            Err(Rejected::BadSignature)
        );
        let mut p2 = p.clone();
        p2[5] ^= 1;
        assert_eq!(
            verify_payload(&p2, &sig, &d, OS, std::slice::from_ref(&pk)),
            Err(Rejected::BadSignature)
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
        assert!(PublicKey::from_pem("junk", "x").is_err());
        assert!(private_key_from_pem(&public, "x").is_err());
    }

    /// A signature by a trusted key on the right digest, but naming another repository
    /// (the image and its signature re-hosted), is refused and says both names.
    #[test]
    fn signature_for_another_repository_is_refused() {
        let (private, public) = generate().unwrap();
        let sk = private_key_from_pem(&private, "test").unwrap();
        let pk = PublicKey::from_pem(&public, "test").unwrap();
        let keys = std::slice::from_ref(&pk);
        let d = Digest::of(b"index");
        let signed_at = Reference::parse("127.0.0.1:5000/berth/os:stable").unwrap();
        let p = payload(&signed_at, &d);
        let sig = sign_payload(&sk, &p);
        // The repository it was signed for: accepted, whatever the tag, and with the host
        // written in another case (hosts are case-insensitive).
        assert_eq!(verify_payload(&p, &sig, &d, OS, keys), Ok(pk.id.clone()));
        let source = Reference::parse("127.0.0.1:5000/berth/os:beta").unwrap();
        assert_eq!(
            verify_payload(&p, &sig, &d, &identity(&source), keys),
            Ok(pk.id.clone())
        );
        let upper = payload_for("Registry.Example.com/berth/os", &d);
        let usig = sign_payload(&sk, &upper);
        assert_eq!(
            verify_payload(&upper, &usig, &d, "registry.example.com/berth/os", keys),
            Ok(pk.id.clone())
        );
        // Same key, same digest, another repository, another registry, another port.
        for elsewhere in [
            "127.0.0.1:5000/berth/mirror",
            "127.0.0.1:5000/berth/os/sub",
            "127.0.0.1:5000/berth",
            "10.0.2.100:5000/berth/os",
            "127.0.0.1:5001/berth/os",
        ] {
            assert_eq!(
                verify_payload(&p, &sig, &d, elsewhere, keys),
                Err(Rejected::WrongIdentity {
                    key: pk.id.clone(),
                    signed_for: OS.into()
                }),
                "{elsewhere}"
            );
        }
        // A payload with no identity, or one without a registry host, names no source.
        for bad in [
            serde_json::json!({"critical": {"identity": {}, "image": {"docker-manifest-digest": d.to_string()}, "type": PAYLOAD_TYPE}}),
            serde_json::json!({"critical": {"identity": {"docker-reference": "berth/os"}, "image": {"docker-manifest-digest": d.to_string()}, "type": PAYLOAD_TYPE}}),
        ] {
            let b = serde_json::to_vec(&bad).unwrap();
            let s = sign_payload(&sk, &b);
            assert!(
                matches!(
                    verify_payload(&b, &s, &d, OS, keys),
                    Err(Rejected::WrongIdentity { .. })
                ),
                "{bad}"
            );
        }
        // A tag or digest in the payload's reference is not part of the identity.
        let tagged = payload_for(&format!("{OS}:stable"), &d);
        let tsig = sign_payload(&sk, &tagged);
        assert_eq!(
            verify_payload(&tagged, &tsig, &d, OS, keys),
            Ok(pk.id.clone())
        );
        // The error a node shows names both repositories.
        let e = SignatureError::WrongIdentity {
            reference: "127.0.0.1:5000/berth/mirror:stable".into(),
            digest: d.clone(),
            key: pk.id.clone(),
            signed_for: OS.into(),
            expected: "127.0.0.1:5000/berth/mirror".into(),
        }
        .to_string();
        assert!(
            e.contains(
                "for the repository 127.0.0.1:5000/berth/os, not for 127.0.0.1:5000/berth/mirror"
            ),
            "{e}"
        );
    }

    #[test]
    fn identities_normalize() {
        assert_eq!(
            normalize_identity("Reg.Example.COM:443/berth/os:v1").as_deref(),
            Some("reg.example.com:443/berth/os")
        );
        assert_eq!(
            normalize_identity(&format!("{OS}@{}", Digest::of(b"x"))).as_deref(),
            Some(OS)
        );
        assert_eq!(normalize_identity("berth/os"), None);
        assert_eq!(normalize_identity("127.0.0.1:5000/Berth/OS"), None);
        assert_eq!(normalize_identity(""), None);
    }
}
