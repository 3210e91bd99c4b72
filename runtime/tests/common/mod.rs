//! Shared by the runtime's host tests.

use std::path::PathBuf;

/// The host's static busybox, copied into test rootfs trees.
pub fn busybox() -> PathBuf {
    for p in ["/usr/bin/busybox", "/bin/busybox"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    panic!("busybox not found: install the Debian package busybox-static");
}
