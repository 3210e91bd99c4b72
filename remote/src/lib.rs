//! Berth's remote API over mutual TLS, shared by the node (sysd, the server) and osctl
//! (the client):
//!
//! * [`pki`]: the CA, node and client certificates (ECDSA P-256; the client's role is its
//!   certificate's Subject O) and what the node reads back from a peer certificate;
//! * [`tls`]: rustls configurations, TLS 1.3 only with the ring provider; the node requires
//!   a client certificate from its CA with the clientAuth key usage, in its validity
//!   window and not revoked; the client trusts the node by CA or by key fingerprint;
//! * [`transport`]: `org.berth.Manager1` (zbus, peer-to-peer) over the TLS stream;
//! * [`contexts`]: osctl's client file (`~/.config/berth/osctl.toml`), one credential per
//!   context with the PEMs inline.

pub mod contexts;
pub mod pki;
pub mod tls;
pub mod transport;

pub use contexts::{ClientFile, Context, ContextError};
pub use pki::{Ca, CertKey, Identity, PkiError};
pub use tls::{ServerTrust, TlsError};
