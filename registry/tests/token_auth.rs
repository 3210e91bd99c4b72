//! Bearer-token auth against `docker-registry` with a small token server run by the test
//! (RS256 JWTs signed with a throwaway key whose certificate the registry trusts).

mod common;

use base64::Engine as _;
use berth_registry::cli::{Command as Cli, RegistryArgs};
use common::*;
use sha2::Digest as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SERVICE: &str = "berth-test";
const ISSUER: &str = "berth-test-issuer";
const CREDS: &str = "berth:tok3n";

/// libtrust key id: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4.
fn key_id(spki_der: &[u8]) -> String {
    let h = sha2::Sha256::digest(spki_der);
    let bits: Vec<u8> = h[..30]
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let s: String = bits
        .chunks(5)
        .map(|c| alphabet[c.iter().fold(0usize, |a, b| a * 2 + *b as usize)] as char)
        .collect();
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

struct TokenServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

fn b64url(d: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

fn start_token_server(dir: &Path) -> (TokenServer, PathBuf) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    sh(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    sh(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=berth-token",
            "-key",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap()
        .stdout;
    let kid = key_id(&der);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let want_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(CREDS)
    );
    let work = dir.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut authorized = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") && v.trim() == want_auth {
                        authorized = true;
                    }
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            if !authorized {
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let query = target.split_once('?').map(|x| x.1).unwrap_or("");
            let mut access = Vec::new();
            for kv in query.split('&') {
                if let Some(v) = kv.strip_prefix("scope=") {
                    let v = v
                        .replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",");
                    let parts: Vec<&str> = v.split(':').collect();
                    if parts.len() == 3 {
                        access.push(serde_json::json!({"type": parts[0], "name": parts[1],
                            "actions": parts[2].split(',').collect::<Vec<_>>()}));
                    }
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": kid});
            let claims = serde_json::json!({"iss": ISSUER, "sub": "berth", "aud": SERVICE, "exp": now + 300,
                "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", count.load(Ordering::SeqCst)), "access": access});
            let input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let inp = work.join(format!("in-{}", count.load(Ordering::SeqCst)));
            std::fs::write(&inp, &input).unwrap();
            let sig = Command::new("openssl")
                .args(["dgst", "-sha256", "-binary", "-sign"])
                .arg(work.join("key.pem"))
                .arg(&inp)
                .output()
                .unwrap()
                .stdout;
            let body = serde_json::json!({"token": format!("{input}.{}", b64url(&sig)), "expires_in": 300}).to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (TokenServer { port, requests }, cert)
}

#[test]
fn bearer_token_auth() {
    let w = tempfile::tempdir().unwrap();
    let (ts, cert) = start_token_server(w.path());
    let reg = Registry::start(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        ts.port,
        cert.display()
    ));
    let layout = w.path().join("layout");
    umoci_image(
        &layout,
        "t",
        "amd64",
        w.path(),
        &[&populate_base, &populate_change],
    );
    let expected = umoci_unpacked(&layout, "t", w.path());
    let dst = format!("{}/secure/app:t", reg.host());
    skopeo_push(&layout, "t", &dst, &["--dest-creds", CREDS]);

    let args = |creds: Option<&str>| RegistryArgs {
        insecure: true,
        creds: creds.map(str::to_string),
        ..Default::default()
    };
    // Anonymous: the token server refuses, and the user is told why.
    let err = berth_registry::cli::run(Cli::Pull {
        reference: dst.clone(),
        store: w.path().join("anon"),
        platform: Some("linux/amd64".into()),
        no_unpack: false,
        registry: args(None),
    })
    .unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(msg.contains("401"), "{msg}");

    let before = ts.requests.load(Ordering::SeqCst);
    berth_registry::cli::run(Cli::Unpack {
        reference: dst.clone(),
        store: w.path().join("store"),
        to: w.path().join("out"),
        platform: Some("linux/amd64".into()),
        registry: args(Some(CREDS)),
    })
    .unwrap();
    assert_eq!(tree(&expected), tree(&w.path().join("out")));
    // Manifest, config and two layers share one cached pull token.
    let used = ts.requests.load(Ordering::SeqCst) - before;
    assert_eq!(used, 1, "token requests for one pull");

    // Push back with Berth under a new name (push scope, token exchange again).
    let dst2 = format!("{}/secure/copy:t", reg.host());
    berth_registry::cli::run(Cli::Copy {
        source: format!("oci:{}:t", layout.display()),
        destination: dst2.clone(),
        store: None,
        platform: None,
        registry: args(Some(CREDS)),
    })
    .unwrap();
    assert_eq!(
        skopeo_raw_digest(&dst2, &["--creds", CREDS]),
        layout_digest(&layout, "t")
    );
}
