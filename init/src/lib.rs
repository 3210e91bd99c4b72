//! Berth's PID 1.
//!
//! One binary, two stages (see `docs/ARCHITECTURE.md`):
//!
//! * **stage 1** runs as `/init` in the initramfs: mounts devtmpfs/proc/sys, loads the kernel
//!   modules listed by the image builder, decides the boot disk (the one holding the ESP the
//!   boot loader names, else the only disk with the slot's root), finds the partitions by
//!   PARTLABEL on that disk only, opens the slot's root through dm-verity (a root without
//!   `berth.verity` boots only with the `dev-unverified-root` feature), mounts it read-only, mounts (and if needed recreates) the state
//!   partition on `/var`, prepares `/run` and the `/etc` overlay, and switches root;
//! * **stage 2** runs as PID 1 on the real root: finishes the mounts, sets up cgroup v2,
//!   starts and supervises `sysd`, reaps zombies, and turns signals and the power button into
//!   an ordered shutdown.
//!
//! Nothing here may panic on outside input: every failure becomes a console line that says
//! what went wrong, and a fatal one ends in a deliberate reboot.

pub mod cmdline;
pub mod config;
pub mod console;
pub mod devices;
pub mod disk;
pub mod efi;
pub mod ext4;
pub mod modules;
pub mod mounts;
pub mod shutdown;
pub mod stage1;
pub mod stage2;
pub mod sys;
pub mod verity;

/// Marker file present only in the initramfs (the systemd convention).
pub const INITRD_MARKER: &str = "/etc/initrd-release";

/// Which stage this process is, decided from the filesystem it runs on.
pub fn in_initramfs() -> bool {
    std::path::Path::new(INITRD_MARKER).exists()
}

/// Install a panic hook that logs to the console and `/dev/kmsg` and then reboots on purpose:
/// PID 1 exiting would panic the kernel with no explanation.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("berth: FATAL: PID 1 panicked: {info}; rebooting in 5 s");
        console::line(&msg);
        if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            use std::io::Write;
            let _ = writeln!(k, "{msg}");
        }
        sys::sync();
        std::thread::sleep(std::time::Duration::from_secs(5));
        sys::reboot(sys::RebootKind::Reboot);
    }));
}
