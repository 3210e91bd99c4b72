//! `berth-probe`: escape probes for the isolation system test (`tests/tests/isolation.rs`).
//! It runs inside a container and tries, one by one, what a hostile workload would try to
//! reach the host. Each probe prints one line,
//!
//!   PROBE <name> BLOCKED <why>     the attempt failed (with the errno)
//!   PROBE <name> OPEN <what>       the attempt worked: the container reached it
//!
//! and the program ends with `PROBES DONE <count>`. It never writes to a device or a
//! kernel setting it managed to open: opening for writing is the proof.
//! A static binary (built with `+crt-static`), so it runs in a busybox image.
//!
//! `berth-probe net-state` instead lists what the workload bridge left in the network
//! namespace it runs in (the node's, in a `network = "host"` container with NET_ADMIN): one
//! `LINK <name>` line per interface and one `RULE <chain> <container or ->` line per rule of
//! nf_tables table `ip berth`, for the network system test's leak checks.

mod sys;

use std::fs::{self, OpenOptions};
use std::io::Read;

struct Report {
    count: usize,
}

impl Report {
    fn line(&mut self, name: &str, open: bool, detail: &str) {
        self.count += 1;
        let verdict = if open { "OPEN" } else { "BLOCKED" };
        println!("PROBE {name} {verdict} {detail}");
    }
    fn result<T>(&mut self, name: &str, r: Result<T, i32>, ok: &str) {
        match r {
            Ok(_) => self.line(name, true, ok),
            Err(e) => self.line(name, false, &errno_name(e)),
        }
    }
}

fn errno_name(e: i32) -> String {
    let text = std::io::Error::from_raw_os_error(e).to_string();
    format!("errno {e} ({text})")
}

fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The block devices the kernel knows: (major, minor, name) from /proc/partitions.
fn partitions() -> Vec<(u32, u32, String)> {
    let text = fs::read_to_string("/proc/partitions").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(3)?.to_string(),
            ))
        })
        .collect()
}

/// mknod a node in `dir`, then try to read from it and to open it for writing.
fn device(r: &mut Report, dir: &str, label: &str, block: bool, major: u32, minor: u32) {
    let path = format!("{dir}/berth-probe-{label}");
    let _ = fs::remove_file(&path);
    let name = format!("device:{label}@{dir}");
    if let Err(e) = sys::mknod(&path, block, major, minor) {
        r.line(&name, false, &format!("mknod: {}", errno_name(e)));
        return;
    }
    let read = OpenOptions::new().read(true).open(&path).and_then(|mut f| {
        let mut buf = [0u8; 512];
        f.read(&mut buf)
    });
    let write = OpenOptions::new().write(true).open(&path);
    let _ = fs::remove_file(&path);
    match (read, write) {
        (Err(a), Err(b)) => r.line(
            &name,
            false,
            &format!(
                "mknod worked, read: {}, open for writing: {}",
                errno_name(io_errno(&a)),
                errno_name(io_errno(&b))
            ),
        ),
        (a, b) => r.line(
            &name,
            true,
            &format!(
                "read: {}, open for writing: {}",
                a.map(|n| format!("{n} bytes"))
                    .unwrap_or_else(|e| e.to_string()),
                if b.is_ok() {
                    "yes".to_string()
                } else {
                    "no".into()
                }
            ),
        ),
    }
}

fn open_write(r: &mut Report, name: &str, path: &str) {
    let res = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_errno(&e));
    r.result(name, res, &format!("{path} is open for writing"));
}

fn connect_abstract(name: &str) -> Result<(), i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| io_errno(&e))?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
        .map(|_| ())
        .map_err(|e| io_errno(&e))
}

/// `net-state`: interfaces and the NAT table's rules, as the module doc says.
fn net_state() -> i32 {
    let mut links: Vec<String> = match fs::read_dir("/sys/class/net") {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            eprintln!("berth-probe: /sys/class/net: {e}");
            return 1;
        }
    };
    links.sort();
    for l in links {
        println!("LINK {l}");
    }
    let rules = berth_net::Nft::open().and_then(|mut n| n.rules());
    match rules {
        Ok(rules) => {
            for r in rules {
                println!("RULE {} {}", r.chain, r.container.as_deref().unwrap_or("-"));
            }
            0
        }
        Err(e) => {
            eprintln!("berth-probe: listing table ip berth: {e}");
            1
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("net-state") {
        std::process::exit(net_state());
    }
    let mut r = Report { count: 0 };

    // Raw block devices: every disk and partition, on the rootfs (/tmp), on /dev, and on a
    // fresh tmpfs when the container may mount one (then only the device program stands).
    let mut dirs = vec!["/tmp".to_string(), "/dev".to_string()];
    let _ = fs::create_dir_all("/mnt/berth-probe");
    let tmpfs = sys::mount("probe", "/mnt/berth-probe", "tmpfs", 0);
    r.result("mount:tmpfs", tmpfs, "mounted a tmpfs on /mnt/berth-probe");
    if tmpfs.is_ok() {
        dirs.push("/mnt/berth-probe".into());
    }
    let parts = partitions();
    println!("# /proc/partitions lists {} block devices", parts.len());
    for dir in &dirs {
        for (major, minor, name) in &parts {
            device(&mut r, dir, name, true, *major, *minor);
        }
        for (label, minor) in [("mem", 1), ("kmem", 2), ("port", 4)] {
            device(&mut r, dir, label, false, 1, minor);
        }
    }

    // Kernel settings and triggers: opening for writing is enough.
    open_write(&mut r, "proc:sysrq-trigger", "/proc/sysrq-trigger");
    open_write(
        &mut r,
        "proc:sys/kernel/core_pattern",
        "/proc/sys/kernel/core_pattern",
    );
    open_write(&mut r, "proc:sys/kernel/sysrq", "/proc/sys/kernel/sysrq");
    open_write(
        &mut r,
        "sys:kernel/uevent_helper",
        "/sys/kernel/uevent_helper",
    );
    open_write(
        &mut r,
        "sys:fs/cgroup/cgroup.procs",
        "/sys/fs/cgroup/cgroup.procs",
    );
    let remount = sys::mount("", "/proc/sys", "", libc::MS_REMOUNT | libc::MS_BIND);
    r.result(
        "mount:remount-proc-sys-rw",
        remount,
        "/proc/sys remounted read-write",
    );

    // Namespaces and privileged calls.
    r.result(
        "userns:unshare",
        sys::unshare(libc::CLONE_NEWUSER),
        "created a user namespace",
    );
    r.result(
        "module:init_module",
        sys::init_module_junk().or_else(|e| if e == libc::EPERM { Err(e) } else { Ok(()) }),
        "init_module reached the kernel's module loader",
    );
    r.result(
        "io_uring:setup",
        sys::io_uring_setup(),
        "io_uring instance created",
    );
    r.result(
        "bpf:prog_load",
        sys::bpf_prog_load_empty().or_else(|e| if e == libc::EINVAL { Ok(()) } else { Err(e) }),
        "bpf(2) reached the verifier",
    );
    r.result(
        "open_by_handle_at",
        sys::open_by_handle_at().or_else(|e| {
            if e == libc::EPERM || e == libc::ENOSYS {
                Err(e)
            } else {
                Ok(())
            }
        }),
        "open_by_handle_at reached the filesystem",
    );
    r.result(
        "reboot",
        sys::reboot_invalid().or_else(|e| if e == libc::EINVAL { Ok(()) } else { Err(e) }),
        "reboot(2) reached the kernel",
    );

    // Host processes: none must be visible, so none can be traced or signalled.
    let mut host = Vec::new();
    let mut visible = 0;
    for pid in 1..=65_536 {
        if !sys::kill0(pid) {
            continue;
        }
        visible += 1;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm == "init" || comm == "sysd" {
            host.push((pid, comm));
        }
    }
    if host.is_empty() {
        r.line(
            "ptrace:host-pid",
            false,
            &format!("no host process visible ({visible} pids, none is init or sysd)"),
        );
    } else {
        for (pid, comm) in host {
            match sys::ptrace_attach(pid) {
                Ok(()) => {
                    sys::ptrace_detach(pid);
                    r.line(
                        "ptrace:host-pid",
                        true,
                        &format!("attached to {comm} (pid {pid})"),
                    );
                }
                Err(e) => r.line(
                    "ptrace:host-pid",
                    true,
                    &format!("{comm} (pid {pid}) is visible; attach: {}", errno_name(e)),
                ),
            }
        }
    }

    // The node's API: the local socket must not exist in here, and no abstract socket of
    // the network namespace may answer.
    r.result(
        "api:osctl.sock",
        sys::connect_unix("/run/berth/osctl.sock"),
        "connected to /run/berth/osctl.sock",
    );
    let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    for name in unix
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.contains("berth") || p.contains("osctl"))
    {
        let res = match name.strip_prefix('@') {
            Some(abs) => connect_abstract(abs),
            None => sys::connect_unix(name),
        };
        r.result(&format!("api:socket={name}"), res, "connected");
    }

    println!("PROBES DONE {}", r.count);
}
