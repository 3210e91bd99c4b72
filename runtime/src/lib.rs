//! Berth's integrated OCI runtime.
//!
//! Used in-process by sysd and exposed as the runc-compatible CLI
//! `berth-runtime`. It implements the OCI runtime spec 1.x for Linux:
//! namespaces (created or joined by path), a pivot_root'ed rootfs with the
//! spec's mounts, devices, masked and read-only paths, hostname, rlimits,
//! all five capability sets, `noNewPrivileges`, `oomScoreAdj`, seccomp,
//! hooks, a console socket for terminals, and a cgroup v2 manager.
//!
//! # Process model
//!
//! `fork()` in a multi-threaded process (sysd runs tokio) only allows
//! async-signal-safe calls until `exec`, so the container is never built
//! in a fork of such a process. Instead:
//!
//! * When the calling process is **multi-threaded**, the runtime re-executes
//!   `/proc/self/exe` with a hidden environment variable naming an inherited
//!   socket (the only thing done between fork and exec is clearing
//!   `FD_CLOEXEC` on it). The embedding binary must call
//!   [`maybe_run_init`] first thing in `main`; in the new, single-threaded
//!   process it receives the precomputed [`plan::Plan`] over the socket and
//!   runs stage 1.
//! * When the caller is **single-threaded** (the `berth-runtime` CLI), a
//!   plain `fork()` runs stage 1 directly, saving one `execve`.
//!
//! Stage 1 joins the cgroup and any namespaces given by path, then
//! `clone(CLONE_PARENT | CLONE_NEW*)`s the container init (so the container
//! is a child of the runtime's caller, which can `waitpid` it for the exit
//! status), writes uid/gid maps and exits. The container init (stage 2) sets
//! up the rootfs, reports "created", blocks on the `exec.fifo` until
//! `start`, and execs the user process.
//!
//! Everything that can be checked or converted is done once, in the runtime
//! process, by [`plan::build`]: the spec is parsed once, the seccomp filter
//! is compiled by a pure-Rust BPF compiler ([`seccomp`]) and cached per
//! process, so stage 2 only executes precomputed steps.
//!
//! # cgroups
//!
//! [`cgroup::Cgroup`] manages one cgroup v2 directory below the cgroup2 mount
//! (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host). The
//! container's cgroup is `<cgroup_parent>/<id>` (default parent
//! `berth-runtime`) unless the spec has an absolute `cgroupsPath`. Controllers
//! needed by the limits are enabled in every ancestor's
//! `cgroup.subtree_control`, so those ancestors must not hold processes
//! themselves (cgroup v2's no-internal-process rule): sysd should run in a
//! leaf such as `berth/sysd` and give containers `berth/<service>` parents.
//! A limit whose controller is missing is refused with an error naming the
//! field; `delete` kills what is left in the cgroup and removes it.
//!
//! To see the limits work on a cgroup v2 system (the Berth guest), run a
//! bundle with e.g. `linux.resources.memory.limit` set through
//! `berth-runtime run`: an OOM kill ends with exit status 137 and the message
//! "container ... was OOM-killed"; `berth-runtime events --stats ID` prints
//! memory, cpu (incl. throttling) and pids counters. `tests/cgroup_v2.rs`
//! does exactly that (ignored on the hybrid build host).
//!
//! # API
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! berth_runtime::maybe_run_init(); // first thing in main
//! let rt = berth_runtime::Runtime::new("/run/berth/runtime");
//! let opts = berth_runtime::CreateOptions {
//!     cgroup_parent: Some("berth/web".into()),
//!     ..Default::default()
//! };
//! rt.create("web", std::path::Path::new("/var/lib/berth/containers/web"), opts)?;
//! rt.start("web")?;
//! let _stats = rt.stats("web")?;
//! rt.kill("web", libc::SIGTERM, false)?;
//! rt.delete("web", true)?;
//! # Ok(()) }
//! ```

pub mod cgroup;
pub mod devices;
pub mod hooks;
pub mod init;
pub mod mountfd;
pub mod plan;
pub mod profile;
mod runtime;
pub mod seccomp;
mod sys;

pub use cgroup::{Resources, Stats};
pub use plan::{Plan, PlanError, ProcessPlan};
pub use runtime::{CreateOptions, ExecOptions, Runtime, RuntimeError, State, Status, Stdio3};

/// If this process was started as a container init by [`Runtime`] (re-exec
/// mode), run it and never return; otherwise return immediately. Call it
/// first thing in `main` of every binary that embeds the runtime.
pub fn maybe_run_init() {
    runtime::run_init_from_env();
}

/// Parses, validates and plans a `config.json`; never panics. For fuzzing.
pub fn fuzz_config_json(data: &[u8]) {
    let path = std::path::Path::new("config.json");
    if let Ok(mut spec) = plan::parse_spec(path, data) {
        let _ = plan::build("fuzz", std::path::Path::new("/nonexistent-bundle"), &spec);
        // Again with a rootfs that exists, to reach the later checks.
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path("/".into());
        spec.set_root(Some(root));
        let _ = plan::build("fuzz", std::path::Path::new("/"), &spec);
        let _ = serde_json::to_string(&spec);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_entry_survives_truncated_and_mutated_configs() {
        let mut spec = oci_spec::runtime::Spec::default();
        crate::profile::apply_default(&mut spec);
        let text = serde_json::to_vec(&spec).unwrap();
        for cut in (0..text.len()).step_by(7) {
            crate::fuzz_config_json(&text[..cut]);
        }
        for (i, b) in text.iter().enumerate().step_by(13) {
            let mut t = text.clone();
            t[i] = b.wrapping_add(1);
            crate::fuzz_config_json(&t);
        }
        crate::fuzz_config_json(&text);
    }
}
