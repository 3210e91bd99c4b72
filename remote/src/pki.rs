//! Certificates for the remote API: a CA (ECDSA P-256), node (server) certificates and
//! client certificates whose Subject O is the client's role. rcgen makes them, x509-parser
//! reads them back.

use berth_api::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use std::net::IpAddr;
use std::time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// How far back `not_before` is set, so a node whose clock is a little behind the issuer's
/// accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the server needs to know about a peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subject CN (empty when the subject has none).
    pub common_name: String,
    /// From Subject O; `None` when O is missing or not a role name.
    pub role: Option<Role>,
    /// Lower-case hex, no colons, no leading zeros (see [`normalize_serial`]).
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// Errors making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate an ECDSA P-256 key")]
    GenerateKey(#[source] rcgen::Error),
    #[error("the private key is not a PKCS#8 PEM ECDSA P-256 key")]
    ParseKey(#[source] rcgen::Error),
    #[error("the certificate is not valid PEM")]
    ParsePem,
    #[error("the certificate is not a valid X.509 certificate: {0}")]
    ParseCert(String),
    #[error("the CA certificate cannot be used to sign")]
    LoadCa(#[source] rcgen::Error),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate is not a CA (basic constraints CA:false or missing)")]
    NotCa,
    #[error("invalid name {name:?} for a certificate")]
    BadName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("a node certificate needs at least one name or IP address")]
    NoNames,
    #[error("lifetime {secs} s is out of range")]
    BadTtl { secs: u64 },
    #[error("cannot sign the {what} certificate")]
    Sign {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("no random numbers from the system")]
    Random,
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    /// The CA as rcgen's issuer (re-signed from the parsed parameters; only its subject
    /// and key identifier are used, the PEM above is what clients trust).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA: ECDSA P-256, CA:true (no path length limit), keyCertSign and cRLSign.
    pub fn generate(common_name: &str, ttl: Duration) -> Result<Ca, PkiError> {
        let key = new_key()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(common_name, None);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, ttl)?;
        p.serial_number = Some(random_serial()?);
        let cert = p
            .self_signed(&key)
            .map_err(|source| PkiError::Sign { what: "CA", source })?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem,
            key_pem,
            issuer: cert,
            key,
        })
    }

    /// Load a CA; checks that the certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::ParseKey)?;
        let der = pem_der(cert_pem)?;
        let (_, x) =
            X509Certificate::from_der(&der).map_err(|e| PkiError::ParseCert(e.to_string()))?;
        if x.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        if !x.is_ca() {
            return Err(PkiError::NotCa);
        }
        let params = CertificateParams::from_ca_cert_der(&der.as_slice().into())
            .map_err(PkiError::LoadCa)?;
        let issuer = params.self_signed(&key).map_err(PkiError::LoadCa)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Node (server) certificate: serverAuth EKU, SANs = names (DNS) + ips, random 128-bit
    /// serial. `key_pem` reuses a key (renewal keeps the SPKI pin).
    pub fn issue_server(
        &self,
        names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
        key_pem: Option<&str>,
    ) -> Result<CertKey, PkiError> {
        let (p, key) = server_params(names, ips, ttl, key_pem)?;
        self.sign(p, &key, "node")
    }

    /// Client certificate: clientAuth EKU only, Subject CN = `common_name`, O = role,
    /// random serial.
    pub fn issue_client(
        &self,
        common_name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let mut p = client_params(common_name, role);
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, ttl)?;
        p.serial_number = Some(random_serial()?);
        self.sign(p, &key, "client")
    }

    /// `p` for `key`, signed by this CA.
    fn sign(
        &self,
        p: CertificateParams,
        key: &KeyPair,
        what: &'static str,
    ) -> Result<CertKey, PkiError> {
        let cert = p
            .signed_by(key, &self.issuer, &self.key)
            .map_err(|source| PkiError::Sign { what, source })?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What every client certificate says: Subject CN and O (the role), digital signature,
/// clientAuth only, not a CA.
fn client_params(common_name: &str, role: Role) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(common_name, Some(role.as_str()));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.is_ca = IsCa::ExplicitNoCa;
    p
}

/// Self-signed node certificate (when the node has no CA key); reuses `key_pem` when given
/// (renewal keeps the key, so its SPKI fingerprint stays the same).
pub fn self_signed_server(
    names: &[String],
    ips: &[IpAddr],
    ttl: Duration,
    key_pem: Option<&str>,
) -> Result<CertKey, PkiError> {
    let (p, key) = server_params(names, ips, ttl, key_pem)?;
    let cert = p.self_signed(&key).map_err(|source| PkiError::Sign {
        what: "node",
        source,
    })?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new ECDSA P-256 key, PKCS#8 PEM.
pub fn generate_key_pem() -> Result<String, PkiError> {
    Ok(new_key()?.serialize_pem())
}

/// Read the identity of a DER certificate.
pub fn identity(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (_, x) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::ParseCert(e.to_string()))?;
    let subject = x.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let common_name = first(&mut subject.iter_common_name());
    let o = first(&mut subject.iter_organization());
    Ok(Identity {
        common_name,
        role: Role::parse(&o),
        serial: serial_hex(x.raw_serial()),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
    })
}

/// Read the identity of the first certificate of a PEM.
pub fn identity_pem(cert_pem: &str) -> Result<Identity, PkiError> {
    identity(&pem_der(cert_pem)?)
}

/// Whether the certificate names clientAuth among its extended key usages (a certificate
/// without the extension does not: Berth's client certificates always carry it).
pub fn has_client_auth(cert_der: &[u8]) -> Result<bool, PkiError> {
    let (_, x) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::ParseCert(e.to_string()))?;
    let eku = x
        .extended_key_usage()
        .map_err(|e| PkiError::ParseCert(e.to_string()))?;
    Ok(eku.is_some_and(|e| e.value.client_auth))
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo, lower-case hex: the pin for
/// self-signed nodes.
pub fn spki_sha256(cert_pem: &str) -> Result<String, PkiError> {
    spki_sha256_der(&pem_der(cert_pem)?)
}

/// [`spki_sha256`] of a DER certificate.
pub fn spki_sha256_der(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, x) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::ParseCert(e.to_string()))?;
    let d = ring::digest::digest(&ring::digest::SHA256, x.tbs_certificate.subject_pki.raw);
    Ok(hex(d.as_ref()))
}

/// Normalize a serial as people write it: `"0A:1b"`, `"0a1b"`, `"a1b"` all give `"a1b"`
/// (zero is `"0"`). `None` if it is not hex.
pub fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let t = digits.trim_start_matches('0').to_ascii_lowercase();
    Some(if t.is_empty() { "0".into() } else { t })
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|_| PkiError::ParsePem)
}

/// Format unix seconds as RFC 3339 UTC (`2026-12-01T10:00:00Z`).
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

fn serial_hex(raw: &[u8]) -> String {
    normalize_serial(&hex(raw)).unwrap_or_else(|| "0".into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::GenerateKey)
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, DnValue::Utf8String(common_name.into()));
    if let Some(o) = organization {
        d.push(DnType::OrganizationName, DnValue::Utf8String(o.into()));
    }
    d
}

fn validity(p: &mut CertificateParams, ttl: Duration) -> Result<(), PkiError> {
    let bad = || PkiError::BadTtl {
        secs: ttl.as_secs(),
    };
    let now = time::OffsetDateTime::now_utc();
    let ttl_t = time::Duration::try_from(ttl).map_err(|_| bad())?;
    if ttl.is_zero() {
        return Err(bad());
    }
    p.not_before = now - BACKDATE;
    p.not_after = now.checked_add(ttl_t).ok_or_else(bad)?;
    // X.509 GeneralizedTime stops at year 9999.
    if p.not_after.year() > 9999 {
        return Err(bad());
    }
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| PkiError::Random)?;
    // Positive, and 16 significant bytes (RFC 5280: at most 20 octets).
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn server_params(
    names: &[String],
    ips: &[IpAddr],
    ttl: Duration,
    key_pem: Option<&str>,
) -> Result<(CertificateParams, KeyPair), PkiError> {
    if names.is_empty() && ips.is_empty() {
        return Err(PkiError::NoNames);
    }
    let key = match key_pem {
        Some(k) => KeyPair::from_pem(k).map_err(PkiError::ParseKey)?,
        None => new_key()?,
    };
    let mut p = CertificateParams::default();
    let cn = names
        .first()
        .cloned()
        .or_else(|| ips.first().map(|i| i.to_string()))
        .unwrap_or_default();
    p.distinguished_name = dn(&cn, None);
    for n in names {
        let dns = n.clone().try_into().map_err(|source| PkiError::BadName {
            name: n.clone(),
            source,
        })?;
        p.subject_alt_names.push(SanType::DnsName(dns));
    }
    p.subject_alt_names
        .extend(ips.iter().map(|i| SanType::IpAddress(*i)));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, ttl)?;
    p.serial_number = Some(random_serial()?);
    Ok((p, key))
}

/// Issue certificates with a chosen validity window, for tests of expiry handling.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A client certificate valid from `not_before` to `not_after` (unix seconds).
    pub fn client_with_validity(
        ca: &Ca,
        common_name: &str,
        role: Role,
        not_before: i64,
        not_after: i64,
    ) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let mut p = client_params(common_name, role);
        let t = |s| {
            time::OffsetDateTime::from_unix_timestamp(s).map_err(|_| PkiError::BadTtl { secs: 0 })
        };
        p.not_before = t(not_before)?;
        p.not_after = t(not_after)?;
        p.serial_number = Some(random_serial()?);
        ca.sign(p, &key, "client")
    }

    /// A client-role certificate without any extended key usage.
    pub fn client_without_eku(ca: &Ca, common_name: &str, role: Role) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(common_name, Some(role.as_str()));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p, Duration::from_secs(3600))?;
        p.serial_number = Some(random_serial()?);
        ca.sign(p, &key, "client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn client_cert_identity_and_eku() {
        let ca = Ca::generate("test CA", DAY).unwrap();
        let c = ca.issue_client("alice", Role::Operator, DAY).unwrap();
        let id = identity_pem(&c.cert_pem).unwrap();
        assert_eq!(id.common_name, "alice");
        assert_eq!(id.role, Some(Role::Operator));
        assert_eq!(
            normalize_serial(&id.serial).as_deref(),
            Some(id.serial.as_str())
        );
        assert!(id.serial.len() >= 30, "{}", id.serial);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(id.not_before <= now && id.not_before > now - 600);
        assert!((id.not_after - (now + 86400)).abs() < 5);
        let der = pem_der(&c.cert_pem).unwrap();
        assert!(has_client_auth(&der).unwrap());
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
        assert!(!x.is_ca());
        // Two certificates never share a serial.
        let c2 = ca.issue_client("alice", Role::Operator, DAY).unwrap();
        assert_ne!(identity_pem(&c2.cert_pem).unwrap().serial, id.serial);
    }

    #[test]
    fn server_cert_has_sans_and_no_client_auth() {
        let ca = Ca::generate("test CA", DAY).unwrap();
        let s = ca
            .issue_server(
                &["node1.example".into()],
                &["10.0.0.5".parse().unwrap()],
                DAY,
                None,
            )
            .unwrap();
        let der = pem_der(&s.cert_pem).unwrap();
        assert!(!has_client_auth(&der).unwrap());
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        assert!(text.contains("node1.example"), "{text}");
        assert!(text.contains("[10, 0, 0, 5]"), "{text}");
        let id = identity(&der).unwrap();
        assert_eq!(id.role, None);
        assert_eq!(id.common_name, "node1.example");
    }

    #[test]
    fn unknown_organization_is_no_role() {
        let ca = Ca::generate("Admins", DAY).unwrap();
        // The CA's own certificate has no O at all.
        assert_eq!(identity_pem(ca.cert_pem()).unwrap().role, None);
    }

    #[test]
    fn ca_round_trips_through_pem_and_checks_the_key() {
        let ca = Ca::generate("test CA", DAY).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let other = Ca::generate("other", DAY).unwrap();
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        // A leaf certificate is not a CA, even with its own key.
        let leaf = ca.issue_client("bob", Role::Reader, DAY).unwrap();
        assert!(matches!(
            Ca::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(PkiError::NotCa)
        ));
        assert!(matches!(
            Ca::from_pem("junk", ca.key_pem()),
            Err(PkiError::ParsePem)
        ));
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), "junk"),
            Err(PkiError::ParseKey(_))
        ));
    }

    #[test]
    fn spki_pin_survives_renewal_with_the_same_key() {
        let names = vec!["node".to_string()];
        let a = self_signed_server(&names, &[], DAY, None).unwrap();
        let b = self_signed_server(&names, &[], DAY, Some(&a.key_pem)).unwrap();
        assert_ne!(a.cert_pem, b.cert_pem);
        let pin = spki_sha256(&a.cert_pem).unwrap();
        assert_eq!(pin.len(), 64);
        assert!(pin
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(spki_sha256(&b.cert_pem).unwrap(), pin);
        let c = self_signed_server(&names, &[], DAY, None).unwrap();
        assert_ne!(spki_sha256(&c.cert_pem).unwrap(), pin);
        // The same through a CA.
        let ca = Ca::generate("ca", DAY).unwrap();
        let d = ca.issue_server(&names, &[], DAY, Some(&a.key_pem)).unwrap();
        assert_eq!(spki_sha256(&d.cert_pem).unwrap(), pin);
    }

    #[test]
    fn serial_normalization() {
        assert_eq!(normalize_serial("0A:1b").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial("0a1b").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial("a1b").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial(" 00:00 ").as_deref(), Some("0"));
        assert_eq!(normalize_serial(""), None);
        assert_eq!(normalize_serial(":"), None);
        assert_eq!(normalize_serial("0x1f"), None);
        assert_eq!(normalize_serial("g1"), None);
        assert_eq!(serial_hex(&[0x00, 0x0a, 0xff]), "aff");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = Ca::generate("ca", DAY).unwrap();
        assert!(matches!(
            ca.issue_server(&[], &[], DAY, None),
            Err(PkiError::NoNames)
        ));
        assert!(matches!(
            ca.issue_client("x", Role::Admin, Duration::ZERO),
            Err(PkiError::BadTtl { .. })
        ));
        assert!(matches!(
            ca.issue_client("x", Role::Admin, Duration::from_secs(u64::MAX)),
            Err(PkiError::BadTtl { .. })
        ));
        assert!(matches!(
            self_signed_server(&["n".into()], &[], DAY, Some("not a key")),
            Err(PkiError::ParseKey(_))
        ));
        assert!(identity(b"\x30\x03\x02\x01\x00").is_err());
        assert!(identity_pem("").is_err());
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(1_796_119_200), "2026-12-01T10:00:00Z");
    }
}
