//! Console output: one line per event, prefixed `berth:`, with CLOCK_BOOTTIME timestamps.

use std::io::Write;

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
