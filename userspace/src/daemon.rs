//! The daemon (`airlock run`): install interception, listen for redirected connections, resolve
//! who is calling and where they meant to go, and hand each session to its protocol handler.
//! Reloads the configuration on SIGHUP and when the file changes; a bad file keeps the last
//! good configuration running. On SIGTERM it drains ([`crate::drain`]); a new daemon takes
//! its sockets over without dropping a connection ([`crate::handover`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::audit::Recorder;
use crate::config::{Config, IoEngine};
use crate::drain::{Drain, Outcome, Watch};
use crate::handover::{self, Sockets};
use crate::identity::workload::WorkloadResolver;
use crate::intercept::{
    ConnTable, DaemonIdentity, Interceptor, Lookup, TargetEntry, events, system,
};
use crate::metrics::{DenyReason, Metrics};
use crate::policy::Engine;
use crate::protocol::{self, Session};
use crate::runtime::Context;

/// Builds the policy engine; on reload the new engine shares the old one's classification
/// cache.
fn build_engine(config: &Config, previous: Option<&Engine>) -> anyhow::Result<Engine> {
    Ok(match previous {
        Some(old) => old.rebuild(config)?,
        None => Engine::new(config)?,
    })
}

/// Kernel map entries for every (network, port) of every target.
pub fn target_entries(config: &Config) -> Vec<TargetEntry> {
    let mut out = Vec::new();
    for (i, t) in config.targets.iter().enumerate() {
        let proxy_port = config.listen_port(i);
        for cidr in &t.addresses {
            let (network, prefix_len) = cidr.to_mapped_v6();
            for &port in &t.ports {
                out.push(TargetEntry {
                    network: mask(network, prefix_len),
                    prefix_len,
                    port,
                    target_id: i as u32,
                    proxy_port,
                });
            }
        }
    }
    out
}

fn mask(addr: [u8; 16], prefix_len: u8) -> [u8; 16] {
    let v = u128::from_be_bytes(addr);
    let m = if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len))
    };
    (v & m).to_be_bytes()
}

/// The cgroup the programs attach to, in the host's hierarchy (`daemon.cgroup_root` in a
/// container with a cgroup namespace of its own).
fn attach_cgroup(config: &Config) -> anyhow::Result<PathBuf> {
    let root = system::ensure_mounts(&config.daemon.bpffs)?;
    let host_root = config.daemon.cgroup_root.clone().unwrap_or(root);
    Ok(match &config.daemon.cgroup {
        Some(dir) => host_root.join(dir),
        None => host_root,
    })
}

/// This process's pid as the host sees it (`daemon.proc_root`): the pid in hand-over messages
/// and in `airlock status`. Nothing is exempted by it (the daemon's sockets are marked).
fn host_pid(config: &Config) -> u32 {
    // `self` in a procfs resolves in that procfs's pid namespace.
    std::fs::read_link(config.daemon.proc_root.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(std::process::id)
}

fn daemon_identity(config: &Config) -> anyhow::Result<DaemonIdentity> {
    let (node_v4, node_v6) = match config.daemon.node_address {
        Some(IpAddr::V4(a)) => (Some(a), None),
        Some(IpAddr::V6(a)) => (None, Some(a)),
        None => (None, None),
    };
    Ok(DaemonIdentity {
        pid: host_pid(config),
        netns_cookie: system::own_netns_cookie().context("reading the network namespace cookie")?,
        node_v4,
        node_v6,
    })
}

/// How long sessions still open at the shutdown deadline get to send their protocol's error
/// and record their end.
const LAST_WAIT: Duration = Duration::from_secs(5);

/// What the daemon leaves for its caller once it has drained: the audit log to close after
/// every remaining task is gone (a session stuck past the deadline then records its end as
/// `dropped`), and the control connections of successors, to hold until then (their end
/// tells a successor that this process no longer writes the log).
#[derive(Debug)]
pub struct Stopped {
    pub audit: Recorder,
    pub successors: Vec<handover::Channel>,
}

/// What the main loop hears from its helper tasks.
enum Event {
    /// A new daemon accepts on our sockets.
    HandedOver(handover::Successor),
    /// A hand-over failed before the new daemon was ready; it is gone now.
    HandoverFailed,
    /// The daemon we took over from has exited.
    PredecessorGone,
}

/// Settings given on the command line, over the configuration file's (on every reload too).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_address: Option<IpAddr>,
}

impl Overrides {
    fn load(&self, path: &Path) -> Result<Config, crate::config::ConfigError> {
        let mut config = Config::load(path)?;
        if let Some(addr) = self.node_address {
            config.daemon.node_address = Some(addr);
        }
        Ok(config)
    }
}

/// Sets up the io_uring driver where the config asks for it; where the kernel or a seccomp
/// profile refuses a ring, sessions run on epoll. Either way the engine in use is logged and
/// written to `<state_dir>/io-engine` (with this daemon's pid) for `airlock status`. Read once
/// at start: a reload does not switch engines.
fn start_io_engine(ctx: &Context) {
    let cfg = ctx.config.load();
    let engine = match cfg.daemon.io_engine {
        IoEngine::Epoll => "epoll".to_string(),
        IoEngine::IoUring => match crate::relay::uring::Driver::start() {
            Ok(driver) => {
                let _ = ctx.uring.set(driver);
                "io_uring".to_string()
            }
            Err(error) => {
                tracing::warn!(%error, "io_uring unavailable; sessions run on epoll");
                format!("epoll (io_uring unavailable: {error})")
            }
        },
    };
    tracing::info!(engine, "io engine");
    let line = format!("{} {engine}\n", std::process::id());
    if let Err(error) = std::fs::write(cfg.daemon.state_dir.join(IO_ENGINE_FILE), line) {
        tracing::warn!(%error, "could not record the io engine for `airlock status`");
    }
}

/// Where the daemon records its io engine, under its state directory.
pub const IO_ENGINE_FILE: &str = "io-engine";

/// Runs the daemon until SIGTERM or SIGINT, or until a new daemon has taken over; then
/// drains (see [`crate::drain`]). Pinned links stay in force after exit.
pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<Stopped> {
    // The binary as started: after a package upgrade replaced it, this path names the new one.
    let exe = std::env::current_exe().context("locating the airlock binary")?;
    let config = overrides.load(&config_path)?;
    let engine = build_engine(&config, None)?;
    // Before anything is read from it (the control socket lives there too).
    system::own_dir(&config.daemon.state_dir)?;
    let control_path = config.daemon.control_socket();
    let (pid, proc_root) = (host_pid(&config), config.daemon.proc_root.clone());
    // A daemon already running with this state hands its listening sockets over.
    let (predecessor, inherited) =
        match handover::Predecessor::connect(&control_path, pid, &proc_root)
            .await
            .context("taking over from the running daemon")?
        {
            Some((p, sockets)) => (Some(p), sockets),
            None => (None, HashMap::new()),
        };
    let sockets = Arc::new(Sockets::with_inherited(inherited));
    let attach_cgroup = attach_cgroup(&config)?;
    let me = daemon_identity(&config)?;
    // A running daemon's sockets stay exempt while it drains: each carries its mark in the
    // pinned socket-storage map loaded here too, and it marks any new one the same way.
    let mut interceptor = Interceptor::install(&attach_cgroup, &config.daemon.bpffs, me)
        .context("installing the kernel programs")?;
    interceptor.guard_daemon_ports(
        [
            config.daemon.api,
            config.daemon.metrics,
            config.daemon.console.as_ref().map(|c| c.listen),
        ]
        .into_iter()
        .flatten()
        .map(|a| a.port())
        .collect(),
    );
    interceptor.sync_targets(&target_entries(&config))?;
    let cgroup_root = config
        .daemon
        .cgroup_root
        .clone()
        .or_else(system::cgroup2_mount);
    let event_metrics: Arc<std::sync::OnceLock<Arc<Context>>> = Arc::default();
    let event_ctx = Arc::clone(&event_metrics);
    events::spawn_readers(&mut interceptor, move |ev| {
        if let Some(ctx) = event_ctx.get() {
            let config = ctx.config.load();
            match (ev.kind, config.targets.get(ev.info.target_id as usize)) {
                (events::EventKind::Redirected, Some(t)) => ctx.metrics.intercepted(&t.name),
                (events::EventKind::Redirected, None) => {}
                (events::EventKind::BindRefused, _) => {
                    ctx.metrics.denied_connection(DenyReason::BindRefused)
                }
                _ => ctx.metrics.denied_connection(DenyReason::Unroutable),
            }
        }
        match ev.kind {
            events::EventKind::Redirected => tracing::debug!(
                pid = ev.info.tgid,
                uid = ev.info.uid,
                cgroup_id = ev.info.cgroup_id,
                dst = %events::original_dst(&ev.info),
                "connection intercepted"
            ),
            kind => tracing::warn!(
                ?kind,
                pid = ev.info.tgid,
                uid = ev.info.uid,
                cgroup_id = ev.info.cgroup_id,
                dst = %events::original_dst(&ev.info),
                "connection refused by the kernel programs"
            ),
        }
    })?;

    // The daemon we take over from still records the sessions it drains: share the log.
    let audit = if predecessor.is_some() {
        Recorder::open_shared(&config.daemon.audit, &config.daemon.state_dir)
    } else {
        Recorder::open(&config.daemon.audit, &config.daemon.state_dir)
    }
    .context("opening the audit log")?;
    let mask_key = crate::runtime::load_mask_key(&config.daemon.state_dir)?;
    crate::protocol::http::tls::prepare(&config).context("the HTTP interception CA")?;
    let metrics = Arc::new(Metrics::new());
    let drain = Drain::new();
    let grace = config.daemon.shutdown_grace;
    let ctx = Arc::new(Context::with_parts(
        config, engine, audit, metrics, mask_key,
    )?);
    start_io_engine(&ctx);
    {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            for error in ctx.oidc.load().warm_up().await {
                tracing::warn!(%error, "OIDC discovery failed; tokens from this issuer are refused until it answers");
            }
        });
    }
    {
        let cfg = ctx.config.load();
        let approvals = crate::approval::Approvals::open(
            &cfg.daemon.approvals,
            &cfg.daemon.state_dir,
            Arc::clone(&ctx.metrics),
        )
        .await
        .context("opening the approval store")?;
        let _ = ctx.approvals.set(approvals);
    }
    tokio::spawn(crate::protocol::credentials::schedule(
        Arc::clone(&ctx),
        drain.watch(),
    ));
    // Metrics, health, the REST API and the console: one HTTP server stack.
    crate::web::start(&ctx, &sockets, &drain)
        .await
        .context("starting the HTTP listeners")?;
    let conns = interceptor.conns();
    let _ = event_metrics.set(Arc::clone(&ctx));
    let resolver = Arc::new(WorkloadResolver::new(cgroup_root).with_proc_root(proc_root.clone()));
    let mut listeners = Listeners::default();
    let serving = Serving {
        ctx: &ctx,
        conns: &conns,
        resolver: &resolver,
        sockets: &sockets,
        drain: &drain,
    };
    listeners
        .reconcile(&serving)
        .await
        .context("binding proxy listeners")?;
    for addr in sockets.close_unclaimed() {
        tracing::info!(%addr, "closed an inherited socket the configuration no longer uses");
    }
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<Event>(8);
    let mut predecessor_alive = false;
    if let Some(p) = predecessor {
        p.ready()
            .await
            .context("telling the running daemon to stop accepting")?;
        predecessor_alive = true;
        let tx = events_tx.clone();
        tokio::spawn(async move {
            p.gone().await;
            let _ = tx.send(Event::PredecessorGone).await;
        });
    }
    // Bound once we accept: from here on a new daemon takes over from this one.
    let mut control = handover::serve_control(&control_path, pid, &proc_root)?;
    ctx.metrics.health.set_ready(true);
    // Under systemd an upgrade's new process becomes the service's main process.
    if let Err(error) = sd_notify::notify(&[
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Ready,
    ]) {
        tracing::warn!(%error, "systemd notification failed");
    }
    tracing::info!(config = %config_path.display(), targets = ctx.config.load().targets.len(), pid, "airlock running");

    let (handed_tx, handed_rx) = tokio::sync::watch::channel(None::<u32>);
    let mut handing_over = false;
    let mut successors = Vec::new();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut seen = modified(&config_path);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        let reason = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if modified(&config_path) == seen { continue; }
                "file changed"
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: starting a new daemon to take over");
                tokio::spawn(upgrade(exe.clone(), config_path.clone(), overrides.clone(), None, handed_rx.clone()));
                continue;
            }
            Some(request) = control.recv() => {
                match request {
                    handover::Request::TakeOver(successor) => {
                        if let Some(why) = refuse_takeover(handing_over, predecessor_alive) {
                            tokio::spawn(successor.refuse(why));
                        } else {
                            handing_over = true;
                            ctx.metrics.health.set_ready(false);
                            tokio::spawn(hand_over(successor, Arc::clone(&ctx), Arc::clone(&sockets), events_tx.clone()));
                        }
                    }
                    handover::Request::Upgrade(requester) => {
                        tracing::info!("upgrade requested: starting a new daemon to take over");
                        tokio::spawn(upgrade(exe.clone(), config_path.clone(), overrides.clone(), Some(requester), handed_rx.clone()));
                    }
                }
                continue;
            }
            Some(event) = events_rx.recv() => {
                match event {
                    Event::HandedOver(successor) => {
                        handed_tx.send_replace(Some(successor.pid));
                        successors.push(successor.into_channel());
                        break "handed over";
                    }
                    Event::HandoverFailed => {
                        handing_over = false;
                        ctx.metrics.health.set_ready(true);
                    }
                    Event::PredecessorGone => {
                        predecessor_alive = false;
                        predecessor_gone(&ctx).await;
                    }
                }
                continue;
            }
        };
        reload(
            &config_path,
            &overrides,
            reason,
            &mut interceptor,
            &mut listeners,
            &serving,
        )
        .await;
        // A SIGHUP after an edit must not be followed by a second reload of the same file.
        seen = modified(&config_path);
    };

    // Drain: stop accepting (the sockets close, or live on only in the successor), let the
    // sessions finish within the grace period, then end the rest.
    ctx.metrics.health.set_ready(false);
    if successors.is_empty() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    drain.start();
    sockets.close_all();
    tracing::info!(
        reason = why,
        sessions = drain.open(),
        grace_s = grace.as_secs_f64(),
        "airlock draining; pinned programs stay attached (fail closed)"
    );
    let drained = drain.run(grace, LAST_WAIT);
    tokio::pin!(drained);
    let outcome = loop {
        tokio::select! {
            outcome = &mut drained => break outcome,
            // A new daemon started while this one drains shares the log with it.
            Some(request) = control.recv() => match request {
                handover::Request::TakeOver(successor) => {
                    if let Some(why) = refuse_takeover(handing_over, predecessor_alive) {
                        tokio::spawn(successor.refuse(why));
                    } else {
                        handing_over = true;
                        tokio::spawn(hand_over(successor, Arc::clone(&ctx), Arc::clone(&sockets), events_tx.clone()));
                    }
                }
                handover::Request::Upgrade(requester) => {
                    tokio::spawn(requester.answer(Err("this daemon is draining".into())));
                }
            },
            Some(event) = events_rx.recv() => match event {
                Event::HandedOver(successor) => successors.push(successor.into_channel()),
                Event::HandoverFailed => handing_over = false,
                Event::PredecessorGone => {
                    predecessor_alive = false;
                    predecessor_gone(&ctx).await;
                }
            },
        }
    };
    match outcome {
        Outcome::Finished => tracing::info!("every session ended within the grace period"),
        Outcome::Deadline { ended } => {
            tracing::info!(
                sessions = ended,
                "grace period over: open sessions were ended"
            )
        }
        Outcome::Abandoned { remaining } => {
            tracing::warn!(
                sessions = remaining,
                "sessions did not end after the deadline; dropping them"
            )
        }
    }
    // A held command the drain ended withdrew its request; that is written before we exit.
    if let Some(approvals) = ctx.approvals.get()
        && tokio::time::timeout(LAST_WAIT, approvals.settle())
            .await
            .is_err()
    {
        tracing::warn!("approval withdrawals still unwritten at exit");
    }
    Ok(Stopped {
        audit: ctx.audit.clone(),
        successors,
    })
}

/// Why a new daemon may not take over now, if it may not.
fn refuse_takeover(handing_over: bool, predecessor_alive: bool) -> Option<&'static str> {
    if handing_over {
        Some("another hand-over is in progress")
    } else if predecessor_alive {
        // The log is shared with that daemon; a third writer would outlive what we track.
        Some(
            "this daemon still shares the audit log with the one it replaced; retry once that has drained",
        )
    } else {
        None
    }
}

/// Passes our listening sockets to a new daemon and waits until it accepts on them.
async fn hand_over(
    mut successor: handover::Successor,
    ctx: Arc<Context>,
    sockets: Arc<Sockets>,
    events: tokio::sync::mpsc::Sender<Event>,
) {
    let pid = successor.pid;
    let result = async {
        // Shared first: the new daemon opens the log as soon as it has our sockets.
        ctx.audit.share().await.context("sharing the audit log")?;
        let passed = sockets.for_successor().context("duplicating the sockets")?;
        successor.send_listeners(&passed).await?;
        successor.wait_ready().await?;
        anyhow::Ok(passed.len())
    }
    .await;
    match result {
        Ok(n) => {
            tracing::info!(
                successor = pid,
                sockets = n,
                "handed over; stopping accepting and draining"
            );
            let _ = events.send(Event::HandedOver(successor)).await;
        }
        Err(error) => {
            tracing::error!(successor = pid, error = %format!("{error:#}"), "hand-over failed; this daemon keeps serving");
            // It may have written the log already: share it until the process is gone.
            successor.gone().await;
            if let Err(error) = ctx.audit.unshare().await {
                tracing::error!(%error, "audit: cannot take the log back");
            }
            let _ = events.send(Event::HandoverFailed).await;
        }
    }
}

/// The daemon we took over from has exited: the log is ours alone. (The kernel exemption of
/// its sockets ended with each socket: a mark lives in the socket's own storage.)
async fn predecessor_gone(ctx: &Context) {
    if let Err(error) = ctx.audit.unshare().await {
        tracing::error!(%error, "audit: cannot take the shared log over");
    }
    tracing::info!("the previous daemon has exited");
}

/// Starts a new daemon from the binary on disk; it takes over through the control socket.
/// Answers `requester` once it has (or has failed).
async fn upgrade(
    exe: PathBuf,
    config: PathBuf,
    overrides: Overrides,
    requester: Option<handover::Requester>,
    mut handed: tokio::sync::watch::Receiver<Option<u32>>,
) {
    let result = async {
        let mut child = handover::spawn_successor(&exe, &config, overrides.node_address)
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        tokio::select! {
            status = child.wait() => Err(match status {
                Ok(s) => format!("the new daemon exited before taking over ({s}); see its log"),
                Err(e) => format!("the new daemon: {e}"),
            }),
            r = handed.wait_for(Option::is_some) => r
                .ok()
                .and_then(|pid| *pid)
                .ok_or_else(|| "this daemon stopped".to_owned()),
            () = tokio::time::sleep(handover::READY_TIMEOUT + Duration::from_secs(30)) => {
                Err("the new daemon did not take over in time".to_owned())
            }
        }
    }
    .await;
    match &result {
        Ok(pid) => tracing::info!(successor = pid, "upgrade done"),
        Err(error) => tracing::error!(%error, "upgrade failed; this daemon keeps serving"),
    }
    if let Some(r) = requester {
        r.answer(result).await;
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload(
    path: &Path,
    overrides: &Overrides,
    reason: &str,
    interceptor: &mut Interceptor,
    listeners: &mut Listeners,
    serving: &Serving<'_>,
) {
    let ctx = serving.ctx;
    let candidate = overrides
        .load(path)
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            let engine = build_engine(&c, Some(&ctx.engine.load()))?;
            Ok((c, engine))
        });
    let (config, engine) = match candidate {
        Ok(pair) => pair,
        Err(error) => {
            tracing::error!(reason, error = %format!("{error:#}"), "reload rejected; keeping the last good configuration");
            return;
        }
    };
    let entries = target_entries(&config);
    if let Err(error) = ctx.replace(config, engine) {
        tracing::error!(reason, error = %format!("{error:#}"), "reload rejected; keeping the last good configuration");
        return;
    }
    if let Err(error) = listeners.reconcile(serving).await {
        tracing::error!(reason, error = %format!("{error:#}"), "reload: binding listeners failed");
    }
    match interceptor.sync_targets(&entries) {
        Ok(()) => tracing::info!(reason, entries = entries.len(), "configuration reloaded"),
        Err(error) => tracing::error!(reason, %error, "reload: updating kernel targets failed"),
    }
}

/// What every accept loop needs.
struct Serving<'a> {
    ctx: &'a Arc<Context>,
    conns: &'a Arc<ConnTable>,
    resolver: &'a Arc<WorkloadResolver>,
    sockets: &'a Arc<Sockets>,
    drain: &'a Drain,
}

/// Proxy listeners by target name: the port, and each address's accept loop.
#[derive(Default)]
struct Listeners {
    by_target: HashMap<String, (u16, Vec<AcceptLoop>)>,
}

/// One listening address and the task accepting on it.
type AcceptLoop = (SocketAddr, JoinHandle<()>);

impl Listeners {
    /// Starts listeners for new targets, stops those of removed ones.
    async fn reconcile(&mut self, serving: &Serving<'_>) -> anyhow::Result<()> {
        let config = serving.ctx.config.load_full();
        let wanted: HashMap<&str, u16> = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), config.listen_port(i)))
            .collect();
        self.by_target.retain(|name, (port, tasks)| {
            let keep = wanted.get(name.as_str()) == Some(port);
            if !keep {
                for (addr, task) in tasks.iter() {
                    task.abort();
                    serving.sockets.release(*addr);
                }
            }
            keep
        });
        for (name, port) in wanted {
            if self.by_target.contains_key(name) {
                continue;
            }
            let mut addrs = vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            ];
            if let Some(node) = config.daemon.node_address {
                addrs.push(SocketAddr::new(node, port));
            }
            let mut tasks = Vec::new();
            for addr in addrs {
                let listener = match serving.sockets.bind(addr) {
                    Ok(l) => l,
                    // Hosts without IPv6 on loopback still serve IPv4 and mapped clients.
                    Err(e) if addr.is_ipv6() && addr.ip().is_loopback() => {
                        tracing::warn!(%addr, error = %e, "no IPv6 loopback listener");
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("listen on {addr}")),
                };
                tracing::info!(target = name, %addr, "listening");
                let task = tokio::spawn(accept_loop(
                    listener,
                    name.to_owned(),
                    Arc::clone(serving.ctx),
                    Arc::clone(serving.conns),
                    Arc::clone(serving.resolver),
                    serving.drain.watch(),
                ));
                tasks.push((addr, task));
            }
            self.by_target.insert(name.to_owned(), (port, tasks));
        }
        Ok(())
    }
}

/// Accepts until the drain starts; each session holds a drain watch until it has ended.
async fn accept_loop(
    listener: TcpListener,
    target_name: String,
    ctx: Arc<Context>,
    conns: Arc<ConnTable>,
    resolver: Arc<WorkloadResolver>,
    drain: Watch,
) {
    // Listeners are bound to one address each, so every accepted socket has this local
    // address (read once: a getsockname per accept shows in connect latency).
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => {
            tracing::error!(target = %target_name, %error, "listener has no local address");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(target = %target_name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Dropping the listener closes it here; a successor holds its own copy.
            () = drain.draining() => return,
        };
        let ctx = Arc::clone(&ctx);
        let conns = Arc::clone(&conns);
        let resolver = Arc::clone(&resolver);
        let name = target_name.clone();
        let session_drain = drain.clone();
        // The record lookup is two map syscalls: do it in the session's task, not between
        // accepts.
        tokio::spawn(async move {
            let accepted = Accepted {
                record: conns.take(peer, local),
                stream,
                peer,
                local,
            };
            if let Some(session) = admit(accepted, &name, &ctx, &resolver, session_drain) {
                protocol::serve(session, ctx).await;
            }
        });
    }
}

/// A connection as the listener accepted it, with its interception record.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The listener's address.
    local: SocketAddr,
    record: Lookup,
}

/// Decides whether an accepted connection becomes a session, and with what identity. A record
/// is only honoured by the listener (target and port) it was made for.
fn admit(
    accepted: Accepted,
    target_name: &str,
    ctx: &Context,
    resolver: &WorkloadResolver,
    drain: Watch,
) -> Option<Session> {
    let Accepted {
        stream,
        peer,
        local,
        record,
    } = accepted;
    let config = ctx.config.load();
    let index = config.targets.iter().position(|t| t.name == target_name)?;
    // Shared with the configuration: a session holds its target without copying it.
    let target = Arc::clone(&config.targets[index]);
    let (workload, original_dst) = match record {
        Lookup::Found(info) => {
            if let Err(error) = events::check_record(&info, index, &target, local) {
                tracing::warn!(target = target_name, %peer, %local, %error, "refused a connection whose interception record belongs elsewhere");
                ctx.metrics.denied_connection(DenyReason::Unintercepted);
                return None;
            }
            let mut w = events::workload_from(&info, Some(peer));
            resolver.resolve(&mut w);
            let dst = events::original_dst(&info);
            (Some(w), Some(dst))
        }
        Lookup::Expired { age } => {
            tracing::warn!(target = target_name, %peer, ?age, "refused a connection whose interception record expired");
            ctx.metrics.denied_connection(DenyReason::Unintercepted);
            return None;
        }
        Lookup::Missing if config.daemon.accept_unintercepted => {
            (None, system::iptables_original_dst(&stream))
        }
        Lookup::Missing => {
            // Not redirected by our programs: somebody dialled the listener directly.
            tracing::warn!(target = target_name, %peer, "refused a connection without an interception record");
            ctx.metrics.denied_connection(DenyReason::Unintercepted);
            return None;
        }
    };
    let upstream = match target.upstream.or(original_dst) {
        Some(u) => u,
        None => {
            tracing::warn!(target = target_name, %peer, "no upstream: set `upstream` for this target");
            return None;
        }
    };
    Some(Session {
        id: ctx.next_session_id(),
        client: stream,
        target,
        workload,
        upstream,
        started: Instant::now(),
        drain,
    })
}
