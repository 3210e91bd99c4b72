//! `osctl exec` in a terminal: an exec session with a pty on the machine. The local
//! terminal goes to raw mode (restored on every way out), keystrokes go to the machine as
//! they are typed (`ExecInput`), window size changes follow (`ExecResize`), output is
//! written as it arrives (`ExecOutput` signals), and the exit status comes last
//! (`ExecWait`), after every output chunk.

use berth_api::{ManagerError, ManagerProxy};
use futures_util::StreamExt;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// How to run the session.
pub struct Options {
    /// Give the command a terminal on the machine.
    pub tty: bool,
    /// Send this program's standard input to the command.
    pub input: bool,
}

/// The local terminal in raw mode while this lives.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// The local terminal's size (rows, columns), from stdout or stdin.
fn window_size() -> Option<(u16, u16)> {
    let of = |ws: rustix::termios::Winsize| (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col));
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .and_then(of)
        .or_else(|| {
            rustix::termios::tcgetwinsize(std::io::stdin())
                .ok()
                .and_then(of)
        })
}

/// Whether `exec` should use a terminal when not told: both ends are terminals.
pub fn auto_tty() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Run `command` in container `name` as a session; returns its exit status.
pub async fn session(
    m: &ManagerProxy<'static>,
    name: &str,
    command: &[String],
    opts: Options,
) -> Result<i32, ManagerError> {
    let id = format!(
        "osctl-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    // Listen before the command starts, so no output is missed.
    let mut output = m.receive_exec_output().await?;
    let (rows, cols) = if opts.tty {
        window_size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    m.exec_start(&id, name, command, opts.tty, rows, cols)
        .await?;
    let raw = (opts.tty && std::io::stdin().is_terminal())
        .then(RawMode::enter)
        .flatten();
    let mut tasks = Vec::new();
    if opts.input {
        // A plain thread: a blocked read of stdin must not keep the runtime from ending.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Vec::new());
                        break;
                    }
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        });
        let (m, id) = (m.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                let eof = data.is_empty();
                // The command may be gone already; its status still comes from ExecWait.
                if m.exec_input(&id, &data).await.is_err() || eof {
                    break;
                }
            }
        }));
    }
    if opts.tty {
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            let (m, id) = (m.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((r, c)) = window_size() {
                        let _ = m.exec_resize(&id, r, c).await;
                    }
                }
            }));
        }
    }
    let mut seen = 0u64;
    let wait = m.exec_wait(&id);
    tokio::pin!(wait);
    let result = loop {
        tokio::select! {
            r = &mut wait => break r,
            sig = output.next() => match sig {
                Some(sig) => seen += u64::from(show(&id, &sig)),
                None => break Err(ManagerError::Failed("the connection closed".into())),
            },
        }
    };
    // Every output chunk was sent before the reply: show the ones not read yet.
    if let Ok((_, chunks)) = &result {
        while seen < *chunks {
            match tokio::time::timeout(Duration::from_secs(5), output.next()).await {
                Ok(Some(sig)) => seen += u64::from(show(&id, &sig)),
                _ => break,
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    drop(raw);
    result.map(|(code, _)| code)
}

/// Write an output chunk of session `id` where it belongs (stream 2 to stderr, else
/// stdout); false when the signal is not one of this session's.
fn show(id: &str, sig: &berth_api::ExecOutput) -> bool {
    let Ok(a) = sig.args() else { return false };
    if a.session != id {
        return false;
    }
    let _ = if a.stream == 2 {
        let mut e = std::io::stderr();
        e.write_all(&a.data).and_then(|_| e.flush())
    } else {
        let mut o = std::io::stdout();
        o.write_all(&a.data).and_then(|_| o.flush())
    };
    true
}
