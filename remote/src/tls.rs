//! rustls configurations for both sides of the remote API: TLS 1.3 only, ring provider,
//! mandatory client certificates checked against the node's CA, the clientAuth key usage,
//! validity and a live revocation list; and the sentences a user reads when a handshake
//! fails.

use crate::pki::{self, CertKey, Identity, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    PeerIncompatible, RootCertStore, SignatureScheme,
};
use std::io;
use std::sync::Arc;

/// The revocation check: `true` when the (normalized) serial is revoked.
pub type IsRevoked = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How the client recognizes the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// A CA certificate (PEM); the node's certificate must carry the name or IP address
    /// connected to as a SAN.
    Ca(String),
    /// The SHA-256 of the node certificate's SubjectPublicKeyInfo (hex), for a self-signed
    /// node. Names and validity are not checked: the key is the identity.
    Fingerprint(String),
}

/// Which end of the connection explains a failed handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// osctl: the node checked our certificate, we checked the node's.
    Client,
    /// sysd: we checked the client's certificate.
    Server,
}

/// Errors building a TLS configuration, and the ways a handshake fails.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // ---- building a configuration ----
    #[error("the {what} is not valid PEM")]
    BadPem { what: &'static str },
    #[error("the CA certificate cannot be used as a trust anchor")]
    BadCa(#[source] Error),
    #[error("cannot build the certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the certificate and key cannot be used for TLS")]
    Config(#[source] Error),
    #[error("node fingerprint {0:?} is not a SHA-256 in hex (64 hex digits)")]
    BadFingerprint(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("cannot read the peer's certificate")]
    PeerIdentity(#[source] PkiError),

    // ---- a handshake the node refused (seen by the client) ----
    #[error(
        "the node does not trust this client's CA: the client certificate was signed by another CA"
    )]
    RefusedUnknownCa,
    #[error("the node refused this client certificate as expired (or not yet valid): ask an admin for a new one (osctl pki issue), or check the clocks")]
    RefusedExpired,
    #[error("the node refused this client certificate: its serial is revoked; ask an admin for a new one (osctl pki issue)")]
    RefusedRevoked,
    #[error("the node refused this client certificate: it is not for client authentication (no clientAuth key usage); use a client certificate from osctl pki client or osctl pki issue")]
    RefusedNoClientAuth,
    #[error(
        "the node requires a client certificate and none was sent: use a context with cert and key"
    )]
    RefusedNoCertificate,
    #[error("the node speaks TLS 1.3 only")]
    RefusedProtocol,
    #[error("the node refused the TLS handshake ({0:?})")]
    Refused(AlertDescription),
    // ---- the node's certificate (checked by the client) ----
    #[error("the node's certificate is not signed by the CA of this context (wrong CA, or a different node at this address)")]
    NodeUnknownCa,
    #[error("the node's certificate is not valid for the address used (its names and IP addresses do not include it)")]
    NodeNameMismatch,
    #[error("the node's certificate has expired{}", at.as_ref().map(|t| format!(" (at {t})")).unwrap_or_default())]
    NodeExpired { at: Option<String> },
    #[error("the node's key fingerprint {got} is not the pinned {expected}: a different node, or its key changed")]
    PinMismatch { expected: String, got: String },

    // ---- a client certificate refused (seen by the node) ----
    #[error("the client certificate is not signed by this node's CA")]
    UnknownCa,
    #[error("client certificate expired{}", at.as_ref().map(|t| format!(" at {t}")).unwrap_or_default())]
    Expired { at: Option<String> },
    #[error("client certificate is not valid yet{}", from.as_ref().map(|t| format!(" (from {t})")).unwrap_or_default())]
    NotYetValid { from: Option<String> },
    #[error("client certificate{} is revoked", serial.as_ref().map(|s| format!(" {s}")).unwrap_or_default())]
    Revoked { serial: Option<String> },
    #[error("the client certificate is not for client authentication (no clientAuth key usage)")]
    NoClientAuth,
    #[error("the client sent no certificate (a client certificate is required)")]
    NoClientCertificate,
    #[error("the client does not offer TLS 1.3")]
    ProtocolVersion,
    #[error("the client refused this node's certificate ({0:?}): check the CA or fingerprint in its context")]
    ClientRefusedNode(AlertDescription),

    // ---- either side ----
    #[error("the other side does not speak TLS (a plain TCP client, or not a Berth API port)")]
    NotTls,
    #[error("the connection closed during the TLS handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] Error),
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadPem { what })?;
    if v.is_empty() {
        return Err(TlsError::BadPem { what });
    }
    Ok(v)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::BadPem {
        what: "private key",
    })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        r.add(c).map_err(TlsError::BadCa)?;
    }
    Ok(Arc::new(r))
}

/// Server side: TLS 1.3 only, client certificate mandatory, chained to `ca_pem`, clientAuth
/// EKU required, validity checked, and `is_revoked(serial)` (normalized serial) consulted
/// during the handshake (a revoked serial fails it). The closure is called at every
/// handshake, so a new revocation list applies to the next connection.
pub fn server_config(
    ca_pem: &str,
    node: &CertKey,
    is_revoked: IsRevoked,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let p = provider();
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, p.clone())
            .build()
            .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(ClientVerifier { inner, is_revoked });
    let cfg = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&node.cert_pem, "node certificate")?,
            key(&node.key_pem)?,
        )
        .map_err(TlsError::Config)?;
    Ok(Arc::new(cfg))
}

/// Client side: TLS 1.3 only, presents the client certificate, verifies the node by CA
/// (name or IP SAN of the server name passed to `connect`) or by SPKI pin.
pub fn client_config(
    trust: &ServerTrust,
    client: &CertKey,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let p = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        ServerTrust::Ca(pem) => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(pem)?, p.clone())
                .build()
                .map_err(TlsError::Verifier)?
        }
        ServerTrust::Fingerprint(f) => {
            let f = f.trim().to_ascii_lowercase().replace(':', "");
            if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(TlsError::BadFingerprint(f));
            }
            Arc::new(PinVerifier {
                pin: f,
                provider: p.clone(),
            })
        }
    };
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            certs(&client.cert_pem, "client certificate")?,
            key(&client.key_pem)?,
        )
        .map_err(TlsError::Config)?;
    Ok(Arc::new(cfg))
}

/// Client side for a server that only proves itself (a syslog collector): no client
/// certificate, the server's certificate must chain to `ca_pem` and name the host connected
/// to; the protocol versions are rustls's safe defaults.
pub fn server_auth_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server name to give `TlsConnector::connect` for `host` (a DNS name or an IP
/// address, without port or brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(|_| TlsError::BadPem { what: "node name" })
}

/// The peer's identity after a server handshake (first certificate of the chain).
pub fn peer_identity(conn: &rustls::ServerConnection) -> Result<Identity, TlsError> {
    let c = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    pki::identity(c).map_err(TlsError::PeerIdentity)
}

/// Classify a failed handshake (the `io::Error` of tokio-rustls, or of the first read or
/// write after it: in TLS 1.3 the client learns that the node refused its certificate only
/// then).
pub fn handshake_error(e: &io::Error, side: Side) -> TlsError {
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => TlsError::Closed,
            _ => TlsError::Io(io::Error::new(e.kind(), e.to_string())),
        };
    };
    classify(r, side)
}

fn at(t: &UnixTime) -> Option<String> {
    i64::try_from(t.as_secs()).ok().map(pki::format_time)
}

fn classify(r: &Error, side: Side) -> TlsError {
    use CertificateError as C;
    match (side, r) {
        (Side::Client, Error::AlertReceived(a)) => match a {
            // DecryptError: an issuer of the same name as the node's CA, but another key.
            AlertDescription::UnknownCA | AlertDescription::DecryptError => {
                TlsError::RefusedUnknownCa
            }
            AlertDescription::CertificateExpired => TlsError::RefusedExpired,
            AlertDescription::CertificateRevoked => TlsError::RefusedRevoked,
            AlertDescription::UnsupportedCertificate => TlsError::RefusedNoClientAuth,
            AlertDescription::CertificateRequired => TlsError::RefusedNoCertificate,
            AlertDescription::ProtocolVersion => TlsError::RefusedProtocol,
            other => TlsError::Refused(*other),
        },
        (Side::Server, Error::AlertReceived(a)) => match a {
            AlertDescription::ProtocolVersion => TlsError::ProtocolVersion,
            other => TlsError::ClientRefusedNode(*other),
        },
        (Side::Client, Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => TlsError::NodeUnknownCa,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsError::NodeNameMismatch,
            C::Expired => TlsError::NodeExpired { at: None },
            C::ExpiredContext { not_after, .. } => TlsError::NodeExpired { at: at(not_after) },
            C::Other(o) => match o.0.downcast_ref::<PinError>() {
                Some(p) => TlsError::PinMismatch {
                    expected: p.expected.clone(),
                    got: p.got.clone(),
                },
                None => TlsError::Handshake(r.clone()),
            },
            _ => TlsError::Handshake(r.clone()),
        },
        (Side::Server, Error::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => TlsError::UnknownCa,
            C::Expired => TlsError::Expired { at: None },
            C::ExpiredContext { not_after, .. } => TlsError::Expired { at: at(not_after) },
            C::NotValidYet => TlsError::NotYetValid { from: None },
            C::NotValidYetContext { not_before, .. } => TlsError::NotYetValid {
                from: at(not_before),
            },
            C::Revoked => TlsError::Revoked { serial: None },
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => TlsError::NoClientAuth,
            _ => TlsError::Handshake(r.clone()),
        },
        (Side::Server, Error::NoCertificatesPresented) => TlsError::NoClientCertificate,
        (
            Side::Server,
            Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled,
            ),
        ) => TlsError::ProtocolVersion,
        (_, Error::InvalidMessage(_)) | (_, Error::InappropriateMessage { .. }) => TlsError::NotTls,
        _ => TlsError::Handshake(r.clone()),
    }
}

/// Turn a handshake error seen by osctl into one sentence a user can act on ("the node does
/// not trust this client's CA: ...", "the node's certificate is not signed by the CA of this
/// context", ...). sysd explains its own side with [`explain_server_handshake_error`].
pub fn explain_handshake_error(e: &io::Error) -> String {
    handshake_error(e, Side::Client).to_string()
}

/// The node's side of [`explain_handshake_error`], for its log ("client certificate expired
/// at 2026-12-01T10:00:00Z", "the client certificate is not signed by this node's CA", ...).
pub fn explain_server_handshake_error(e: &io::Error) -> String {
    handshake_error(e, Side::Server).to_string()
}

/// WebPKI's client verification plus what Berth requires on top: the clientAuth key usage
/// present (WebPKI accepts a certificate without the extension) and the serial not revoked.
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    is_revoked: IsRevoked,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
        if !pki::has_client_auth(end_entity).map_err(|_| bad())? {
            return Err(Error::InvalidCertificate(CertificateError::InvalidPurpose));
        }
        let id = pki::identity(end_entity).map_err(|_| bad())?;
        if (self.is_revoked)(&id.serial) {
            return Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The pin did not match (carried in `CertificateError::Other` to the client's error).
#[derive(Debug)]
struct PinError {
    expected: String,
    got: String,
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SPKI fingerprint {} is not the pinned {}",
            self.got, self.expected
        )
    }
}

impl std::error::Error for PinError {}

/// Trust a node by the SHA-256 of its key (SubjectPublicKeyInfo); the TLS 1.3 signature
/// proves the node holds that key.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = pki::spki_sha256_der(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // A pin is a hash of a public key, not a secret: a plain comparison will do.
        if got != self.pin {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinError {
                    expected: self.pin.clone(),
                    got,
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configuration offers TLS 1.3 only.
        Err(Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOfferedOrEnabled,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
