//! Bridge between the host's osctl channel and the local API socket, so a host-side
//! `osctl --connect unix:path=<qemu socket>` talks to the same D-Bus server.
//!
//! Two kinds of channel, chosen by [`start`]:
//! * a UART named by `berth.osctl=<tty>` on the kernel command line (`ttyS1` on the metal
//!   profile: bare metal, or a VM without virtio), which carries no connect or disconnect
//!   signal at all;
//! * the virtio-serial port `org.berth.osctl` (VMs), which polls as HUP while no host is
//!   connected, but can report one client's close after the next client's first bytes.
//!
//! Neither tells reliably where one host session ends, so both run [`run_stream`], which
//! follows the host-to-guest D-Bus stream ([`Sessions`]): a D-Bus client always opens with
//! a NUL byte, and D-Bus messages always start with `l` or `B`, so a NUL where a message or
//! an auth line would start is a new host session. Each host session gets a fresh
//! connection to the API socket (a fresh D-Bus handshake), one host client at a time.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Kernel command line parameter naming the UART used as the osctl channel.
pub const CMDLINE_KEY: &str = "berth.osctl";

/// Bridge setup failures, each naming the device.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot open the osctl channel {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put the osctl UART {path} in raw mode")]
    RawMode {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{CMDLINE_KEY}={value:?} is not a tty name (expected e.g. ttyS1)")]
    BadName { value: String },
    #[error("cannot start the osctl bridge thread")]
    Thread(#[source] std::io::Error),
}

/// Find the device node of the virtio port with this name (`/sys/class/virtio-ports/*/name`).
pub fn find_port(sys_ports: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_ports).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| dev.join(e.file_name()))
    })
}

/// The UART named by `berth.osctl=` on a kernel command line, as a device under `dev`
/// (the last value wins, as in the kernel). `Ok(None)` when the parameter is absent.
pub fn uart_from_cmdline(cmdline: &str, dev: &Path) -> Result<Option<PathBuf>, BridgeError> {
    let Some(v) = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == CMDLINE_KEY)
        .map(|(_, v)| v)
        .next_back()
    else {
        return Ok(None);
    };
    let name = v.strip_prefix("/dev/").unwrap_or(v);
    if name.is_empty()
        || !name.starts_with("tty")
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(BridgeError::BadName {
            value: v.to_string(),
        });
    }
    Ok(Some(dev.join(name)))
}

/// Start the bridge for this machine on its own thread: the UART named on the kernel
/// command line, else the virtio-serial port, else nothing (no host channel).
pub fn start(socket: &'static Path) -> Result<(), BridgeError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("osctl-bridge".into())
            .spawn(f)
            .map(drop)
            .map_err(BridgeError::Thread)
    };
    if let Some(tty) = uart_from_cmdline(&cmdline, Path::new("/dev"))? {
        let dev = open_uart(&tty)?;
        tracing::info!(
            "osctl bridge: UART {} <-> {}",
            tty.display(),
            socket.display()
        );
        return spawn(Box::new(move || run_stream(dev, socket)));
    }
    if let Some(port) = find_port(
        Path::new("/sys/class/virtio-ports"),
        Path::new("/dev"),
        berth_api::VIRTIO_PORT_NAME,
    ) {
        // The virtio port reports a host disconnect (HUP), but a client that reconnects
        // quickly can beat the guest to it: follow the D-Bus stream here too, so a new
        // host session is recognised either way.
        return match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&port)
        {
            Ok(dev) => {
                tracing::info!("osctl bridge: {} <-> {}", port.display(), socket.display());
                spawn(Box::new(move || run_stream(dev, socket)))
            }
            Err(source) => Err(BridgeError::Open { path: port, source }),
        };
    }
    tracing::info!("no osctl channel to a host (no virtio port, no {CMDLINE_KEY}=)");
    Ok(())
}

/// Open a tty for the bridge: read-write, not our controlling terminal, raw 8-bit mode
/// (no echo, no line editing, no CR/LF translation, no signals from bytes), ignoring
/// modem lines, and not hanging up on close.
pub fn open_uart(path: &Path) -> Result<File, BridgeError> {
    use nix::sys::termios::{self, ControlFlags, SetArg};
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|source| BridgeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let raw = |source| BridgeError::RawMode {
        path: path.to_path_buf(),
        source,
    };
    let mut t = termios::tcgetattr(&f).map_err(raw)?;
    termios::cfmakeraw(&mut t);
    t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    t.control_flags &= !(ControlFlags::HUPCL | ControlFlags::CRTSCTS);
    // A real UART needs a rate both ends agree on (QEMU's ignores it). Set in the CBAUD bits
    // directly: static glibc has no usable cfsetspeed.
    t.control_flags = (t.control_flags & !ControlFlags::CBAUD)
        | ControlFlags::from_bits_retain(nix::libc::B115200);
    t.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(&f, SetArg::TCSANOW, &t).map_err(raw)?;
    // Whatever arrived before we were listening belongs to no session we can serve.
    let _ = termios::tcflush(&f, termios::FlushArg::TCIOFLUSH);
    Ok(f)
}

/// Largest D-Bus message (the spec's limit is 128 MiB); anything bigger means we lost track.
const MAX_MESSAGE: u64 = 128 << 20;
/// Longest auth line we accept before deciding the stream is not D-Bus.
const MAX_AUTH_LINE: usize = 16 * 1024;
/// A host that falls silent this long in the middle of a message has gone away: a NUL
/// after such a gap starts a new session even where a message byte was expected.
pub const ABANDON_GAP: Duration = Duration::from_secs(2);

/// Where the host-to-guest D-Bus stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No session: everything but the NUL that opens one is dropped.
    Idle,
    /// SASL auth lines (`AUTH ...\r\n`, `BEGIN\r\n`); holds the current line.
    Auth(Vec<u8>),
    /// Messages: the fixed 16-byte header collected so far, then `rest` bytes to skip.
    Header(Vec<u8>),
    Body {
        rest: u64,
    },
    /// Not D-Bus as we know it: forward, and wait for a NUL after a silence.
    Lost,
}

/// What to do with one host byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a fresh API connection; this byte is its first.
    NewSession,
    /// Forward to the current session.
    Forward,
    /// Drop (no session is open).
    Drop,
}

/// Follows the host-to-guest byte stream of the channel to tell where one host D-Bus
/// session ends and the next begins.
#[derive(Debug)]
pub struct Sessions {
    phase: Phase,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Sessions { phase: Phase::Idle }
    }

    /// The API side closed: drop host bytes until the next session opens.
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
    }

    /// Classify one host byte; `after_gap` is true when the host was silent for at least
    /// [`ABANDON_GAP`] before it.
    pub fn feed(&mut self, b: u8, after_gap: bool) -> Action {
        let new_session = |s: &mut Self| {
            s.phase = Phase::Auth(Vec::new());
            Action::NewSession
        };
        match &mut self.phase {
            Phase::Idle => {
                if b == 0 {
                    return new_session(self);
                }
                Action::Drop
            }
            Phase::Auth(line) => {
                // Auth lines are ASCII: a NUL is a client starting over.
                if b == 0 {
                    return new_session(self);
                }
                line.push(b);
                if line.ends_with(b"\r\n") {
                    if line.as_slice() == b"BEGIN\r\n" {
                        self.phase = Phase::Header(Vec::with_capacity(16));
                    } else {
                        line.clear();
                    }
                } else if line.len() > MAX_AUTH_LINE {
                    self.phase = Phase::Lost;
                }
                Action::Forward
            }
            Phase::Header(h) => {
                if h.is_empty() {
                    match b {
                        0 => return new_session(self),
                        b'l' | b'B' => {}
                        _ => {
                            self.phase = Phase::Lost;
                            return Action::Forward;
                        }
                    }
                } else if b == 0 && after_gap {
                    return new_session(self);
                }
                h.push(b);
                if h.len() == 16 {
                    let u32_at = |i: usize| {
                        let a = [h[i], h[i + 1], h[i + 2], h[i + 3]];
                        u64::from(if h[0] == b'l' {
                            u32::from_le_bytes(a)
                        } else {
                            u32::from_be_bytes(a)
                        })
                    };
                    let body = u32_at(4);
                    let fields = u32_at(12);
                    // Header fields are padded to 8 bytes; the body follows.
                    let rest = (16 + fields).div_ceil(8) * 8 - 16 + body;
                    self.phase = if rest > MAX_MESSAGE {
                        Phase::Lost
                    } else if rest == 0 {
                        Phase::Header(Vec::with_capacity(16))
                    } else {
                        Phase::Body { rest }
                    };
                }
                Action::Forward
            }
            Phase::Body { rest } => {
                if b == 0 && after_gap {
                    return new_session(self);
                }
                *rest -= 1;
                if *rest == 0 {
                    self.phase = Phase::Header(Vec::with_capacity(16));
                }
                Action::Forward
            }
            Phase::Lost => {
                if b == 0 && after_gap {
                    return new_session(self);
                }
                Action::Forward
            }
        }
    }
}

/// Run the bridge over one byte-stream channel (the UART or the virtio port) forever
/// (blocking; start it on its own thread).
pub fn run_stream(mut dev: File, socket: &Path) {
    let mut sessions = Sessions::new();
    let mut sock: Option<UnixStream> = None;
    let mut last_host_byte = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let mut fds = vec![PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = &sock {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Err(e) = poll(&mut fds, PollTimeout::from(1000u16)) {
            if e != nix::Error::EINTR {
                tracing::warn!("osctl bridge: poll: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            continue;
        }
        let dev_ready = fds[0]
            .revents()
            .unwrap_or(PollFlags::empty())
            .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR);
        let sock_ready = fds.get(1).is_some_and(|f| {
            f.revents()
                .unwrap_or(PollFlags::empty())
                .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        drop(fds);

        if dev_ready {
            let n = match dev.read(&mut buf) {
                // Only a virtio port reads EOF: its host side is closed right now. The
                // session is not ended here: the close can be reported after the next
                // client's first bytes were already read (control and data travel on
                // separate virtqueues), and ending it then would cut that client off.
                // The next client's opening NUL starts a fresh session anyway.
                Ok(0) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("osctl bridge: reading the host channel: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let now = Instant::now();
            let mut gap = now.duration_since(last_host_byte) >= ABANDON_GAP;
            last_host_byte = now;
            out.clear();
            for &b in &buf[..n] {
                match sessions.feed(b, gap) {
                    Action::NewSession => {
                        flush_to(&mut sock, &mut out, &mut sessions);
                        sock = open_session(&dev, socket);
                        if sock.is_none() {
                            sessions.reset();
                        } else {
                            out.push(b);
                        }
                    }
                    Action::Forward => out.push(b),
                    Action::Drop => {}
                }
                gap = false;
            }
            flush_to(&mut sock, &mut out, &mut sessions);
        }
        if sock_ready {
            if let Some(s) = &mut sock {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        // The server ended the session: drop host bytes until a new one.
                        sock = None;
                        sessions.reset();
                    }
                    Ok(n) => {
                        if let Err(e) = dev.write_all(&buf[..n]) {
                            tracing::warn!("osctl bridge: writing the host channel: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// Send `out` to the current session (if any); a failed write ends the session.
fn flush_to(sock: &mut Option<UnixStream>, out: &mut Vec<u8>, sessions: &mut Sessions) {
    if let Some(s) = sock {
        if !out.is_empty() && s.write_all(out).is_err() {
            *sock = None;
            sessions.reset();
        }
    }
    out.clear();
}

/// A fresh API connection for a new host session. Output of the previous session still
/// queued in the channel is discarded so the new client's first bytes are its own answers.
fn open_session(dev: &File, socket: &Path) -> Option<UnixStream> {
    let _ = nix::sys::termios::tcflush(dev, nix::sys::termios::FlushArg::TCOFLUSH);
    match UnixStream::connect(socket) {
        Ok(s) => {
            tracing::debug!("osctl bridge: new host session");
            Some(s)
        }
        Err(e) => {
            tracing::warn!("osctl bridge: cannot reach {}: {e}", socket.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_named_port() {
        let d = std::env::temp_dir().join(format!("berth-vport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (p, n) in [("vport0p0", "other"), ("vport0p1", "org.berth.osctl")] {
            std::fs::create_dir_all(d.join(p)).unwrap();
            std::fs::write(d.join(p).join("name"), format!("{n}\n")).unwrap();
        }
        assert_eq!(
            find_port(&d, Path::new("/dev"), "org.berth.osctl"),
            Some(PathBuf::from("/dev/vport0p1"))
        );
        assert_eq!(find_port(&d, Path::new("/dev"), "nope"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn uart_name_from_cmdline() {
        let dev = Path::new("/dev");
        assert_eq!(
            uart_from_cmdline("console=ttyS0 berth.osctl=ttyS1 quiet", dev).unwrap(),
            Some(PathBuf::from("/dev/ttyS1"))
        );
        assert_eq!(
            uart_from_cmdline("berth.osctl=ttyS1 berth.osctl=/dev/ttyAMA1", dev).unwrap(),
            Some(PathBuf::from("/dev/ttyAMA1"))
        );
        assert_eq!(uart_from_cmdline("console=ttyS0", dev).unwrap(), None);
        for bad in ["berth.osctl=../sda", "berth.osctl=", "berth.osctl=sda1"] {
            let e = uart_from_cmdline(bad, dev).unwrap_err().to_string();
            assert!(e.contains("berth.osctl"), "{e}");
        }
    }

    /// A little-endian D-Bus method call with `fields` header-field bytes and `body` bytes.
    fn message(fields: u32, body: u32) -> Vec<u8> {
        let mut m = vec![b'l', 1, 0, 1];
        m.extend(body.to_le_bytes());
        m.extend(7u32.to_le_bytes());
        m.extend(fields.to_le_bytes());
        m.extend(std::iter::repeat_n(0u8, fields.div_ceil(8) as usize * 8));
        // Bodies of real calls are full of NUL bytes (padding, string terminators).
        m.extend(std::iter::repeat_n(0u8, body as usize));
        m
    }

    fn client(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut s = b"\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec();
        for m in msgs {
            s.extend(m);
        }
        s
    }

    fn feed_all(s: &mut Sessions, bytes: &[u8]) -> Vec<Action> {
        bytes.iter().map(|b| s.feed(*b, false)).collect()
    }

    #[test]
    fn one_session_is_forwarded_whole() {
        let mut s = Sessions::new();
        let bytes = client(&[message(61, 0), message(5, 24)]);
        let acts = feed_all(&mut s, &bytes);
        assert_eq!(acts[0], Action::NewSession);
        assert!(acts[1..].iter().all(|a| *a == Action::Forward), "{acts:?}");
    }

    #[test]
    fn second_client_after_complete_messages_is_a_new_session() {
        let mut s = Sessions::new();
        let first = client(&[message(61, 0), message(13, 40)]);
        feed_all(&mut s, &first);
        // No gap needed: at a message boundary a NUL cannot start a message.
        let second = client(&[message(61, 0)]);
        let acts = feed_all(&mut s, &second);
        assert_eq!(acts[0], Action::NewSession);
        assert_eq!(
            acts.iter().filter(|a| **a == Action::NewSession).count(),
            1,
            "the NULs inside the second client's messages must not split it"
        );
    }

    #[test]
    fn client_that_died_mid_message_is_replaced_after_a_gap() {
        let mut s = Sessions::new();
        let first = client(&[message(61, 0)]);
        feed_all(&mut s, &first[..first.len() - 10]);
        // Without a silence, a NUL mid-message is data.
        assert_eq!(s.feed(0, false), Action::Forward);
        assert_eq!(s.feed(0, true), Action::NewSession);
        let acts = feed_all(&mut s, &client(&[message(8, 8)])[1..]);
        assert!(acts.iter().all(|a| *a == Action::Forward), "{acts:?}");
    }

    #[test]
    fn client_that_died_during_auth_is_replaced() {
        let mut s = Sessions::new();
        feed_all(&mut s, b"\0AUTH EXTER");
        assert_eq!(s.feed(0, false), Action::NewSession);
    }

    #[test]
    fn noise_without_a_session_is_dropped_and_big_lengths_lose_track() {
        let mut s = Sessions::new();
        assert!(feed_all(&mut s, b"garbage")
            .iter()
            .all(|a| *a == Action::Drop));
        // A header claiming a 4 GiB body: stop parsing, forward, wait for a NUL after a gap.
        let mut bytes = b"\0BEGIN\r\n".to_vec();
        bytes.extend([
            b'l', 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0,
        ]);
        feed_all(&mut s, &bytes);
        assert_eq!(s.feed(0, false), Action::Forward);
        assert_eq!(s.feed(0, true), Action::NewSession);
        s.reset();
        assert_eq!(s.feed(b'l', false), Action::Drop);
    }
}
