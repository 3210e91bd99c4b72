//! The remote API's audit log: one line per call over the network (time, peer address,
//! certificate subject CN and serial, role, method, result), plus refused connections and
//! the client certificates the node issued. A bounded, rotated file under `/var/log/berth/`
//! (the container log writer, [`crate::containers::logs::LogFile`]), read through
//! `Logs`/`LogsFrom` under the name [`berth_api::AUDIT_LOG_NAME`] (`osctl logs --system api`).
//!
//! Lines go through a bounded queue to one writer task, so a call never waits for the disk
//! and the lines keep their order; when the disk cannot keep up, lines are dropped and the
//! number dropped is written once it can.

use crate::containers::logs::{now_stamp, LogFile};
use berth_api::{ManagerError, Method, Role};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// The audit log.
#[derive(Debug)]
pub struct Audit {
    file: LogFile,
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// One call over the network.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub peer: SocketAddr,
    pub common_name: &'a str,
    pub serial: &'a str,
    pub role: Role,
    pub method: Method,
    /// `ok`, or the error's name (`Denied`, `NotFound`, `Invalid`, `Failed`, `ZBus`).
    pub result: &'a str,
}

/// The name of a call's result in the audit log.
pub fn result_name<T>(r: &Result<T, ManagerError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(ManagerError::Denied(_)) => "Denied",
        Err(ManagerError::NotFound(_)) => "NotFound",
        Err(ManagerError::Invalid(_)) => "Invalid",
        Err(ManagerError::Failed(_)) => "Failed",
        Err(ManagerError::ZBus(_)) => "ZBus",
    }
}

/// `s` quoted, with anything but printable ASCII escaped: a subject CN is chosen by whoever
/// asked for the certificate and must not be able to forge audit lines.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

/// The audit line of `call` at time `stamp`.
pub fn call_line(stamp: &str, c: &Call<'_>) -> String {
    format!(
        "{stamp} peer={} cn={} serial={} role={} method={} result={}\n",
        c.peer,
        quote(c.common_name),
        quote_bare(c.serial),
        c.role,
        c.method,
        c.result
    )
}

/// A value that should be a bare token (hex serial): quoted when it is not.
fn quote_bare(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        s.to_string()
    } else {
        quote(s)
    }
}

impl Audit {
    /// The log `dir/NAME.log` (`NAME` = [`berth_api::AUDIT_LOG_NAME`]) and its writer task
    /// (spawned on the current runtime).
    pub fn start(dir: &Path) -> Arc<Audit> {
        Self::start_with(LogFile::new(dir, berth_api::AUDIT_LOG_NAME))
    }

    /// With a given file (tests: small limits).
    pub fn start_with(file: LogFile) -> Arc<Audit> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(file.clone(), rx, dropped.clone()));
        Arc::new(Audit { file, tx, dropped })
    }

    /// Record a call.
    pub fn call(&self, c: &Call<'_>) {
        self.line(call_line(&now_stamp(), c));
    }

    /// Record something else (`what` is one line, already quoted where it must be).
    pub fn note(&self, what: &str) {
        let one_line: String = what
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.line(format!("{} {one_line}\n", now_stamp()));
    }

    fn line(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The last `lines` lines (0 = all kept), as `Logs` returns them.
    pub fn tail(&self, lines: u32) -> Result<(Vec<u8>, u64), ManagerError> {
        self.file
            .tail(lines as usize)
            .map_err(|e| ManagerError::Failed(format!("reading the audit log: {e}")))
    }

    /// What was written after `from`, as `LogsFrom` returns it.
    pub fn read_from(&self, from: u64) -> Result<(Vec<u8>, u64), ManagerError> {
        self.file
            .read_from(from)
            .map_err(|e| ManagerError::Failed(format!("reading the audit log: {e}")))
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// The writer: appends what is queued, a batch at a time, off the runtime's thread.
async fn write(file: LogFile, mut rx: mpsc::Receiver<String>, dropped: Arc<AtomicU64>) {
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        while batch.len() < 64 << 10 {
            match rx.try_recv() {
                Ok(more) => batch.push_str(&more),
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push_str(&format!(
                "{} audit: {lost} records dropped (the log could not keep up)\n",
                now_stamp()
            ));
        }
        let f = file.clone();
        match tokio::task::spawn_blocking(move || f.append(batch.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("writing {}: {e}", file.path().display()),
            Err(e) => tracing::warn!("audit writer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(cn: &str, serial: &str, result: &'static str) -> String {
        call_line(
            "2026-12-01T10:00:00Z",
            &Call {
                peer: "192.0.2.7:51234".parse().unwrap(),
                common_name: cn,
                serial,
                role: Role::Reader,
                method: Method::Exec,
                result,
            },
        )
    }

    #[test]
    fn a_call_is_one_line_with_every_field() {
        assert_eq!(
            call("alice", "1a2b", "Denied"),
            "2026-12-01T10:00:00Z peer=192.0.2.7:51234 cn=\"alice\" serial=1a2b role=reader method=Exec result=Denied\n"
        );
    }

    #[test]
    fn a_hostile_common_name_cannot_forge_a_line() {
        let l = call(
            "x\" role=admin\n2026-12-01T10:00:01Z peer=10.0.0.1:1 cn=\"root",
            "1\n2",
            "ok",
        );
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        assert!(l.ends_with("role=reader method=Exec result=ok\n"), "{l}");
        assert!(l.contains("cn=\"x\\\" role=admin\\n2026"), "{l}");
        assert!(l.contains("serial=\"1\\n2\""), "{l}");
        assert!(!call("é\u{202e}", "ab", "ok").contains('\u{202e}'));
    }

    #[test]
    fn result_names_are_the_error_variants() {
        assert_eq!(result_name(&Ok::<(), ManagerError>(())), "ok");
        assert_eq!(
            result_name::<()>(&Err(ManagerError::Denied("x".into()))),
            "Denied"
        );
        assert_eq!(
            result_name::<()>(&Err(ManagerError::NotFound("x".into()))),
            "NotFound"
        );
    }

    #[tokio::test]
    async fn lines_are_written_in_order_and_rotated_within_bounds() {
        let d = tempfile::tempdir().unwrap();
        let a = Audit::start_with(LogFile::with_limits(d.path(), "@api", 4096, 1));
        assert!(a.path().ends_with("@api.log"));
        for i in 0..200 {
            a.note(&format!("n={i}\nforged"));
        }
        let mut got = Vec::new();
        for _ in 0..200 {
            got = a.tail(0).unwrap().0;
            if String::from_utf8_lossy(&got).contains("n=199 ") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let text = String::from_utf8(got).unwrap();
        assert!(text.len() <= 2 * 4096, "bounded: {}", text.len());
        let ns: Vec<u32> = text
            .lines()
            .map(|l| {
                assert!(l.ends_with(" forged"), "control characters kept: {l:?}");
                l.split("n=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns.last(), Some(&199));
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "in order: {ns:?}");
        let (last, next) = a.tail(1).unwrap();
        assert!(String::from_utf8_lossy(&last).contains("n=199 "));
        assert_eq!(a.read_from(next).unwrap().0, b"");
    }
}
