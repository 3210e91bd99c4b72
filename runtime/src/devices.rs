//! Device access control for cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to every container cgroup.
//!
//! cgroup v2 has no `devices.allow`/`devices.deny` files; the kernel asks a
//! BPF program attached to the cgroup instead, once per `mknod`/`open` of a
//! device node, with a `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }` whose `access_type` holds the device type in its low
//! 16 bits (`BPF_DEVCG_DEV_BLOCK` = 1, `BPF_DEVCG_DEV_CHAR` = 2) and the
//! requested access in its high 16 bits (`MKNOD` = 1, `READ` = 2,
//! `WRITE` = 4). The program returns 1 to allow and 0 to deny.
//!
//! The rules have runc's semantics (they are its cgroup v1 emulation):
//! start from *deny everything*; rules apply in order, so later rules
//! override earlier ones; a rule of type `a` (all devices) resets the state
//! to allow-all or deny-all and forgets every earlier rule; any other rule
//! either adds an exception to the current default or removes (part of) an
//! earlier exception with exactly the same type and numbers. Removing access
//! that a broader wildcard exception grants is refused, as runc does
//! (cgroup v1 would silently ignore it, leaving the access granted).
//!
//! [`container_rules`] builds the rule list of a container like runc: the
//! spec's `linux.resources.devices` first, then the default devices every
//! container gets ([`DEFAULT_ALLOW`]) and the spec's `linux.devices`.
//! [`Filter::from_rules`] folds the rules into a default plus exceptions,
//! [`Filter::program`] emits the BPF instructions (pure, unit-tested) and
//! [`attach`] loads the program and attaches it to a cgroup directory.

use crate::sys::{self, BpfInsn};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Access bit: create the node with `mknod`.
pub const MKNOD: u8 = 1;
/// Access bit: open for reading.
pub const READ: u8 = 2;
/// Access bit: open for writing.
pub const WRITE: u8 = 4;
/// All three access bits (`rwm`).
pub const RWM: u8 = MKNOD | READ | WRITE;

/// Device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DevType {
    /// `a`: every device (only meaningful as a wildcard rule).
    All,
    /// `c` (and `u`): character devices.
    Char,
    /// `b`: block devices.
    Block,
}

impl DevType {
    /// The `BPF_DEVCG_DEV_*` number, `None` for [`DevType::All`].
    fn bpf(self) -> Option<i32> {
        match self {
            DevType::All => None,
            DevType::Block => Some(1),
            DevType::Char => Some(2),
        }
    }
}

/// One device cgroup rule, as in `linux.resources.devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub allow: bool,
    pub kind: DevType,
    /// `None` = any major (`*`, -1 in the spec).
    pub major: Option<u32>,
    /// `None` = any minor.
    pub minor: Option<u32>,
    /// [`MKNOD`] | [`READ`] | [`WRITE`].
    pub access: u8,
}

impl Rule {
    /// An allow rule for one character device, `rwm`.
    pub const fn allow_char(major: u32, minor: Option<u32>) -> Rule {
        Rule {
            allow: true,
            kind: DevType::Char,
            major: Some(major),
            minor,
            access: RWM,
        }
    }
}

/// Devices every container may use (runc's and crun's defaults, without
/// the blanket `mknod` of every device they add): null, zero, full, random,
/// urandom, tty, console, ptmx and the pty slaves (136:*).
pub const DEFAULT_ALLOW: [Rule; 9] = [
    Rule::allow_char(1, Some(3)),
    Rule::allow_char(1, Some(5)),
    Rule::allow_char(1, Some(7)),
    Rule::allow_char(1, Some(8)),
    Rule::allow_char(1, Some(9)),
    Rule::allow_char(5, Some(0)),
    Rule::allow_char(5, Some(1)),
    Rule::allow_char(5, Some(2)),
    Rule::allow_char(136, None),
];

/// Errors of the device filter; each names the rule or cgroup involved.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{field}: access {access:?} has characters other than r, w and m")]
    BadAccess { field: String, access: String },
    #[error("{field}: device number {value} is out of range")]
    BadNumber { field: String, value: i64 },
    #[error(
        "{field}: cannot deny {rule} while the broader rule {wildcard} allows it \
         (rules cannot punch a hole in a wildcard rule; deny everything first and allow what is needed)"
    )]
    HoleInWildcard {
        field: String,
        rule: String,
        wildcard: String,
    },
    #[error("cannot open cgroup {path} to attach the device filter")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the device filter program for {path} (needs CONFIG_CGROUP_BPF); verifier log: {log}")]
    Load {
        path: PathBuf,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach the device filter to cgroup {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the device filters attached to cgroup {path}")]
    Query {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot detach the earlier device filter (program id {id}) from cgroup {path}")]
    Detach {
        path: PathBuf,
        id: u32,
        #[source]
        source: io::Error,
    },
}

/// Parses an OCI access string (`"rwm"`, `"r"`, `""` = all).
pub fn parse_access(field: &str, s: &str) -> Result<u8, DeviceError> {
    if s.is_empty() {
        return Ok(RWM);
    }
    let mut a = 0;
    for c in s.chars() {
        a |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            _ => {
                return Err(DeviceError::BadAccess {
                    field: field.into(),
                    access: s.into(),
                })
            }
        };
    }
    Ok(a)
}

/// Converts an OCI device number (-1 or absent = any).
pub fn parse_number(field: &str, n: Option<i64>) -> Result<Option<u32>, DeviceError> {
    match n {
        None | Some(-1) => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| DeviceError::BadNumber {
                field: field.into(),
                value: v,
            }),
    }
}

fn fmt_rule(kind: DevType, major: Option<u32>, minor: Option<u32>, access: u8) -> String {
    let t = match kind {
        DevType::All => 'a',
        DevType::Char => 'c',
        DevType::Block => 'b',
    };
    let n = |x: Option<u32>| x.map_or("*".to_string(), |v| v.to_string());
    let mut acc = String::new();
    for (bit, ch) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
        if access & bit != 0 {
            acc.push(ch);
        }
    }
    format!("{t} {}:{} {acc}", n(major), n(minor))
}

/// The effective device policy: a default and the exceptions to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// What happens to a device no exception matches.
    pub default_allow: bool,
    /// `(type, major, minor) -> access` that gets the opposite of the default.
    pub exceptions: Vec<(DevType, Option<u32>, Option<u32>, u8)>,
}

impl Filter {
    /// Folds rules (with the field each comes from, for errors) into a
    /// filter, starting from deny-all.
    pub fn from_rules<'a>(
        rules: impl IntoIterator<Item = (&'a str, Rule)>,
    ) -> Result<Filter, DeviceError> {
        let mut default_allow = false;
        let mut ex: BTreeMap<(DevType, Option<u32>, Option<u32>), u8> = BTreeMap::new();
        for (field, r) in rules {
            if r.kind == DevType::All {
                // "a" always means every device with every access (as the
                // cgroup v1 parser reads it): a fresh start.
                default_allow = r.allow;
                ex.clear();
                continue;
            }
            let key = (r.kind, r.major, r.minor);
            if r.allow != default_allow {
                *ex.entry(key).or_insert(0) |= r.access;
                continue;
            }
            // The rule agrees with the default: remove it from the exceptions.
            for wide in [
                (r.kind, None, r.minor),
                (r.kind, r.major, None),
                (r.kind, None, None),
            ] {
                if wide == key {
                    continue;
                }
                if let Some(acc) = ex.get(&wide) {
                    if acc & r.access != 0 {
                        return Err(DeviceError::HoleInWildcard {
                            field: field.into(),
                            rule: fmt_rule(r.kind, r.major, r.minor, r.access),
                            wildcard: fmt_rule(wide.0, wide.1, wide.2, *acc),
                        });
                    }
                }
            }
            if let Some(acc) = ex.get_mut(&key) {
                *acc &= !r.access;
                if *acc == 0 {
                    ex.remove(&key);
                }
            }
        }
        Ok(Filter {
            default_allow,
            exceptions: ex
                .into_iter()
                .map(|((k, ma, mi), a)| (k, ma, mi, a))
                .collect(),
        })
    }

    /// Whether the filter lets `kind` `major:minor` be used with `access`
    /// (the reference semantics the BPF program implements; for tests).
    pub fn allows(&self, kind: DevType, major: u32, minor: u32, access: u8) -> bool {
        let hit = self.exceptions.iter().any(|&(k, ma, mi, a)| {
            exception_matches(
                self.default_allow,
                (k, ma, mi, a),
                kind,
                major,
                minor,
                access,
            )
        });
        self.default_allow != hit
    }

    /// The BPF program. Register use: r2 = device type, r3 = requested
    /// access, r4 = major, r5 = minor; r1 is scratch after the loads.
    pub fn program(&self) -> Vec<BpfInsn> {
        let mut p = vec![
            // r2 = ctx->access_type; r3 = r2 >> 16; r2 &= 0xffff
            BpfInsn::ldx_w(2, 1, 0),
            BpfInsn::mov32_reg(3, 2),
            BpfInsn::rsh32_imm(3, 16),
            BpfInsn::and32_imm(2, 0xffff),
            // r4 = ctx->major; r5 = ctx->minor
            BpfInsn::ldx_w(4, 1, 4),
            BpfInsn::ldx_w(5, 1, 8),
        ];
        let verdict = i32::from(!self.default_allow);
        for &(kind, major, minor, access) in &self.exceptions {
            // Each check jumps to the end of the block when it fails; the
            // offsets are patched once the block length is known.
            let mut block: Vec<BpfInsn> = Vec::new();
            let mut jumps = Vec::new();
            if let Some(t) = kind.bpf() {
                jumps.push(block.len());
                block.push(BpfInsn::jne_imm(2, t, 0));
            }
            if access & RWM != RWM {
                block.push(BpfInsn::mov32_reg(1, 3));
                block.push(BpfInsn::and32_imm(1, i32::from(access)));
                jumps.push(block.len());
                if self.default_allow {
                    // A deny exception applies when any requested access
                    // is one it denies.
                    block.push(BpfInsn::jeq_imm(1, 0, 0));
                } else {
                    // An allow exception applies when it grants all of it.
                    block.push(BpfInsn::jne_reg(1, 3, 0));
                }
            }
            if let Some(m) = major {
                jumps.push(block.len());
                block.push(BpfInsn::jne_imm(4, m as i32, 0));
            }
            if let Some(m) = minor {
                jumps.push(block.len());
                block.push(BpfInsn::jne_imm(5, m as i32, 0));
            }
            block.push(BpfInsn::mov64_imm(0, verdict));
            block.push(BpfInsn::exit());
            let len = block.len();
            for j in jumps {
                block[j].off = (len - j - 1) as i16;
            }
            p.extend(block);
        }
        p.push(BpfInsn::mov64_imm(0, i32::from(self.default_allow)));
        p.push(BpfInsn::exit());
        p
    }
}

fn exception_matches(
    default_allow: bool,
    (k, ma, mi, a): (DevType, Option<u32>, Option<u32>, u8),
    kind: DevType,
    major: u32,
    minor: u32,
    access: u8,
) -> bool {
    let access_hit = if default_allow {
        a & access != 0
    } else {
        a & access == access
    };
    (k == DevType::All || k == kind)
        && ma.is_none_or(|m| m == major)
        && mi.is_none_or(|m| m == minor)
        && access_hit
}

/// The rules of a container, in the order runc applies them: the spec's
/// `linux.resources.devices`, then [`DEFAULT_ALLOW`], then `rwm` for every
/// `linux.devices` node (`(type, major, minor)`; fifos need no rule).
pub fn container_rules(
    resources: &[(String, Rule)],
    nodes: &[(char, u64, u64)],
) -> Vec<(String, Rule)> {
    let mut out: Vec<(String, Rule)> = resources.to_vec();
    out.extend(
        DEFAULT_ALLOW
            .iter()
            .map(|r| ("default devices".to_string(), *r)),
    );
    for (i, &(t, ma, mi)) in nodes.iter().enumerate() {
        let kind = match t {
            'b' => DevType::Block,
            'c' | 'u' => DevType::Char,
            _ => continue,
        };
        let (Ok(ma), Ok(mi)) = (u32::try_from(ma), u32::try_from(mi)) else {
            continue;
        };
        out.push((
            format!("linux.devices[{i}]"),
            Rule {
                allow: true,
                kind,
                major: Some(ma),
                minor: Some(mi),
                access: RWM,
            },
        ));
    }
    out
}

/// `BPF_CGROUP_DEVICE`.
const ATTACH_CGROUP_DEVICE: u32 = 6;

/// Loads the filter's program and attaches it to the cgroup directory
/// `cgroup` (with `BPF_F_ALLOW_MULTI`), then detaches any device program
/// attached to that cgroup before, so exactly this filter applies there
/// (the programs of ancestor cgroups still apply too: the kernel requires
/// every program on the way up to allow an access).
pub fn attach(cgroup: &Path, filter: &Filter) -> Result<(), DeviceError> {
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceError::OpenCgroup {
        path: cgroup.into(),
        source,
    })?;
    let old =
        sys::bpf_prog_query(&dir, ATTACH_CGROUP_DEVICE).map_err(|source| DeviceError::Query {
            path: cgroup.into(),
            source,
        })?;
    let insns = filter.program();
    let mut log = vec![0u8; 64 * 1024];
    let prog =
        sys::bpf_prog_load_cgroup_device(&insns, c"Apache-2.0", &mut log).map_err(|source| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            DeviceError::Load {
                path: cgroup.into(),
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
                source,
            }
        })?;
    sys::bpf_prog_attach(&dir, &prog, ATTACH_CGROUP_DEVICE).map_err(|source| {
        DeviceError::Attach {
            path: cgroup.into(),
            source,
        }
    })?;
    for id in old {
        let detach = sys::bpf_prog_get_fd_by_id(id)
            .and_then(|fd| sys::bpf_prog_detach(&dir, &fd, ATTACH_CGROUP_DEVICE));
        match detach {
            Ok(()) => {}
            // Gone in the meantime.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(DeviceError::Detach {
                    path: cgroup.into(),
                    id,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Ids of the device programs attached directly to `cgroup`.
pub fn attached(cgroup: &Path) -> Result<Vec<u32>, DeviceError> {
    let dir = std::fs::File::open(cgroup).map_err(|source| DeviceError::OpenCgroup {
        path: cgroup.into(),
        source,
    })?;
    sys::bpf_prog_query(&dir, ATTACH_CGROUP_DEVICE).map_err(|source| DeviceError::Query {
        path: cgroup.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, kind: DevType, ma: i64, mi: i64, acc: &str) -> (&'static str, Rule) {
        (
            "test",
            Rule {
                allow,
                kind,
                major: parse_number("x", Some(ma)).unwrap(),
                minor: parse_number("x", Some(mi)).unwrap(),
                access: parse_access("x", acc).unwrap(),
            },
        )
    }

    /// Runs the emitted program in a tiny interpreter of the instructions
    /// it uses, so the tests check the bytes that go to the kernel.
    fn run(prog: &[BpfInsn], kind: DevType, major: u32, minor: u32, access: u8) -> bool {
        let ctx = [
            u32::from(access) << 16 | kind.bpf().unwrap() as u32,
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm64 = i.imm as i64 as u64;
            pc += 1;
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = (*pc as i64 + i64::from(i.off)) as usize;
                }
            };
            match i.code {
                0x61 => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                0xbc => r[dst] = r[src] & 0xffff_ffff,
                0x74 => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                0x54 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                0xb7 => r[dst] = imm64,
                0x55 => jump(r[dst] != imm64, &mut pc),
                0x15 => jump(r[dst] == imm64, &mut pc),
                0x5d => jump(r[dst] != r[src], &mut pc),
                0x95 => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// Checks the program against the reference semantics for a grid of
    /// devices and accesses, and returns the filter.
    fn check(rules: &[(&str, Rule)]) -> Filter {
        let f = Filter::from_rules(rules.iter().copied()).unwrap();
        let prog = f.program();
        for kind in [DevType::Char, DevType::Block] {
            for (ma, mi) in [
                (1, 3),
                (1, 5),
                (5, 2),
                (7, 0),
                (136, 4),
                (254, 0),
                (10, 200),
            ] {
                for acc in 1..=RWM {
                    assert_eq!(
                        run(&prog, kind, ma, mi, acc),
                        f.allows(kind, ma, mi, acc),
                        "{kind:?} {ma}:{mi} access {acc} with {f:?}"
                    );
                }
            }
        }
        f
    }

    fn defaults(extra: &[(&'static str, Rule)]) -> Vec<(&'static str, Rule)> {
        let mut v = vec![rule(false, DevType::All, -1, -1, "rwm")];
        v.extend(DEFAULT_ALLOW.iter().map(|r| ("default", *r)));
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn default_set_allows_null_and_ptys_and_denies_disks() {
        let f = check(&defaults(&[]));
        assert!(!f.default_allow);
        assert!(f.allows(DevType::Char, 1, 3, READ | WRITE));
        assert!(f.allows(DevType::Char, 136, 7, READ | WRITE));
        assert!(f.allows(DevType::Char, 5, 2, MKNOD));
        assert!(!f.allows(DevType::Block, 7, 0, READ));
        assert!(!f.allows(DevType::Block, 254, 0, MKNOD));
        assert!(!f.allows(DevType::Block, 1, 3, READ), "type must match");
        assert!(!f.allows(DevType::Char, 10, 200, READ));
        let prog = f.program();
        assert!(!run(&prog, DevType::Block, 7, 0, READ));
        assert!(run(&prog, DevType::Char, 1, 3, READ | WRITE));
    }

    #[test]
    fn nothing_at_all_denies_everything() {
        let f = check(&[]);
        assert_eq!(f.program().len(), 8);
        assert!(!run(&f.program(), DevType::Char, 1, 3, READ));
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        // Allow 10:200 rw, then take write away again.
        let f = check(&defaults(&[
            rule(true, DevType::Char, 10, 200, "rw"),
            rule(false, DevType::Char, 10, 200, "w"),
        ]));
        assert!(f.allows(DevType::Char, 10, 200, READ));
        assert!(!f.allows(DevType::Char, 10, 200, WRITE));
        assert!(!f.allows(DevType::Char, 10, 200, READ | WRITE));
        assert!(!f.allows(DevType::Char, 10, 200, MKNOD));
        // Allow all, then a deny-all: only what comes after counts.
        let f = check(&[
            rule(true, DevType::All, -1, -1, "rwm"),
            rule(false, DevType::All, -1, -1, "rwm"),
            rule(true, DevType::Block, 7, -1, "r"),
        ]);
        assert!(f.allows(DevType::Block, 7, 3, READ));
        assert!(!f.allows(DevType::Block, 7, 3, WRITE));
        assert!(!f.allows(DevType::Char, 1, 3, READ));
    }

    #[test]
    fn partial_access_is_merged_and_checked_as_a_whole() {
        let f = check(&defaults(&[
            rule(true, DevType::Char, 10, 200, "r"),
            rule(true, DevType::Char, 10, 200, "w"),
        ]));
        assert!(f.allows(DevType::Char, 10, 200, READ | WRITE));
        assert!(!f.allows(DevType::Char, 10, 200, READ | WRITE | MKNOD));
    }

    #[test]
    fn allow_all_with_deny_exceptions() {
        // A privileged-style config: allow everything but block 7:* writes.
        let f = check(&[
            rule(true, DevType::All, -1, -1, "rwm"),
            rule(false, DevType::Block, 7, -1, "w"),
        ]);
        assert!(f.default_allow);
        assert!(f.allows(DevType::Block, 7, 0, READ));
        assert!(!f.allows(DevType::Block, 7, 0, WRITE));
        assert!(!f.allows(DevType::Block, 7, 0, READ | WRITE));
        assert!(f.allows(DevType::Block, 8, 0, READ | WRITE));
    }

    #[test]
    fn wildcard_numbers_match_any() {
        let f = check(&defaults(&[rule(true, DevType::Block, -1, 0, "m")]));
        assert!(f.allows(DevType::Block, 254, 0, MKNOD));
        assert!(!f.allows(DevType::Block, 254, 0, READ));
        assert!(!f.allows(DevType::Block, 254, 1, MKNOD));
    }

    #[test]
    fn punching_a_hole_in_a_wildcard_is_refused() {
        let rules = defaults(&[
            rule(true, DevType::Char, 10, -1, "rwm"),
            rule(false, DevType::Char, 10, 200, "rw"),
        ]);
        let e = Filter::from_rules(rules.iter().copied()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("c 10:200 rw"), "{msg}");
        assert!(msg.contains("c 10:* rwm"), "{msg}");
    }

    #[test]
    fn access_and_numbers_are_validated() {
        assert_eq!(parse_access("f", "rwm").unwrap(), RWM);
        assert_eq!(parse_access("f", "").unwrap(), RWM);
        assert_eq!(parse_access("f", "mr").unwrap(), MKNOD | READ);
        assert!(parse_access("f", "rx").is_err());
        assert_eq!(parse_number("f", Some(-1)).unwrap(), None);
        assert_eq!(parse_number("f", None).unwrap(), None);
        assert!(parse_number("f", Some(-2)).is_err());
        assert!(parse_number("f", Some(1 << 40)).is_err());
    }

    #[test]
    fn container_rules_put_the_spec_first_then_defaults_then_nodes() {
        let spec = vec![(
            "linux.resources.devices[0]".to_string(),
            rule(false, DevType::All, -1, -1, "rwm").1,
        )];
        let rules = container_rules(&spec, &[('c', 10, 229), ('p', 0, 0), ('b', 7, 0)]);
        assert_eq!(rules.len(), 1 + DEFAULT_ALLOW.len() + 2);
        assert_eq!(rules[0].0, "linux.resources.devices[0]");
        assert_eq!(rules.last().unwrap().0, "linux.devices[2]");
        let f = Filter::from_rules(rules.iter().map(|(f, r)| (f.as_str(), *r))).unwrap();
        assert!(f.allows(DevType::Char, 10, 229, READ | WRITE));
        assert!(f.allows(DevType::Block, 7, 0, READ));
        assert!(!f.allows(DevType::Block, 7, 1, READ));
    }

    #[test]
    fn instruction_encoding_matches_the_kernel_abi() {
        // r2 = *(u32 *)(r1 + 0): BPF_LDX | BPF_W | BPF_MEM, dst 2, src 1.
        let i = BpfInsn::ldx_w(2, 1, 0);
        assert_eq!((i.code, i.regs, i.off, i.imm), (0x61, 0x12, 0, 0));
        let i = BpfInsn::jne_imm(4, 254, 3);
        assert_eq!((i.code, i.regs, i.off, i.imm), (0x55, 0x04, 3, 254));
        assert_eq!(BpfInsn::exit().code, 0x95);
        assert_eq!(std::mem::size_of::<BpfInsn>(), 8);
    }
}
