//! Console output: one line per event, prefixed `berth:`, with CLOCK_BOOTTIME timestamps.
//!
//! PID 1's stdout is `/dev/console`, which the kernel points at the *last* `console=` of
//! the command line. The metal profile boots with `console=tty0 console=ttyS0,115200`: the
//! serial line gets `/dev/console`, and every line is mirrored to the screen (`tty0`) too,
//! so a person at a monitor sees the boot stages.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The virtual-terminal console to mirror lines to: a `console=ttyN` (a VT, not a serial
/// port) on the command line that is not the last `console=`.
pub fn mirror_target(cmdline: &str) -> Option<PathBuf> {
    let consoles: Vec<&str> = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .map(|v| v.split(',').next().unwrap_or(v))
        .collect();
    let (last, others) = consoles.split_last()?;
    others
        .iter()
        .find(|c| {
            *c != last
                && c.strip_prefix("tty")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|c| PathBuf::from("/dev").join(c))
}

/// The mirror, opened on first use once `/proc` is there (set once, never changed).
fn mirror() -> Option<&'static File> {
    static MIRROR: OnceLock<Option<File>> = OnceLock::new();
    if let Some(m) = MIRROR.get() {
        return m.as_ref();
    }
    // Before /proc is mounted nothing is decided yet: ask again on the next line.
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let file = mirror_target(&cmdline).and_then(|p| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(p)
            .ok()
    });
    MIRROR.get_or_init(|| file).as_ref()
}

/// Seconds since boot (CLOCK_BOOTTIME), the clock the boot-phase lines use.
pub fn boottime() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Write one raw line to the console (PID 1's stdout is `/dev/console`).
pub fn line(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
    if let Some(mut m) = mirror() {
        // A VT takes "\r\n" to start the next line at column 0.
        let _ = write!(m, "{msg}\r\n");
    }
}

/// `berth: <stage> t=<seconds>`: a boot-phase line; returns the timestamp printed.
pub fn phase(name: &str) -> f64 {
    let t = boottime();
    line(&format!("berth: {name} t={t:.3}"));
    t
}

/// An informational line.
pub fn info(msg: &str) {
    line(&format!("berth: {msg}"));
}

/// A problem that does not stop the boot.
pub fn warn(msg: &str) {
    line(&format!("berth: WARNING: {msg}"));
}

/// A problem that stops the boot.
pub fn error(msg: &str) {
    line(&format!("berth: FATAL: {msg}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_a_vt_console_that_is_not_dev_console() {
        let t = |c: &str| mirror_target(c).map(|p| p.display().to_string());
        assert_eq!(
            t("console=tty0 console=ttyS0,115200 quiet").as_deref(),
            Some("/dev/tty0")
        );
        // /dev/console is already the screen, or there is only a serial console.
        assert_eq!(t("console=ttyS0,115200 console=tty0"), None);
        assert_eq!(t("console=ttyS0,115200 quiet"), None);
        assert_eq!(t("quiet"), None);
        // Serial consoles other than the last are not VTs.
        assert_eq!(t("console=ttyS1 console=ttyS0"), None);
    }
}
