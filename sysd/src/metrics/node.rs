//! The node's own figures, read from `/proc` and `statvfs`: CPU time, memory, load,
//! network bytes per interface, boot time and uptime, and the size of `/var`.
//!
//! Every reader takes the directory standing in for `/proc`, so the tests feed it fake
//! files; every parser takes text and skips what it cannot read (a missing or garbled file
//! leaves the figure out rather than reporting 0).

use std::path::Path;

/// At most this many interfaces are reported (a container with `CAP_NET_ADMIN` in the host
/// network could make thousands).
pub const MAX_INTERFACES: usize = 256;
/// Files from `/proc` are read up to this size (a real `/proc/net/dev` with
/// [`MAX_INTERFACES`] lines is about 40 KiB).
const MAX_PROC_FILE: u64 = 1 << 20;

/// CPU time of the whole node by mode, in seconds (`/proc/stat`, line `cpu`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSeconds {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl CpuSeconds {
    /// `(mode, seconds)` in the order of `/proc/stat`.
    pub fn modes(&self) -> [(&'static str, f64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }
}

/// `/proc/meminfo` figures, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: Option<u64>,
    pub free: Option<u64>,
    pub available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

/// One interface of `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Size of a filesystem, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub size: u64,
    /// Free blocks, including those reserved for root.
    pub free: u64,
    /// Free blocks an unprivileged writer may use.
    pub avail: u64,
    pub files: u64,
    pub files_free: u64,
}

/// Everything [`read`] gathers about the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFigures {
    pub cpu: Option<CpuSeconds>,
    /// Unix time the kernel started (`btime` of `/proc/stat`).
    pub boot_time: Option<u64>,
    pub memory: Memory,
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    /// Seconds since the kernel started.
    pub uptime: Option<f64>,
    pub net: Vec<NetDev>,
    /// `/var` (the state partition).
    pub var: Option<FsUsage>,
}

/// Read the node's figures from `proc` (`/proc`) and the filesystem at `var` (`/var`).
pub fn read(proc: &Path, var: &Path) -> NodeFigures {
    let file = |name: &str| read_capped(&proc.join(name));
    let stat = file("stat");
    NodeFigures {
        cpu: stat.as_deref().and_then(|t| parse_cpu(t, clock_ticks())),
        boot_time: stat.as_deref().and_then(parse_btime),
        memory: file("meminfo")
            .map(|t| parse_meminfo(&t))
            .unwrap_or_default(),
        load: file("loadavg").and_then(|t| parse_loadavg(&t)),
        uptime: file("uptime").and_then(|t| parse_uptime(&t)),
        net: file("net/dev")
            .map(|t| parse_net_dev(&t))
            .unwrap_or_default(),
        var: fs_usage(var),
    }
}

/// A `/proc` file as text (lossy: an interface name may be any bytes), at most
/// [`MAX_PROC_FILE`] bytes; None when it cannot be read.
fn read_capped(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `USER_HZ`: the unit of `/proc/stat`.
fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// The `cpu` line of `/proc/stat` (all CPUs), converted to seconds with `hz` ticks a second.
pub fn parse_cpu(stat: &str, hz: u64) -> Option<CpuSeconds> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    if n.len() < 4 {
        return None;
    }
    let s = |i: usize| {
        n.get(i)
            .map(|&t| t as f64 / hz.max(1) as f64)
            .unwrap_or(0.0)
    };
    // `guest` and `guest_nice` (fields 9 and 10) are already counted in user and nice.
    Some(CpuSeconds {
        user: s(0),
        nice: s(1),
        system: s(2),
        idle: s(3),
        iowait: s(4),
        irq: s(5),
        softirq: s(6),
        steal: s(7),
    })
}

/// `btime` of `/proc/stat`: Unix time of the boot.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/meminfo` (`MemTotal:  1004764 kB`).
pub fn parse_meminfo(text: &str) -> Memory {
    let mut m = Memory::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let Some(Ok(v)) = f.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match f.next() {
            Some("kB") => v.saturating_mul(1024),
            None => v,
            Some(_) => continue,
        };
        let slot = match key {
            "MemTotal" => &mut m.total,
            "MemFree" => &mut m.free,
            "MemAvailable" => &mut m.available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        *slot = Some(bytes);
    }
    m
}

/// `/proc/loadavg` (`0.15 0.10 0.05 1/80 1234`).
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    let v = [f.next()??, f.next()??, f.next()??];
    v.iter().all(|x| x.is_finite() && *x >= 0.0).then_some(v)
}

/// The first field of `/proc/uptime`: seconds since boot.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// `/proc/net/dev`: per interface, receive then transmit columns (bytes packets errs drop
/// fifo frame compressed multicast | bytes packets errs drop ...). At most
/// [`MAX_INTERFACES`] interfaces; lines that do not parse are skipped.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains('|') {
            continue;
        }
        let n: Vec<u64> = rest
            .split_whitespace()
            .map_while(|f| f.parse().ok())
            .collect();
        if n.len() < 16 {
            continue;
        }
        out.push(NetDev {
            name: name.to_string(),
            rx_bytes: n[0],
            rx_packets: n[1],
            rx_errors: n[2],
            rx_dropped: n[3],
            tx_bytes: n[8],
            tx_packets: n[9],
            tx_errors: n[10],
            tx_dropped: n[11],
        });
        if out.len() == MAX_INTERFACES {
            break;
        }
    }
    out
}

/// Size and free space of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> Option<FsUsage> {
    let s = rustix::fs::statvfs(path).ok()?;
    let frag = s.f_frsize;
    Some(FsUsage {
        size: s.f_blocks.saturating_mul(frag),
        free: s.f_bfree.saturating_mul(frag),
        avail: s.f_bavail.saturating_mul(frag),
        files: s.f_files,
        files_free: s.f_ffree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  1000 20 300 40000 50 6 7 8 100 0\n\
        cpu0 500 10 150 20000 25 3 3 4 50 0\n\
        intr 12345 0 0\nctxt 999\nbtime 1764669000\nprocesses 321\n";

    #[test]
    fn cpu_seconds_and_boot_time_from_proc_stat() {
        let c = parse_cpu(STAT, 100).unwrap();
        assert_eq!(c.user, 10.0);
        assert_eq!(c.nice, 0.2);
        assert_eq!(c.system, 3.0);
        assert_eq!(c.idle, 400.0);
        assert_eq!(c.steal, 0.08);
        assert_eq!(parse_btime(STAT), Some(1764669000));
        // An old kernel with only four fields: the rest are 0.
        let c = parse_cpu("cpu 100 0 100 100\n", 100).unwrap();
        assert_eq!((c.user, c.iowait), (1.0, 0.0));
    }

    #[test]
    fn hostile_or_missing_proc_stat() {
        assert_eq!(parse_cpu("", 100), None);
        assert_eq!(parse_cpu("cpu0 1 2 3 4\n", 100), None);
        assert_eq!(parse_cpu("cpu 1 2 x 4 5\n", 100), None);
        assert_eq!(parse_cpu("cpu 99999999999999999999999 2 3 4\n", 100), None);
        // hz 0 (never from the kernel) does not divide by zero.
        assert!(parse_cpu("cpu 1 2 3 4\n", 0).unwrap().user.is_finite());
        assert_eq!(parse_btime("btime\n"), None);
        assert_eq!(parse_btime("btime -5\n"), None);
    }

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:        1004764 kB\nMemFree:          800000 kB\n\
             MemAvailable:     900000 kB\nBuffers:            1000 kB\nCached:  20000 kB\n\
             SwapCached:            0 kB\nSwapTotal:             0 kB\nSwapFree: 0 kB\n\
             HugePages_Total:       0\n",
        );
        assert_eq!(m.total, Some(1004764 * 1024));
        assert_eq!(m.available, Some(900000 * 1024));
        assert_eq!(m.cached, Some(20000 * 1024));
        assert_eq!(m.swap_total, Some(0));
        // Garbage, other units, a huge value: skipped or saturated, never a panic.
        let m = parse_meminfo(
            "MemTotal: lots kB\nMemFree: 5 MB\nMemAvailable: 18446744073709551615 kB\n\
             Buffers\n: 7 kB\nCached: 7\n",
        );
        assert_eq!(m.total, None);
        assert_eq!(m.free, None);
        assert_eq!(m.available, Some(u64::MAX));
        assert_eq!(m.buffers, None);
        assert_eq!(m.cached, Some(7));
    }

    #[test]
    fn load_and_uptime() {
        assert_eq!(
            parse_loadavg("0.15 1.10 2.05 1/80 1234\n"),
            Some([0.15, 1.10, 2.05])
        );
        assert_eq!(parse_loadavg("0.15 1.10\n"), None);
        assert_eq!(parse_loadavg("0.15 NaN 1\n"), None);
        assert_eq!(parse_loadavg("0.15 -1 1\n"), None);
        assert_eq!(parse_uptime("123.45 200.00\n"), Some(123.45));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("inf 1"), None);
    }

    #[test]
    fn net_dev_per_interface() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
    lo:    2000      20    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n  \
  eth0:12345678     100    1    2    0     0          0         0    54321      90    3    4    0     0       0          0\n \
 short: 1 2 3\n";
        let d = parse_net_dev(t);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].name, "lo");
        assert_eq!(d[1].name, "eth0");
        assert_eq!((d[1].rx_bytes, d[1].rx_packets), (12345678, 100));
        assert_eq!((d[1].rx_errors, d[1].rx_dropped), (1, 2));
        assert_eq!((d[1].tx_bytes, d[1].tx_packets), (54321, 90));
        assert_eq!((d[1].tx_errors, d[1].tx_dropped), (3, 4));
        // Thousands of interfaces: capped.
        let many: String = (0..1000)
            .map(|i| format!("v{i}: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"))
            .collect();
        assert_eq!(parse_net_dev(&many).len(), MAX_INTERFACES);
    }

    #[test]
    fn read_from_a_fake_proc_with_files_missing_and_garbled() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("stat"), STAT).unwrap();
        std::fs::write(p.join("loadavg"), "garbage").unwrap();
        // Not UTF-8 (an interface name of raw bytes): read lossily.
        std::fs::create_dir(p.join("net")).unwrap();
        let mut dev = b"x\ny\n".to_vec();
        dev.extend_from_slice(b"e\xffh: 1 1 0 0 0 0 0 0 2 2 0 0 0 0 0 0\n");
        std::fs::write(p.join("net/dev"), dev).unwrap();
        let f = read(p, p);
        assert!(f.cpu.is_some());
        assert_eq!(f.boot_time, Some(1764669000));
        assert_eq!(f.load, None);
        assert_eq!(f.uptime, None);
        assert_eq!(f.memory, Memory::default());
        assert_eq!(f.net.len(), 1);
        assert_eq!(f.net[0].name, "e\u{fffd}h");
        // The tempdir's filesystem stands in for /var.
        let v = f.var.unwrap();
        assert!(v.size > 0 && v.avail <= v.size, "{v:?}");
        // Nothing there at all.
        let f = read(&p.join("missing"), &p.join("missing"));
        assert_eq!(f, NodeFigures::default());
    }
}
