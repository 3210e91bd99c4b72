//! cgroup v2 manager.
//!
//! A [`Cgroup`] is a directory under a cgroup2 mount (`root`). The manager
//! creates it (and its ancestors), enables the controllers the limits need in
//! every ancestor's `cgroup.subtree_control`, writes the limits, moves
//! processes in, reads statistics and removes the group again, killing what
//! is left in it. All file access goes through plain paths under `root`, so
//! the unit tests drive it against a tempdir standing in for cgroupfs.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the cgroup manager; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem found at /sys/fs/cgroup or /sys/fs/cgroup/unified")]
    NoCgroup2,
    #[error("cannot create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("controller {controller} is not available in {path} (needed for {field})")]
    ControllerMissing {
        controller: &'static str,
        path: PathBuf,
        field: &'static str,
    },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid cgroup path {path:?}: it must not contain '..'")]
    BadPath { path: String },
    #[error("cannot install the device filter (linux.resources.devices) on cgroup {path}")]
    Devices {
        path: PathBuf,
        #[source]
        source: crate::devices::DeviceError,
    },
}

/// Limits for one cgroup, already validated and converted to cgroup v2 units.
/// `None` leaves the kernel default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `memory.max` in bytes (`None` = untouched, `Some(-1)` = "max").
    pub memory_max: Option<i64>,
    /// `memory.low` in bytes (OCI `reservation`).
    pub memory_low: Option<i64>,
    /// `memory.high` in bytes (from `unified` or the API).
    pub memory_high: Option<i64>,
    /// `memory.swap.max` in bytes (OCI swap minus limit), -1 = "max".
    pub memory_swap_max: Option<i64>,
    /// `cpu.weight` (1..=10000).
    pub cpu_weight: Option<u64>,
    /// `cpu.max`: quota in µs (-1 = "max") and period in µs.
    pub cpu_max: Option<(i64, u64)>,
    /// `cpuset.cpus`.
    pub cpuset_cpus: Option<String>,
    /// `cpuset.mems`.
    pub cpuset_mems: Option<String>,
    /// `pids.max` (-1 = "max").
    pub pids_max: Option<i64>,
    /// `io.weight` (1..=10000).
    pub io_weight: Option<u64>,
    /// `io.max` lines: "MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..".
    pub io_max: Vec<String>,
    /// Other `unified` key/value pairs, written verbatim.
    pub unified: Vec<(String, String)>,
}

impl Resources {
    /// The controllers these limits need, with the OCI field they come from.
    pub fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut c = Vec::new();
        if self.memory_max.is_some()
            || self.memory_low.is_some()
            || self.memory_high.is_some()
            || self.memory_swap_max.is_some()
        {
            c.push(("memory", "linux.resources.memory"));
        }
        if self.cpu_weight.is_some() || self.cpu_max.is_some() {
            c.push(("cpu", "linux.resources.cpu"));
        }
        if self.cpuset_cpus.is_some() || self.cpuset_mems.is_some() {
            c.push(("cpuset", "linux.resources.cpu.cpus"));
        }
        if self.pids_max.is_some() {
            c.push(("pids", "linux.resources.pids"));
        }
        if self.io_weight.is_some() || !self.io_max.is_empty() {
            c.push(("io", "linux.resources.blockIO"));
        }
        for (k, _) in &self.unified {
            if let Some((ctl, _)) = k.split_once('.') {
                let ctl: &'static str = match ctl {
                    "memory" => "memory",
                    "cpu" => "cpu",
                    "cpuset" => "cpuset",
                    "pids" => "pids",
                    "io" => "io",
                    "hugetlb" => "hugetlb",
                    "rdma" => "rdma",
                    "misc" => "misc",
                    _ => continue,
                };
                c.push((ctl, "linux.resources.unified"));
            }
        }
        c.sort();
        c.dedup_by(|a, b| a.0 == b.0);
        c
    }

    /// The `(file, value)` pairs to write, in order.
    pub fn files(&self) -> Vec<(String, String)> {
        fn max(v: i64) -> String {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        }
        let mut out = Vec::new();
        if let Some(v) = &self.cpuset_cpus {
            out.push(("cpuset.cpus".into(), v.clone()));
        }
        if let Some(v) = &self.cpuset_mems {
            out.push(("cpuset.mems".into(), v.clone()));
        }
        if let Some(v) = self.memory_low {
            out.push(("memory.low".into(), max(v)));
        }
        if let Some(v) = self.memory_high {
            out.push(("memory.high".into(), max(v)));
        }
        if let Some(v) = self.memory_max {
            out.push(("memory.max".into(), max(v)));
        }
        if let Some(v) = self.memory_swap_max {
            out.push(("memory.swap.max".into(), max(v)));
        }
        if let Some(v) = self.cpu_weight {
            out.push(("cpu.weight".into(), v.to_string()));
        }
        if let Some((q, p)) = self.cpu_max {
            out.push(("cpu.max".into(), format!("{} {p}", max(q))));
        }
        if let Some(v) = self.pids_max {
            out.push(("pids.max".into(), max(v)));
        }
        if let Some(v) = self.io_weight {
            out.push(("io.weight".into(), format!("default {v}")));
        }
        for line in &self.io_max {
            out.push(("io.max".into(), line.clone()));
        }
        for (k, v) in &self.unified {
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// Statistics read from a cgroup, for `osctl stats` and `events --stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    pub memory_anon: Option<u64>,
    pub memory_file: Option<u64>,
    pub oom_events: Option<u64>,
    pub oom_kill_events: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    pub cpu_nr_throttled: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_max: Option<u64>,
    /// Bytes read and written, summed over the devices of `io.stat`.
    #[serde(default)]
    pub io_read_bytes: Option<u64>,
    #[serde(default)]
    pub io_write_bytes: Option<u64>,
}

/// Sum of the `key=value` fields named `key` over the device lines of an `io.stat`
/// (`8:0 rbytes=1 wbytes=2 rios=3 ...`). None when no line has it; malformed fields are
/// skipped, and the sum saturates instead of overflowing.
pub fn io_stat_sum(text: &str, key: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            if k == key {
                if let Ok(n) = v.parse::<u64>() {
                    sum = Some(sum.unwrap_or(0u64).saturating_add(n));
                }
            }
        }
    }
    sum
}

/// Finds the cgroup2 mount of this machine: `/sys/fs/cgroup` on a pure v2
/// system (the Berth guest), `/sys/fs/cgroup/unified` on a hybrid host.
pub fn find_root() -> Result<PathBuf, CgroupError> {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Ok(st) = nix::sys::statfs::statfs(p) {
            if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
                return Ok(PathBuf::from(p));
            }
        }
    }
    Err(CgroupError::NoCgroup2)
}

/// One cgroup: `root` is the cgroup2 mount, `rel` the path below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    root: PathBuf,
    rel: PathBuf,
}

impl Cgroup {
    /// A cgroup at `rel` (leading `/` ignored) below the cgroup2 mount `root`.
    pub fn new(root: impl Into<PathBuf>, rel: &str) -> Result<Self, CgroupError> {
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(CgroupError::BadPath { path: rel.into() });
        }
        Ok(Cgroup {
            root: root.into(),
            rel: PathBuf::from(rel),
        })
    }

    /// Absolute directory of the cgroup.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// The path below the cgroup2 mount (as in `/proc/PID/cgroup`).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// Creates the cgroup (and missing ancestors), enables the controllers the
    /// limits need on the way down and writes the limits.
    pub fn create(&self, res: &Resources) -> Result<(), CgroupError> {
        let wanted = res.controllers();
        // Walk from the root down, enabling controllers in each parent.
        let mut dir = self.root.clone();
        let comps: Vec<_> = self.rel.components().collect();
        for comp in &comps {
            if !wanted.is_empty() {
                self.enable_controllers(&dir, &wanted)?;
            }
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Create { path: dir, source }),
            }
        }
        for (file, value) in res.files() {
            write_file(&dir.join(&file), &value)?;
        }
        Ok(())
    }

    fn enable_controllers(
        &self,
        dir: &Path,
        wanted: &[(&'static str, &'static str)],
    ) -> Result<(), CgroupError> {
        let avail_path = dir.join("cgroup.controllers");
        let avail = fs::read_to_string(&avail_path).map_err(|source| CgroupError::Read {
            path: avail_path.clone(),
            source,
        })?;
        let avail: Vec<&str> = avail.split_whitespace().collect();
        let ctl_path = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&ctl_path).unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let mut add = String::new();
        for (ctl, field) in wanted {
            if !avail.contains(ctl) {
                return Err(CgroupError::ControllerMissing {
                    controller: ctl,
                    path: avail_path,
                    field,
                });
            }
            if !enabled.contains(ctl) {
                if !add.is_empty() {
                    add.push(' ');
                }
                add.push('+');
                add.push_str(ctl);
            }
        }
        if !add.is_empty() {
            write_file(&ctl_path, &add)?;
        }
        Ok(())
    }

    /// Loads the device filter's BPF program and attaches it to the cgroup,
    /// replacing a device program attached there earlier.
    pub fn set_device_filter(&self, filter: &crate::devices::Filter) -> Result<(), CgroupError> {
        crate::devices::attach(&self.path(), filter).map_err(|source| CgroupError::Devices {
            path: self.path(),
            source,
        })
    }

    /// Moves process `pid` into the cgroup (0 = the calling process).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.path().join("cgroup.procs"), &pid.to_string())
    }

    /// Pids currently in the cgroup (not its children).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let p = self.path().join("cgroup.procs");
        let s = fs::read_to_string(&p).map_err(|source| CgroupError::Read { path: p, source })?;
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Reads memory, cpu and pids statistics; missing files give `None`.
    pub fn stats(&self) -> Stats {
        let dir = self.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        let num = |f: &str| read(f).and_then(|s| s.trim().parse::<u64>().ok());
        let kv = |f: &str, key: &str| {
            read(f).and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
        };
        Stats {
            memory_current: num("memory.current"),
            memory_max: num("memory.max"),
            memory_anon: kv("memory.stat", "anon"),
            memory_file: kv("memory.stat", "file"),
            oom_events: kv("memory.events", "oom"),
            oom_kill_events: kv("memory.events", "oom_kill"),
            cpu_usage_usec: kv("cpu.stat", "usage_usec"),
            cpu_user_usec: kv("cpu.stat", "user_usec"),
            cpu_system_usec: kv("cpu.stat", "system_usec"),
            cpu_nr_throttled: kv("cpu.stat", "nr_throttled"),
            cpu_throttled_usec: kv("cpu.stat", "throttled_usec"),
            pids_current: num("pids.current"),
            pids_max: num("pids.max"),
            io_read_bytes: read("io.stat").and_then(|t| io_stat_sum(&t, "rbytes")),
            io_write_bytes: read("io.stat").and_then(|t| io_stat_sum(&t, "wbytes")),
        }
    }

    /// Kills every process left in the cgroup and removes it, and then any
    /// ancestors below `keep_ancestors` levels that are now empty are left
    /// alone (sysd owns them). Missing cgroup is not an error.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let dir = self.path();
        if !dir.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Children first (a container may have created sub-cgroups).
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        let child = Cgroup {
                            root: self.root.clone(),
                            rel: self.rel.join(e.file_name()),
                        };
                        child.destroy()?;
                    }
                }
            }
            match fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(path = %dir.display(), error = %e, "cgroup busy, killing");
                    self.kill_all();
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(source) => return Err(CgroupError::Remove { path: dir, source }),
            }
        }
    }

    /// Sends SIGKILL to everything in the cgroup (`cgroup.kill` when the
    /// kernel has it, else pid by pid).
    pub fn kill_all(&self) {
        let killf = self.path().join("cgroup.kill");
        if killf.exists() && write_file(&killf, "1").is_ok() {
            return;
        }
        if let Ok(pids) = self.pids() {
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let res = fs::OpenOptions::new()
        .write(true)
        .truncate(false)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs: a tempdir whose directories get the interface files
    /// the kernel would create.
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
        d
    }

    /// Pre-creates the directories and files the kernel would provide.
    fn prepare(root: &Path, rel: &str, controllers: &str) {
        let mut dir = root.to_path_buf();
        for c in rel.split('/') {
            dir.push(c);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
            for f in [
                "memory.max",
                "memory.low",
                "memory.high",
                "memory.swap.max",
                "cpu.weight",
                "cpu.max",
                "pids.max",
                "io.weight",
                "io.max",
                "cgroup.procs",
            ] {
                fs::write(dir.join(f), "").unwrap();
            }
        }
    }

    #[test]
    fn writes_limits_and_enables_controllers() {
        let root = fake_root("cpu memory pids io");
        prepare(root.path(), "berth/web", "cpu memory pids io");
        let cg = Cgroup::new(root.path(), "/berth/web").unwrap();
        let res = Resources {
            memory_max: Some(64 << 20),
            memory_swap_max: Some(0),
            cpu_max: Some((50_000, 100_000)),
            cpu_weight: Some(100),
            pids_max: Some(32),
            io_max: vec!["8:0 rbps=1048576".into()],
            ..Default::default()
        };
        cg.create(&res).unwrap();
        let dir = root.path().join("berth/web");
        let rd = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(rd("memory.max"), "67108864");
        assert_eq!(rd("memory.swap.max"), "0");
        assert_eq!(rd("cpu.max"), "50000 100000");
        assert_eq!(rd("cpu.weight"), "100");
        assert_eq!(rd("pids.max"), "32");
        assert_eq!(rd("io.max"), "8:0 rbps=1048576");
        // Controllers enabled in the root and in the intermediate parent.
        let top = fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(top, "+cpu +io +memory +pids");
        let mid = fs::read_to_string(root.path().join("berth/cgroup.subtree_control")).unwrap();
        assert_eq!(mid, "+cpu +io +memory +pids");
    }

    #[test]
    fn unlimited_values_are_written_as_max() {
        let root = fake_root("memory pids");
        prepare(root.path(), "c", "memory pids");
        let cg = Cgroup::new(root.path(), "c").unwrap();
        let res = Resources {
            memory_max: Some(-1),
            pids_max: Some(-1),
            ..Default::default()
        };
        cg.create(&res).unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("c/memory.max")).unwrap(),
            "max"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("c/pids.max")).unwrap(),
            "max"
        );
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let root = fake_root("hugetlb");
        let cg = Cgroup::new(root.path(), "x").unwrap();
        let res = Resources {
            memory_max: Some(1 << 20),
            ..Default::default()
        };
        let err = cg.create(&res).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("memory"), "{msg}");
        assert!(msg.contains("linux.resources.memory"), "{msg}");
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn no_limits_needs_no_controllers() {
        let root = fake_root("");
        let cg = Cgroup::new(root.path(), "a/b").unwrap();
        cg.create(&Resources::default()).unwrap();
        assert!(root.path().join("a/b").is_dir());
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
    }

    #[test]
    fn dotdot_is_rejected() {
        assert!(Cgroup::new("/x", "a/../b").is_err());
    }

    #[test]
    fn stats_are_parsed() {
        let root = fake_root("memory cpu pids");
        let dir = root.path().join("s");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("memory.stat"), "anon 1024\nfile 2048\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 500\nuser_usec 300\nsystem_usec 200\nnr_periods 10\nnr_throttled 4\nthrottled_usec 77\n",
        )
        .unwrap();
        fs::write(dir.join("pids.current"), "3\n").unwrap();
        fs::write(dir.join("pids.max"), "10\n").unwrap();
        let s = Cgroup::new(root.path(), "s").unwrap().stats();
        assert_eq!(s.memory_current, Some(4096));
        assert_eq!(s.memory_max, None);
        assert_eq!(s.memory_anon, Some(1024));
        assert_eq!(s.oom_kill_events, Some(1));
        assert_eq!(s.cpu_usage_usec, Some(500));
        assert_eq!(s.cpu_nr_throttled, Some(4));
        assert_eq!(s.cpu_throttled_usec, Some(77));
        assert_eq!(s.pids_current, Some(3));
        assert_eq!(s.pids_max, Some(10));
        // No io.stat (the io controller is off): unknown, not 0.
        assert_eq!(s.io_read_bytes, None);
        fs::write(
            dir.join("io.stat"),
            "254:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n\
             254:16 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        )
        .unwrap();
        let s = Cgroup::new(root.path(), "s").unwrap().stats();
        assert_eq!((s.io_read_bytes, s.io_write_bytes), (Some(4196), Some(512)));
    }

    #[test]
    fn io_stat_of_a_hostile_or_odd_file() {
        assert_eq!(io_stat_sum("", "rbytes"), None);
        assert_eq!(io_stat_sum("8:0 rios=3\n", "rbytes"), None);
        // Garbage fields and values are skipped; the device field is never a key.
        let t = "rbytes=5 rbytes=7\nx rbytes=-1 rbytes=abc rbytes rbytes==3 wbytes=2\n";
        assert_eq!(io_stat_sum(t, "rbytes"), Some(7));
        // Saturates rather than wrapping.
        let t = format!("8:0 rbytes={m}\n8:1 rbytes={m}\n", m = u64::MAX);
        assert_eq!(io_stat_sum(&t, "rbytes"), Some(u64::MAX));
    }

    #[test]
    fn destroy_removes_directory_tree() {
        let root = fake_root("");
        let cg = Cgroup::new(root.path(), "d/e").unwrap();
        cg.create(&Resources::default()).unwrap();
        fs::create_dir(root.path().join("d/e/sub")).unwrap();
        cg.destroy().unwrap();
        assert!(!root.path().join("d/e").exists());
        assert!(root.path().join("d").exists());
    }
}
