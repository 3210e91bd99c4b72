//! `osctl`: manage a Berth machine over its D-Bus API.

use berth_osctl::{connect, format_status, Address};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Manage a Berth machine: status, containers, logs, images, power. On the machine it
/// talks to /run/berth/osctl.sock; from a VM's host point --connect at the socket
/// qemu/run.sh created (STATE_DIR/osctl.sock); over the network it talks to the node's
/// API port (7443) with mutual TLS, using a context of the client file.
///
/// Which machine: --connect (or BERTH_CONNECT), a Unix socket, wins; then --context
/// and/or --node (a context of the client file, its endpoint replaced by --node); then
/// the local socket. Off the machine (no local socket) the client file's current
/// context is used. The client file is BERTH_CONFIG, else ~/.config/berth/osctl.toml:
/// contexts with the node's CA (or key fingerprint), a client certificate and key;
/// `osctl config contexts` lists them. The certificate's role (reader, operator, admin)
/// decides what may be called; a refused call names the role it needs.
///
/// Examples:
///   osctl --connect unix:path=build/x86_64/run/osctl.sock status
///   osctl ps
///   osctl run 10.0.2.100:5000/apps/web:1 --name web --memory 128M -- /bin/web --port 8080
///   osctl logs -f web
///   osctl exec admin -- sh -c 'ip addr; df -h'
///
/// Remote management (mutual TLS):
///   osctl pki init --out ca/                              # a CA: ca/ca.crt, ca/ca.key
///   osctl pki node --ca ca/ --name node1 --ip 10.0.0.5 --out node1/
///   osctl pki client --ca ca/ --role admin --ttl 24h --endpoint 10.0.0.5:7443 \
///       --context admin --out ~/.config/berth/osctl.toml
///   osctl --context admin status
///   osctl --context admin --node 10.0.0.6:7443 ps
///   osctl pki issue --role reader --ttl 8h --out reader.toml   # minted by a running node
///
/// Exit status: 0 ok, 1 the machine refused or failed the request (also a role that may
/// not call it), 2 usage error (also a bad client file or context), 3 machine unreachable
/// or the TLS handshake refused; `exec` exits with the command's status.
#[derive(Parser)]
#[command(name = "osctl", version, verbatim_doc_comment)]
struct Cli {
    /// API socket: unix:path=/path/to/socket (or just the path). Wins over --context and
    /// --node. Default: /run/berth/osctl.sock.
    #[arg(long, global = true, env = "BERTH_CONNECT")]
    connect: Option<String>,
    /// Context of the client file to use (its endpoint, node CA or fingerprint, client
    /// certificate and key). `pki client` names the context it writes with it.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// Node to reach over TLS, HOST:PORT (port 7443 if left out); replaces the context's
    /// endpoint.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    node: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    output: Output,
    /// Seconds to wait for the machine to answer.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// OS version, slot, network, health of required services, config errors, boot phases.
    Status,
    /// List containers: system services and workloads, with state, health and restarts.
    Ps,
    /// Start a stopped container.
    Start { name: String },
    /// Stop a container (SIGTERM, then SIGKILL after 10 s). It stays stopped until started.
    Stop { name: String },
    /// Stop and start a container.
    Restart { name: String },
    /// Show a container's output (kept under /var/log/berth, rotated), or a system log:
    /// `--system api` is the audit log of calls over the network (certificate subject,
    /// serial, role, method, result).
    Logs {
        /// The container (`osctl ps` lists them).
        #[arg(required_unless_present = "system", conflicts_with = "system")]
        name: Option<String>,
        /// A system log instead of a container's: api.
        #[arg(long, value_name = "LOG", value_parser = ["api"])]
        system: Option<String>,
        /// Keep printing new output until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N", default_value_t = 0)]
        tail: u32,
    },
    /// Run a workload from IMAGE (a registry reference such as 10.0.2.100:5000/web:1, or
    /// a shipped image name). It is kept, and restarted after reboots, until `osctl rm`.
    Run {
        image: String,
        /// Container name (default: from the image name).
        #[arg(long)]
        name: Option<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long, short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Memory limit, e.g. 256M.
        #[arg(long)]
        memory: Option<String>,
        /// CPU limit in CPUs, e.g. 0.5.
        #[arg(long)]
        cpus: Option<String>,
        /// Process limit (pids.max): forks beyond it fail.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        pids: Option<u32>,
        /// Persistent volume NAME:/path (repeatable); data under /var/lib/berth/volumes/NAME.
        #[arg(long, short = 'v', value_name = "NAME:/PATH")]
        volume: Vec<String>,
        /// Restart policy: always, on-failure or never.
        #[arg(long, default_value = "always")]
        restart: String,
        /// Run in a user namespace of its own: its root is an unprivileged id range on
        /// the host (config key `user_namespace`).
        #[arg(long)]
        userns: bool,
        /// Network: bridge (the default: an address of its own on berth0, reachable from
        /// the others by name), host (the node's own network) or none (loopback only).
        #[arg(long, value_parser = ["host", "bridge", "none"])]
        network: Option<String>,
        /// Publish a port of a bridge container: [IP:]HOST:CONTAINER[/tcp|udp]
        /// (repeatable), e.g. -p 8080:80 -p 127.0.0.1:5353:53/udp.
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        /// Command replacing the image's entrypoint and cmd.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove a workload started with `osctl run`.
    Rm {
        name: String,
        /// Stop it first if it is running.
        #[arg(long, short)]
        force: bool,
    },
    /// Run a command in a running container; exits with its status. In a terminal the
    /// command gets a terminal on the machine (a shell works: `osctl exec admin -- sh`);
    /// otherwise its output is collected and printed, stdout and stderr apart.
    Exec {
        /// The container (`osctl ps` lists them).
        name: String,
        /// Send this program's standard input to the command (always on with a terminal).
        #[arg(long, short)]
        interactive: bool,
        /// Give the command a terminal even when this program's input or output is not one.
        #[arg(long, short, conflicts_with = "no_tty")]
        tty: bool,
        /// No terminal, even when run in one.
        #[arg(long = "no-tty", short = 'T')]
        no_tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Memory, CPU and process counts per running container.
    Stats,
    /// Images in the machine's store.
    Images,
    /// Pull an image into the machine's store, with progress.
    Pull { image: String },
    /// Remove an image no container uses.
    Rmi { image: String },
    /// The machine config: show the one in force, or validate a file with exactly the
    /// node's rules (works offline, no machine needed).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// OS updates: look for a new version, install it on the other slot, see the slots
    /// and boot entries, roll back.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Certificates for remote management: a CA, node certificates, client files.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Ordered reboot: stop all containers, unmount, reboot.
    Reboot,
    /// Ordered power-off.
    Poweroff,
    /// Diagnostics and recovery drills.
    #[command(subcommand)]
    Debug(DebugCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the config in force and where it came from.
    Show,
    /// Check a config file; errors name the key path and line. Needs no connection.
    Validate { file: std::path::PathBuf },
    /// List the client file's contexts (the current one marked with *): endpoints, how
    /// the node is trusted, the certificate's role and expiry. Needs no connection.
    Contexts,
    /// Make NAME the client file's current context.
    UseContext { name: String },
    /// Apply a config file to the running machine on trial: validated first (nothing
    /// changes if it is invalid), then applied live; kept once the machine is healthy
    /// (required services healthy, configured interfaces addressed, default gateways
    /// answering), otherwise reverted to the last known good config after the deadline,
    /// also across a reboot.
    Apply {
        file: std::path::PathBuf,
        /// Seconds the machine has to become healthy.
        #[arg(long, default_value_t = 120)]
        deadline: u32,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Make a CA (ECDSA P-256): DIR/ca.crt and DIR/ca.key (0600). Keep ca.key offline, or
    /// give it to nodes that should mint client files (`[api] ca_key`). Never overwrites.
    Init {
        /// Directory for ca.crt and ca.key (created 0700).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Berth CA")]
        name: String,
        /// Lifetime, e.g. 87600h (10 years).
        #[arg(long, default_value = "87600h", value_parser = berth_osctl::pki::parse_ttl)]
        ttl: Duration,
    },
    /// Make a node certificate signed by the CA: DIR/node.crt and DIR/node.key (0600), for
    /// the machine config's `[api] cert` and `key`. Clients reach the node by one of its
    /// names or addresses.
    Node {
        /// Directory with ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: std::path::PathBuf,
        /// DNS name of the node (repeatable).
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
        /// IP address of the node (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<std::net::IpAddr>,
        /// Lifetime (the node renews its own certificate before expiry when it has the CA key).
        #[arg(long, default_value = "8760h", value_parser = berth_osctl::pki::parse_ttl)]
        ttl: Duration,
        /// Directory for node.crt and node.key.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Make a client file: one context (named by --context, else the role) with the CA, a
    /// new client certificate for ROLE and its key, inline, 0600; it becomes the current
    /// context.
    ///
    /// Example: osctl pki client --ca ca/ --role reader --ttl 24h --endpoint 10.0.0.5:7443 --out reader.toml
    Client {
        /// Directory with ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: std::path::PathBuf,
        /// reader (status, ps, stats...), operator (also start/stop, logs, run, updates,
        /// reboot) or admin (everything).
        #[arg(long, value_parser = berth_osctl::pki::parse_role)]
        role: berth_api::Role,
        /// Lifetime, e.g. 24h, 30m, 7d. Short is safer: a new one is one command away.
        #[arg(long, value_parser = berth_osctl::pki::parse_ttl)]
        ttl: Duration,
        /// Certificate common name (shown in the node's audit log). Default: osctl-ROLE.
        #[arg(long = "name", value_name = "CN")]
        common_name: Option<String>,
        /// Node address HOST:PORT (repeatable; the first is used).
        #[arg(long = "endpoint", value_name = "HOST:PORT")]
        endpoints: Vec<String>,
        /// The client file to write.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// Add the context to an existing client file (a context of the same name is replaced).
        #[arg(long)]
        merge: bool,
    },
    /// Ask the running node to mint a client file (admin only; the node needs its CA key):
    /// a short-lived credential for someone else, or a renewal of your own.
    ///
    /// Example: osctl --context admin pki issue --role reader --ttl 8h --out reader.toml
    Issue {
        #[arg(long, value_parser = berth_osctl::pki::parse_role)]
        role: berth_api::Role,
        /// Lifetime, e.g. 8h, 30m, 7d.
        #[arg(long, value_parser = berth_osctl::pki::parse_ttl)]
        ttl: Duration,
        /// Certificate common name. Default: osctl-ROLE.
        #[arg(long = "name", value_name = "CN")]
        common_name: Option<String>,
        /// Write the client file here (0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// Add the context to an existing FILE.
        #[arg(long, requires = "out")]
        merge: bool,
    },
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Running version and slot (blessed or on trial), the other slot, which entry boots
    /// next, this boot's blessing, the last check/apply/rollback, versions that failed.
    Status,
    /// Ask the registry for the newest signed version for this machine's architecture
    /// and compare it with the running one. Changes nothing.
    Check {
        /// Repository:tag to look in instead of update.source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Download the newest version, verify its signature (trusted keys), digests,
    /// architecture and version, write it to the other slot, read it back (sha256 and
    /// dm-verity root hash), install its kernel and boot entry (3 tries). The running
    /// slot is not touched; an interrupted apply resumes where it stopped. The new
    /// version runs after a reboot and is kept only if it becomes healthy.
    Apply {
        /// Repository:tag to install from instead of update.source.
        #[arg(long)]
        source: Option<String>,
        /// Install even when the version is not newer than the running one, or is below
        /// the version floor (the highest version this node ever installed).
        #[arg(long)]
        allow_downgrade: bool,
        /// Install even when the version failed to boot healthy before.
        #[arg(long)]
        force: bool,
        /// Reboot into it once installed.
        #[arg(long)]
        reboot: bool,
    },
    /// Boot the other slot from the next boot on, and keep it (its entry becomes the
    /// newest, blessed). Takes effect at the next reboot.
    Rollback {
        /// Also to a slot whose version is recorded as failed.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Kill the supervisor (sysd) with SIGKILL; PID 1 must restart it.
    KillSysd,
}

/// Exit codes: 0 ok, 1 the machine refused or failed the request, 2 usage, 3 unreachable.
enum Exit {
    Failed = 1,
    Unreachable = 3,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("osctl: cannot start: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "osctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Cmd::Config(ConfigCmd::Validate { file }) = &cli.cmd {
        return validate(file, cli.output);
    }
    let config_path = berth_remote::contexts::default_path();
    match &cli.cmd {
        Cmd::Config(ConfigCmd::Contexts) => return contexts(config_path.as_deref(), cli.output),
        Cmd::Config(ConfigCmd::UseContext { name }) => {
            return use_context(config_path.as_deref(), name)
        }
        Cmd::Pki(p) if !matches!(p, PkiCmd::Issue { .. }) => {
            return pki_local(p, cli.context.as_deref(), cli.output)
        }
        _ => {}
    }
    let local = std::path::Path::new(berth_api::SOCKET_PATH);
    let target = berth_osctl::Target {
        connect: cli.connect.as_deref(),
        node: cli.node.as_deref(),
        context: cli.context.as_deref(),
        config: config_path.as_deref(),
        local,
    };
    let addr = match berth_osctl::resolve(&target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("osctl: {e}");
            return ExitCode::from(2);
        }
    };
    let (_conn, m) = match connect(&addr, Duration::from_secs(cli.timeout)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("osctl: {e}");
            return ExitCode::from(if e.is_usage() {
                2
            } else {
                Exit::Unreachable as u8
            });
        }
    };
    let res = match cli.cmd {
        Cmd::Status => match m.status().await {
            Ok(s) => {
                match cli.output {
                    Output::Json => {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
                    }
                    Output::Text => {
                        print!("{}", format_status(&s));
                        // Older nodes lack these methods and answer an error: no line.
                        if let Ok(id) = m.machine_id().await {
                            println!("{:<14} {id}", "machine id");
                        }
                        if let Ok(a) = m.api_status().await {
                            print!("{}", berth_osctl::format_api_status(&a));
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        Cmd::Reboot => m.reboot().await.map(|_| done(cli.output, "rebooting")),
        Cmd::Poweroff => m
            .power_off()
            .await
            .map(|_| done(cli.output, "powering off")),
        Cmd::Debug(DebugCmd::KillSysd) => m
            .kill_supervisor()
            .await
            .map(|_| done(cli.output, "sysd will be killed; PID 1 restarts it")),
        Cmd::Ps => m.ps().await.map(|v| match cli.output {
            Output::Json => json(&v),
            Output::Text => print!("{}", berth_osctl::format_ps(&v)),
        }),
        Cmd::Start { name } => m
            .start(&name)
            .await
            .map(|_| done(cli.output, &format!("{name} started"))),
        Cmd::Stop { name } => m
            .stop(&name)
            .await
            .map(|_| done(cli.output, &format!("{name} stopped"))),
        Cmd::Restart { name } => m
            .restart(&name)
            .await
            .map(|_| done(cli.output, &format!("{name} restarted"))),
        Cmd::Logs {
            name,
            system,
            follow,
            tail,
        } => {
            // A system log is read by its name with an @ (`@api`), like a container's.
            let name = match system {
                Some(_) => berth_api::AUDIT_LOG_NAME.to_string(),
                None => name.unwrap_or_default(),
            };
            logs(&m, &name, follow, tail, cli.output).await
        }
        Cmd::Run {
            image,
            name,
            env,
            memory,
            cpus,
            pids,
            volume,
            restart,
            userns,
            network,
            publish,
            command,
        } => {
            let req = berth_api::RunRequest {
                name: name.unwrap_or_default(),
                image: image.clone(),
                command,
                env,
                memory: memory.unwrap_or_default(),
                cpus: cpus.unwrap_or_default(),
                pids: pids.unwrap_or_default(),
                volumes: volume,
                restart,
                user_namespace: userns,
                network: network.unwrap_or_default(),
                ports: publish,
            };
            let bar =
                berth_osctl::progress::watch(&m, &image, matches!(cli.output, Output::Text)).await;
            let r = m.run(&req).await;
            bar.finish();
            r.map(|n| done(cli.output, &n))
        }
        Cmd::Rm { name, force } => m
            .remove(&name, force)
            .await
            .map(|_| done(cli.output, &format!("{name} removed"))),
        Cmd::Exec {
            name,
            interactive,
            tty,
            no_tty,
            command,
        } => {
            let tty = matches!(cli.output, Output::Text)
                && !no_tty
                && (tty || berth_osctl::exec::auto_tty());
            if tty {
                use std::io::IsTerminal;
                let opts = berth_osctl::exec::Options {
                    tty: true,
                    input: interactive || std::io::stdin().is_terminal(),
                };
                return match berth_osctl::exec::session(&m, &name, &command, opts).await {
                    Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                    Err(e) => {
                        eprintln!("osctl: {e}");
                        ExitCode::from(Exit::Failed as u8)
                    }
                };
            }
            let mut input = Vec::new();
            if interactive {
                use std::io::Read;
                if let Err(e) = std::io::stdin().read_to_end(&mut input) {
                    eprintln!("osctl: reading standard input: {e}");
                    return ExitCode::from(Exit::Failed as u8);
                }
            }
            match m.exec(&name, &command, &input).await {
                Ok(r) => {
                    if let Output::Json = cli.output {
                        json(&serde_json::json!({
                            "exit_code": r.exit_code,
                            "stdout": String::from_utf8_lossy(&r.stdout),
                            "stderr": String::from_utf8_lossy(&r.stderr),
                        }));
                    } else {
                        use std::io::Write;
                        let _ = std::io::stdout().write_all(&r.stdout);
                        let _ = std::io::stderr().write_all(&r.stderr);
                    }
                    return ExitCode::from(r.exit_code.clamp(0, 255) as u8);
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Stats => m.stats().await.map(|v| match cli.output {
            Output::Json => json(&v),
            Output::Text => print!("{}", berth_osctl::format_stats(&v)),
        }),
        Cmd::Images => m.images().await.map(|v| match cli.output {
            Output::Json => json(&v),
            Output::Text => print!("{}", berth_osctl::format_images(&v)),
        }),
        Cmd::Pull { image } => {
            let bar =
                berth_osctl::progress::watch(&m, &image, matches!(cli.output, Output::Text)).await;
            let r = m.pull(&image).await;
            bar.finish();
            r.map(|i| match cli.output {
                Output::Json => json(&i),
                Output::Text => println!("{} {}", i.name, i.digest),
            })
        }
        Cmd::Rmi { image } => m
            .remove_image(&image)
            .await
            .map(|_| done(cli.output, &format!("{image} removed"))),
        Cmd::Config(ConfigCmd::Show) => {
            m.config()
                .await
                .map(|(source, text, outcome)| match cli.output {
                    Output::Json => json(&serde_json::json!({
                        "source": source, "config": text, "last_change": outcome,
                    })),
                    Output::Text => {
                        println!("# source: {source}");
                        if !outcome.is_empty() {
                            println!("# last change: {outcome}");
                        }
                        print!("{text}");
                    }
                })
        }
        Cmd::Config(ConfigCmd::Apply { file, deadline }) => match std::fs::read_to_string(&file) {
            Ok(text) => m
                .config_apply(&text, deadline)
                .await
                .map(|msg| done(cli.output, &msg)),
            Err(e) => {
                eprintln!("osctl: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        Cmd::Update(u) => update(&m, u, cli.output).await,
        Cmd::Pki(PkiCmd::Issue {
            role,
            ttl,
            common_name,
            out,
            merge,
        }) => pki_issue(&m, role, ttl, common_name, out, merge, &addr).await,
        Cmd::Completions { .. }
        | Cmd::Pki(_)
        | Cmd::Config(
            ConfigCmd::Validate { .. } | ConfigCmd::Contexts | ConfigCmd::UseContext { .. },
        ) => Ok(()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osctl: {}", berth_osctl::explain_call_error(&e));
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

/// `osctl config validate FILE`: the node's own parser and checks.
fn validate(file: &std::path::Path, out: Output) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("osctl: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match berth_config::parse(&text) {
        Ok(_) => {
            match out {
                Output::Json => json(&serde_json::json!({ "valid": true, "errors": [] })),
                Output::Text => println!("{}: valid", file.display()),
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            match out {
                Output::Json => json(&serde_json::json!({
                    "valid": false,
                    "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                })),
                Output::Text => {
                    for e in &errs.0 {
                        eprintln!("{}: {e}", file.display());
                    }
                }
            }
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn logs(
    m: &berth_api::ManagerProxy<'_>,
    name: &str,
    follow: bool,
    tail: u32,
    out: Output,
) -> Result<(), berth_api::ManagerError> {
    use std::io::Write;
    let mut chunk = m.logs(name, tail).await?;
    loop {
        match out {
            Output::Json => {
                for line in String::from_utf8_lossy(&chunk.data).lines() {
                    println!("{}", serde_json::json!({ "container": name, "line": line }));
                }
            }
            Output::Text => {
                let mut o = std::io::stdout();
                let _ = o.write_all(&chunk.data);
                let _ = o.flush();
            }
        }
        if !follow {
            return Ok(());
        }
        if chunk.data.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        chunk = m.logs_from(name, chunk.next).await?;
    }
}

/// `osctl update ...`: the machine answers in JSON; text output renders it.
async fn update(
    m: &berth_api::ManagerProxy<'static>,
    cmd: UpdateCmd,
    out: Output,
) -> Result<(), berth_api::ManagerError> {
    use berth_osctl::update as fmt;
    let print = |text: &str, render: fn(&serde_json::Value) -> String| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        match out {
            Output::Json => json(&v),
            Output::Text => print!("{}", render(&v)),
        }
    };
    match cmd {
        UpdateCmd::Status => print(&m.update_status().await?, fmt::format_status),
        UpdateCmd::Check { source } => print(
            &m.update_check(source.as_deref().unwrap_or("")).await?,
            fmt::format_check,
        ),
        UpdateCmd::Apply {
            source,
            allow_downgrade,
            force,
            reboot,
        } => {
            let bar = berth_osctl::progress::watch_update(m, matches!(out, Output::Text)).await;
            let r = m
                .update_apply(source.as_deref().unwrap_or(""), allow_downgrade, force)
                .await;
            bar.finish();
            print(&r?, fmt::format_apply);
            if reboot {
                m.reboot().await?;
                if matches!(out, Output::Text) {
                    println!("rebooting");
                }
            }
        }
        UpdateCmd::Rollback { force } => {
            let v: serde_json::Value =
                serde_json::from_str(&m.update_rollback(force).await?).unwrap_or_default();
            match out {
                Output::Json => json(&v),
                Output::Text => println!(
                    "slot {} ({}) boots from the next boot on ({}); reboot to switch: osctl reboot",
                    v["slot"].as_str().unwrap_or("?"),
                    v["version"].as_str().unwrap_or("unknown version"),
                    v["file"].as_str().unwrap_or("?")
                ),
            }
        }
    }
    Ok(())
}

fn done(out: Output, what: &str) {
    match out {
        Output::Json => println!("{}", serde_json::json!({ "ok": true, "message": what })),
        Output::Text => println!("{what}"),
    }
}

/// `osctl config contexts`.
fn contexts(path: Option<&std::path::Path>, out: Output) -> ExitCode {
    let Some(path) = path else {
        eprintln!("osctl: {}", berth_osctl::ConnectError::NoConfigPath);
        return ExitCode::from(2);
    };
    if !path.exists() {
        match out {
            Output::Json => json(&serde_json::json!({ "file": path, "contexts": [] })),
            Output::Text => println!(
                "{}: no client file (osctl pki client --out {} makes one)",
                path.display(),
                path.display()
            ),
        }
        return ExitCode::SUCCESS;
    }
    let f = match berth_remote::ClientFile::load(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("osctl: {e}");
            return ExitCode::from(2);
        }
    };
    let rows = berth_osctl::context_rows(&f);
    match out {
        Output::Json => json(&serde_json::json!({ "file": path, "contexts": rows })),
        Output::Text => print!("{}", berth_osctl::format_contexts(&rows)),
    }
    ExitCode::SUCCESS
}

/// `osctl config use-context NAME`.
fn use_context(path: Option<&std::path::Path>, name: &str) -> ExitCode {
    let Some(path) = path else {
        eprintln!("osctl: {}", berth_osctl::ConnectError::NoConfigPath);
        return ExitCode::from(2);
    };
    let r = berth_remote::ClientFile::load(path).and_then(|mut f| {
        f.select(Some(name), path)?;
        f.context = Some(name.into());
        f.save(path)
    });
    match r {
        Ok(()) => {
            println!("current context: {name} ({})", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("osctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// `osctl pki init|node|client`: files only, no machine.
fn pki_local(cmd: &PkiCmd, context: Option<&str>, out: Output) -> ExitCode {
    use berth_osctl::pki;
    let r = match cmd {
        PkiCmd::Init { out: dir, name, ttl } => pki::init(dir, name, *ttl).map(|crt| {
            format!(
                "CA {} ({}) in {}; keep {} secret",
                name,
                pki::describe(&crt),
                dir.join("ca.crt").display(),
                dir.join("ca.key").display()
            )
        }),
        PkiCmd::Node {
            ca,
            names,
            ips,
            ttl,
            out: dir,
        } => pki::node(ca, names, ips, *ttl, dir).map(|crt| {
            format!(
                "node certificate ({}, key fingerprint {}) in {} and {}: set them as [api] cert and key",
                pki::describe(&crt),
                berth_remote::pki::spki_sha256(&crt).unwrap_or_default(),
                dir.join("node.crt").display(),
                dir.join("node.key").display()
            )
        }),
        PkiCmd::Client {
            ca,
            role,
            ttl,
            common_name,
            endpoints,
            out: file,
            merge,
        } => pki::client(&pki::ClientRequest {
            ca_dir: ca,
            role: *role,
            ttl: *ttl,
            common_name: common_name.as_deref(),
            endpoints: endpoints.clone(),
            context,
            out: file,
            merge: *merge,
        })
        .map(|(name, crt)| {
            format!(
                "context {name} ({role}, {}) in {}: osctl --context {name} status{}",
                pki::describe(&crt),
                file.display(),
                if Some(file.as_path()) == berth_remote::contexts::default_path().as_deref() {
                    String::new()
                } else {
                    format!(" (with BERTH_CONFIG={})", file.display())
                }
            )
        }),
        PkiCmd::Issue { .. } => return ExitCode::from(2),
    };
    match r {
        Ok(msg) => {
            done(out, &msg);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("osctl: {e}");
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

/// `osctl pki issue`: the node mints a client file.
async fn pki_issue(
    m: &berth_api::ManagerProxy<'static>,
    role: berth_api::Role,
    ttl: Duration,
    common_name: Option<String>,
    out: Option<std::path::PathBuf>,
    merge: bool,
    addr: &Address,
) -> Result<(), berth_api::ManagerError> {
    use berth_api::ManagerError;
    let name = common_name.unwrap_or_else(|| format!("osctl-{role}"));
    let text = m.pki_issue(role.as_str(), ttl.as_secs(), &name).await?;
    let mut file = berth_remote::ClientFile::from_toml(&text).map_err(|e| {
        ManagerError::Failed(berth_osctl::pki::PkiCmdError::BadIssued(e).to_string())
    })?;
    // The node may not know how it was reached: fill in the endpoint used.
    if let Address::Tls(r) = addr {
        for c in file.contexts.values_mut() {
            if c.endpoints.is_empty() {
                c.endpoints.push(r.endpoint.clone());
            }
        }
    }
    let about: Vec<String> = file
        .contexts
        .iter()
        .map(|(n, c)| {
            format!(
                "context {n} ({role}, {})",
                berth_osctl::pki::describe(&c.cert)
            )
        })
        .collect();
    match out {
        Some(path) => {
            berth_osctl::pki::save_client_file(file, &path, merge)
                .map_err(|e| ManagerError::Failed(e.to_string()))?;
            println!("{} in {}", about.join(", "), path.display());
        }
        None => {
            eprintln!("{}", about.join(", "));
            print!("{}", file.to_toml());
        }
    }
    Ok(())
}
