//! Bridge between the virtio-serial port `org.berth.osctl` and the local API socket, so a
//! host-side `osctl --connect unix:path=<qemu socket>` talks to the same D-Bus server.
//!
//! The port is a single byte stream without per-client connections: each time the host
//! side connects and sends its first byte, the bridge opens a fresh connection to the API
//! socket (so every host session gets a fresh D-Bus handshake), and closes it when the host
//! side disconnects (the port then polls as HUP).

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Find the device node of the virtio port with this name (`/sys/class/virtio-ports/*/name`).
pub fn find_port(sys_ports: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_ports).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| dev.join(e.file_name()))
    })
}

/// Run the bridge forever (blocking; start it on its own thread).
pub fn run(port: &Path, socket: &Path) {
    let mut dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "cannot open {}: {e}; no host access to osctl",
                port.display()
            );
            return;
        }
    };
    tracing::info!("osctl bridge: {} <-> {}", port.display(), socket.display());
    loop {
        // Idle: wait for the host to connect and speak.
        let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(500u16));
        let rev = fds[0].revents().unwrap_or(PollFlags::empty());
        if rev.contains(PollFlags::POLLHUP) || !rev.contains(PollFlags::POLLIN) {
            // No host connected: the port then polls as HUP (and as readable, since a read
            // would return 0 at once). Back off instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match UnixStream::connect(socket) {
            Ok(s) => {
                if let Err(e) = relay(&mut dev, s) {
                    tracing::debug!("osctl bridge session ended: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("osctl bridge: cannot reach {}: {e}", socket.display());
                // Drop what the host sent; it will see no answer and time out.
                let mut buf = [0u8; 4096];
                let _ = dev.read(&mut buf);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Copy bytes both ways until the host disconnects or the server closes.
fn relay(dev: &mut File, mut sock: UnixStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(dev.as_fd(), PollFlags::POLLIN),
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
        ];
        poll(&mut fds, PollTimeout::NONE).map_err(std::io::Error::from)?;
        let dev_rev = fds[0].revents().unwrap_or(PollFlags::empty());
        let sock_rev = fds[1].revents().unwrap_or(PollFlags::empty());
        if dev_rev.contains(PollFlags::POLLIN) {
            let n = dev.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            sock.write_all(&buf[..n])?;
        } else if dev_rev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            // Host side went away: end this session.
            return Ok(());
        }
        if sock_rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            dev.write_all(&buf[..n])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_named_port() {
        let d = std::env::temp_dir().join(format!("berth-vport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (p, n) in [("vport0p0", "other"), ("vport0p1", "org.berth.osctl")] {
            std::fs::create_dir_all(d.join(p)).unwrap();
            std::fs::write(d.join(p).join("name"), format!("{n}\n")).unwrap();
        }
        assert_eq!(
            find_port(&d, Path::new("/dev"), "org.berth.osctl"),
            Some(PathBuf::from("/dev/vport0p1"))
        );
        assert_eq!(find_port(&d, Path::new("/dev"), "nope"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
