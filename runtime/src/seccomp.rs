//! A pure-Rust compiler from the OCI seccomp section to a classic BPF
//! program, and a small cache so a profile is compiled once.
//!
//! Layout of the generated program:
//! ```text
//!   ld arch; jeq NATIVE ? next : ret KILL_PROCESS
//!   ld nr
//!   jeq nr_1 ? next : skip1;  ja block_1        (one pair per syscall)
//!   ...
//!   ret default_action
//! block_k:
//!   rule checks (args), each rule: ret action; on mismatch fall to next rule
//!   ret default_action
//! ```
//! Rules with argument conditions for one syscall come before its
//! unconditional rule; the first matching rule wins. 64-bit argument
//! comparisons are done on the two 32-bit halves.

use crate::sys::SockFilter;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;

/// Errors of the seccomp compiler.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp.syscalls[{index}]: action {action} is not supported")]
    UnsupportedAction { index: usize, action: String },
    #[error("linux.seccomp.defaultAction: action {action} is not supported")]
    UnsupportedDefault { action: String },
    #[error("linux.seccomp.syscalls[{index}].args: argument index {arg} is out of range (0..=5)")]
    ArgIndex { index: usize, arg: usize },
    #[error("linux.seccomp.syscalls[{index}]: rule too large for a BPF jump")]
    TooLarge { index: usize },
    #[error("linux.seccomp: program of {len} instructions exceeds the kernel limit of 4096")]
    ProgramTooLong { len: usize },
}

// BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg_lo(i: usize) -> u32 {
    16 + 8 * i as u32
}
fn off_arg_hi(i: usize) -> u32 {
    16 + 8 * i as u32 + 4
}

/// A compiled filter plus the `seccomp(2)` flags to install it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Instructions packed as `code<<48 | jt<<40 | jf<<32 | k`.
    pub insns: Vec<u64>,
    pub flags: u64,
}

impl Program {
    /// The instructions as kernel structs.
    pub fn filters(&self) -> Vec<SockFilter> {
        self.insns
            .iter()
            .map(|&w| SockFilter {
                code: (w >> 48) as u16,
                jt: (w >> 40) as u8,
                jf: (w >> 32) as u8,
                k: w as u32,
            })
            .collect()
    }

    /// Installs the filter in the calling thread.
    pub fn install(&self) -> std::io::Result<()> {
        crate::sys::seccomp_install(&self.filters(), self.flags as libc::c_ulong)
    }
}

fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, String> {
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => {
            SECCOMP_RET_ERRNO | (errno.unwrap_or(libc::EPERM as u32) & 0xffff)
        }
        LinuxSeccompAction::ScmpActTrace => {
            SECCOMP_RET_TRACE | (errno.unwrap_or(libc::EPERM as u32) & 0xffff)
        }
        LinuxSeccompAction::ScmpActLog => SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => SECCOMP_RET_ALLOW,
        other => return Err(format!("{other:?}")),
    })
}

#[derive(Clone, Copy)]
enum Target {
    Next,
    Fail,
    Abs(usize),
}

/// One instruction before jump resolution.
#[derive(Clone, Copy)]
struct Ins {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

fn stmt(code: u16, k: u32) -> Ins {
    Ins {
        code,
        k,
        jt: Target::Next,
        jf: Target::Next,
    }
}

struct Cond {
    arg: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// Emits the checks for one condition; jumps to Fail on mismatch, falls
/// through on match. Targets are local: `Abs(i)` = index within `out`.
fn emit_cond(out: &mut Vec<Ins>, c: &Cond) {
    let hi = (c.value >> 32) as u32;
    let lo = c.value as u32;
    let ld_hi = stmt(BPF_LD_W_ABS, off_arg_hi(c.arg));
    let ld_lo = stmt(BPF_LD_W_ABS, off_arg_lo(c.arg));
    let j = |code, k, jt, jf| Ins { code, k, jt, jf };
    match c.op {
        LinuxSeccompOperator::ScmpCmpEq => {
            out.push(ld_hi);
            out.push(j(BPF_JEQ_K, hi, Target::Next, Target::Fail));
            out.push(ld_lo);
            out.push(j(BPF_JEQ_K, lo, Target::Next, Target::Fail));
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            // match when hi != vhi || lo != vlo
            let start = out.len();
            out.push(ld_hi);
            out.push(j(BPF_JEQ_K, hi, Target::Next, Target::Abs(start + 4)));
            out.push(ld_lo);
            out.push(j(BPF_JEQ_K, lo, Target::Fail, Target::Next));
            // start+4: the next instruction (match)
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let mhi = (c.value >> 32) as u32;
            let mlo = c.value as u32;
            let vhi = (c.value_two >> 32) as u32;
            let vlo = c.value_two as u32;
            out.push(ld_hi);
            out.push(stmt(BPF_ALU_AND_K, mhi));
            out.push(j(BPF_JEQ_K, vhi, Target::Next, Target::Fail));
            out.push(ld_lo);
            out.push(stmt(BPF_ALU_AND_K, mlo));
            out.push(j(BPF_JEQ_K, vlo, Target::Next, Target::Fail));
        }
        LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => {
            let lo_code = if matches!(c.op, LinuxSeccompOperator::ScmpCmpGt) {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            let start = out.len();
            let ok = Target::Abs(start + 5);
            out.push(ld_hi);
            out.push(j(BPF_JGT_K, hi, ok, Target::Next));
            out.push(j(BPF_JEQ_K, hi, Target::Next, Target::Fail));
            out.push(ld_lo);
            out.push(j(lo_code, lo, Target::Next, Target::Fail));
        }
        LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe => {
            // arg < v  <=> !(arg >= v);  arg <= v <=> !(arg > v)
            let lo_code = if matches!(c.op, LinuxSeccompOperator::ScmpCmpLt) {
                BPF_JGE_K
            } else {
                BPF_JGT_K
            };
            let start = out.len();
            let ok = Target::Abs(start + 5);
            out.push(ld_hi);
            out.push(j(BPF_JGT_K, hi, Target::Fail, Target::Next));
            out.push(j(BPF_JEQ_K, hi, Target::Next, ok));
            out.push(ld_lo);
            out.push(j(lo_code, lo, Target::Fail, Target::Next));
        }
    }
}

fn resolve(t: Target, here: usize, fail: usize) -> Option<u8> {
    let dest = match t {
        Target::Next => here + 1,
        Target::Fail => fail,
        Target::Abs(a) => a,
    };
    u8::try_from(dest.checked_sub(here + 1)?).ok()
}

/// Conditional rules `(conditions, action, rule index)` and the first
/// unconditional `(action, rule index)` for one syscall number.
type RulesForNr = (Vec<(Vec<Cond>, u32, usize)>, Option<(u32, usize)>);

/// Kernel syscall names (as libseccomp, Docker's profile and runc spell them) that the
/// `syscalls` crate spells differently on this architecture: on aarch64 (asm-generic) it
/// calls `newfstatat` (nr 79) `fstatat`. Without this, glibc's `stat` on arm64 is denied.
#[cfg(target_arch = "aarch64")]
const ALIASES: &[(&str, &str)] = &[("newfstatat", "fstatat")];
#[cfg(not(target_arch = "aarch64"))]
const ALIASES: &[(&str, &str)] = &[];

/// The native syscall number of a kernel syscall name, if this architecture has it.
fn sysno(name: &str) -> Option<syscalls::Sysno> {
    syscalls::Sysno::from_str(name).ok().or_else(|| {
        ALIASES
            .iter()
            .find(|(kernel, _)| *kernel == name)
            .and_then(|(_, krate)| syscalls::Sysno::from_str(krate).ok())
    })
}

/// Compiles the OCI seccomp section for the native architecture.
/// Syscall names unknown on this architecture are skipped, as runc does.
pub fn compile(s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default = action_value(s.default_action(), s.default_errno_ret())
        .map_err(|action| SeccompError::UnsupportedDefault { action })?;

    // nr -> list of (conditions, action) in priority order.
    let mut by_nr: BTreeMap<u32, RulesForNr> = BTreeMap::new();
    for (index, sc) in s
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let action = action_value(sc.action(), sc.errno_ret())
            .map_err(|action| SeccompError::UnsupportedAction { index, action })?;
        let mut conds = Vec::new();
        for a in sc.args().as_deref().unwrap_or_default() {
            if a.index() > 5 {
                return Err(SeccompError::ArgIndex {
                    index,
                    arg: a.index(),
                });
            }
            conds.push(Cond {
                arg: a.index(),
                op: a.op(),
                value: a.value(),
                value_two: a.value_two().unwrap_or(0),
            });
        }
        for name in sc.names() {
            let Some(nr) = sysno(name) else {
                tracing::debug!(syscall = %name, "unknown syscall name skipped");
                continue;
            };
            let nr = nr.id() as u32;
            let entry = by_nr.entry(nr).or_default();
            if conds.is_empty() {
                // The first unconditional rule wins.
                if entry.1.is_none() {
                    entry.1 = Some((action, index));
                }
            } else {
                let cloned = conds
                    .iter()
                    .map(|c| Cond {
                        arg: c.arg,
                        op: c.op,
                        value: c.value,
                        value_two: c.value_two,
                    })
                    .collect();
                entry.0.push((cloned, action, index));
            }
        }
    }
    // Drop syscalls whose only outcome is the default action.
    by_nr.retain(|_, (conds, uncond)| {
        !(conds.iter().all(|(_, a, _)| *a == default)
            && uncond.map(|(a, _)| a == default).unwrap_or(true))
    });

    let mut prog: Vec<Ins> = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        Ins {
            code: BPF_JEQ_K,
            k: AUDIT_ARCH_NATIVE,
            jt: Target::Abs(3),
            jf: Target::Abs(2),
        },
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    // Dispatch table.
    let table_start = prog.len();
    let n = by_nr.len();
    let default_ret = table_start + 2 * n;
    let mut blocks: Vec<Vec<Ins>> = Vec::new();
    let mut block_rule_index: Vec<usize> = Vec::new();
    for (nr, (conds, uncond)) in &by_nr {
        let i = prog.len();
        prog.push(Ins {
            code: BPF_JEQ_K,
            k: *nr,
            jt: Target::Abs(i + 1),
            jf: Target::Abs(i + 2),
        });
        prog.push(stmt(BPF_JMP_JA, 0)); // patched below
                                        // Build the block with block-local targets.
        let mut block: Vec<Ins> = Vec::new();
        let mut first_index = 0;
        for (cs, action, index) in conds {
            first_index = *index;
            let rule_start = block.len();
            let mut rule: Vec<Ins> = Vec::new();
            for c in cs {
                let base = rule.len();
                let mut part = Vec::new();
                emit_cond(&mut part, c);
                for mut ins in part {
                    for t in [&mut ins.jt, &mut ins.jf] {
                        if let Target::Abs(a) = t {
                            *a += base + rule_start;
                        }
                    }
                    rule.push(ins);
                }
            }
            rule.push(stmt(BPF_RET_K, *action));
            let fail = rule_start + rule.len();
            for (off, ins) in rule.iter_mut().enumerate() {
                let here = rule_start + off;
                for t in [&mut ins.jt, &mut ins.jf] {
                    if let Target::Fail = t {
                        *t = Target::Abs(fail);
                    }
                }
                let _ = here;
            }
            block.extend(rule);
        }
        let fallback = uncond.map(|(a, _)| a).unwrap_or(default);
        block.push(stmt(BPF_RET_K, fallback));
        blocks.push(block);
        block_rule_index.push(first_index);
    }
    prog.push(stmt(BPF_RET_K, default));
    debug_assert_eq!(prog.len(), default_ret + 1);

    // Place blocks and patch the `ja` of each dispatch pair.
    let mut out: Vec<SockFilter> = Vec::new();
    let mut all: Vec<(Ins, usize)> = prog.iter().map(|i| (*i, 0usize)).collect();
    let mut block_starts = Vec::new();
    for block in &blocks {
        let start = all.len();
        block_starts.push(start);
        for ins in block {
            let mut ins = *ins;
            for t in [&mut ins.jt, &mut ins.jf] {
                if let Target::Abs(a) = t {
                    *a += start;
                }
            }
            all.push((ins, start));
        }
    }
    for (k, start) in block_starts.iter().enumerate() {
        let ja_at = table_start + 2 * k + 1;
        all[ja_at].0.k = (start - (ja_at + 1)) as u32;
    }
    if all.len() > 4096 {
        return Err(SeccompError::ProgramTooLong { len: all.len() });
    }
    for (here, (ins, _)) in all.iter().enumerate() {
        let is_cond = ins.code & 0x07 == 0x05 && ins.code != BPF_JMP_JA;
        let (jt, jf) = if is_cond {
            let bad = || SeccompError::TooLarge {
                index: block_rule_index.first().copied().unwrap_or(0),
            };
            (
                resolve(ins.jt, here, here + 1).ok_or_else(bad)?,
                resolve(ins.jf, here, here + 1).ok_or_else(bad)?,
            )
        } else {
            (0, 0)
        };
        out.push(SockFilter {
            code: ins.code,
            jt,
            jf,
            k: ins.k,
        });
    }

    let mut flags = 0u64;
    for f in s.flags().as_deref().unwrap_or_default() {
        use oci_spec::runtime::LinuxSeccompFilterFlag as F;
        flags |= match f {
            F::SeccompFilterFlagTsync => 1,
            F::SeccompFilterFlagLog => 2,
            F::SeccompFilterFlagSpecAllow => 4,
        };
    }
    Ok(Program {
        insns: out
            .iter()
            .map(|f| {
                (u64::from(f.code) << 48)
                    | (u64::from(f.jt) << 40)
                    | (u64::from(f.jf) << 32)
                    | u64::from(f.k)
            })
            .collect(),
        flags,
    })
}

/// Process-wide cache: the same profile (by its JSON text) is compiled once
/// per process. sysd applies the same default profile to every container, so
/// after the first container this is a hash lookup.
pub fn compile_cached(s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    static CACHE: Mutex<Option<HashMap<String, Program>>> = Mutex::new(None);
    let key = serde_json::to_string(s).unwrap_or_default();
    if let Ok(guard) = CACHE.lock() {
        if let Some(p) = guard.as_ref().and_then(|m| m.get(&key)) {
            return Ok(p.clone());
        }
    }
    let p = compile(s)?;
    if let Ok(mut guard) = CACHE.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(key, p.clone());
    }
    Ok(p)
}

/// A tiny BPF interpreter, used by the tests to check the compiled program
/// against the intended semantics without installing it.
pub fn simulate(prog: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let f = prog.filters();
    let load = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            o if (16..64).contains(&o) => {
                let i = ((o - 16) / 8) as usize;
                if (o - 16) % 8 == 0 {
                    args[i] as u32
                } else {
                    (args[i] >> 32) as u32
                }
            }
            _ => 0,
        }
    };
    let mut a = 0u32;
    let mut pc = 0usize;
    while pc < f.len() {
        let i = f[pc];
        match i.code {
            BPF_LD_W_ABS => a = load(i.k),
            BPF_ALU_AND_K => a &= i.k,
            BPF_RET_K => return i.k,
            BPF_JMP_JA => {
                pc += i.k as usize;
            }
            BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                let t = match i.code {
                    BPF_JEQ_K => a == i.k,
                    BPF_JGT_K => a > i.k,
                    _ => a >= i.k,
                };
                pc += if t { i.jt as usize } else { i.jf as usize };
            }
            _ => return u32::MAX,
        }
        pc += 1;
    }
    u32::MAX
}

/// The native audit architecture, for [`simulate`].
pub const NATIVE_ARCH: u32 = AUDIT_ARCH_NATIVE;

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    fn nr(name: &str) -> u32 {
        syscalls::Sysno::from_str(name).unwrap().id() as u32
    }

    #[test]
    fn allow_list_with_errno_default() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        let z = [0; 6];
        assert_eq!(simulate(&p, NATIVE_ARCH, nr("read"), z), SECCOMP_RET_ALLOW);
        assert_eq!(simulate(&p, NATIVE_ARCH, nr("write"), z), SECCOMP_RET_ALLOW);
        assert_eq!(
            simulate(&p, NATIVE_ARCH, nr("mount"), z),
            SECCOMP_RET_ERRNO | libc::EPERM as u32
        );
        // Foreign architecture is killed.
        assert_eq!(
            simulate(&p, 0x4000_0003, nr("read"), z),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn errno_ret_and_deny_list() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        ))
        .unwrap();
        assert_eq!(
            simulate(&p, NATIVE_ARCH, nr("mkdirat"), [0; 6]),
            SECCOMP_RET_ERRNO | 38
        );
        assert_eq!(
            simulate(&p, NATIVE_ARCH, nr("getpid"), [0; 6]),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn argument_operators() {
        let ops = [
            (
                "SCMP_CMP_EQ",
                5u64,
                0u64,
                vec![(5u64, true), (6, false), (5 | 1 << 32, false)],
            ),
            (
                "SCMP_CMP_NE",
                5,
                0,
                vec![(5, false), (6, true), (5 | 1 << 32, true)],
            ),
            (
                "SCMP_CMP_GT",
                5,
                0,
                vec![(5, false), (6, true), (4, false), (1 << 32, true)],
            ),
            ("SCMP_CMP_GE", 5, 0, vec![(5, true), (6, true), (4, false)]),
            (
                "SCMP_CMP_LT",
                5,
                0,
                vec![(5, false), (4, true), (1 << 32, false)],
            ),
            ("SCMP_CMP_LE", 5, 0, vec![(5, true), (4, true), (6, false)]),
            (
                "SCMP_CMP_MASKED_EQ",
                0x7e02_0000,
                0,
                vec![(0, true), (0x0002_0000, false), (0x11, true)],
            ),
            (
                "SCMP_CMP_GT",
                (3u64 << 32) | 7,
                0,
                vec![
                    ((3 << 32) | 8, true),
                    ((3 << 32) | 7, false),
                    (4 << 32, true),
                    (2 << 32 | 9, false),
                ],
            ),
        ];
        for (op, v, v2, cases) in ops {
            let json = format!(
                r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":1,"value":{v},"valueTwo":{v2},"op":"{op}"}}]}}]}}"#
            );
            let p = compile(&profile(&json)).unwrap();
            for (arg, allowed) in cases {
                let mut args = [0u64; 6];
                args[1] = arg;
                let r = simulate(&p, NATIVE_ARCH, nr("personality"), args);
                assert_eq!(r == SECCOMP_RET_ALLOW, allowed, "{op} {v:#x} arg {arg:#x}");
            }
        }
    }

    #[test]
    fn conditional_rule_before_unconditional_one() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["kill"],"action":"SCMP_ACT_ALLOW","args":[{"index":1,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(
            simulate(&p, NATIVE_ARCH, nr("kill"), [1, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            simulate(&p, NATIVE_ARCH, nr("kill"), [1, 9, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
    }

    #[test]
    fn notify_is_rejected_with_field() {
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("linux.seccomp.syscalls[0]"), "{e}");
    }

    #[test]
    fn default_profile_compiles_and_allows_common_calls() {
        let mut spec = oci_spec::runtime::Spec::default();
        crate::profile::apply_default(&mut spec);
        let s = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        let p = compile(s).unwrap();
        assert!(p.insns.len() < 4096);
        for ok in ["read", "execve", "openat", "exit_group", "clone"] {
            assert_eq!(
                simulate(&p, NATIVE_ARCH, nr(ok), [0; 6]),
                SECCOMP_RET_ALLOW,
                "{ok}"
            );
        }
        for bad in ["mount", "kexec_load", "init_module", "bpf", "unshare"] {
            assert_ne!(
                simulate(&p, NATIVE_ARCH, nr(bad), [0; 6]),
                SECCOMP_RET_ALLOW,
                "{bad}"
            );
        }
        // clone with CLONE_NEWUSER is refused.
        let mut a = [0u64; 6];
        a[0] = libc::CLONE_NEWUSER as u64;
        assert_ne!(simulate(&p, NATIVE_ARCH, nr("clone"), a), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn default_profile_compiles_fast_and_cache_hits() {
        let s = crate::profile::default_seccomp();
        let t0 = std::time::Instant::now();
        let p = compile(&s).unwrap();
        let cold = t0.elapsed();
        let _ = compile_cached(&s).unwrap();
        let t1 = std::time::Instant::now();
        let q = compile_cached(&s).unwrap();
        let warm = t1.elapsed();
        assert_eq!(p, q);
        eprintln!(
            "default profile: {} insns, compile {cold:?}, cached {warm:?}",
            p.insns.len()
        );
        // Generous bound (debug build, loaded machine): compilation is cheap.
        assert!(cold < std::time::Duration::from_millis(200), "{cold:?}");
    }

    #[test]
    fn cache_returns_same_program() {
        let s = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        assert_eq!(compile_cached(&s).unwrap(), compile(&s).unwrap());
        assert_eq!(compile_cached(&s).unwrap(), compile(&s).unwrap());
    }

    /// glibc's `stat`/`fstatat` use newfstatat on both 64-bit arches (nr 262 on x86_64,
    /// 79 on aarch64, where the syscalls crate names it `fstatat`).
    #[test]
    fn newfstatat_has_a_number_on_every_arch() {
        let nr = sysno("newfstatat").map(|s| s.id());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(nr, Some(262));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(nr, Some(79));
        assert!(sysno("no_such_call").is_none());
    }
}
