//! TLS with a custom CA: docker-registry serving HTTPS with a throwaway certificate for
//! 127.0.0.1. Trusted through `ca_pem` it works; without it the error says what to do.

mod common;

use berth_registry::cli::{Command as Cli, RegistryArgs};
use common::*;
use std::process::Command;

#[test]
fn custom_ca_tls() {
    let w = tempfile::tempdir().unwrap();
    let (key, cert) = (w.path().join("key.pem"), w.path().join("cert.pem"));
    sh(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let reg = Registry::start(&format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert.display(),
        key.display()
    ));
    let layout = w.path().join("layout");
    umoci_image(&layout, "t", "amd64", w.path(), &[&populate_base]);
    let dst = format!("{}/tls/app:t", reg.host());
    skopeo_push(&layout, "t", &dst, &[]);

    let pull = |ca: Option<std::path::PathBuf>, store: &str| {
        berth_registry::cli::run(Cli::Pull {
            reference: dst.clone(),
            store: w.path().join(store),
            platform: Some("linux/amd64".into()),
            no_unpack: false,
            registry: RegistryArgs {
                ca,
                ..Default::default()
            },
        })
    };
    let err = pull(None, "untrusted").unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        msg.contains("TLS with registry") && msg.contains("ca_pem"),
        "{msg}"
    );
    pull(Some(cert.clone()), "trusted").unwrap();
}
