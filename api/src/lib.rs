//! The contracts shared by Berth's processes, defined once:
//!
//! * the D-Bus interface `org.berth.Manager1` (bus name [`BUS_NAME`], object [`OBJECT_PATH`]),
//!   served by `sysd` peer-to-peer on [`SOCKET_PATH`] and used by `osctl`;
//! * [`BootInfo`], the record PID 1 leaves in [`BOOT_INFO_PATH`] for sysd to report;
//! * the paths that several binaries agree on.

pub mod block;
pub mod boot;
#[cfg(feature = "dbus")]
pub mod manager;
pub mod mountinfo;
pub mod roles;

pub use boot::{BootInfo, Phase};
#[cfg(feature = "dbus")]
pub use manager::{
    ApiStatus, ContainerInfo, ContainerStats, ExecOutput, ExecReply, ImageInfo, LogChunk,
    ManagerError, ManagerProxy, MountStatus, RunRequest, Status,
};
pub use roles::{Method, Role};

/// Well-known bus name of the manager (used as the destination on a bus; ignored peer-to-peer).
pub const BUS_NAME: &str = "org.berth";
/// Object path of the manager.
pub const OBJECT_PATH: &str = "/org/berth/Manager";
/// Interface name, versioned.
pub const INTERFACE: &str = "org.berth.Manager1";
/// Local API socket (0600 root), peer-to-peer D-Bus.
pub const SOCKET_PATH: &str = "/run/berth/osctl.sock";
/// Name of the virtio-serial port bridged to [`SOCKET_PATH`].
pub const VIRTIO_PORT_NAME: &str = "org.berth.osctl";
/// Where PID 1 records how this boot went.
pub const BOOT_INFO_PATH: &str = "/run/berth/boot.json";
/// Persistent state written by PID 1 (boot counter) on the state partition.
pub const BOOT_COUNT_PATH: &str = "/var/lib/berth/boot-count";
/// Environment variable telling sysd which file descriptor to write `READY\n` and
/// `SERVICES\n` to.
pub const READY_FD_ENV: &str = "BERTH_READY_FD";
/// Default TCP port of the remote API (`[api] listen`).
pub const API_PORT: u16 = 7443;
/// The name under which `Logs`/`LogsFrom` read the remote API's audit log (no container
/// can have it: container names start with a letter or digit).
pub const AUDIT_LOG_NAME: &str = "@api";
/// OS release data shipped in the root image.
pub const OS_RELEASE_PATH: &str = "/usr/lib/berth/os-release";
