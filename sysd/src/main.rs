//! `sysd`: the Berth supervisor (started by PID 1).

use std::path::Path;

fn main() -> std::process::ExitCode {
    // A container init started by the runtime (re-exec of this binary) never returns.
    berth_runtime::maybe_run_init();
    // Before anything opens a file: take the readiness fd PID 1 gave us.
    let ready = berth_sysd::ReadyFd::from_env();
    berth_sysd::single_malloc_arena();
    // Whatever the parent left blocked, sysd handles SIGTERM (ordered shutdown).
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // sysd's log goes to its stdout (PID 1 keeps it) and, once [logging] forward is set,
    // to the collector.
    let fwd = berth_sysd::logfwd::Forwarder::new();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .without_time()
                    .with_ansi(false),
            )
            .with(fwd.layer())
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .init();
    }
    let start: u32 = std::env::var("BERTH_SYSD_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(start, ready, fwd));
    // Threads still waiting on container processes must not hold up the exit (dropping
    // the runtime would wait for them).
    rt.shutdown_background();
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("sysd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    start: u32,
    ready: Option<berth_sysd::ReadyFd>,
    fwd: berth_sysd::logfwd::Forwarder,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let (config, config_problem) = berth_sysd::node::load_config(Path::new("/var"));
    if let Some(p) = &config_problem {
        tracing::error!("config: {p}");
    }
    let paths = berth_sysd::containers::Paths::node();
    let containers = match berth_sysd::containers::Manager::new(
        paths.clone(),
        berth_sysd::node::registry_client(&config),
    ) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!("containers cannot run: {e}");
            None
        }
    };
    let boot_info = std::fs::read_to_string(berth_api::BOOT_INFO_PATH)
        .ok()
        .and_then(|s| berth_api::BootInfo::from_json(&s).ok())
        .unwrap_or_default();
    let node =
        berth_sysd::node::Node::new(config.clone(), containers.clone(), boot_info.boot_count);
    node.start_network();
    // Before any container starts, so every line of theirs is forwarded.
    fwd.start(node.watch_config(), berth_sysd::logfwd::SPOOL_DIR.into());
    if let Some(m) = &containers {
        m.set_forwarder(fwd.clone());
    }
    berth_sysd::update::reset_esp();
    let updates = berth_sysd::update::NodeUpdates::new();
    let socket = Path::new(berth_api::SOCKET_PATH);
    let listener = berth_sysd::api::listen(socket)?;
    let audit = berth_sysd::audit::Audit::start(&paths.logs);
    let mut manager = berth_sysd::api::Manager {
        sysd_start: start,
        containers: containers.clone(),
        node: Some(node.clone()),
        updates: Some(updates.clone()),
        exec: Default::default(),
        owner: String::new(),
        caller: Default::default(),
        audit: Some(audit.clone()),
        remote: None,
    };
    if let Err(e) = berth_sysd::bridge::start(socket) {
        tracing::warn!("no host access to osctl: {:#}", anyhow::Error::from(e));
    }
    if let Err(e) = std::fs::read(berth_api::OS_RELEASE_PATH) {
        tracing::error!(
            "cannot read {}: {e} (the root image may be corrupt)",
            berth_api::OS_RELEASE_PATH
        );
    }
    tracing::info!("sysd started (start #{start}, pid {})", std::process::id());

    // Before the services start: ntpd mounts its config from here.
    if let Err(e) =
        berth_sysd::node::write_ntpd_conf(Path::new(berth_sysd::node::NTPD_CONF), &config)
    {
        tracing::error!("cannot write {}: {e}", berth_sysd::node::NTPD_CONF);
    }
    // Containers are registered (and, after a sysd restart, re-adopted) before the API
    // serves: a client never sees a node without its containers. The socket is bound
    // already, so early clients wait in its backlog.
    if let Some(m) = &containers {
        use berth_sysd::containers::{load_services, Kind};
        let (system, mut problems) = load_services(&paths.services);
        let (saved, p2) = m.saved_workloads();
        problems.extend(p2);
        let mut specs: Vec<_> = system.into_iter().map(|s| (s, Kind::System)).collect();
        specs.extend(config.containers.iter().cloned().map(|s| (s, Kind::Config)));
        specs.extend(saved.into_iter().map(|s| (s, Kind::Run)));
        m.report(&problems);
        // The workload bridge first: re-adopted bridged containers keep their ports.
        if let Err(e) = m.setup_network(&config.network.bridge, &specs).await {
            problems.push(e);
        }
        problems.extend(m.launch(specs));
        for p in problems {
            tracing::error!("containers: {p}");
        }
    }
    // The remote API (off without [api] ca); its connections share the exec sessions.
    let remote = berth_sysd::remote::start(
        node.watch_config(),
        manager.clone(),
        audit,
        Default::default(),
    );
    // Prometheus metrics (off without [metrics] listen); TLS shares the remote API's.
    tokio::spawn(berth_sysd::metrics::serve::run(
        node.watch_config(),
        berth_sysd::metrics::Sources {
            sysd_start: start,
            containers: containers.clone(),
            updates: Some(updates.clone()),
        },
        Some(remote.clone()),
        Default::default(),
    ));
    manager.remote = Some(remote);
    tokio::spawn(berth_sysd::api::serve(listener, manager));

    if let Some(mut r) = ready {
        if let Err(e) = r.ready() {
            tracing::warn!("cannot notify PID 1 of readiness: {e}");
        }
        // `berth: services` once every boot-time container is up.
        if let Some(m) = containers.clone() {
            tokio::spawn(async move {
                m.wait_boot_services(std::time::Duration::from_secs(120))
                    .await;
                tracing::info!("every boot-time container is up");
                if let Err(e) = r.services() {
                    tracing::warn!("cannot tell PID 1 the services are up: {e}");
                }
            });
        }
    }
    node.resume();
    let persisted = matches!(
        berth_config::store::Store::new(Path::new("/var")).current(),
        Ok(Some(_))
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match berth_sysd::node::pending_config_url(persisted, &boot_info, &cmdline) {
        Ok(Some(url)) => {
            tokio::spawn(node.clone().fetch_first_boot(url));
        }
        Ok(None) => {}
        Err(e) => node.set_source("defaults", format!("berth.config= skipped: {e}")),
    }
    tokio::spawn(updates.clone().at_boot(node.clone()));
    tokio::spawn(updates.auto(node.clone()));
    term.recv().await;
    tracing::info!("sysd stopping (SIGTERM): stopping containers");
    if let Some(m) = &containers {
        // PID 1 allows 20 s before it kills sysd.
        m.shutdown(std::time::Duration::from_secs(16)).await;
    }
    tracing::info!("sysd stopped");
    fwd.sync();
    Ok(())
}
