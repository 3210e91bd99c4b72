//! `berth-fleetlock`: see the library's documentation and `docs/FLEET.md`.

use berth_fleetlock::{store::Store, Settings};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// FleetLock reboot-lock server for Berth (and Zincati) nodes; the semaphores live in
/// etcd v3 under airlock's keys (com.coreos.airlock/groups/<group>/v1/semaphore), so it
/// can run next to airlock on the same etcd. It keeps no state of its own: run several
/// behind the nodes' url lists.
#[derive(Parser)]
#[command(name = "berth-fleetlock", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve POST /v1/pre-reboot, POST /v1/steady-state and GET /metrics.
    Serve {
        /// TOML file with listen, etcd_endpoints, etcd_timeout_secs, holder_ttl_secs and a
        /// [groups] table (name = slots); the options below override it.
        #[arg(long)]
        config: Option<String>,
        /// Address to listen on [default: 0.0.0.0:3333].
        #[arg(long)]
        listen: Option<String>,
        /// etcd endpoint, http://HOST:PORT (repeat for each cluster member).
        #[arg(long = "etcd", value_name = "URL")]
        etcd: Vec<String>,
        /// A reboot group and its slot count, NAME=SLOTS (repeatable) [default: default=1].
        /// The count is used when the group's semaphore is created in etcd; an existing
        /// semaphore keeps its total_slots, as with airlock.
        #[arg(long = "group", value_name = "NAME=SLOTS")]
        groups: Vec<String>,
        /// Free a slot this many seconds after it was taken, if its holder has not
        /// released it (a node that never came back). 0 = never [default: 0].
        #[arg(long, value_name = "SECS")]
        holder_ttl: Option<u64>,
        /// Per-request etcd timeout in seconds [default: 3].
        #[arg(long, value_name = "SECS")]
        etcd_timeout: Option<u64>,
    },
    /// Operator: free the slot ID holds in GROUP (for a node that will not come back).
    Release {
        /// etcd endpoint, http://HOST:PORT (repeatable).
        #[arg(long = "etcd", value_name = "URL", required = true)]
        etcd: Vec<String>,
        /// The reboot group.
        #[arg(long)]
        group: String,
        /// The holder's id (as in berth_fleetlock_holder{id=...} of /metrics).
        #[arg(long)]
        id: String,
    },
    /// Print a group's semaphore as stored in etcd (JSON).
    Show {
        /// etcd endpoint, http://HOST:PORT (repeatable).
        #[arg(long = "etcd", value_name = "URL", required = true)]
        etcd: Vec<String>,
        /// The reboot group.
        #[arg(long, default_value = "default")]
        group: String,
    },
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let timeout = std::time::Duration::from_secs(3);
    match cmd {
        Cmd::Serve {
            config,
            listen,
            etcd,
            groups,
            holder_ttl,
            etcd_timeout,
        } => {
            let mut s = match &config {
                Some(p) => Settings::from_file(p)?,
                None => Settings::default(),
            };
            if let Some(l) = listen {
                s.listen = l;
            }
            if !etcd.is_empty() {
                s.etcd_endpoints = etcd;
            }
            for g in &groups {
                s.add_group(g)?;
            }
            if let Some(t) = holder_ttl {
                s.holder_ttl_secs = t;
            }
            if let Some(t) = etcd_timeout {
                s.etcd_timeout_secs = t;
            }
            s.check()?;
            let listener = tokio::net::TcpListener::bind(&s.listen)
                .await
                .map_err(|e| anyhow::anyhow!("listening on {}: {e}", s.listen))?;
            tracing::info!(
                "berth-fleetlock: listening on {}; etcd {}; groups {:?}; holder TTL {}",
                listener.local_addr()?,
                s.etcd_endpoints.join(","),
                s.groups,
                s.holder_ttl()
                    .map(|t| format!("{} s", t.as_secs()))
                    .unwrap_or_else(|| "none".into())
            );
            berth_fleetlock::serve(s, listener, shutdown()).await
        }
        Cmd::Release { etcd, group, id } => {
            anyhow::ensure!(
                berth_fleetlock::server::valid_group(&group),
                "invalid group {group:?}"
            );
            let store = Store::connect(&etcd, timeout, None).await?;
            let Some((sem, _)) = store.get(&group).await? else {
                anyhow::bail!("group {group} has no semaphore in etcd (nobody ever locked it)");
            };
            let out = store.unlock(&group, sem.total_slots, &id).await?;
            if out.changed {
                println!(
                    "released: {id} no longer holds a slot of {group} ({}/{} held)",
                    out.semaphore.holders.len(),
                    out.semaphore.total_slots
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "{id} holds no slot of {group} (holders: {})",
                    out.semaphore.holders.join(", ")
                )
            }
        }
        Cmd::Show { etcd, group } => {
            let store = Store::connect(&etcd, timeout, None).await?;
            match store.get(&group).await? {
                Some((sem, version)) => {
                    println!("{}", sem.to_json());
                    let expired = store.expired(&group).await?;
                    eprintln!("version {version}; expired holders (TTL): {expired:?}");
                    Ok(())
                }
                None => anyhow::bail!("group {group} has no semaphore in etcd"),
            }
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-fleetlock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("berth-fleetlock: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
