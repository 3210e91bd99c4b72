//! sysd: Berth's supervisor.
//!
//! Started and supervised by PID 1. It brings up the network from the config
//! ([`node`]), runs every system service and workload as a container through the
//! integrated runtime ([`containers`]), serves the `org.berth.Manager1` D-Bus API
//! peer-to-peer on `/run/berth/osctl.sock` ([`api`]), bridges the virtio-serial port
//! `org.berth.osctl` to that socket so `osctl` on a VM's host can drive the machine
//! ([`bridge`]), serves Prometheus metrics when `[metrics]` asks for them ([`metrics`]),
//! and tells PID 1 when the machine is ready.

pub mod api;
pub mod audit;
pub mod bridge;
pub mod containers;
pub mod exec;
pub mod logfwd;
pub mod metrics;
pub mod node;
pub mod remote;
pub mod status;
mod sys;
pub mod update;

pub use sys::{single_malloc_arena, ReadyFd};

pub use berth_config::error_chain;
