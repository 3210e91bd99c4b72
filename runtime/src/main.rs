//! `berth-runtime`: a runc-compatible CLI over the `berth_runtime` library.
//! It only parses arguments, sets up logging and maps errors to exit codes.

use anyhow::{bail, Context};
use berth_runtime::{CreateOptions, ExecOptions, Runtime, Status};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berth-runtime",
    version,
    about = "Berth's OCI container runtime (runc-compatible CLI)"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/berth-runtime")]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; systemd cgroups are not used.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Pass N extra fds (3..3+N) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Accepted for runc compatibility.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Apply Berth's default security profile to the spec.
    #[arg(long = "default-profile")]
    default_profile: bool,
    container_id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container.
    Create(CreateArgs),
    /// Start a created container.
    Start { container_id: String },
    /// Print the state of a container.
    State { container_id: String },
    /// Send a signal to a container.
    Kill {
        /// Send the signal to all processes in the container.
        #[arg(short, long)]
        all: bool,
        container_id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        #[arg(short, long)]
        force: bool,
        container_id: String,
    },
    /// Create and start a container, wait for it, delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Do not wait for the container.
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a new process in a container.
    Exec {
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        tty: bool,
        /// uid[:gid]
        #[arg(short, long)]
        user: Option<String>,
        /// Path to a process.json.
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        container_id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        container_id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Write a default config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print container statistics (`--stats` prints once).
    Events {
        #[arg(long)]
        stats: bool,
        container_id: String,
    },
}

fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    let sig: nix::sys::signal::Signal = name
        .parse()
        .with_context(|| format!("unknown signal {s:?}"))?;
    Ok(sig as i32)
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let level = if cli.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    match &cli.log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            let file = std::sync::Mutex::new(file);
            if cli.log_format == "json" {
                let _ = builder.json().with_writer(file).try_init();
            } else {
                let _ = builder.with_ansi(false).with_writer(file).try_init();
            }
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
    Ok(())
}

fn create_opts(a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        default_profile: a.default_profile,
        ..Default::default()
    }
}

/// Exit status of a waited-for process, shell style.
fn exit_code(status: nix::sys::wait::WaitStatus) -> i32 {
    match status {
        nix::sys::wait::WaitStatus::Exited(_, c) => c,
        nix::sys::wait::WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 1,
    }
}

fn wait_pid(pid: i32) -> i32 {
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(s) => return exit_code(s),
            Err(_) => return 1,
        }
    }
}

/// Signals `run` forwards to the container.
fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Waits for the container's init (our child) while forwarding the usual
/// terminal and job-control signals to it, as `runc run` does. The signals
/// are blocked before the container is created (children reset their mask
/// before exec), so none is lost in between.
fn wait_forwarding_signals(pid: i32) -> i32 {
    use nix::sys::signal::Signal;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let set = forwarded_signals();
    let Ok(sfd) = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) else {
        return wait_pid(pid);
    };
    let child = nix::unistd::Pid::from_raw(pid);
    let code = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            Ok(s) => break exit_code(s),
            Err(_) => break 1,
        }
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&sfd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16));
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo != libc::SIGCHLD {
                if let Ok(sig) = Signal::try_from(signo) {
                    let _ = nix::sys::signal::kill(child, sig);
                }
            }
        }
    };
    code
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let rt = Runtime::new(&cli.root);
    let rootless_flag = cli.rootless.clone();
    match cli.cmd {
        Cmd::Create(a) => {
            rt.create(&a.container_id, &a.bundle, create_opts(&a))?;
        }
        Cmd::Start { container_id } => rt.start(&container_id)?,
        Cmd::State { container_id } => {
            let st = rt.state(&container_id)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Cmd::Kill {
            all,
            container_id,
            signal,
        } => {
            rt.kill(&container_id, parse_signal(&signal)?, all)?;
        }
        Cmd::Delete {
            force,
            container_id,
        } => match rt.delete(&container_id, force) {
            Err(berth_runtime::RuntimeError::NotFound(_)) if force => {}
            r => r?,
        },
        Cmd::Run { create, detach } => {
            if !detach {
                let _ = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_BLOCK,
                    Some(&forwarded_signals()),
                    None,
                );
            }
            let st = rt.create(&create.container_id, &create.bundle, create_opts(&create))?;
            if let Err(e) = rt.start(&create.container_id) {
                let _ = rt.delete(&create.container_id, true);
                return Err(e.into());
            }
            if detach {
                return Ok(0);
            }
            let code = wait_forwarding_signals(st.pid);
            let stats = rt.stats(&create.container_id).unwrap_or_default();
            if stats.oom_kill_events.unwrap_or(0) > 0 {
                eprintln!(
                    "berth-runtime: container {} was OOM-killed (memory.max reached)",
                    create.container_id
                );
            }
            rt.delete(&create.container_id, true)?;
            return Ok(code);
        }
        Cmd::Exec {
            console_socket,
            cwd,
            env,
            tty,
            user,
            process,
            detach,
            pid_file,
            no_new_privs,
            preserve_fds,
            container_id,
            command,
        } => {
            let mut p = match &process {
                Some(path) => {
                    let text = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let proc_spec: oci_spec::runtime::Process = serde_json::from_slice(&text)
                        .with_context(|| format!("parsing {}", path.display()))?;
                    let mut p = berth_runtime::plan::plan_process(&proc_spec)?;
                    // The container's seccomp filter applies to exec'd processes too.
                    p.seccomp = rt.default_process(&container_id)?.seccomp;
                    p
                }
                None => {
                    if command.is_empty() {
                        bail!("exec needs a command or --process");
                    }
                    let mut p = rt.default_process(&container_id)?;
                    p.args = command;
                    p.terminal = tty;
                    p
                }
            };
            if let Some(c) = cwd {
                p.cwd = c;
            }
            p.env.extend(env);
            if let Some(u) = user {
                let (uid, gid) = u.split_once(':').unwrap_or((&u, "0"));
                p.uid = uid
                    .parse()
                    .with_context(|| format!("--user: bad uid {uid:?}"))?;
                p.gid = gid
                    .parse()
                    .with_context(|| format!("--user: bad gid {gid:?}"))?;
            }
            if no_new_privs {
                p.no_new_privileges = true;
            }
            let pid = rt.exec(
                &container_id,
                p,
                ExecOptions {
                    pid_file,
                    console_socket,
                    preserve_fds,
                    stdio: None,
                },
            )?;
            if detach {
                return Ok(0);
            }
            return Ok(wait_pid(pid));
        }
        Cmd::Ps {
            format,
            container_id,
            ps_args: _,
        } => {
            let pids = rt.ps(&container_id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("{:>8} CMD", "PID");
                for p in pids {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let cmd: String = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    println!("{p:>8} {}", cmd.trim_end());
                }
            }
        }
        Cmd::Spec { bundle } => {
            let rootless = rootless_flag.as_deref() == Some("true");
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            let mut spec = oci_spec::runtime::Spec::default();
            if rootless {
                spec.set_linux(Some(oci_spec::runtime::Linux::rootless(
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                )));
            }
            let text = serde_json::to_string_pretty(&spec)?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Cmd::List { format, quiet } => {
            let list = rt.list()?;
            if quiet {
                for s in list {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                )?;
                for s in list {
                    writeln!(
                        out,
                        "{:<20} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created
                    )?;
                }
            }
        }
        Cmd::Events {
            stats: _,
            container_id,
        } => {
            let st = rt.state(&container_id)?;
            if st.status == Status::Stopped {
                bail!("container {container_id} is stopped");
            }
            let s = rt.stats(&container_id)?;
            println!(
                "{}",
                serde_json::json!({"type": "stats", "id": container_id, "data": s})
            );
        }
    }
    Ok(0)
}

fn main() {
    berth_runtime::maybe_run_init();
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("berth-runtime: {e:#}");
        std::process::exit(1);
    }
    let logging_to_file = cli.log.is_some();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if logging_to_file {
                tracing::error!("{e:#}");
            }
            eprintln!("berth-runtime: {e:#}");
            std::process::exit(1);
        }
    }
}
