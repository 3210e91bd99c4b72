//! The `org.berth.Manager1` interface: types, errors and the client proxy.
//!
//! The server side lives in sysd (`sysd::api`), which implements the same method names; the
//! wire types here are what both sides serialize.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

/// A mount as seen in `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct MountStatus {
    pub target: String,
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
}

/// Answer of `Status()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct Status {
    /// `NAME VERSION (build BUILD_ID)` from the shipped os-release.
    pub os: String,
    pub version: String,
    /// Berth architecture of the running image: `x86_64` or `arm64`. Part of the D-Bus
    /// signature; empty when JSON saved before the field existed is read back.
    #[serde(default)]
    pub arch: String,
    pub build_id: String,
    pub slot: String,
    pub hostname: String,
    pub kernel: String,
    pub uptime_seconds: f64,
    pub boot_count: u64,
    pub state_was_clean: bool,
    pub state_action: String,
    /// The root mount and the verity device behind it.
    pub root: MountStatus,
    /// dm name of the root device (`/sys/block/dm-N/dm/name`), empty when not a dm device.
    pub root_dm_name: String,
    /// dm uuid of the root device; Berth's verity devices use `BERTH-VERITY-<slot>`.
    pub root_dm_uuid: String,
    pub verity_root_hash: String,
    pub var: MountStatus,
    /// Controllers enabled for children of the root cgroup (`cgroup.subtree_control`).
    pub cgroup_controllers: Vec<String>,
    pub sysd_pid: u32,
    /// How often PID 1 has (re)started sysd during this boot.
    pub sysd_starts: u32,
    /// Where the machine config in force came from.
    pub config_source: String,
    /// The config error that made the machine fall back to defaults, if any.
    pub config_error: String,
    /// Boot phases (name, CLOCK_BOOTTIME seconds).
    pub phases: Vec<(String, f64)>,
    /// Problems noticed during boot.
    pub warnings: Vec<String>,
    /// The disk the machine booted from (`/dev/vda`, `/dev/nvme0n1`, `/dev/sda`).
    pub boot_disk: String,
    /// One line per network interface: `NAME STATE ADDR/PREFIX...`.
    pub network: Vec<String>,
    /// `via GATEWAY dev IFACE`, or empty when there is none.
    pub default_route: String,
    /// Services required for a healthy boot and their health (`name`, `healthy|...`).
    pub required_services: Vec<(String, String)>,
    /// Every required service is healthy.
    pub healthy: bool,
    /// Resident memory of PID 1 and of sysd, KiB.
    pub init_rss_kib: u64,
    pub sysd_rss_kib: u64,
    /// The last `osctl config apply`: `on trial (N s left)`, `applied`, `reverted: WHY`,
    /// or empty when there was none.
    pub config_change: String,
}

/// Answer of `ApiStatus()`: the remote API listener (`[api]`). A method of its own rather
/// than fields of [`Status`]: a D-Bus struct's signature is checked exactly, so a field
/// added to `Status` would make every older osctl fail to read `Status` at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct ApiStatus {
    /// `off` (no `[api] ca`), `listening`, or `failed` (see `error`).
    pub state: String,
    /// The address from `[api] listen`.
    pub listen: String,
    /// SHA-256 of the node certificate's public key (SubjectPublicKeyInfo), lower-case hex:
    /// what a client pins when the node certificate is self-signed. Empty when off.
    pub fingerprint: String,
    /// Where the node certificate comes from: `config` (`[api] cert`), `ca` (made by the
    /// node, signed by `[api] ca_key`) or `self-signed`. Empty when off.
    pub cert_source: String,
    /// The node certificate's end of validity, Unix seconds (0 when off).
    pub cert_not_after: i64,
    /// Whether an admin can mint client configs on this node (`PkiIssue`: `[api] ca_key`).
    pub can_issue: bool,
    /// Connections open now (handshaking or served).
    pub connections: u32,
    /// Why the listener is not running, or its last problem (a certificate renewal that
    /// failed); empty when fine.
    pub error: String,
}

/// One container, as `osctl ps` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    pub name: String,
    /// `system` (shipped service) or `workload` (config or `osctl run`).
    pub kind: String,
    pub image: String,
    /// `starting`, `running`, `restarting`, `exited`, `failed`, `crash-loop`, `stopped`.
    pub state: String,
    /// Host pid of the container's init, 0 when not running.
    pub pid: i32,
    /// Restarts since sysd started managing it.
    pub restarts: u32,
    /// Exit status of the last run (`128+N` for signal N), -1 when it has not exited.
    pub exit_code: i32,
    /// `healthy`, `unhealthy`, `starting`, or `none` (no health check).
    pub health: String,
    /// Required for a healthy boot.
    pub required: bool,
    /// Seconds since the current run started (0 when not running).
    pub uptime_seconds: f64,
    /// Why it is in this state (last error, crash-loop back-off), empty when fine.
    pub message: String,
    /// `host`, `bridge` or `none`. These three fields are last, so the struct's D-Bus
    /// signature only grows at its end (an older osctl cannot read the new one).
    pub network: String,
    /// Its address on the workload bridge (`10.88.0.2`), empty when it has none.
    pub address: String,
    /// Published ports (`8080:80/tcp`).
    pub ports: Vec<String>,
}

/// Resource usage of one container (cgroup v2 counters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct ContainerStats {
    pub name: String,
    pub memory_bytes: u64,
    /// `memory.max`, 0 when unlimited.
    pub memory_max: u64,
    pub cpu_usec: u64,
    pub pids: u64,
    /// `pids.max`, 0 when unlimited.
    pub pids_max: u64,
}

/// An image in the node's store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    /// Bytes of the stored blobs (compressed layers + config + manifest).
    pub size: u64,
    /// Used by a container.
    pub in_use: bool,
}

/// `osctl run`: a workload that sysd keeps (and restarts across reboots) until `rm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct RunRequest {
    pub name: String,
    pub image: String,
    /// Replaces the image's command when not empty.
    pub command: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Memory limit (`256M`), empty for none.
    pub memory: String,
    /// CPU limit (`0.5`), empty for none.
    pub cpus: String,
    /// Process limit (`pids.max`), 0 for none.
    pub pids: u32,
    /// `NAME:/target` persistent volumes under /var/lib/berth/volumes.
    pub volumes: Vec<String>,
    /// `always`, `on-failure` or `never` (default `always`).
    pub restart: String,
    /// Run in a user namespace of its own (the config's `user_namespace`). Last, so the
    /// struct's D-Bus signature only grows at its end.
    pub user_namespace: bool,
    /// `host`, `bridge` or `none`; empty: the default (`host`). Appended like
    /// `user_namespace`: an osctl older than this field cannot call `Run` on a newer sysd.
    pub network: String,
    /// Published ports, `[ip:]host:container[/tcp|udp]` (`bridge` only).
    pub ports: Vec<String>,
}

/// Output of a command run with `exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct ExecReply {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A piece of a container log and where the next read starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct LogChunk {
    pub data: Vec<u8>,
    /// Pass back to `LogsFrom` to continue after this chunk.
    pub next: u64,
}

/// Errors returned by the manager, as typed D-Bus errors `org.berth.Manager1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.berth.Manager1.Error")]
pub enum ManagerError {
    /// Transport-level error (only produced on the client side).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The request asked for something that does not exist.
    NotFound(String),
    /// The request was malformed or not allowed.
    Invalid(String),
    /// The machine could not carry out the request.
    Failed(String),
    /// The caller's role may not call this method (the message names the role needed).
    Denied(String),
}

/// Client side of `org.berth.Manager1`.
#[zbus::proxy(
    interface = "org.berth.Manager1",
    default_service = "org.berth",
    default_path = "/org/berth/Manager"
)]
pub trait Manager {
    /// Machine status: OS, slot, root and state mounts, cgroups, supervisor.
    fn status(&self) -> Result<Status, ManagerError>;
    /// Ordered reboot (PID 1 stops everything, unmounts, reboots).
    fn reboot(&self) -> Result<(), ManagerError>;
    /// Ordered power-off.
    fn power_off(&self) -> Result<(), ManagerError>;
    /// Kill the supervisor with SIGKILL (a recovery drill: PID 1 must restart it).
    fn kill_supervisor(&self) -> Result<(), ManagerError>;
    /// Every container sysd manages.
    fn ps(&self) -> Result<Vec<ContainerInfo>, ManagerError>;
    /// Start a stopped container.
    fn start(&self, name: &str) -> Result<(), ManagerError>;
    /// Stop a container (SIGTERM, then SIGKILL after its timeout); it stays stopped.
    fn stop(&self, name: &str) -> Result<(), ManagerError>;
    /// Stop and start a container.
    fn restart(&self, name: &str) -> Result<(), ManagerError>;
    /// The last `tail` lines of a container's log (0 = all that is kept).
    fn logs(&self, name: &str, tail: u32) -> Result<LogChunk, ManagerError>;
    /// Log data written after position `from` (from a previous chunk's `next`).
    fn logs_from(&self, name: &str, from: u64) -> Result<LogChunk, ManagerError>;
    /// Pull (if needed) and run a workload; returns its name.
    fn run(&self, request: &RunRequest) -> Result<String, ManagerError>;
    /// Remove a workload (stopping it first when `force`).
    fn remove(&self, name: &str, force: bool) -> Result<(), ManagerError>;
    /// Run a command in a running container and return its output.
    fn exec(&self, name: &str, command: &[String], stdin: &[u8])
        -> Result<ExecReply, ManagerError>;
    /// Start an interactive command in a running container: with a pty of its own
    /// (`tty`, sized `rows` x `cols`; 0 = unknown) or with pipes. `session` is an id the
    /// caller chooses; output arrives as `ExecOutput` signals, input goes in with
    /// `ExecInput`. The session ends with `ExecWait`, or when this connection closes
    /// (which kills the command).
    #[allow(clippy::too_many_arguments)]
    fn exec_start(
        &self,
        session: &str,
        name: &str,
        command: &[String],
        tty: bool,
        rows: u16,
        cols: u16,
    ) -> Result<(), ManagerError>;
    /// Input for a session's command; empty data closes its input (without a terminal).
    fn exec_input(&self, session: &str, data: &[u8]) -> Result<(), ManagerError>;
    /// New window size of a session's terminal.
    fn exec_resize(&self, session: &str, rows: u16, cols: u16) -> Result<(), ManagerError>;
    /// Wait for a session's command to exit: (exit status, number of `ExecOutput` signals
    /// sent for it, all before this reply). Closes the session.
    fn exec_wait(&self, session: &str) -> Result<(i32, u64), ManagerError>;
    /// Output of a session's command: stream 1 (the terminal, or stdout) or 2 (stderr).
    #[zbus(signal)]
    fn exec_output(&self, session: &str, stream: u8, data: Vec<u8>) -> zbus::Result<()>;
    /// Resource usage of every running container.
    fn stats(&self) -> Result<Vec<ContainerStats>, ManagerError>;
    /// Images in the store.
    fn images(&self) -> Result<Vec<ImageInfo>, ManagerError>;
    /// Pull an image into the store; progress arrives as `PullProgress` signals.
    fn pull(&self, reference: &str) -> Result<ImageInfo, ManagerError>;
    /// Remove an image that no container uses, and garbage-collect its blobs.
    fn remove_image(&self, name: &str) -> Result<(), ManagerError>;
    /// The config in force: (where it came from, its TOML text, what happened to the
    /// last change: empty, or `applied`/`reverted: REASON`).
    fn config(&self) -> Result<(String, String, String), ManagerError>;
    /// Validate `config` (TOML) with the node's rules, apply it live on trial, and keep it
    /// only if the node is healthy within `deadline` seconds (0 = default 120).
    fn config_apply(&self, config: &str, deadline: u32) -> Result<String, ManagerError>;
    /// OS update state as JSON: `status` (slots, entries, versions, last check/apply/
    /// rollback, failed versions, an apply in progress), `boot` (this boot's check and
    /// blessing), `policy`, `health_deadline_secs`.
    fn update_status(&self) -> Result<String, ManagerError>;
    /// Look for a new OS version in `source` (empty: the configured `update.source`);
    /// JSON: version offered, whether it is an update, signer, sizes.
    fn update_check(&self, source: &str) -> Result<String, ManagerError>;
    /// Install the newest OS version on the other slot (resumes an interrupted one);
    /// progress arrives as `UpdateProgress` signals. JSON: `outcome` (version, slot,
    /// entry, timings) and `reboot` (what the policy decided).
    fn update_apply(
        &self,
        source: &str,
        allow_downgrade: bool,
        force: bool,
    ) -> Result<String, ManagerError>;
    /// The remote API listener: state, address, node certificate fingerprint.
    fn api_status(&self) -> Result<ApiStatus, ManagerError>;
    /// The node's id: the machine id kept in `/var/lib/berth/machine-id` (made at first
    /// use), also its FleetLock id. A method of its own, like `ApiStatus`, so `Status`'s
    /// D-Bus signature stays as older osctl read it.
    fn machine_id(&self) -> Result<String, ManagerError>;
    /// Mint a client certificate with `role` (`admin`, `operator`, `reader`) for `name`
    /// (its Subject CN), valid `ttl_secs` seconds (0 = 24 h), signed by the node's
    /// `[api] ca_key`; returns an osctl client file (TOML, one context called `name`, with
    /// the CA, certificate, key and this node's endpoint). Admin only; refused when the
    /// node has no `ca_key`.
    fn pki_issue(&self, role: &str, ttl_secs: u64, name: &str) -> Result<String, ManagerError>;
    /// Boot the other slot next time and keep it; JSON: its boot entry.
    fn update_rollback(&self, force: bool) -> Result<String, ManagerError>;
    /// Progress of a running update apply: a step starting (`detail` says what it does,
    /// `done` = `total` = 0), or bytes of the `download` / `verify` phases.
    #[zbus(signal)]
    fn update_progress(&self, phase: &str, detail: &str, done: u64, total: u64)
        -> zbus::Result<()>;
    /// Progress of a running pull: bytes done and total, layers done and total.
    #[zbus(signal)]
    fn pull_progress(
        &self,
        reference: &str,
        done: u64,
        total: u64,
        layers_done: u32,
        layers: u32,
    ) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_without_arch_still_parses() {
        let mut v = serde_json::to_value(Status {
            arch: "arm64".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["arch"], "arm64");
        v.as_object_mut().unwrap().remove("arch");
        let s: Status = serde_json::from_value(v).unwrap();
        assert_eq!(s.arch, "");
    }
}
