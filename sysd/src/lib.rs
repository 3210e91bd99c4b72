//! sysd: Berth's supervisor.
//!
//! Started and supervised by PID 1. It serves the `org.berth.Manager1` D-Bus API
//! peer-to-peer on `/run/berth/osctl.sock`, bridges the virtio-serial port
//! `org.berth.osctl` to that socket so `osctl` on a VM's host can drive the machine, and
//! tells PID 1 when the machine is ready. Containers (system services and workloads) are
//! added on top of this by the runtime integration.

pub mod api;
pub mod bridge;
pub mod status;
mod sys;

pub use sys::ReadyFd;
