//! Interactive exec sessions (`osctl exec` in a terminal): a command runs in a container
//! with its own pty (or with pipes), its output streams to the client as it comes
//! (`ExecOutput` signals on the client's connection), the client's keystrokes arrive with
//! `ExecInput`, window sizes with `ExecResize`, and `ExecWait` returns the exit status
//! once every output chunk has been sent.
//!
//! Sessions belong to the connection that opened them: when that connection goes away
//! (the host's osctl was killed, the terminal closed), [`Sessions::close_owner`] kills the
//! session's process, so no orphaned shell stays behind in a container.

use berth_api::ManagerError;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// Stream numbers in `ExecOutput`: the pty, or the command's stdout, is 1; stderr is 2.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// Largest output chunk sent in one signal.
const CHUNK: usize = 16 << 10;
/// Output chunks in flight between the readers and the client: a client that reads
/// slowly slows the command down instead of growing sysd's memory.
const QUEUE: usize = 32;

/// A started process, handed to [`Sessions::open`].
pub struct Started {
    pub pid: i32,
    /// Where input goes: the pty master, or the write end of the command's stdin.
    pub input: File,
    /// Output streams and their numbers (the pty master once, or stdout and stderr).
    pub outputs: Vec<(u8, File)>,
    /// The pty master, for window sizes (`None` without a terminal).
    pub tty: Option<OwnedFd>,
}

/// Sends one output chunk to the session's client.
pub type Emit = Arc<dyn Fn(u8, Vec<u8>) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct Session {
    pid: i32,
    input: Mutex<Option<File>>,
    tty: Option<OwnedFd>,
    /// (exit status, output chunks sent) once the process is gone and its output sent.
    done: tokio::sync::watch::Receiver<Option<(i32, u64)>>,
}

/// The open sessions, by (owner connection, session id).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<(String, String), Arc<Session>>>,
    /// Connections that are still open: a session is only opened for one of them.
    live: Mutex<std::collections::HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// A session id is chosen by the client: short and printable.
pub fn check_id(id: &str) -> Result<(), ManagerError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ManagerError::Invalid(format!(
            "exec session id {id:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

impl Sessions {
    /// The connection `owner` is open (until [`Sessions::close_owner`]).
    pub fn connected(&self, owner: &str) {
        lock(&self.live).insert(owner.to_string());
    }

    /// Whether `owner` has a session `id` open.
    pub fn contains(&self, owner: &str, id: &str) -> bool {
        lock(&self.map).contains_key(&(owner.to_string(), id.to_string()))
    }

    /// Take over a started process: stream its output with `emit`, collect its status.
    /// Must be called from within the tokio runtime.
    pub fn open(
        &self,
        owner: &str,
        id: &str,
        started: Started,
        emit: Emit,
    ) -> Result<(), ManagerError> {
        let key = (owner.to_string(), id.to_string());
        let mut map = lock(&self.map);
        let refuse = |why: String| {
            kill(started.pid, nix::sys::signal::Signal::SIGKILL);
            tokio::spawn(crate::containers::wait_exit(started.pid));
            Err(ManagerError::Invalid(why))
        };
        if map.contains_key(&key) {
            return refuse(format!("exec session {id} is already open"));
        }
        // The client went away while its command was starting: nobody would end it.
        if !lock(&self.live).contains(owner) {
            return refuse(format!("exec session {id}: the client has disconnected"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(QUEUE);
        for (stream, file) in started.outputs {
            let tx = tx.clone();
            std::thread::spawn(move || pump(stream, file, tx));
        }
        drop(tx);
        let (done_tx, done) = tokio::sync::watch::channel(None);
        let pid = started.pid;
        let exit = tokio::spawn(crate::containers::wait_exit(pid));
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut client_gone = false;
            while let Some((stream, data)) = rx.recv().await {
                if client_gone {
                    continue;
                }
                match emit(stream, data).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        // Nobody can see the output any more: end the command.
                        tracing::info!("exec session: client gone ({e}); killing pid {pid}");
                        kill(pid, nix::sys::signal::Signal::SIGKILL);
                        client_gone = true;
                    }
                }
            }
            let code = exit.await.unwrap_or(-1);
            let _ = done_tx.send(Some((code, sent)));
        });
        map.insert(
            key,
            Arc::new(Session {
                pid,
                input: Mutex::new(Some(started.input)),
                tty: started.tty,
                done,
            }),
        );
        Ok(())
    }

    fn get(&self, owner: &str, id: &str) -> Result<Arc<Session>, ManagerError> {
        lock(&self.map)
            .get(&(owner.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(format!("exec session {id}")))
    }

    /// Send `data` to the command; empty data closes its input (end of file).
    pub async fn input(&self, owner: &str, id: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        let s = self.get(owner, id)?;
        tokio::task::spawn_blocking(move || {
            let mut input = lock(&s.input);
            if data.is_empty() {
                // A terminal has no end of file of its own (the client sends ^D).
                if s.tty.is_none() {
                    input.take();
                }
                return Ok(());
            }
            match input.as_mut() {
                Some(f) => f.write_all(&data).map_err(|e| {
                    ManagerError::Failed(format!("exec session {}: input: {e}", s.pid))
                }),
                None => Err(ManagerError::Invalid(
                    "the command's input is closed".into(),
                )),
            }
        })
        .await
        .map_err(|e| ManagerError::Failed(format!("exec input task: {e}")))?
    }

    /// Set the terminal's window size (the command gets SIGWINCH).
    pub fn resize(&self, owner: &str, id: &str, rows: u16, cols: u16) -> Result<(), ManagerError> {
        let s = self.get(owner, id)?;
        let Some(tty) = &s.tty else {
            return Err(ManagerError::Invalid(format!(
                "exec session {id} has no terminal"
            )));
        };
        let ws = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(tty, ws)
            .map_err(|e| ManagerError::Failed(format!("exec session {id}: window size: {e}")))
    }

    /// Wait until the command has exited and all its output is sent; returns (exit status,
    /// output chunks sent) and closes the session.
    pub async fn wait(&self, owner: &str, id: &str) -> Result<(i32, u64), ManagerError> {
        let s = self.get(owner, id)?;
        let mut done = s.done.clone();
        let r = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ManagerError::Failed(format!("exec session {id} was lost")))?
            .unwrap_or((-1, 0));
        lock(&self.map).remove(&(owner.to_string(), id.to_string()));
        Ok(r)
    }

    /// The connection `owner` went away: kill its sessions' commands and forget them.
    pub fn close_owner(&self, owner: &str) {
        lock(&self.live).remove(owner);
        let gone: Vec<Arc<Session>> = {
            let mut map = lock(&self.map);
            let keys: Vec<_> = map.keys().filter(|k| k.0 == owner).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for s in gone {
            if s.done.borrow().is_none() {
                tracing::info!("exec session: client disconnected; killing pid {}", s.pid);
                kill(s.pid, nix::sys::signal::Signal::SIGKILL);
            }
            // An input write still blocked (a command that does not read) keeps its lock
            // until the kill above ends it; the input closes when that write returns.
            if let Ok(mut input) = s.input.try_lock() {
                input.take();
            }
        }
    }
}

/// Read one output stream to its end (a pty master ends with EIO once the last process
/// holding the terminal is gone) and queue it in chunks.
fn pump(stream: u8, mut file: File, tx: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.blocking_send((stream, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    // The session waits for the process by its pid (`wait_exit`), not through `Child`.
    #[allow(clippy::zombie_processes)]
    fn start(script: &str) -> Started {
        let mut c = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let input = File::from(OwnedFd::from(c.stdin.take().unwrap()));
        let out = File::from(OwnedFd::from(c.stdout.take().unwrap()));
        let err = File::from(OwnedFd::from(c.stderr.take().unwrap()));
        Started {
            pid,
            input,
            outputs: vec![(STDOUT, out), (STDERR, err)],
            tty: None,
        }
    }

    type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

    fn collect() -> (Emit, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let emit: Emit = Arc::new(move |stream, data| {
            let s = s.clone();
            Box::pin(async move {
                lock(&s).push((stream, data));
                Ok(())
            })
        });
        (emit, seen)
    }

    fn text(seen: &Seen, stream: u8) -> String {
        lock(seen)
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn streams_input_output_and_status() {
        let sessions = Sessions::default();
        sessions.connected("conn1");
        let (emit, seen) = collect();
        let started = start("read a; echo out-$a; echo err-$a >&2; cat; exit 5");
        sessions.open("conn1", "s1", started, emit).unwrap();
        assert!(sessions.contains("conn1", "s1"));
        // Another connection cannot use this session.
        assert!(matches!(
            sessions.input("conn2", "s1", b"x".to_vec()).await,
            Err(ManagerError::NotFound(_))
        ));
        sessions
            .input("conn1", "s1", b"hello\n".to_vec())
            .await
            .unwrap();
        sessions
            .input("conn1", "s1", b"tail\n".to_vec())
            .await
            .unwrap();
        // End of input ends `cat`.
        sessions.input("conn1", "s1", Vec::new()).await.unwrap();
        let (code, chunks) = sessions.wait("conn1", "s1").await.unwrap();
        assert_eq!(code, 5);
        assert_eq!(chunks as usize, lock(&seen).len());
        assert_eq!(text(&seen, STDOUT), "out-hello\ntail\n");
        assert_eq!(text(&seen, STDERR), "err-hello\n");
        // The session is closed after the wait.
        assert!(!sessions.contains("conn1", "s1"));
        assert!(matches!(
            sessions.resize("conn1", "s1", 1, 1),
            Err(ManagerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_closed_connection_kills_its_command() {
        let sessions = Sessions::default();
        sessions.connected("conn1");
        let (emit, _seen) = collect();
        let started = start("exec sleep 60");
        let pid = started.pid;
        sessions.open("conn1", "s1", started, emit.clone()).unwrap();
        // The same id again on the same connection is refused (and its process killed).
        let dup = start("exec sleep 60");
        let dup_pid = dup.pid;
        assert!(matches!(
            sessions.open("conn1", "s1", dup, emit),
            Err(ManagerError::Invalid(_))
        ));
        sessions.close_owner("conn1");
        assert!(!sessions.contains("conn1", "s1"));
        // A command that finished starting after its client left is not kept either.
        let late = start("exec sleep 60");
        let late_pid = late.pid;
        let (emit, _seen) = collect();
        assert!(matches!(
            sessions.open("conn1", "s2", late, emit),
            Err(ManagerError::Invalid(m)) if m.contains("disconnected")
        ));
        assert!(!sessions.contains("conn1", "s2"));
        for p in [pid, dup_pid, late_pid] {
            let mut gone = false;
            for _ in 0..100 {
                // Reaped by the session's waiter, or a zombie waiting for it.
                let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                if st.is_empty() || st.contains(") Z") {
                    gone = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(gone, "pid {p} still runs");
        }
    }

    #[tokio::test]
    async fn a_client_that_cannot_be_reached_ends_the_command() {
        let sessions = Sessions::default();
        sessions.connected("c");
        let emit: Emit = Arc::new(|_, _| Box::pin(async { Err("connection closed".to_string()) }));
        let started = start("while :; do echo tick; sleep 0.05; done");
        sessions.open("c", "s", started, emit).unwrap();
        let (code, chunks) =
            tokio::time::timeout(std::time::Duration::from_secs(10), sessions.wait("c", "s"))
                .await
                .expect("the command was not ended")
                .unwrap();
        assert_eq!(code, 128 + 9);
        assert_eq!(chunks, 0);
    }

    #[test]
    fn session_ids() {
        assert!(check_id("1234-abc_1.x").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
