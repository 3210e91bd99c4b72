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
}
