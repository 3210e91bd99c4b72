//! Harness for Berth's whole-system tests: boot the real disk image in QEMU through
//! `qemu/run.sh --headless`, read the serial console, drive the machine with the host-side
//! `osctl` over the virtio-serial socket, and talk QMP.
//!
//! Inputs (set by `make system-test`): `BERTH_IMAGE` (default `build/x86_64/berth.img`) and
//! `BERTH_OSCTL` (default `target/debug/osctl`). A missing image fails the test loudly.

pub mod registry;
pub mod remote;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Generous: TCG boots take 15-30 s on an idle 2-core machine, more when it is busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The disk image under test.
pub fn image() -> PathBuf {
    let p = std::env::var_os("BERTH_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("build/x86_64/berth.img"));
    assert!(
        p.exists(),
        "no Berth image at {} - run `make system-test` (it builds the image first)",
        p.display()
    );
    p
}

/// The static probe binary (`make system-test` builds it next to the OS binaries).
pub fn probe_bin() -> PathBuf {
    let p = std::env::var_os("BERTH_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/x86_64-unknown-linux-gnu/release/berth-probe"));
    assert!(
        p.exists(),
        "no berth-probe at {} (make system-test builds it)",
        p.display()
    );
    p
}

/// The build record next to the image (`image.json`).
pub fn image_info(image: &Path) -> Value {
    let p = image.with_file_name("image.json");
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Slot A's kernel, initrd and command line for a direct boot of `image`: the `direct/`
/// dir next to it, else next to the image under test (a test's unmodified copy).
pub fn direct_boot_files(image: &Path) -> PathBuf {
    let beside = image.with_file_name("direct");
    if beside.join("cmdline").exists() {
        return beside;
    }
    let built = self::image().with_file_name("direct");
    assert!(
        built.join("cmdline").exists(),
        "no direct boot files at {} (made by `make image`)",
        built.display()
    );
    built
}

/// `berth-image build` into `out` from the kernel and binaries of the image under test
/// (`BERTH_KERNEL_DIR`, `BERTH_BIN_DIR`, the cloud module list and command line), with
/// `services` added; returns the build record (`image.json`).
pub fn build_image(out: &Path, build_id: &str, version: &str, services: &[PathBuf]) -> Value {
    let kernel = env_path("BERTH_KERNEL_DIR", "build/x86_64/kernel");
    let bin = env_path("BERTH_BIN_DIR", "target/x86_64-unknown-linux-gnu/release");
    let key = env_path("BERTH_UPDATE_KEY", "build/keys/berth-update");
    let mut c = image_tool();
    c.arg("build")
        .args(["--arch", "x86_64", "--kernel"])
        .arg(&kernel)
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(out)
        .args(["--build-id", build_id])
        .args(["--os-version", version])
        .args(["--modules", "kernel-config/modules-cloud.txt"])
        .args(["--cmdline", "kernel-config/cmdline-x86_64.txt"])
        .arg("--systemd-boot")
        .arg(kernel.join("systemd-boot.efi"))
        .arg("--trusted-key")
        .arg(format!("{}.pub", key.display()));
    for s in services {
        c.arg("--service").arg(s);
    }
    eprintln!("{}", registry::sh(&mut c).trim());
    image_info(&out.join("berth.img"))
}

/// The osctl binary the tests drive (`$BERTH_OSCTL`, else the debug build).
pub fn osctl_bin() -> PathBuf {
    std::env::var_os("BERTH_OSCTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/osctl"))
}

/// A booted (or booting) VM. Dropping it kills QEMU; the state dir is kept when the test
/// failed so the serial log can be read.
pub struct Vm {
    pub dir: PathBuf,
    pub image: PathBuf,
    /// Drive the machine over its TLS API port instead of the osctl channel (the
    /// virtio-serial port or the UART): a client file and the context in it.
    pub remote: Option<Remote>,
}

/// A client file (`osctl pki client`) and the context to use from it.
#[derive(Clone, Debug)]
pub struct Remote {
    pub file: PathBuf,
    pub context: String,
    /// The host port forwarded to the guest's API port.
    pub port: u16,
}

/// Options for [`Vm::boot`].
#[derive(Default, Clone)]
pub struct BootOpts {
    pub config: Option<PathBuf>,
    pub disk_size: Option<String>,
    pub extra: Vec<String>,
    /// Boot through UEFI firmware and systemd-boot from the disk's ESP. Without it the VM
    /// boots slot A's kernel and initrd directly (`qemu/run.sh --direct`, the files `make
    /// image` puts next to the image): seconds sooner under TCG, and enough for every test
    /// that is not about the boot path itself. Boot counting, slot switches, updates, the
    /// metal images and a changed kernel command line need the firmware.
    pub uefi: bool,
}

impl Vm {
    /// Fresh state dir under `target/system-tests/<name>`, then boot.
    pub fn boot(name: &str, image: &Path, opts: &BootOpts) -> Vm {
        let dir = root().join("target/system-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let vm = Vm {
            dir,
            image: image.to_path_buf(),
            remote: None,
        };
        vm.start(opts);
        vm
    }

    /// Start QEMU again on the same state dir (the overlay, and so `/var`, is kept).
    pub fn start(&self, opts: &BootOpts) {
        let mut cmd = Command::new(root().join("qemu/run.sh"));
        cmd.arg("--headless").arg("--state-dir").arg(&self.dir);
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(s) = &opts.disk_size {
            cmd.arg("--disk-size").arg(s);
        }
        if !opts.uefi {
            // The boot files of the image under test (a test's image may be a copy elsewhere).
            let files = direct_boot_files(&self.image);
            cmd.arg("--direct").arg("--boot-files").arg(files);
        }
        cmd.args(&opts.extra).arg(&self.image);
        let out = cmd.output().expect("running qemu/run.sh");
        assert!(
            out.status.success(),
            "qemu/run.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn serial(&self) -> String {
        std::fs::read(self.dir.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Wait until `needle` has appeared `count` times on the console; panics with the log
    /// tail on timeout.
    pub fn wait_serial_n(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.serial();
            if s.matches(needle).count() >= count {
                return s;
            }
            if start.elapsed() > timeout {
                let tail: String = s
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "timed out after {:?} waiting for {needle:?} x{count} on the console; last lines:\n{tail}",
                    timeout
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_serial(&self, needle: &str, timeout: Duration) -> String {
        self.wait_serial_n(needle, 1, timeout)
    }

    /// The host-side osctl command line for this VM, before the subcommand.
    pub fn osctl_argv(&self) -> Vec<String> {
        match &self.remote {
            None => vec![
                osctl_bin().display().to_string(),
                "--connect".into(),
                format!("unix:path={}", self.dir.join("osctl.sock").display()),
            ],
            Some(r) => vec![
                "env".into(),
                "-u".into(),
                "BERTH_CONNECT".into(),
                format!("BERTH_CONFIG={}", r.file.display()),
                osctl_bin().display().to_string(),
                "--context".into(),
                r.context.clone(),
            ],
        }
    }

    /// Run the host-side osctl against this VM.
    pub fn osctl(&self, args: &[&str]) -> Output {
        let argv = self.osctl_argv();
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .output()
            .expect("running osctl")
    }

    /// Copies the static `berth-probe` into `container` as `/tmp/berth-probe` (through
    /// `osctl exec -i`).
    pub fn upload_probe(&self, container: &str) {
        let argv = self.osctl_argv();
        let upload = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["exec", "-i", container, "--", "sh", "-c"])
            .arg("cat > /tmp/berth-probe && chmod 755 /tmp/berth-probe")
            .stdin(std::process::Stdio::from(
                std::fs::File::open(probe_bin()).expect("opening berth-probe"),
            ))
            .output()
            .expect("running osctl");
        assert!(
            upload.status.success(),
            "uploading the probe into {container}: {}",
            String::from_utf8_lossy(&upload.stderr)
        );
    }

    /// Run osctl and return its stdout; panics with its stderr when it fails.
    pub fn osctl_ok(&self, args: &[&str]) -> String {
        let out = self.osctl(args);
        assert!(
            out.status.success(),
            "osctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `osctl -o json ARGS`, parsed.
    pub fn osctl_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.osctl_ok(&a)).expect("osctl JSON")
    }

    /// Poll `f` every 500 ms until it returns `Some`, or panic with `what` after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `osctl logs NAME`, or empty while the machine does not know the container yet (a
    /// config's workloads are launched a moment after `ready`).
    pub fn logs(&self, name: &str) -> String {
        let out = self.osctl(&["logs", name]);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    }

    /// Wait until `osctl ps` shows the container `name` running.
    pub fn wait_running(&self, name: &str) {
        self.wait_for(&format!("{name} running"), Duration::from_secs(180), || {
            let ps = self.osctl_json(&["ps"]);
            ps.as_array()?
                .iter()
                .any(|c| c["name"] == name && c["state"] == "running")
                .then_some(())
        });
    }

    /// `osctl -o json status`, parsed; panics if osctl fails.
    pub fn status(&self) -> Value {
        let out = self.osctl(&["-o", "json", "status"]);
        assert!(
            out.status.success(),
            "osctl status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("osctl status JSON")
    }

    /// One QMP command; returns its `return` value.
    pub fn qmp(&self, execute: &str) -> Value {
        let s = UnixStream::connect(self.dir.join("qmp.sock")).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        let mut call = |cmd: &str| -> Value {
            writeln!(w, "{{\"execute\":\"{cmd}\"}}").unwrap();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                let v: Value = serde_json::from_str(&l).unwrap_or(Value::Null);
                if v.get("return").is_some() || v.get("error").is_some() {
                    return v;
                }
            }
        };
        call("qmp_capabilities");
        call(execute)
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn running(&self) -> bool {
        self.pid()
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }

    /// Wait for QEMU to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    pub fn kill(&self) {
        if let Some(p) = self.pid() {
            let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
            self.wait_exit(Duration::from_secs(10));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("VM state kept in {}", self.dir.display());
        }
    }
}

/// `$VAR` as a path, else `default` under the repository root.
pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default))
}

/// The host tool `berth-image` (`$BERTH_IMAGE_TOOL`, else the debug build), run from the
/// repository root.
pub fn image_tool() -> Command {
    let mut c = Command::new(env_path("BERTH_IMAGE_TOOL", "target/debug/berth-image"));
    c.current_dir(root());
    c
}

/// Copy a (sparse) image.
pub fn copy_image(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    // image.json travels with the image.
    let _ = std::fs::copy(
        src.with_file_name("image.json"),
        dst.with_file_name("image.json"),
    );
}

/// Byte offset of `needle` inside `[start, start+len)` of a file.
pub fn find_bytes(path: &Path, start: u64, len: u64, needle: &[u8]) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = vec![0u8; len as usize];
    let n = f.read(&mut buf).ok()?;
    buf[..n]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| start + p as u64)
}

/// XOR one byte of a file with 0xff.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

/// Overwrite a range of a file with zeros.
pub fn zero_range(path: &Path, offset: u64, len: usize) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
}

/// Byte range (offset, size) of a partition of the shipped layout, by PARTLABEL.
pub fn partition(label: &str) -> (u64, u64) {
    use berth_image::layout::{layout, Arch, Sizes};
    let (parts, _) = layout(Arch::X86_64, Sizes::default(), "any");
    let p = parts
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no partition {label} in the layout"));
    (p.offset, p.size)
}
