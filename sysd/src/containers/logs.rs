//! Container logs: stdout and stderr of each container go through a FIFO into a
//! size-bounded, rotated file under `/var/log/berth/`.
//!
//! The container's end of the FIFO is opened read-write, so the container never gets
//! SIGPIPE or EPIPE while sysd is away (restarting): its writes wait in the pipe buffer
//! (64 KiB), and the next sysd re-opens the FIFO and drains it. Each line gets a UTC
//! timestamp prefix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::logfwd::format::{LineSplitter, Stream};

/// Largest size of one log file before it is rotated.
pub const MAX_BYTES: u64 = 1 << 20;
/// Rotated files kept (`NAME.log.1` .. `NAME.log.N`).
pub const KEEP: u32 = 2;
/// Largest chunk one read returns.
pub const MAX_CHUNK: usize = 256 << 10;

/// One container's log file and its rotated predecessors.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    max: u64,
    keep: u32,
}

impl LogFile {
    /// `dir/NAME.log`, rotated at [`MAX_BYTES`].
    pub fn new(dir: &Path, name: &str) -> Self {
        Self::with_limits(dir, name, MAX_BYTES, KEEP)
    }

    /// With explicit limits (tests).
    pub fn with_limits(dir: &Path, name: &str, max: u64, keep: u32) -> Self {
        LogFile {
            path: dir.join(format!("{name}.log")),
            max,
            keep,
        }
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Append `data`, rotating first when the file would grow past the limit.
    pub fn append(&self, data: &[u8]) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let len = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if len > 0 && len + data.len() as u64 > self.max {
            self.rotate()?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(data)
    }

    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }

    /// The last `lines` lines (0 = everything kept), and the position after them.
    pub fn tail(&self, lines: usize) -> io::Result<(Vec<u8>, u64)> {
        let mut data = Vec::new();
        for n in (1..=self.keep).rev() {
            if let Ok(mut f) = File::open(self.rotated(n)) {
                f.read_to_end(&mut data)?;
            }
        }
        let end = match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
                f.stream_position()?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if lines > 0 {
            let body = data.strip_suffix(b"\n").unwrap_or(&data);
            let start = body
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, b)| **b == b'\n')
                .nth(lines - 1)
                .map(|(i, _)| i + 1)
                .unwrap_or(0);
            data.drain(..start);
        }
        if data.len() > MAX_CHUNK * 4 {
            data.drain(..data.len() - MAX_CHUNK * 4);
        }
        Ok((data, end))
    }

    /// What was written after position `from` of the current file (everything when the
    /// file was rotated since), at most [`MAX_CHUNK`] bytes, and the next position.
    pub fn read_from(&self, from: u64) -> io::Result<(Vec<u8>, u64)> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let from = if from > len { 0 } else { from };
        f.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        f.take(MAX_CHUNK as u64).read_to_end(&mut data)?;
        Ok((data.clone(), from + data.len() as u64))
    }
}

/// Turns raw output into timestamped lines.
#[derive(Debug, Default)]
pub struct Liner {
    mid_line: bool,
}

impl Liner {
    /// Prefix every line that starts in `data` with `stamp`.
    pub fn stamp(&mut self, data: &[u8], stamp: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 32);
        for &b in data {
            if !self.mid_line {
                out.extend_from_slice(stamp.as_bytes());
                out.push(b' ');
                self.mid_line = true;
            }
            out.push(b);
            if b == b'\n' {
                self.mid_line = false;
            }
        }
        out
    }
}

/// Now, as `2026-11-23T04:05:06Z`.
pub fn now_stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Where a pump sends lines besides the log file: the forwarder and the container's name.
#[derive(Clone)]
pub struct Forward {
    pub fwd: crate::logfwd::Forwarder,
    pub app: String,
}

/// One output FIFO of a container: stdout's, or stderr's when it has its own.
pub struct Pipe {
    /// The FIFO, opened for reading, non-blocking.
    pub file: std::fs::File,
    pub path: PathBuf,
    pub stream: Stream,
}

/// Copies everything from the container's output FIFOs into `log` (and to the forwarder)
/// until every writer of every FIFO is gone.
pub async fn pump_from(pipes: Vec<Pipe>, log: LogFile, fwd: Option<Forward>) {
    let mut ends = Vec::new();
    for p in pipes {
        match tokio::net::unix::pipe::Receiver::from_file(p.file) {
            Ok(r) => ends.push((
                r,
                p.path,
                p.stream,
                Liner::default(),
                LineSplitter::default(),
            )),
            Err(e) => tracing::warn!("cannot watch log pipe {}: {e}", p.path.display()),
        }
    }
    let mut buf = vec![0u8; 64 << 10];
    while !ends.is_empty() {
        // The first FIFO with data (or whose writers are gone).
        let ready = tokio::select! {
            _ = ends[0].0.readable() => 0,
            _ = async {
                match ends.get(1) {
                    Some(e) => e.0.readable().await,
                    None => std::future::pending().await,
                }
            } => 1,
        };
        let (rx, path, stream, liner, splitter) = &mut ends[ready];
        let closed = match rx.try_read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let out = liner.stamp(&data, &now_stamp());
                let l = log.clone();
                let mut lines = Vec::new();
                if fwd.as_ref().is_some_and(|f| f.fwd.is_on()) {
                    splitter.feed(&data, |line| lines.push(line.to_vec()));
                }
                let (f, st) = (fwd.clone(), *stream);
                let res = tokio::task::spawn_blocking(move || {
                    let r = l.append(&out);
                    if let Some(f) = f {
                        for line in lines {
                            f.fwd.line(&f.app, st, &line);
                        }
                    }
                    r
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::warn!("writing {}: {e}", log.path().display());
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                tracing::warn!("reading log pipe {}: {e}", path.display());
                true
            }
        };
        if closed {
            if let Some(f) = &fwd {
                let mut rest = Vec::new();
                splitter.finish(|l| rest.push(l.to_vec()));
                let (f, st) = (f.clone(), *stream);
                let _ = tokio::task::spawn_blocking(move || {
                    for line in rest {
                        f.fwd.line(&f.app, st, &line);
                    }
                })
                .await;
            }
            ends.swap_remove(ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_each_line_once_across_chunks() {
        let mut l = Liner::default();
        let mut out = l.stamp(b"hello\nwor", "T");
        out.extend(l.stamp(b"ld\n", "U"));
        assert_eq!(out, b"T hello\nT world\n");
    }

    #[test]
    fn rotates_and_bounds_size() {
        let d = tempfile::tempdir().unwrap();
        let log = LogFile::with_limits(d.path(), "c", 100, 2);
        for i in 0..50 {
            log.append(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let total: u64 = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 300, "{total} bytes kept");
        assert!(d.path().join("c.log.2").exists());
        assert!(!d.path().join("c.log.3").exists());
        let (t, end) = log.tail(2).unwrap();
        assert_eq!(t, b"line 048\nline 049\n");
        assert_eq!(end, fs::metadata(log.path()).unwrap().len());
        // Following from the end sees only new data.
        log.append(b"line 050\n").unwrap();
        let (more, _) = log.read_from(end).unwrap();
        assert_eq!(more, b"line 050\n");
    }

    #[tokio::test]
    async fn pump_keeps_streams_apart_in_the_file_and_the_forwarder() {
        use std::os::unix::fs::OpenOptionsExt;
        let d = tempfile::tempdir().unwrap();
        let mut pipes = Vec::new();
        let mut writers = Vec::new();
        for (name, stream) in [("log.fifo", Stream::Stdout), ("err.fifo", Stream::Stderr)] {
            let path = d.path().join(name);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .unwrap();
            writers.push(OpenOptions::new().write(true).open(&path).unwrap());
            pipes.push(Pipe { file, path, stream });
        }
        let cfg = berth_config::parse("[logging]\nforward = \"tcp://127.0.0.1:9\"\n").unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(cfg);
        let fwd = crate::logfwd::Forwarder::new();
        let spool = d.path().join("spool");
        fwd.start(rx, spool.clone());
        let log = LogFile::new(d.path(), "web");
        writers[0].write_all(b"out one\nout ").unwrap();
        writers[1].write_all(b"err one\n").unwrap();
        writers[0].write_all(b"two\nunfinished").unwrap();
        drop(writers);
        let f = Forward {
            fwd: fwd.clone(),
            app: "web".into(),
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            pump_from(pipes, log.clone(), Some(f)),
        )
        .await
        .expect("the pump ends when the writers are gone");
        let text = String::from_utf8(fs::read(log.path()).unwrap()).unwrap();
        for l in ["out one", "out two", "err one", "unfinished"] {
            assert!(text.contains(&format!(" {l}")), "{l} in {text}");
        }
        assert_eq!(fwd.counters().0, 4);
        let seg = fs::read(spool.join(format!("{:020}.seg", 0))).unwrap();
        let seg = String::from_utf8_lossy(&seg);
        assert!(
            seg.contains("stream=\"stderr\"][meta sequenceId=\"") && seg.contains("] err one"),
            "{seg}"
        );
        assert!(
            seg.contains(" web - - [berth@32473 stream=\"stdout\"]"),
            "{seg}"
        );
        assert!(
            seg.contains("] out two") && seg.ends_with("] unfinished"),
            "{seg}"
        );
    }

    #[test]
    fn read_after_rotation_restarts_at_zero() {
        let d = tempfile::tempdir().unwrap();
        let log = LogFile::with_limits(d.path(), "c", 20, 1);
        log.append(b"0123456789abcdef\n").unwrap();
        let (_, end) = log.tail(0).unwrap();
        log.append(b"xyz\n").unwrap(); // rotates
        let (data, _) = log.read_from(end).unwrap();
        assert_eq!(data, b"xyz\n");
    }
}
