//! RFC 5424 messages in RFC 6587 octet-counted frames, and the splitting of a raw output
//! stream into lines.
//!
//! Hand-written rather than from a crate: the spool stores the exact wire bytes, so the
//! formatter must give byte-level control (octet-counted framing, MSG as raw octets when a
//! line is not UTF-8, a fixed structured data element) and nothing else. The crates that
//! format RFC 5424 either format `tracing` events only (`tracing-rfc-5424`) or bring their
//! own transport and time crate (`fasyslog` with `jiff`, `syslog-rs`), more than these
//! ~100 lines, which are tested below and fuzzed (`fuzz/fuzz_targets/logfwd_frame.rs`).

use std::fmt::Write as _;

/// Our structured data ID: `berth@32473` (32473 is the private enterprise number that
/// RFC 5612 sets aside for documentation; Berth has none of its own).
pub const SD_ID: &str = "berth@32473";

/// Longest MSG part of one message: a longer line is cut into several messages.
pub const MAX_MSG: usize = 64 << 10;

/// Largest sequence number (RFC 5424 `meta sequenceId`: 1 to 2147483647, then 1 again).
pub const MAX_SEQ: u32 = 2_147_483_647;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// sysd's own log, with the severity of the event.
    Sysd(Severity),
}

/// RFC 5424 severities used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error = 3,
    Warning = 4,
    Info = 6,
    Debug = 7,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Sysd(_) => "log",
        }
    }

    /// PRI: containers are facility user (1), info on stdout and error on stderr; sysd is
    /// facility daemon (3) with its event's severity.
    fn pri(self) -> u8 {
        match self {
            Stream::Stdout => 8 + Severity::Info as u8,
            Stream::Stderr => 8 + Severity::Error as u8,
            Stream::Sysd(s) => 24 + s as u8,
        }
    }
}

/// One message to format.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// RFC 3339 UTC time, e.g. `2026-12-02T10:35:30.123456Z`.
    pub timestamp: &'a str,
    pub hostname: &'a str,
    /// Container name, or `sysd`.
    pub app: &'a str,
    pub stream: Stream,
    pub seq: u32,
    /// The line, without its line feed; any bytes.
    pub msg: &'a [u8],
}

/// An RFC 5424 header field: printable US-ASCII (33-126) only, at most `max` characters,
/// `-` (the NILVALUE) when nothing is left.
pub fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .bytes()
        .filter(|b| (33..=126).contains(b))
        .take(max)
        .map(char::from)
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// `m` as one octet-counted frame: `LEN SP SYSLOG-MSG`, appended to `out`. The header
/// fields are sanitized (APP-NAME at most 48 characters, HOSTNAME 255), the MSG is cut at
/// [`MAX_MSG`] bytes; it is sent as octets (MSG-ANY, no BOM), so a line that is not UTF-8
/// arrives byte for byte. Octet counting makes any byte safe in the MSG, line feeds too.
pub fn frame(m: &Message<'_>, out: &mut Vec<u8>) {
    let mut head = String::with_capacity(128);
    let _ = write!(
        head,
        "<{}>1 {} {} {} - - [{SD_ID} stream=\"{}\"][meta sequenceId=\"{}\"]",
        m.stream.pri(),
        header_field(m.timestamp, 32),
        header_field(m.hostname, 255),
        header_field(m.app, 48),
        m.stream.name(),
        m.seq.clamp(1, MAX_SEQ),
    );
    let msg = &m.msg[..m.msg.len().min(MAX_MSG)];
    let len = head.len() + if msg.is_empty() { 0 } else { 1 + msg.len() };
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.as_bytes());
    if !msg.is_empty() {
        out.push(b' ');
        out.extend_from_slice(msg);
    }
}

/// Reads one frame at the start of `data`: the message and the length of the whole frame.
/// `None` when `data` holds no complete, well-formed frame (a torn tail of the spool).
pub fn parse_frame(data: &[u8]) -> Option<(&[u8], usize)> {
    let sp = data.iter().take(8).position(|&b| b == b' ')?;
    if sp == 0 || data[0] == b'0' {
        return None;
    }
    let digits = std::str::from_utf8(&data[..sp]).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = digits.parse().ok()?;
    let end = sp.checked_add(1)?.checked_add(len)?;
    let msg = data.get(sp + 1..end)?;
    if !msg.starts_with(b"<") {
        return None;
    }
    Some((msg, end))
}

/// The sequence number of a message this module formatted.
pub fn seq_of(msg: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"[meta sequenceId=\"";
    let at = msg.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &msg[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Splits one stream's raw output into lines: complete lines as they come, a partial
/// line kept until its end arrives or it reaches [`MAX_MSG`] bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; calls `line` for every complete line (without its `\n`, and
    /// without a `\r` before it).
    pub fn feed(&mut self, mut data: &[u8], mut line: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_MSG - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    if self.partial.last() == Some(&b'\r') {
                        self.partial.pop();
                    }
                    line(&self.partial);
                    self.partial.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.partial.len() >= MAX_MSG {
                        line(&self.partial);
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// The end of the stream: the partial line, if any.
    pub fn finish(&mut self, mut line: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            line(&self.partial);
            self.partial.clear();
        }
    }
}

/// Fuzz entry point: splits arbitrary output into lines, frames every line and checks
/// that each frame parses back to the line with the right sequence number.
pub fn fuzz_frame(data: &[u8]) {
    let (meta, body) = data.split_at(data.len().min(8));
    let app = String::from_utf8_lossy(meta);
    let mut splitter = LineSplitter::default();
    let mut seq = 0u32;
    let mut check = |line: &[u8]| {
        assert!(line.len() <= MAX_MSG);
        seq += 1;
        let m = Message {
            timestamp: "2026-12-02T10:35:30.123456Z",
            hostname: &app,
            app: &app,
            stream: Stream::Stderr,
            seq,
            msg: line,
        };
        let mut out = Vec::new();
        frame(&m, &mut out);
        let (msg, used) = parse_frame(&out).expect("a frame parses");
        assert_eq!(used, out.len());
        assert!(msg.ends_with(line));
        assert_eq!(seq_of(msg), Some(seq));
        // Header fields are printable ASCII.
        let header_end = msg.len() - line.len();
        assert!(msg[..header_end].iter().all(|b| (32..=126).contains(b)));
    };
    splitter.feed(body, &mut check);
    splitter.finish(&mut check);
    let _ = parse_frame(data);
    let _ = seq_of(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(app: &str, stream: Stream, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(
            &Message {
                timestamp: "2026-12-02T10:35:30.123456Z",
                hostname: "node-1",
                app,
                stream,
                seq: 7,
                msg: line,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn formats_rfc5424_with_octet_counting() {
        let f = msg("web", Stream::Stdout, b"hello world");
        let want = "<14>1 2026-12-02T10:35:30.123456Z node-1 web - - [berth@32473 stream=\"stdout\"][meta sequenceId=\"7\"] hello world";
        assert_eq!(f, format!("{} {want}", want.len()).into_bytes());
        let f = msg("web", Stream::Stderr, b"");
        let s = String::from_utf8(f).unwrap();
        assert!(
            s.ends_with("<11>1 2026-12-02T10:35:30.123456Z node-1 web - - [berth@32473 stream=\"stderr\"][meta sequenceId=\"7\"]"),
            "{s}"
        );
        let f = msg("sysd", Stream::Sysd(Severity::Warning), b"x");
        assert!(f.windows(5).any(|w| w == b" <28>"), "{f:?}");
    }

    #[test]
    fn header_fields_are_sanitized() {
        assert_eq!(header_field("a b\tc\u{e9}d", 48), "abcd");
        assert_eq!(header_field("", 48), "-");
        assert_eq!(header_field(" \n", 48), "-");
        assert_eq!(header_field(&"x".repeat(100), 48).len(), 48);
        let f = msg(&"n".repeat(63), Stream::Stdout, b"l");
        let (m, _) = parse_frame(&f).unwrap();
        let app = m.split(|&b| b == b' ').nth(3).unwrap();
        assert_eq!(app, "n".repeat(48).as_bytes());
    }

    #[test]
    fn msg_keeps_any_bytes_and_is_cut_at_64k() {
        let line = b"caf\xe9 \x00\x1b[31m \"]\\ \n inside";
        let f = msg("web", Stream::Stdout, line);
        let (m, used) = parse_frame(&f).unwrap();
        assert_eq!(used, f.len());
        assert!(m.ends_with(line));
        let big = vec![b'a'; MAX_MSG + 10];
        let f = msg("web", Stream::Stdout, &big);
        let (m, _) = parse_frame(&f).unwrap();
        assert!(m.ends_with(&big[..MAX_MSG]) && !m.ends_with(&big[..MAX_MSG + 1]));
    }

    #[test]
    fn parse_refuses_torn_and_odd_frames() {
        let f = msg("web", Stream::Stdout, b"hello");
        for cut in 0..f.len() {
            assert!(parse_frame(&f[..cut]).is_none(), "cut at {cut}");
        }
        for bad in [
            &b"05 <1>1 x"[..],
            b"x5 <1>1 x",
            b" 5 <1>1",
            b"3 abc",
            b"99999999999 <",
        ] {
            assert!(parse_frame(bad).is_none(), "{bad:?}");
        }
        let mut two = f.clone();
        two.extend_from_slice(&f);
        let (_, used) = parse_frame(&two).unwrap();
        assert_eq!(used, f.len());
        assert_eq!(seq_of(parse_frame(&f).unwrap().0), Some(7));
    }

    #[test]
    fn splitter_joins_chunks_and_cuts_long_lines() {
        let mut s = LineSplitter::default();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        s.feed(b"one\ntw", |l| lines.push(l.to_vec()));
        s.feed(b"o\r\n\nthr", |l| lines.push(l.to_vec()));
        s.finish(|l| lines.push(l.to_vec()));
        assert_eq!(lines, [&b"one"[..], b"two", b"", b"thr"]);
        lines.clear();
        let mut data = vec![b'x'; MAX_MSG * 2 + 5];
        data.push(b'\n');
        s.feed(&data, |l| lines.push(l.to_vec()));
        let lens: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_MSG, MAX_MSG, 5]);
        s.finish(|_| panic!("nothing left"));
    }

    #[test]
    fn fuzz_entry_point_survives_odd_input() {
        fuzz_frame(b"");
        fuzz_frame(b"app\xff\xfe\x00  line\n\n\r\nmore\xc3");
        let mut big = b"01234567".to_vec();
        big.extend(std::iter::repeat_n(b'z', 200_000));
        big.extend_from_slice(b"\n\xff\n");
        fuzz_frame(&big);
    }
}
