//! Translation of an OCI `config.json` into a [`Plan`]: every check and every
//! conversion (namespace flags, mount flags, capability masks, rlimit
//! numbers, cgroup values, the compiled seccomp filter) happens here, in the
//! runtime process, so the container init only executes a list of
//! precomputed steps and reports errors that name the config field.

use crate::cgroup::Resources;
use crate::seccomp::{self, Program};
use nix::mount::MsFlags;
use oci_spec::runtime::{Capabilities, Hook, LinuxDeviceType, LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Errors found while reading or checking a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {path}: field `{field}`")]
    Parse {
        path: PathBuf,
        field: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("linux.seccomp: cannot compile the filter")]
    Seccomp(#[source] seccomp::SeccompError),
    #[error("invalid container id {id:?}: {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("linux.resources.devices: invalid device rule")]
    Devices(#[source] crate::devices::DeviceError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a container id: non-empty, at most 1024 bytes, only
/// `[A-Za-z0-9_+.-]`, and not `.` or `..` (so it is a safe directory name).
pub fn validate_id(id: &str) -> Result<(), PlanError> {
    let bad = |reason| PlanError::BadId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    if id.len() > 1024 {
        return Err(bad("it is longer than 1024 bytes"));
    }
    if id == "." || id == ".." {
        return Err(bad("it must not be '.' or '..'"));
    }
    if id.contains('/') {
        return Err(bad("it must not contain '/'"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
    {
        return Err(bad("only letters, digits and _ + - . are allowed"));
    }
    Ok(())
}

/// Parses `config.json` text, naming the offending field on error.
pub fn parse_spec(path: &Path, text: &[u8]) -> Result<Spec, PlanError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| PlanError::Parse {
        path: path.to_path_buf(),
        field: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// Reads and parses `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, PlanError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| PlanError::Read {
        path: path.clone(),
        source,
    })?;
    parse_spec(&path, &text)
}

/// A namespace to create (no path) or join (path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsPlan {
    /// The `CLONE_NEW*` flag.
    pub flag: i32,
    pub path: Option<PathBuf>,
}

/// One uid/gid map line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// How to perform one mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// Bind (recursive or not) of a host path.
    Bind { recursive: bool },
    /// A filesystem mount (`proc`, `tmpfs`, `sysfs`, `devpts`, `mqueue`, ...).
    Fs,
    /// A cgroup2 mount (also for `cgroup` in the spec).
    Cgroup,
}

/// One entry of `mounts`, converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    pub kind: MountKind,
    pub source: Option<PathBuf>,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    pub fstype: String,
    /// `MsFlags` bits (without propagation).
    pub flags: u64,
    /// Propagation changes applied after the mount (`MsFlags` bits).
    pub propagation: Vec<u64>,
    /// Filesystem data (`size=64k,mode=755`).
    pub data: String,
}

/// A device node to create in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    pub path: PathBuf,
    /// `c`, `b` or `p`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Capability sets as bit masks (bit n = capability n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsPlan {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

/// The process to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    pub caps: Option<CapsPlan>,
    /// `(resource number, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub seccomp: Option<Program>,
}

/// A hook, as in the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPlan {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u64>,
}

/// All hooks, by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksPlan {
    pub prestart: Vec<HookPlan>,
    pub create_runtime: Vec<HookPlan>,
    pub create_container: Vec<HookPlan>,
    pub start_container: Vec<HookPlan>,
    pub poststart: Vec<HookPlan>,
    pub poststop: Vec<HookPlan>,
}

/// Everything needed to build the container, precomputed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub bundle: PathBuf,
    /// Absolute path of the root filesystem on the host.
    pub rootfs: PathBuf,
    pub rootfs_readonly: bool,
    /// `MsFlags` bits applied to `/` before the rootfs is set up.
    pub rootfs_propagation: u64,
    pub namespaces: Vec<NsPlan>,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub sysctl: Vec<(String, String)>,
    pub process: ProcessPlan,
    pub hooks: HooksPlan,
    pub resources: Resources,
    /// The device cgroup policy (BPF program) for the container's cgroup.
    pub device_filter: crate::devices::Filter,
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Plan {
    /// Flags of the namespaces to create (those without a path).
    pub fn clone_flags(&self) -> i32 {
        self.namespaces
            .iter()
            .filter(|n| n.path.is_none())
            .fold(0, |a, n| a | n.flag)
    }

    /// Whether the plan creates or joins a namespace of this type.
    pub fn has_ns(&self, flag: i32) -> bool {
        self.namespaces.iter().any(|n| n.flag == flag)
    }
}

fn ns_flag(t: LinuxNamespaceType) -> Option<i32> {
    Some(match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => return None,
    })
}

/// Lexically normalises an absolute container path (`..` cannot go above `/`).
pub fn clean_abs(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Mount options -> (set flags, clear flags, propagation, data, is bind, recursive).
fn parse_mount_options(opts: &[String]) -> (MsFlags, Vec<u64>, String, bool, bool) {
    let mut flags = MsFlags::empty();
    let mut prop = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let (mut bind, mut rec) = (false, false);
    for o in opts {
        let (set, clear) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "bind" => {
                bind = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                bind = true;
                rec = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                prop.push(propagation_flag(o).unwrap_or(0));
                (MsFlags::empty(), MsFlags::empty())
            }
            "tmpcopyup" | "idmap" | "ridmap" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other);
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags |= set;
        flags &= !clear;
    }
    (flags, prop, data.join(","), bind, rec)
}

fn propagation_flag(s: &str) -> Option<u64> {
    let f = match s {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    };
    Some(f.bits())
}

fn caps_mask(field: &str, set: &Option<Capabilities>) -> Result<u64, PlanError> {
    let mut mask = 0u64;
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap: caps::Capability = name
            .parse()
            .map_err(|_| invalid(field, format!("unknown capability {name}")))?;
        mask |= 1u64 << cap.index();
    }
    Ok(mask)
}

fn rlimit_number(name: &str) -> Option<u32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn hooks_of(field: &str, hooks: &Option<Vec<Hook>>) -> Result<Vec<HookPlan>, PlanError> {
    let mut out = Vec::new();
    for (i, h) in hooks.iter().flatten().enumerate() {
        if !h.path().is_absolute() {
            return Err(invalid(
                format!("hooks.{field}[{i}].path"),
                "must be an absolute path",
            ));
        }
        let timeout = match h.timeout() {
            Some(t) if t <= 0 => {
                return Err(invalid(
                    format!("hooks.{field}[{i}].timeout"),
                    "must be greater than zero",
                ))
            }
            t => t.map(|t| t as u64),
        };
        out.push(HookPlan {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout,
        });
    }
    Ok(out)
}

/// Converts the process section (also used for `exec --process`).
pub fn plan_process(p: &oci_spec::runtime::Process) -> Result<ProcessPlan, PlanError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(invalid("process.args", "must contain at least one element"));
    }
    if !p.cwd().is_absolute() {
        return Err(invalid("process.cwd", "must be an absolute path"));
    }
    let caps = match p.capabilities() {
        None => None,
        Some(c) => Some(CapsPlan {
            bounding: caps_mask("process.capabilities.bounding", c.bounding())?,
            effective: caps_mask("process.capabilities.effective", c.effective())?,
            inheritable: caps_mask("process.capabilities.inheritable", c.inheritable())?,
            permitted: caps_mask("process.capabilities.permitted", c.permitted())?,
            ambient: caps_mask("process.capabilities.ambient", c.ambient())?,
        }),
    };
    let mut rlimits = Vec::new();
    let mut seen = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let num = rlimit_number(&name).ok_or_else(|| {
            invalid(
                format!("process.rlimits[{i}].type"),
                format!("unknown rlimit {name}"),
            )
        })?;
        if r.soft() > r.hard() {
            return Err(invalid(
                format!("process.rlimits[{i}]"),
                format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
            ));
        }
        if seen.contains(&num) {
            return Err(invalid(
                format!("process.rlimits[{i}].type"),
                format!("{name} is given twice"),
            ));
        }
        seen.push(num);
        rlimits.push((num, r.soft(), r.hard()));
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                "process.oomScoreAdj",
                "must be between -1000 and 1000",
            ));
        }
    }
    Ok(ProcessPlan {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        umask: p.user().umask(),
        terminal: p.terminal().unwrap_or(false),
        console_size: p.console_size().map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        }),
        caps,
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        seccomp: None,
    })
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn plan_resources(r: &oci_spec::runtime::LinuxResources) -> Result<Resources, PlanError> {
    let mut out = Resources::default();
    if let Some(m) = r.memory() {
        let f = "linux.resources.memory";
        if let Some(l) = m.limit() {
            if l == 0 || l < -1 {
                return Err(invalid(
                    format!("{f}.limit"),
                    format!("{l} is not a valid limit (use -1 for unlimited)"),
                ));
            }
            if l > 0 && l < 4096 {
                return Err(invalid(
                    format!("{f}.limit"),
                    format!("{l} bytes is below the minimum of one page"),
                ));
            }
            out.memory_max = Some(l);
        }
        if let Some(rsv) = m.reservation() {
            if rsv < -1 {
                return Err(invalid(
                    format!("{f}.reservation"),
                    format!("{rsv} is negative"),
                ));
            }
            out.memory_low = Some(rsv);
        }
        if let Some(s) = m.swap() {
            if s < -1 || s == 0 && m.limit().is_none() {
                return Err(invalid(
                    format!("{f}.swap"),
                    format!("{s} is not a valid limit"),
                ));
            }
            out.memory_swap_max = Some(match (s, m.limit()) {
                (-1, _) => -1,
                (_, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(invalid(
                            format!("{f}.swap"),
                            format!("memory+swap limit {s} is below the memory limit {l}"),
                        ));
                    }
                    s - l
                }
                (_, _) => s,
            });
        }
    }
    if let Some(c) = r.cpu() {
        let f = "linux.resources.cpu";
        if let Some(shares) = c.shares() {
            if shares != 0 {
                if !(2..=262_144).contains(&shares) {
                    return Err(invalid(
                        format!("{f}.shares"),
                        format!("{shares} is outside 2..=262144"),
                    ));
                }
                out.cpu_weight = Some(1 + ((shares - 2) * 9999) / 262_142);
            }
        }
        let period = c.period().unwrap_or(100_000);
        if c.quota().is_some() || c.period().is_some() {
            if !(1000..=1_000_000).contains(&period) {
                return Err(invalid(
                    format!("{f}.period"),
                    format!("{period} is outside 1000..=1000000 µs"),
                ));
            }
            let quota = c.quota().unwrap_or(-1);
            if quota == 0 || (quota > 0 && quota < 1000) || quota < -1 {
                return Err(invalid(
                    format!("{f}.quota"),
                    format!("{quota} µs is below the minimum of 1000 µs"),
                ));
            }
            out.cpu_max = Some((quota, period));
        }
        if let Some(cpus) = c.cpus() {
            if !cpus.is_empty() {
                if !cpus
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ",-".contains(ch))
                {
                    return Err(invalid(
                        format!("{f}.cpus"),
                        format!("{cpus:?} is not a cpu list"),
                    ));
                }
                out.cpuset_cpus = Some(cpus.clone());
            }
        }
        if let Some(mems) = c.mems() {
            if !mems.is_empty() {
                if !mems
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ",-".contains(ch))
                {
                    return Err(invalid(
                        format!("{f}.mems"),
                        format!("{mems:?} is not a node list"),
                    ));
                }
                out.cpuset_mems = Some(mems.clone());
            }
        }
    }
    if let Some(p) = r.pids() {
        let l = p.limit();
        if l < -1 {
            return Err(invalid(
                "linux.resources.pids.limit",
                format!("{l} is negative"),
            ));
        }
        out.pids_max = Some(if l <= 0 { -1 } else { l });
    }
    if let Some(b) = r.block_io() {
        let f = "linux.resources.blockIO";
        if let Some(w) = b.weight() {
            if !(10..=1000).contains(&w) {
                return Err(invalid(
                    format!("{f}.weight"),
                    format!("{w} is outside 10..=1000"),
                ));
            }
            out.io_weight = Some(1 + (u64::from(w) - 10) * 9999 / 990);
        }
        let mut lines: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        let groups = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, list) in groups {
            for d in list.iter().flatten() {
                if d.major() < 0 || d.minor() < 0 {
                    return Err(invalid(
                        format!("{f}.throttle"),
                        "device numbers must not be negative",
                    ));
                }
                lines
                    .entry((d.major(), d.minor()))
                    .or_default()
                    .push(format!("{key}={}", d.rate()));
            }
        }
        out.io_max = lines
            .into_iter()
            .map(|((ma, mi), v)| format!("{ma}:{mi} {}", v.join(" ")))
            .collect();
    }
    if r.network().is_some() {
        return Err(invalid(
            "linux.resources.network",
            "net_cls/net_prio do not exist in cgroup v2; not supported",
        ));
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(invalid("linux.resources.rdma", "not supported"));
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(
                format!("linux.resources.hugepageLimits[{i}].pageSize"),
                format!("{size:?} is not a page size like 2MB"),
            ));
        }
        out.unified
            .push((format!("hugetlb.{size}.max"), h.limit().to_string()));
    }
    if let Some(u) = r.unified() {
        let mut kv: Vec<_> = u.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        kv.sort();
        for (k, v) in kv {
            if k.contains('/') || k.starts_with("cgroup.") || !k.contains('.') {
                return Err(invalid(
                    format!("linux.resources.unified.{k}"),
                    "not a writable cgroup v2 interface file",
                ));
            }
            if k == "memory.high" {
                out.memory_high = Some(if v == "max" {
                    -1
                } else {
                    v.parse().map_err(|_| {
                        invalid(
                            "linux.resources.unified.memory.high",
                            format!("{v:?} is not a number"),
                        )
                    })?
                });
                continue;
            }
            out.unified.push((k, v));
        }
    }
    Ok(out)
}

/// The device filter: the spec's `linux.resources.devices` rules, then the
/// default devices, then the container's device nodes (see
/// [`crate::devices::container_rules`]).
fn plan_device_filter(
    rules: Option<&Vec<oci_spec::runtime::LinuxDeviceCgroup>>,
    nodes: &[DevicePlan],
) -> Result<crate::devices::Filter, PlanError> {
    use crate::devices::{self, DevType, Rule};
    let mut spec_rules = Vec::new();
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let field = format!("linux.resources.devices[{i}]");
        let kind = match r.typ() {
            None | Some(LinuxDeviceType::A) => DevType::All,
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => DevType::Char,
            Some(LinuxDeviceType::B) => DevType::Block,
            Some(LinuxDeviceType::P) => {
                return Err(invalid(
                    format!("{field}.type"),
                    "must be a, b or c (fifos need no device rule)",
                ))
            }
        };
        let bad = PlanError::Devices;
        let rule = Rule {
            allow: r.allow(),
            kind,
            major: devices::parse_number(&format!("{field}.major"), r.major()).map_err(bad)?,
            minor: devices::parse_number(&format!("{field}.minor"), r.minor()).map_err(bad)?,
            access: devices::parse_access(
                &format!("{field}.access"),
                r.access().as_deref().unwrap_or(""),
            )
            .map_err(bad)?,
        };
        spec_rules.push((field, rule));
    }
    let nodes: Vec<(char, u64, u64)> = nodes.iter().map(|d| (d.kind, d.major, d.minor)).collect();
    let all = devices::container_rules(&spec_rules, &nodes);
    devices::Filter::from_rules(all.iter().map(|(f, r)| (f.as_str(), *r)))
        .map_err(PlanError::Devices)
}

/// Builds the plan for container `id` from `spec` found in `bundle`.
/// `bundle` must be absolute. The seccomp filter is compiled (cached).
pub fn build(id: &str, bundle: &Path, spec: &Spec) -> Result<Plan, PlanError> {
    validate_id(id)?;
    let mut plan = Plan {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        ..Default::default()
    };
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("unsupported version {:?}, expected 1.x", spec.version()),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "is missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} does not exist or is not a directory", rootfs.display()),
        ));
    }
    plan.rootfs = rootfs;
    plan.rootfs_readonly = root.readonly().unwrap_or(false);
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "is missing"))?;
    plan.process = plan_process(process)?;
    plan.hostname = spec.hostname().clone();
    plan.domainname = spec.domainname().clone();
    plan.annotations = spec
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "is missing (only Linux containers are supported)"))?;

    // Namespaces.
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let flag = ns_flag(ns.typ()).ok_or_else(|| {
            invalid(
                format!("linux.namespaces[{i}].type"),
                format!("namespace type {} is not supported", ns.typ()),
            )
        })?;
        if plan.namespaces.iter().any(|n| n.flag == flag) {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                format!("namespace {} is given twice", ns.typ()),
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    "must be an absolute path",
                ));
            }
        }
        plan.namespaces.push(NsPlan {
            flag,
            path: ns.path().clone(),
        });
    }
    if !plan.has_ns(libc::CLONE_NEWNS) {
        return Err(invalid("linux.namespaces", "a mount namespace is required"));
    }
    if plan.hostname.is_some() && !plan.has_ns(libc::CLONE_NEWUTS) {
        return Err(invalid(
            "hostname",
            "setting a hostname requires a uts namespace",
        ));
    }
    let maps = |field: &str,
                m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>|
     -> Result<Vec<IdMap>, PlanError> {
        let v: Vec<IdMap> = m
            .iter()
            .flatten()
            .map(|m| IdMap {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect();
        if v.iter().any(|m| m.size == 0) {
            return Err(invalid(field, "a mapping has size 0"));
        }
        Ok(v)
    };
    plan.uid_map = maps("linux.uidMappings", linux.uid_mappings())?;
    plan.gid_map = maps("linux.gidMappings", linux.gid_mappings())?;
    let new_user = plan
        .namespaces
        .iter()
        .any(|n| n.flag == libc::CLONE_NEWUSER && n.path.is_none());
    if new_user && (plan.uid_map.is_empty() || plan.gid_map.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if !new_user && (!plan.uid_map.is_empty() || !plan.gid_map.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "mappings are given but no new user namespace is created",
        ));
    }

    // Mounts.
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.destination().is_absolute() {
            return Err(invalid(
                format!("{field}.destination"),
                "must be an absolute path",
            ));
        }
        let opts = m.options().clone().unwrap_or_default();
        let (flags, propagation, data, bind_opt, rec) = parse_mount_options(&opts);
        let fstype = m.typ().clone().unwrap_or_default();
        let kind = if bind_opt || fstype == "bind" {
            MountKind::Bind { recursive: rec }
        } else if fstype == "cgroup" || fstype == "cgroup2" {
            MountKind::Cgroup
        } else if fstype.is_empty() {
            return Err(invalid(
                format!("{field}.type"),
                "is required for a non-bind mount",
            ));
        } else {
            MountKind::Fs
        };
        let mut source = m.source().clone();
        if let MountKind::Bind { .. } = kind {
            let src = source.clone().ok_or_else(|| {
                invalid(format!("{field}.source"), "is required for a bind mount")
            })?;
            let src = if src.is_absolute() {
                src
            } else {
                bundle.join(src)
            };
            if !src.exists() {
                return Err(invalid(
                    format!("{field}.source"),
                    format!("{} does not exist", src.display()),
                ));
            }
            source = Some(src);
        }
        plan.mounts.push(MountPlan {
            kind,
            source,
            destination: clean_abs(m.destination()),
            fstype,
            flags: flags.bits(),
            propagation,
            data,
        });
    }

    // Devices: defaults first, the spec's list overrides same paths.
    for (p, ma, mi) in DEFAULT_DEVICES {
        plan.devices.push(DevicePlan {
            path: PathBuf::from(p),
            kind: 'c',
            major: ma,
            minor: mi,
            mode: 0o666,
            uid: 0,
            gid: 0,
        });
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = clean_abs(d.path());
        if !path.starts_with("/dev") || path == Path::new("/dev") {
            return Err(invalid(format!("{field}.path"), "must be below /dev"));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(invalid(
                    format!("{field}.type"),
                    "'a' is not a device node type",
                ))
            }
        };
        if kind != 'p' && (d.major() < 0 || d.minor() < 0) {
            return Err(invalid(
                format!("{field}.major"),
                "device numbers must not be negative",
            ));
        }
        plan.devices.retain(|x| x.path != path);
        plan.devices.push(DevicePlan {
            path,
            kind,
            major: d.major().max(0) as u64,
            minor: d.minor().max(0) as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    plan.masked_paths = linux
        .masked_paths()
        .iter()
        .flatten()
        .map(|p| clean_abs(Path::new(p)))
        .collect();
    plan.readonly_paths = linux
        .readonly_paths()
        .iter()
        .flatten()
        .map(|p| clean_abs(Path::new(p)))
        .collect();
    let mut sysctl: Vec<_> = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctl.sort();
    for (k, _) in &sysctl {
        if k.contains('/') || k.contains("..") || k.is_empty() {
            return Err(invalid(
                format!("linux.sysctl.{k}"),
                "not a valid sysctl name",
            ));
        }
    }
    plan.sysctl = sysctl;
    plan.rootfs_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => (MsFlags::MS_SLAVE | MsFlags::MS_REC).bits(),
        Some(p) => propagation_flag(p).ok_or_else(|| {
            invalid(
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}"),
            )
        })?,
    };
    if let Some(r) = linux.resources() {
        plan.resources = plan_resources(r)?;
    }
    plan.device_filter = plan_device_filter(
        linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref()),
        &plan.devices,
    )?;
    plan.cgroups_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(cp) = &plan.cgroups_path {
        if cp.split('/').any(|c| c == "..") {
            return Err(invalid("linux.cgroupsPath", "must not contain '..'"));
        }
    }
    if let Some(s) = linux.seccomp() {
        plan.process.seccomp = Some(seccomp::compile_cached(s).map_err(PlanError::Seccomp)?);
    }
    if let Some(h) = spec.hooks() {
        plan.hooks = HooksPlan {
            prestart: hooks_of("prestart", h.prestart())?,
            create_runtime: hooks_of("createRuntime", h.create_runtime())?,
            create_container: hooks_of("createContainer", h.create_container())?,
            start_container: hooks_of("startContainer", h.start_container())?,
            poststart: hooks_of("poststart", h.poststart())?,
            poststop: hooks_of("poststop", h.poststop())?,
        };
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &serde_json::Value) -> (tempfile::TempDir, Result<Plan, PlanError>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        let text = serde_json::to_vec(config).unwrap();
        let r = parse_spec(Path::new("config.json"), &text).and_then(|s| build("c1", d.path(), &s));
        (d, r)
    }

    fn base() -> serde_json::Value {
        serde_json::to_value(Spec::default()).unwrap()
    }

    #[test]
    fn default_spec_translates() {
        let (_d, plan) = bundle_with(&base());
        let plan = plan.unwrap();
        assert_eq!(plan.process.args, vec!["sh".to_string()]);
        assert!(plan.has_ns(libc::CLONE_NEWNS));
        assert!(plan.clone_flags() & libc::CLONE_NEWPID != 0);
        let proc_mount = plan
            .mounts
            .iter()
            .find(|m| m.destination == Path::new("/proc"))
            .unwrap();
        assert_eq!(proc_mount.kind, MountKind::Fs);
        let sys = plan
            .mounts
            .iter()
            .find(|m| m.destination == Path::new("/sys"))
            .unwrap();
        assert!(sys.flags & MsFlags::MS_RDONLY.bits() != 0);
        let cg = plan
            .mounts
            .iter()
            .find(|m| m.destination == Path::new("/sys/fs/cgroup"))
            .unwrap();
        assert_eq!(cg.kind, MountKind::Cgroup);
        assert!(plan
            .devices
            .iter()
            .any(|d| d.path == Path::new("/dev/null")));
        let caps = plan.process.caps.unwrap();
        assert!(caps.bounding & (1 << caps::Capability::CAP_KILL.index()) != 0);
        assert!(caps.bounding & (1 << caps::Capability::CAP_SYS_ADMIN.index()) == 0);
        assert!(plan
            .process
            .rlimits
            .iter()
            .any(|r| r.0 == libc::RLIMIT_NOFILE));
        assert!(plan.masked_paths.contains(&PathBuf::from("/proc/kcore")));
    }

    #[test]
    fn device_rules_become_a_deny_by_default_filter() {
        use crate::devices::{DevType, READ, WRITE};
        let mut c = base();
        c["linux"]["resources"] = serde_json::json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "major": 7, "minor": -1, "access": "r"},
        ]});
        c["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
        let f = bundle_with(&c).1.unwrap().device_filter;
        assert!(!f.default_allow);
        assert!(f.allows(DevType::Char, 1, 3, READ | WRITE));
        assert!(f.allows(DevType::Char, 10, 229, READ | WRITE));
        assert!(f.allows(DevType::Block, 7, 5, READ));
        assert!(!f.allows(DevType::Block, 7, 5, WRITE));
        assert!(!f.allows(DevType::Block, 254, 0, READ));
        // No rules in the spec at all: still deny by default.
        let mut c = base();
        c["linux"]["resources"] = serde_json::json!({});
        let f = bundle_with(&c).1.unwrap().device_filter;
        assert!(!f.allows(DevType::Block, 254, 0, READ));
        assert!(f.allows(DevType::Char, 136, 3, READ));
        // Bad rules name their field.
        for (rule, needle) in [
            (
                serde_json::json!({"allow": true, "type": "c", "access": "rx"}),
                "devices[0].access",
            ),
            (
                serde_json::json!({"allow": true, "type": "p"}),
                "devices[0].type",
            ),
            (
                serde_json::json!({"allow": true, "type": "c", "major": -5}),
                "devices[0].major",
            ),
        ] {
            let mut c = base();
            c["linux"]["resources"] = serde_json::json!({ "devices": [rule] });
            let e = bundle_with(&c).1.unwrap_err();
            let mut text = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                text.push_str(&s.to_string());
            }
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn mount_options_are_split_into_flags_and_data() {
        let (f, p, d, b, r) = parse_mount_options(&[
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
            "rprivate".into(),
        ]);
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p, vec![(MsFlags::MS_PRIVATE | MsFlags::MS_REC).bits()]);
        assert_eq!(d, "mode=755,size=65536k");
        assert!(!b && !r);
        let (_, _, _, b, r) = parse_mount_options(&["rbind".into(), "ro".into()]);
        assert!(b && r);
    }

    #[test]
    fn malformed_json_names_field() {
        let mut c = base();
        c["linux"]["namespaces"][0]["type"] = "bogus".into();
        let (_d, r) = bundle_with(&c);
        let e = r.unwrap_err();
        let msg = format!("{e}");
        assert!(msg.contains("linux.namespaces[0].type"), "{msg}");
    }

    #[test]
    fn missing_rootfs_is_reported() {
        let mut c = base();
        c["root"]["path"] = "nope".into();
        let (_d, r) = bundle_with(&c);
        assert!(r.unwrap_err().to_string().starts_with("root.path"));
    }

    #[test]
    fn impossible_limits_are_rejected() {
        for (path, val, field) in [
            (
                &["memory", "limit"][..],
                serde_json::json!(-5),
                "linux.resources.memory.limit",
            ),
            (
                &["memory", "limit"][..],
                serde_json::json!(100),
                "linux.resources.memory.limit",
            ),
            (
                &["cpu", "quota"][..],
                serde_json::json!(10),
                "linux.resources.cpu.quota",
            ),
            (
                &["cpu", "shares"][..],
                serde_json::json!(1_000_000),
                "linux.resources.cpu.shares",
            ),
            (
                &["pids", "limit"][..],
                serde_json::json!(-7),
                "linux.resources.pids.limit",
            ),
        ] {
            let mut c = base();
            c["linux"]["resources"][path[0]][path[1]] = val;
            let (_d, r) = bundle_with(&c);
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(field), "{e}");
        }
        let mut c = base();
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 1048576, "swap": 4096});
        let (_d, r) = bundle_with(&c);
        assert!(r
            .unwrap_err()
            .to_string()
            .starts_with("linux.resources.memory.swap"));
    }

    #[test]
    fn resources_convert_to_v2_units() {
        let mut c = base();
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 1048576, "swap": 2097152, "reservation": 524288},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1"},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]},
            "unified": {"memory.high": "2000000"}
        });
        let (_d, r) = bundle_with(&c);
        let res = r.unwrap().resources;
        assert_eq!(res.memory_max, Some(1_048_576));
        assert_eq!(res.memory_swap_max, Some(1_048_576));
        assert_eq!(res.memory_low, Some(524_288));
        assert_eq!(res.memory_high, Some(2_000_000));
        assert_eq!(res.cpu_weight, Some(39));
        assert_eq!(res.cpu_max, Some((50_000, 100_000)));
        assert_eq!(res.pids_max, Some(64));
        assert_eq!(res.io_weight, Some(1 + 490 * 9999 / 990));
        assert_eq!(res.io_max, vec!["8:0 rbps=1000".to_string()]);
        assert_eq!(res.cpuset_cpus.as_deref(), Some("0-1"));
    }

    #[test]
    fn bad_ids_are_rejected() {
        for id in ["", "a/b", "..", ".", "x y", "../etc"] {
            assert!(validate_id(id).is_err(), "{id:?}");
        }
        validate_id("web-1_a.b+c").unwrap();
    }

    #[test]
    fn user_namespace_needs_maps() {
        let mut c = base();
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        let (_d, r) = bundle_with(&c);
        assert!(r.unwrap_err().to_string().starts_with("linux.uidMappings"));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        let (_d, r) = bundle_with(&c);
        let p = r.unwrap();
        assert_eq!(
            p.uid_map,
            vec![IdMap {
                container: 0,
                host: 100000,
                size: 65536
            }]
        );
        assert!(p.clone_flags() & libc::CLONE_NEWUSER != 0);
    }

    #[test]
    fn bad_rlimit_and_capability_fail() {
        let mut c = base();
        c["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        let (_d, r) = bundle_with(&c);
        assert!(r.unwrap_err().to_string().starts_with("process.rlimits[0]"));
        let mut c = base();
        c["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_BOGUS"]);
        let (_d, r) = bundle_with(&c);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("process.capabilities.bounding"));
    }
}
