//! The daemon: install interception, listen for redirected connections, resolve who is
//! calling and where they meant to go, and hand each session to its protocol handler.
//! Reloads the configuration on SIGHUP and when the file changes; a bad file keeps the last
//! good configuration running.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::audit::Recorder;
use crate::config::{Config, TargetConfig};
use crate::identity::oidc::OidcVerifier;
use crate::identity::workload::WorkloadResolver;
use crate::intercept::{ConnTable, DaemonIdentity, Interceptor, TargetEntry, events, system};
use crate::mask::Masker;
use crate::metrics::{DenyReason, Metrics};
use crate::policy::Engine;
use crate::protocol::{self, Session};

/// State shared by every session. What the configuration decides is swapped atomically on
/// reload; a session loads each piece once per command.
pub struct Context {
    pub config: ArcSwap<Config>,
    pub engine: ArcSwap<Engine>,
    /// Masking rules compiled from the config, with the gateway's hash key.
    pub masker: ArcSwap<Masker>,
    /// Trusted OIDC issuers from the config's identities.
    pub oidc: ArcSwap<OidcVerifier>,
    pub metrics: Arc<Metrics>,
    /// The session log (disabled in unit tests and benchmarks that say so).
    pub audit: Recorder,
    /// The approval workflow (set once at start; unset means reviews are refused).
    pub approvals: std::sync::OnceLock<Arc<crate::approval::Approvals>>,
    mask_key: Vec<u8>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("targets", &self.config.load().targets.len())
            .field("audit", &self.audit.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for a validated configuration, with the audit log off and a random masking
    /// key (tests, benchmarks). The daemon uses [`Context::with_parts`].
    pub fn new(config: Config, engine: Engine) -> anyhow::Result<Self> {
        let mut key = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| anyhow::anyhow!("no randomness for the masking key"))?;
        Self::with_parts(
            config,
            engine,
            Recorder::disabled(),
            Arc::new(Metrics::new()),
            key,
        )
    }

    /// A context with an open audit log, shared metrics and the persistent masking key.
    pub fn with_parts(
        config: Config,
        engine: Engine,
        audit: Recorder,
        metrics: Arc<Metrics>,
        mask_key: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let masker = Masker::new(&config.masking, &mask_key).context("masking rules")?;
        let oidc = OidcVerifier::new(&config.identities).context("OIDC identities")?;
        Ok(Context {
            config: ArcSwap::from_pointee(config),
            engine: ArcSwap::from_pointee(engine),
            masker: ArcSwap::from_pointee(masker),
            oidc: ArcSwap::from_pointee(oidc),
            metrics,
            audit,
            approvals: std::sync::OnceLock::new(),
            mask_key,
            next_session: AtomicU64::new(1),
        })
    }

    /// Swaps in a new configuration whose engine is already built; everything derived from
    /// the config is rebuilt first, so a failure leaves the old state whole.
    pub fn replace(&self, config: Config, engine: Engine) -> anyhow::Result<()> {
        let masker = Masker::new(&config.masking, &self.mask_key).context("masking rules")?;
        let oidc = OidcVerifier::new(&config.identities).context("OIDC identities")?;
        self.masker.store(Arc::new(masker));
        self.oidc.store(Arc::new(oidc));
        self.engine.store(Arc::new(engine));
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// A fresh session id, unique for this daemon run.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

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

/// The cgroup the programs attach to, and this daemon's own cgroup id.
fn cgroups(config: &Config) -> anyhow::Result<(PathBuf, u64)> {
    let root = system::ensure_mounts(&config.daemon.bpffs)?;
    let attach = match &config.daemon.cgroup {
        Some(dir) => root.join(dir),
        None => root.clone(),
    };
    let own = system::own_cgroup_path()?;
    let own_dir = root.join(own.trim_start_matches('/'));
    let own_id = system::cgroup_id(&own_dir)?;
    Ok((attach, own_id))
}

fn daemon_identity(config: &Config, cgroup_id: u64) -> anyhow::Result<DaemonIdentity> {
    let (node_v4, node_v6) = match config.daemon.node_address {
        Some(IpAddr::V4(a)) => (Some(a), None),
        Some(IpAddr::V6(a)) => (None, Some(a)),
        None => (None, None),
    };
    Ok(DaemonIdentity {
        cgroup_id,
        tgid: std::process::id(),
        netns_cookie: system::own_netns_cookie().context("reading the network namespace cookie")?,
        node_v4,
        node_v6,
    })
}

/// Runs the daemon until SIGTERM or SIGINT. Pinned links stay in force after exit.
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    let engine = build_engine(&config, None)?;
    let (attach_cgroup, own_cgroup) = cgroups(&config)?;
    let me = daemon_identity(&config, own_cgroup)?;
    let mut interceptor = Interceptor::install(&attach_cgroup, &config.daemon.bpffs, me)
        .context("installing the kernel programs")?;
    interceptor.sync_targets(&target_entries(&config))?;
    let cgroup_root = system::cgroup2_mount();
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

    let audit = Recorder::open(&config.daemon.audit, &config.daemon.state_dir)
        .context("opening the audit log")?;
    let mask_key = load_or_create_key(&config.daemon.state_dir.join("mask.key"))?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = config.daemon.metrics {
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(addr, m).await {
                tracing::error!(%addr, %error, "metrics endpoint failed");
            }
        });
    }
    let ctx = Arc::new(Context::with_parts(
        config, engine, audit, metrics, mask_key,
    )?);
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
        if let Some(addr) = cfg.daemon.api {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                if let Err(error) = crate::approval::api::serve(addr, ctx).await {
                    tracing::error!(%addr, %error, "approvals API failed");
                }
            });
        }
    }
    let conns = interceptor.conns();
    let _ = event_metrics.set(Arc::clone(&ctx));
    let resolver = Arc::new(WorkloadResolver::new(cgroup_root));
    let mut listeners = Listeners::default();
    listeners
        .reconcile(&ctx, &conns, &resolver)
        .await
        .context("binding proxy listeners")?;
    tracing::info!(config = %config_path.display(), targets = ctx.config.load().targets.len(), "airlock running");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut seen = modified(&config_path);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        let reason = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if modified(&config_path) == seen { continue; }
                "file changed"
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        reload(
            &config_path,
            reason,
            &ctx,
            &mut interceptor,
            &mut listeners,
            &conns,
            &resolver,
        )
        .await;
        // A SIGHUP after an edit must not be followed by a second reload of the same file.
        seen = modified(&config_path);
    }
    tracing::info!("airlock stopping; pinned programs stay attached (fail closed)");
    if let Err(error) = ctx.audit.close().await {
        tracing::error!(%error, "closing the audit log");
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload(
    path: &Path,
    reason: &str,
    ctx: &Arc<Context>,
    interceptor: &mut Interceptor,
    listeners: &mut Listeners,
    conns: &Arc<ConnTable>,
    resolver: &Arc<WorkloadResolver>,
) {
    let candidate = Config::load(path)
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
    if let Err(error) = listeners.reconcile(ctx, conns, resolver).await {
        tracing::error!(reason, error = %format!("{error:#}"), "reload: binding listeners failed");
    }
    match interceptor.sync_targets(&entries) {
        Ok(()) => tracing::info!(reason, entries = entries.len(), "configuration reloaded"),
        Err(error) => tracing::error!(reason, %error, "reload: updating kernel targets failed"),
    }
}

/// Proxy listeners by target name.
#[derive(Default)]
struct Listeners {
    by_target: HashMap<String, (u16, Vec<JoinHandle<()>>)>,
}

impl Listeners {
    /// Starts listeners for new targets, stops those of removed ones.
    async fn reconcile(
        &mut self,
        ctx: &Arc<Context>,
        conns: &Arc<ConnTable>,
        resolver: &Arc<WorkloadResolver>,
    ) -> anyhow::Result<()> {
        let config = ctx.config.load_full();
        let wanted: HashMap<&str, u16> = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), config.listen_port(i)))
            .collect();
        self.by_target.retain(|name, (port, tasks)| {
            let keep = wanted.get(name.as_str()) == Some(port);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
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
                let listener = match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    // Hosts without IPv6 on loopback still serve IPv4 and mapped clients.
                    Err(e) if addr.is_ipv6() && addr.ip().is_loopback() => {
                        tracing::warn!(%addr, error = %e, "no IPv6 loopback listener");
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("listen on {addr}")),
                };
                tracing::info!(target = name, %addr, "listening");
                tasks.push(tokio::spawn(accept_loop(
                    listener,
                    name.to_owned(),
                    Arc::clone(ctx),
                    Arc::clone(conns),
                    Arc::clone(resolver),
                )));
            }
            self.by_target.insert(name.to_owned(), (port, tasks));
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    target_name: String,
    ctx: Arc<Context>,
    conns: Arc<ConnTable>,
    resolver: Arc<WorkloadResolver>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                // Out of fds and the like: back off instead of spinning.
                tracing::warn!(target = %target_name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let conns = Arc::clone(&conns);
        let resolver = Arc::clone(&resolver);
        let name = target_name.clone();
        // The record lookup is two map syscalls: do it in the session's task, not between
        // accepts.
        tokio::spawn(async move {
            let record = conns.take(peer);
            if let Some(session) = admit(stream, peer, record, &name, &ctx, &resolver) {
                protocol::serve(session, ctx).await;
            }
        });
    }
}

/// Decides whether an accepted connection becomes a session, and with what identity.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    record: Option<airlock_common::ConnInfo>,
    target_name: &str,
    ctx: &Context,
    resolver: &WorkloadResolver,
) -> Option<Session> {
    let config = ctx.config.load();
    let target: Arc<TargetConfig> = Arc::new(config.target(target_name)?.clone());
    let (workload, original_dst) = match record {
        Some(info) => {
            let mut w = events::workload_from(&info, Some(peer));
            resolver.resolve(&mut w);
            let dst = events::original_dst(&info);
            (Some(w), Some(dst))
        }
        None if config.daemon.accept_unintercepted => {
            (None, system::iptables_original_dst(&stream))
        }
        None => {
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
    })
}

/// Reads a 32-byte secret, creating it (mode 0600) on first start. The masking hash key must
/// survive restarts so masked values keep joining.
fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => anyhow::bail!("{}: key shorter than 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("no randomness for {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key)
}
