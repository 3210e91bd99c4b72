//! The bounded on-disk spool of frames not yet sent (`/var/lib/berth/logfwd/`).
//!
//! Frames (the exact wire bytes, see [`super::format::frame`]) are appended to segment
//! files `<id>.seg` (ids counting up, each about a sixteenth of the limit). The sender
//! reads from the committed position `(segment, offset)`, kept in `committed`, and moves it
//! only past frames the connection accepted; segments wholly behind it are deleted. When
//! the spool grows past its limit, the oldest segments go, sent or not: the lines lost are
//! counted. The newest segment is never deleted, so the next sequence number survives a
//! reboot.
//!
//! Durability: appends and commits are plain writes (the page cache survives a sysd
//! restart and a clean reboot, which syncs at unmount); [`Spool::sync`], called every
//! second by the sender and at shutdown, fsyncs the segment written to, the commit file and
//! the directory. A power cut loses at most the last second; a torn frame at the end of the
//! newest segment is cut off when the spool opens.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::format::{parse_frame, seq_of, MAX_SEQ};

/// A position in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seg: u64,
    pub off: u64,
}

/// Frames read for sending, and the position after each.
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, back to back.
    pub data: Vec<u8>,
    /// For each frame: its end in `data` and the spool position after it.
    pub ends: Vec<(usize, Pos)>,
}

/// Counters for the log and the note.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bytes in the spool (sent or not, until their segment goes).
    pub bytes: u64,
    /// Lines dropped because the spool was full, since the spool opened.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create the spool directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open spool file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write spool file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read spool file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

struct State {
    /// Segments, oldest first: id and length.
    segs: VecDeque<(u64, u64)>,
    /// The newest segment, open for appending.
    file: Option<File>,
    commit: Pos,
    commit_file: File,
    total: u64,
    dropped: u64,
    last_seq: u32,
    dirty: bool,
}

/// The spool; shared by the writer (sysd's log pumps) and the sender.
pub struct Spool {
    dir: PathBuf,
    max: u64,
    seg_max: u64,
    st: Mutex<State>,
}

const COMMIT: &str = "committed";
/// The commit record is overwritten in place at offset 0: always this many bytes.
const COMMIT_LEN: usize = 48;

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to about `max` bytes.
    pub fn open(dir: &Path, max: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(|source| SpoolError::Dir {
            path: dir.into(),
            source,
        })?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(|source| SpoolError::Dir {
                path: dir.into(),
                source,
            })?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let seg_path = |id: u64| dir.join(format!("{id:020}.seg"));
        let mut segs = VecDeque::new();
        let mut total = 0;
        for &id in &ids {
            let len = fs::metadata(seg_path(id)).map(|m| m.len()).unwrap_or(0);
            segs.push_back((id, len));
            total += len;
        }
        // The newest segment: cut a torn tail, find the last sequence number.
        let mut last_seq = 0;
        if let Some((id, len)) = segs.back_mut() {
            let p = seg_path(*id);
            let data = fs::read(&p).map_err(|source| SpoolError::Read {
                path: p.clone(),
                source,
            })?;
            let mut at = 0;
            while let Some((msg, used)) = parse_frame(&data[at..]) {
                last_seq = seq_of(msg).unwrap_or(last_seq);
                at += used;
            }
            if (at as u64) < *len {
                tracing::warn!(
                    "log spool: cut {} torn bytes off {}",
                    *len - at as u64,
                    p.display()
                );
                let f =
                    OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(|source| SpoolError::Open {
                            path: p.clone(),
                            source,
                        })?;
                f.set_len(at as u64)
                    .map_err(|source| SpoolError::Write { path: p, source })?;
                total -= *len - at as u64;
                *len = at as u64;
            }
        }
        let cpath = dir.join(COMMIT);
        let commit_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cpath)
            .map_err(|source| SpoolError::Open {
                path: cpath.clone(),
                source,
            })?;
        let mut text = String::new();
        let _ = (&commit_file)
            .take(COMMIT_LEN as u64)
            .read_to_string(&mut text);
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        let commit = match (words.next(), words.next()) {
            (Some(Ok(seg)), Some(Ok(off))) => Pos { seg, off },
            _ => Pos::default(),
        };
        let spool = Spool {
            dir: dir.into(),
            max,
            seg_max: (max / 16).clamp(64 << 10, 16 << 20),
            st: Mutex::new(State {
                segs,
                file: None,
                commit,
                commit_file,
                total,
                dropped: 0,
                last_seq,
                dirty: false,
            }),
        };
        {
            let mut st = spool.lock();
            // A commit before the oldest segment (or none): start at the oldest; past
            // the end of a segment: the reader moves on.
            let first = st.segs.front().map(|s| s.0).unwrap_or(0);
            if st.commit.seg < first {
                st.commit = Pos { seg: first, off: 0 };
            }
        }
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    /// Appends one frame made by `make(seq, out)` with the next sequence number. Returns
    /// how many unsent lines were dropped to stay within the limit.
    pub fn push(&self, make: impl FnOnce(u32, &mut Vec<u8>)) -> Result<u64, SpoolError> {
        let mut st = self.lock();
        let seq = if st.last_seq >= MAX_SEQ {
            1
        } else {
            st.last_seq + 1
        };
        let mut buf = Vec::with_capacity(256);
        make(seq, &mut buf);
        let len = buf.len() as u64;
        let need_new = match st.segs.back() {
            None => true,
            Some(&(_, l)) => l > 0 && l + len > self.seg_max,
        };
        if need_new || st.file.is_none() {
            if need_new {
                let id = st.segs.back().map(|s| s.0 + 1).unwrap_or(st.commit.seg);
                st.segs.push_back((id, 0));
                // The previous one is complete: make it durable before moving on.
                if let Some(f) = st.file.take() {
                    let _ = f.sync_data();
                }
            }
            let id = st.segs.back().map(|s| s.0).unwrap_or(0);
            let p = self.seg_path(id);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|source| SpoolError::Open { path: p, source })?;
            st.file = Some(f);
        }
        let id = st.segs.back().map(|s| s.0).unwrap_or(0);
        if let Some(f) = st.file.as_mut() {
            if let Err(source) = f.write_all(&buf) {
                // A short write leaves a torn frame: cut it so the reader never sees it.
                let (_, l) = st.segs.back().copied().unwrap_or_default();
                if let Some(f) = st.file.as_ref() {
                    let _ = f.set_len(l);
                }
                return Err(SpoolError::Write {
                    path: self.seg_path(id),
                    source,
                });
            }
        }
        if let Some(last) = st.segs.back_mut() {
            last.1 += len;
        }
        st.total += len;
        st.last_seq = seq;
        st.dirty = true;
        let mut dropped = 0;
        while st.total > self.max && st.segs.len() > 1 {
            let Some((old, olen)) = st.segs.pop_front() else {
                break;
            };
            st.total -= olen;
            let p = self.seg_path(old);
            if st.commit.seg <= old {
                let from = if st.commit.seg == old {
                    st.commit.off
                } else {
                    0
                };
                dropped += count_frames(&p, from);
                let next = st.segs.front().map(|s| s.0).unwrap_or(old + 1);
                st.commit = Pos { seg: next, off: 0 };
                write_commit(&st.commit_file, st.commit);
            }
            let _ = fs::remove_file(&p);
        }
        st.dropped += dropped;
        Ok(dropped)
    }

    /// Up to about `max_bytes` of frames from the committed position (at least one frame
    /// when there is any). Skips (and counts) what does not parse in a segment.
    pub fn read(&self, max_bytes: usize) -> Result<Batch, SpoolError> {
        let mut st = self.lock();
        let mut batch = Batch::default();
        loop {
            let pos = st.commit;
            let Some(&(_, len)) = st.segs.iter().find(|s| s.0 == pos.seg) else {
                // The committed segment is gone (dropped): go to the next one.
                match st.segs.iter().find(|s| s.0 > pos.seg) {
                    Some(&(id, _)) => {
                        st.commit = Pos { seg: id, off: 0 };
                        continue;
                    }
                    None => return Ok(batch),
                }
            };
            let newest = st.segs.back().map(|s| s.0) == Some(pos.seg);
            if pos.off >= len {
                if newest {
                    return Ok(batch);
                }
                // Wholly sent: the next segment.
                let next = st.segs.iter().find(|s| s.0 > pos.seg).map(|s| s.0);
                if let Some(next) = next {
                    st.commit = Pos { seg: next, off: 0 };
                    continue;
                }
                return Ok(batch);
            }
            let p = self.seg_path(pos.seg);
            let mut f = File::open(&p).map_err(|source| SpoolError::Open {
                path: p.clone(),
                source,
            })?;
            f.seek(SeekFrom::Start(pos.off))
                .and_then(|_| {
                    let want = (len - pos.off).min(max_bytes.max(MAX_FRAME) as u64);
                    let mut buf = Vec::with_capacity(want as usize);
                    (&mut f).take(want).read_to_end(&mut buf)?;
                    let mut at = 0;
                    while let Some((_, used)) = parse_frame(&buf[at..]) {
                        if !batch.data.is_empty() && batch.data.len() + used > max_bytes {
                            break;
                        }
                        batch.data.extend_from_slice(&buf[at..at + used]);
                        at += used;
                        let end = Pos {
                            seg: pos.seg,
                            off: pos.off + at as u64,
                        };
                        batch.ends.push((batch.data.len(), end));
                    }
                    if at == 0 && batch.ends.is_empty() {
                        // Nothing parses here (damage after a crash): skip the rest.
                        tracing::warn!(
                            "log spool: skipping {} unreadable bytes of {}",
                            len - pos.off,
                            p.display()
                        );
                        st.commit.off = len;
                    }
                    Ok(())
                })
                .map_err(|source| SpoolError::Read {
                    path: p.clone(),
                    source,
                })?;
            if !batch.ends.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// Everything up to `pos` was sent: remember it, and delete wholly sent segments
    /// (never the newest).
    pub fn commit(&self, pos: Pos) {
        let mut st = self.lock();
        if pos <= st.commit {
            return;
        }
        st.commit = pos;
        write_commit(&st.commit_file, pos);
        st.dirty = true;
        while st.segs.len() > 1 && st.segs.front().is_some_and(|s| s.0 < pos.seg) {
            if let Some((id, len)) = st.segs.pop_front() {
                st.total -= len;
                let _ = fs::remove_file(self.seg_path(id));
            }
        }
    }

    /// Makes what was written durable (segment, commit record, directory).
    pub fn sync(&self) {
        let mut st = self.lock();
        if !st.dirty {
            return;
        }
        st.dirty = false;
        if let Some(f) = &st.file {
            let _ = f.sync_data();
        }
        let _ = st.commit_file.sync_data();
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Whether frames wait to be sent.
    pub fn pending(&self) -> bool {
        let st = self.lock();
        st.segs
            .iter()
            .any(|&(id, len)| id > st.commit.seg || (id == st.commit.seg && len > st.commit.off))
    }

    /// Size and drop counter.
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            bytes: st.total,
            dropped: st.dropped,
        }
    }
}

/// Largest frame: the longest message plus room for its header.
const MAX_FRAME: usize = super::format::MAX_MSG + 1024;

fn write_commit(f: &File, pos: Pos) {
    let mut rec = format!("{} {}", pos.seg, pos.off);
    while rec.len() < COMMIT_LEN - 1 {
        rec.push(' ');
    }
    rec.push('\n');
    if let Err(e) = f.write_all_at(rec.as_bytes(), 0) {
        tracing::warn!("log spool: cannot record the sent position: {e}");
    }
}

/// Frames in `path` from `from` on.
fn count_frames(path: &Path, from: u64) -> u64 {
    let Ok(data) = fs::read(path) else { return 0 };
    let mut at = usize::try_from(from).unwrap_or(usize::MAX).min(data.len());
    let mut n = 0;
    while let Some((_, used)) = parse_frame(&data[at..]) {
        at += used;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::format::{frame, Message, Stream};
    use super::*;

    fn push(s: &Spool, line: &str) -> u64 {
        s.push(|seq, out| {
            frame(
                &Message {
                    timestamp: "2026-12-02T10:00:00Z",
                    hostname: "n",
                    app: "web",
                    stream: Stream::Stdout,
                    seq,
                    msg: line.as_bytes(),
                },
                out,
            )
        })
        .unwrap()
    }

    /// Reads and commits everything; the lines.
    fn drain(s: &Spool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let b = s.read(1000).unwrap();
            let Some(&(_, end)) = b.ends.last() else {
                return lines;
            };
            let mut at = 0;
            for &(e, _) in &b.ends {
                let (msg, _) = parse_frame(&b.data[at..e]).unwrap();
                let text = String::from_utf8_lossy(msg);
                lines.push(text.rsplit(' ').next().unwrap().to_string());
                at = e;
            }
            s.commit(end);
        }
    }

    #[test]
    fn keeps_order_across_segments_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        for i in 0..3000 {
            push(&s, &format!("line{i:04}"));
        }
        let n_segs = fs::read_dir(d.path()).unwrap().count() - 1;
        assert!(n_segs > 1, "{n_segs} segments");
        // Send half, commit, "reboot".
        let b = s.read(50_000).unwrap();
        let (_, mid) = b.ends[b.ends.len() - 1];
        s.commit(mid);
        s.sync();
        drop(s);
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        let got = drain(&s);
        let sent = b.ends.len();
        let want: Vec<String> = (sent..3000).map(|i| format!("line{i:04}")).collect();
        assert_eq!(got, want);
        assert!(!s.pending());
        // Sent segments are gone but the newest, and the sequence goes on.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        push(&s, "after");
        let b = s.read(1000).unwrap();
        assert_eq!(seq_of(parse_frame(&b.data).unwrap().0), Some(3001));
    }

    #[test]
    fn torn_tail_is_cut_at_open() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        push(&s, "one");
        push(&s, "two");
        drop(s);
        let seg = d.path().join(format!("{:020}.seg", 0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"80 <14>1 torn").unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        push(&s, "three");
        assert_eq!(drain(&s), ["one", "two", "three"]);
    }

    #[test]
    fn full_spool_drops_the_oldest_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        let line = "x".repeat(1000);
        let mut dropped = 0;
        for i in 0..3000 {
            dropped += push(&s, &format!("{line}{i:04}"));
        }
        let c = s.counts();
        assert_eq!(c.dropped, dropped);
        assert!(dropped > 1000, "{dropped}");
        assert!(c.bytes <= (1 << 20) + (64 << 10), "{}", c.bytes);
        let got = drain(&s);
        // What is left is the newest, in order, with nothing missing in between.
        assert_eq!(got.len() as u64 + dropped, 3000);
        let first: usize = got[0][1000..].parse().unwrap();
        assert_eq!(first as u64, dropped);
        for (k, l) in got.iter().enumerate() {
            assert_eq!(l[1000..].parse::<usize>().unwrap(), first + k);
        }
    }

    #[test]
    fn damaged_segment_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        for i in 0..2000 {
            push(&s, &format!("line{i:04}"));
        }
        drop(s);
        // Garbage in the oldest segment.
        let seg = d.path().join(format!("{:020}.seg", 0));
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"garbage!", len / 2).unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        let got = drain(&s);
        assert!(got.len() < 2000 && got.len() > 1000, "{}", got.len());
        assert_eq!(got.last().unwrap(), "line1999");
    }

    #[test]
    fn commit_record_survives_reopen_and_bad_record_restarts_at_oldest() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        push(&s, "a");
        push(&s, "b");
        let b = s.read(1).unwrap();
        assert_eq!(b.ends.len(), 1);
        s.commit(b.ends[0].1);
        drop(s);
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(drain(&s), ["b"]);
        drop(s);
        fs::write(d.path().join(COMMIT), "nonsense").unwrap();
        let s = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(drain(&s), ["a", "b"]);
    }
}
