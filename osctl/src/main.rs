//! `osctl`: manage a Berth machine over its D-Bus API.

use berth_osctl::{connect, format_status, Address};
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Manage a Berth machine: status, power, and (as they land) containers, images, config and
/// updates. On the machine it talks to /run/berth/osctl.sock; from a VM's host point
/// --connect at the socket qemu/run.sh created (STATE_DIR/osctl.sock).
#[derive(Parser)]
#[command(name = "osctl", version)]
struct Cli {
    /// API address: unix:path=/path/to/socket (or just the path).
    #[arg(
        long,
        global = true,
        env = "BERTH_CONNECT",
        default_value = "unix:path=/run/berth/osctl.sock"
    )]
    connect: String,
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
    /// OS version, slot, root and state filesystems, cgroups, supervisor, boot phases.
    Status,
    /// Ordered reboot: stop all containers, unmount, reboot.
    Reboot,
    /// Ordered power-off.
    Poweroff,
    /// Diagnostics and recovery drills.
    #[command(subcommand)]
    Debug(DebugCmd),
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
    let addr = match Address::parse(&cli.connect) {
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
            return ExitCode::from(Exit::Unreachable as u8);
        }
    };
    let res = match cli.cmd {
        Cmd::Status => m.status().await.map(|s| match cli.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
            Output::Text => print!("{}", format_status(&s)),
        }),
        Cmd::Reboot => m.reboot().await.map(|_| done(cli.output, "rebooting")),
        Cmd::Poweroff => m
            .power_off()
            .await
            .map(|_| done(cli.output, "powering off")),
        Cmd::Debug(DebugCmd::KillSysd) => m
            .kill_supervisor()
            .await
            .map(|_| done(cli.output, "sysd will be killed; PID 1 restarts it")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osctl: {e}");
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

fn done(out: Output, what: &str) {
    match out {
        Output::Json => println!("{}", serde_json::json!({ "ok": true, "message": what })),
        Output::Text => println!("{what}"),
    }
}
