//! The remote API from the host: a CA and client files made with `osctl pki`, an `[api]`
//! config section for the VM, and a forwarded port (QEMU `hostfwd` to the guest's 7443).

use crate::osctl_bin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A free TCP port on 127.0.0.1 for a `hostfwd`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A CA made by `osctl pki init` in `dir/ca`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: String,
    pub ca_key: String,
}

impl Pki {
    /// `osctl pki init --out DIR/ca` in a fresh `dir`.
    pub fn init(dir: &Path) -> Pki {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        pki(dir, &["init", "--out", "ca"]);
        Pki {
            dir: dir.to_path_buf(),
            ca: std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap(),
            ca_key: std::fs::read_to_string(dir.join("ca/ca.key")).unwrap(),
        }
    }

    /// A client file `DIR/<name>.toml` with one context `name` for 127.0.0.1:`port`,
    /// signed by the CA in `DIR/<ca>`; returns the file and the certificate's serial.
    pub fn client(
        &self,
        ca: &str,
        role: &str,
        ttl: &str,
        name: &str,
        port: u16,
    ) -> (PathBuf, String) {
        let file = self.dir.join(format!("{name}.toml"));
        let endpoint = format!("127.0.0.1:{port}");
        let printed = pki(
            &self.dir,
            &[
                "client",
                "--ca",
                ca,
                "--role",
                role,
                "--ttl",
                ttl,
                "--name",
                name,
                "--context",
                name,
                "--endpoint",
                &endpoint,
                "--out",
                file.to_str().unwrap(),
            ],
        );
        (file, serial_of(&printed))
    }

    /// An `[api]` section: this CA (and its key, so the node signs its own certificate),
    /// the default listen address, and `revoked` serials.
    pub fn api_config(&self, revoked: &[&str]) -> String {
        let list: Vec<String> = revoked.iter().map(|s| format!("{s:?}")).collect();
        format!(
            "[api]\nca = \"\"\"\n{}\"\"\"\nca_key = \"\"\"\n{}\"\"\"\nrevoked_serials = [{}]\n",
            self.ca,
            self.ca_key,
            list.join(", ")
        )
    }
}

/// `osctl pki ARGS` run in `dir`; returns stdout, panics when it fails.
pub fn pki(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(osctl_bin())
        .current_dir(dir)
        .env_remove("BERTH_CONNECT")
        .arg("pki")
        .args(args)
        .output()
        .expect("running osctl pki");
    assert!(o.status.success(), "osctl pki {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `serial <hex>` from what `osctl pki client` printed.
fn serial_of(printed: &str) -> String {
    printed
        .split("serial ")
        .nth(1)
        .and_then(|s| s.split([',', ' ', ')']).next())
        .unwrap_or_else(|| panic!("no serial in {printed:?}"))
        .to_string()
}
