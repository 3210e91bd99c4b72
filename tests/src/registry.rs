//! A real OCI registry on loopback for whole-system tests (Debian's `docker-registry`),
//! and workload images built with the peer tools `umoci` and `skopeo` (no Docker). The
//! guest reaches it as `10.0.2.100:5000` through `qemu/run.sh --registry-port`.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Address under which guests reach the registry.
pub const GUEST_REGISTRY: &str = "10.0.2.100:5000";

/// Run `cmd`, panic with its output when it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry` process with its storage in a temp dir; stopped on drop.
pub struct LocalRegistry {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl LocalRegistry {
    /// Start on a free port under `dir`.
    pub fn start(dir: &Path) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "docker-registry (Debian package docker-registry; make deps) must be installed",
            );
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "docker-registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalRegistry {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// The file the registry serves blob `sha256:<hex>` from (to tamper with it).
    pub fn blob_data(&self, hex: &str) -> std::path::PathBuf {
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Build a busybox image (Debian's busybox-static, `sh` and the common applets) with
    /// `umoci` for `arch` (amd64 or arm64: the binary is taken from `busybox` at that
    /// path) and push it with `skopeo` as `REPO:TAG`.
    pub fn push_busybox(&self, busybox: &Path, arch: &str, repo_tag: &str) {
        let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, "latest"));
        let layout = self.dir.join(format!("layout-{}", repo.replace('/', "-")));
        let img = format!("{}:{tag}", layout.display());
        if !layout.join("index.json").exists() {
            sh(Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout));
        }
        sh(Command::new("umoci").args(["new", "--image", &img]));
        let bundle = self
            .dir
            .join(format!("bundle-{}-{tag}", repo.replace('/', "-")));
        let _ = std::fs::remove_dir_all(&bundle);
        sh(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "tmp", "etc", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "ls", "sleep", "ps", "id", "hostname", "wc", "seq", "true",
            "mkdir", "grep", "touch",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        sh(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle));
        sh(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            "--architecture",
            arch,
            "--os",
            "linux",
            "--config.cmd",
            "sh",
            "--config.env",
            "FROM_IMAGE=yes",
        ]));
        sh(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{img}"))
            .arg(format!("docker://{}/{repo}:{tag}", self.host())));
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on loopback in front of a registry that sends its answers at most at
/// `bytes_per_sec`, so that a test can act in the middle of a download (e.g. cut the power
/// during an OS update's slot write). Runs until the test process ends.
pub struct Throttle {
    pub port: u16,
}

impl Throttle {
    pub fn start(target_port: u16, bytes_per_sec: u64) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || throttled_relay(c, target_port, bytes_per_sec));
            }
        });
        Throttle { port }
    }
}

fn throttled_relay(client: TcpStream, target_port: u16, bytes_per_sec: u64) {
    use std::io::{Read, Write};
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut to_upstream)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream, mut client) = (upstream, client);
    let mut buf = [0u8; 16 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match upstream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
}
