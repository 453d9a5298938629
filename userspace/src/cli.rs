//! The `airlock` command line (contract in shared/design.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// airlock: a host-level access gateway.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: kernel programs, listeners, API, metrics. If a daemon already runs
    /// with the same state directory, this one takes its listening sockets over.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// The node address (overrides `daemon.node_address`; a DaemonSet passes the node's
        /// IP from the downward API).
        #[arg(long, env = "AIRLOCK_NODE_ADDRESS")]
        node_address: Option<std::net::IpAddr>,
    },
    /// Zero-downtime upgrade: the running daemon starts a new one from the binary on disk,
    /// hands it its listening sockets, and drains. Returns once the new daemon accepts.
    Upgrade {
        /// The daemon's configuration (for its control socket).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The control socket (default: `daemon.control_socket` of --config, else
        /// /var/lib/airlock/airlock.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Show attached programs, protected targets, listeners and pins.
    Status {
        /// bpffs directory of the daemon (default from --config, else /sys/fs/bpf/airlock).
        #[arg(long)]
        bpffs: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Detach the kernel programs and remove their pins. The only way to stop interception.
    Uninstall {
        #[arg(long)]
        bpffs: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Log in as a reviewer (OIDC device authorization flow) and cache the token for the API
    /// and CLI. The issuer comes from --issuer, or from an OIDC identity of --config.
    Login(LoginArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Recorded sessions (search by identity, target, time, text).
    Sessions(crate::audit::cli::SessionsArgs),
    /// A session's transcript with timing, or its terminal recordings played back.
    Replay(crate::audit::cli::ReplayArgs),
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List approval requests, or show one with its whole review context (parameters,
    /// identity and workload, rule, objects, dry run).
    Requests {
        /// Show this request in full.
        id: Option<String>,
        /// Only requests still waiting for a decision.
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::approval::cli::ApiArgs,
    },
    /// Approve a request (counts toward its quorum).
    Approve(DecideArgs),
    /// Deny a request; a held command is refused.
    Deny(DecideArgs),
    /// Revoke a pending request or an approval; a held command is aborted, and an SSH command
    /// a used approval released is ended.
    Revoke(DecideArgs),
    /// Pre-approved plans.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// The credentials the gateway holds for its targets.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// SSH gateway tools.
    Ssh {
        #[command(subcommand)]
        command: SshCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SshCommand {
    /// Print the `@cert-authority` line clients add to known_hosts and the user CA key servers
    /// trust (creates the CAs on first use).
    Ca(crate::protocol::ssh::cli::CaArgs),
}

/// `airlock credentials …`
#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Set a new random password for the gateway's login on a database target (PostgreSQL,
    /// MariaDB/MySQL) and write it to the target's `password_file`: new sessions use it, open
    /// sessions go on.
    Rotate {
        /// The target's name.
        target: String,
        #[arg(long)]
        config: PathBuf,
        /// The server's address (default: the target's `upstream`).
        #[arg(long)]
        upstream: Option<std::net::SocketAddr>,
        /// Rotate from this process even when the configuration names the daemon's API
        /// (then the rotation is not in the audit log, which the daemon writes).
        #[arg(long)]
        local: bool,
    },
}

/// Arguments of `approve`, `deny` and `revoke`.
#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The request id.
    pub id: String,
    /// Why (recorded with the decision).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub api: crate::approval::cli::ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Submit a plan file (YAML or JSON: target, commands, subject, groups, task, ttl_seconds,
    /// uses) for approval.
    Submit {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::approval::cli::ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, signatures and MACs; names any change, deletion, reordering or
    /// truncation.
    Verify(crate::audit::cli::VerifyArgs),
    /// Write the log as JSON lines (verifiable on its own with `verify --export`).
    Export(crate::audit::cli::ExportArgs),
    /// Send the signed head off the host (a file, syslog, a URL), once or as it moves; `verify
    /// --heads` then catches a log cut back to an older head.
    ExportHeads(crate::audit::cli::ExportHeadsArgs),
    /// Load an export into a log directory.
    Import(crate::audit::cli::ImportArgs),
    /// Create the Ed25519 signing key (`--force` on an existing log hands it over to the new
    /// key).
    Keygen(crate::audit::cli::KeygenArgs),
}

/// Arguments of `airlock login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Issuer URL (discovery at `{issuer}/.well-known/openid-configuration`).
    #[arg(long)]
    pub issuer: Option<String>,
    /// OAuth client id of the CLI at the issuer (default: the identity's audience).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Take the issuer, CA file and client id from this configuration's identities.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which OIDC identity of --config (default: the only one).
    #[arg(long)]
    pub identity: Option<String>,
    /// Extra CA bundle (PEM) for the issuer's TLS.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Where to cache the token (default: ~/.config/airlock/token.json).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy/config file.
    Check { file: PathBuf },
    /// Show what the policy decides for one command.
    Explain(Box<crate::policy::cli::ExplainArgs>),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run {
            config,
            node_address,
        } => run(config, node_address),
        Command::Upgrade {
            config,
            socket,
            timeout,
        } => upgrade(config, socket, timeout),
        Command::Status {
            bpffs,
            config,
            json,
        } => daemon_config(config.as_deref())
            .and_then(|daemon| status(&bpffs.unwrap_or(daemon.bpffs), &daemon.state_dir, json)),
        Command::Uninstall { bpffs, config } => {
            bpffs_dir(bpffs, config).and_then(|dir| uninstall(&dir))
        }
        Command::Login(args) => login(&args),
        Command::Sessions(args) => crate::audit::cli::sessions(&args),
        Command::Replay(args) => crate::audit::cli::replay(&args),
        Command::Audit { command } => match command {
            AuditCommand::Verify(args) => crate::audit::cli::verify(&args),
            AuditCommand::Export(args) => crate::audit::cli::export(&args),
            AuditCommand::ExportHeads(args) => crate::audit::cli::export_heads(&args),
            AuditCommand::Import(args) => crate::audit::cli::import(&args),
            AuditCommand::Keygen(args) => crate::audit::cli::keygen(&args),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Check { file } => crate::policy::cli::check(&file),
            PolicyCommand::Explain(args) => crate::policy::cli::explain(&args),
        },
        Command::Requests {
            id: Some(id),
            json,
            api,
            ..
        } => crate::approval::cli::show(&api, &id, json),
        Command::Requests {
            id: None,
            pending,
            json,
            api,
        } => crate::approval::cli::requests(&api, pending, json),
        Command::Approve(a) => decide(&a, crate::approval::Ruling::Approve),
        Command::Deny(a) => decide(&a, crate::approval::Ruling::Deny),
        Command::Revoke(a) => decide(&a, crate::approval::Ruling::Revoke),
        Command::Plan {
            command: PlanCommand::Submit { file, json, api },
        } => crate::approval::cli::plan_submit(&api, &file, json),
        Command::Credentials {
            command:
                CredentialsCommand::Rotate {
                    target,
                    config,
                    upstream,
                    local,
                },
        } => rotate_credentials(&config, &target, upstream, local),
        Command::Ssh {
            command: SshCommand::Ca(args),
        } => crate::protocol::ssh::cli::ca(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rotate_credentials(
    config_path: &std::path::Path,
    target: &str,
    upstream: Option<std::net::SocketAddr>,
    local: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = crate::config::Config::load(config_path)?;
    if config.daemon.api.is_some() && !local && upstream.is_none() {
        // The daemon rotates and records it.
        let api = crate::approval::cli::ApiArgs {
            api: None,
            config: Some(config_path.to_owned()),
            token_file: None,
            token: None,
        };
        return crate::approval::cli::rotate_credentials(&api, target);
    }
    let t = config
        .target(target)
        .with_context(|| format!("no target named `{target}`"))?;
    let account = crate::protocol::credentials::Account::of(t).with_context(|| {
        format!(
            "target `{target}` is not a database target (PostgreSQL, MariaDB/MySQL) with a login"
        )
    })?;
    let upstream = upstream.or(t.upstream).with_context(|| {
        format!("target `{target}` has no `upstream`; name the server with --upstream")
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let user = account.user();
    let file = runtime
        .block_on(crate::protocol::credentials::rotate(account, upstream))
        .with_context(|| format!("rotating the password of `{user}` on {target}"))?;
    println!(
        "rotated the password of `{user}` on {target}; new sessions read it from {}",
        file.display()
    );
    Ok(())
}

fn decide(a: &DecideArgs, verdict: crate::approval::Ruling) -> anyhow::Result<()> {
    crate::approval::cli::decide(&a.api, &a.id, verdict, a.reason.as_deref())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AIRLOCK_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Also installs the `log` bridge, so the kernel programs' aya-log lines arrive here.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn run(config: PathBuf, node_address: Option<std::net::IpAddr>) -> anyhow::Result<()> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let overrides = crate::daemon::Overrides { node_address };
    let stopped = runtime.block_on(crate::daemon::run(config, overrides))?;
    // Whatever outlived the drain goes with the runtime; a session's recorder then queues its
    // end record (`dropped`), so the log is closed only after.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let closer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match closer.block_on(stopped.audit.close()) {
        Ok(head) => tracing::info!(head, "audit log closed; head signed"),
        Err(error) => tracing::error!(%error, "closing the audit log"),
    }
    // Only now may a successor write the log alone.
    drop(stopped.successors);
    tracing::info!("airlock stopped");
    Ok(())
}

/// `airlock upgrade`: asks the running daemon to hand over to a new process.
fn upgrade(config: Option<PathBuf>, socket: Option<PathBuf>, timeout: u64) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => crate::config::Config::load(&c)?.daemon.control_socket(),
        (None, None) => crate::config::DaemonConfig::default().control_socket(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pid = runtime
        .block_on(crate::handover::request_upgrade(
            &socket,
            std::time::Duration::from_secs(timeout),
        ))
        .with_context(|| format!("upgrading the daemon at {}", socket.display()))?;
    println!("upgraded: the new daemon (pid {pid}) accepts; the old one drains");
    Ok(())
}

/// `airlock login`: resolves issuer and client id (flags first, then the config), runs the
/// device flow and caches the token.
fn login(args: &LoginArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let spec = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path)?;
            let oidc: Vec<_> = config
                .identities
                .iter()
                .filter(|i| i.oidc.is_some())
                .filter(|i| args.identity.as_deref().is_none_or(|n| n == i.name))
                .cloned()
                .collect();
            match (oidc.len(), &args.identity) {
                (1, _) => oidc.into_iter().next(),
                (0, Some(n)) => anyhow::bail!("{}: no OIDC identity named `{n}`", path.display()),
                (0, None) => anyhow::bail!("{}: no identity has `oidc`", path.display()),
                _ => anyhow::bail!(
                    "{}: several OIDC identities; choose one with --identity",
                    path.display()
                ),
            }
        }
        None => None,
    };
    let oidc = spec.as_ref().and_then(|s| s.oidc.as_ref());
    let issuer = args
        .issuer
        .clone()
        .or_else(|| oidc.map(|o| o.issuer.clone()))
        .context("give --issuer, or --config with an OIDC identity")?;
    let client_id = args
        .client_id
        .clone()
        .or_else(|| oidc.map(|o| o.audience.clone()))
        .context("give --client-id, or --config with an OIDC identity")?;
    let options = crate::identity::login::LoginOptions {
        scopes: Vec::new(),
        ca_file: args
            .ca_file
            .clone()
            .or_else(|| oidc.and_then(|o| o.ca_file.clone())),
        token_path: args.token_file.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = runtime.block_on(crate::identity::login::login_with(
        &issuer,
        &client_id,
        &options,
        |d| {
            eprintln!(
                "To log in, open {} and enter the code {}",
                d.verification_uri_complete
                    .as_deref()
                    .unwrap_or(&d.verification_uri),
                d.user_code
            );
        },
    ))?;
    eprintln!(
        "logged in at {} as client {}",
        token.issuer, token.client_id
    );
    Ok(())
}

/// The daemon's settings from `config`, or the defaults.
fn daemon_config(config: Option<&std::path::Path>) -> anyhow::Result<crate::config::DaemonConfig> {
    Ok(match config {
        Some(path) => crate::config::Config::load(path)?.daemon,
        None => crate::config::DaemonConfig::default(),
    })
}

fn bpffs_dir(bpffs: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bpffs {
        return Ok(dir);
    }
    Ok(daemon_config(config.as_deref())?.bpffs)
}

/// The io engine the running daemon recorded (`None` when it recorded none, or another
/// daemon did).
fn io_engine(state_dir: &std::path::Path, daemon: Option<u32>) -> Option<String> {
    let line = std::fs::read_to_string(state_dir.join(crate::daemon::IO_ENGINE_FILE)).ok()?;
    let (pid, engine) = line.trim_end().split_once(' ')?;
    (pid.parse::<u32>().ok()? == daemon?).then(|| engine.to_string())
}

fn status(bpffs: &std::path::Path, state_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = crate::intercept::bpf::pin_status(bpffs);
    // The daemon may live in another network namespace: read its socket table, never dial
    // the listener (that would be an unintercepted connection).
    let daemon_alive = status
        .daemon_tgid
        .is_some_and(crate::handover::process_alive);
    let listen_ports = status
        .daemon_tgid
        .filter(|_| daemon_alive)
        .map(listening_ports)
        .unwrap_or_default();
    let listening: Vec<(u16, bool)> = {
        let mut ports: Vec<u16> = status.targets.iter().map(|t| t.proxy_port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
            .into_iter()
            .map(|p| (p, listen_ports.contains(&p)))
            .collect()
    };
    let engine = io_engine(state_dir, status.daemon_tgid.filter(|_| daemon_alive));
    if json {
        let v = serde_json::json!({
            "bpffs": status.bpffs,
            "links": status.links,
            "targets": status.targets,
            "daemon_pid": status.daemon_tgid,
            "daemon_alive": daemon_alive,
            "io_engine": engine,
            "listeners": listening.iter().map(|(p, up)| serde_json::json!({"port": p, "listening": up})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("bpffs: {}", status.bpffs.display());
    if status.links.is_empty() {
        println!("programs: none attached (interception is off)");
    }
    for l in &status.links {
        println!(
            "program {:<14} link {:>6} prog {:>6}",
            l.program,
            l.link_id.map_or("?".into(), |v| v.to_string()),
            l.program_id.map_or("?".into(), |v| v.to_string())
        );
    }
    for t in &status.targets {
        println!(
            "target #{:<3} {:<24} port {:<5} -> proxy :{}",
            t.target_id, t.network, t.port, t.proxy_port
        );
    }
    for (port, up) in &listening {
        println!(
            "listener :{port} {}",
            if *up {
                "listening"
            } else {
                "DOWN (connections are refused)"
            }
        );
    }
    println!(
        "daemon: {}",
        match (status.daemon_tgid, daemon_alive) {
            (Some(pid), true) => format!("running (pid {pid})"),
            (Some(pid), false) =>
                format!("not running (last pid {pid}); interception stays in force, fail closed"),
            (None, _) => "never started".into(),
        }
    );
    if let Some(engine) = engine {
        println!("io engine: {engine}");
    }
    Ok(())
}

fn uninstall(bpffs: &std::path::Path) -> anyhow::Result<()> {
    let report = crate::intercept::bpf::uninstall(bpffs)?;
    println!(
        "detached {} program link(s), removed {} map pin(s) under {}",
        report.links.len(),
        report.maps.len(),
        bpffs.display()
    );
    Ok(())
}

/// TCP ports in LISTEN state in a process's network namespace.
fn listening_ports(pid: u32) -> Vec<u16> {
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(local), Some(state)) = (f.nth(1), f.nth(1)) else {
                continue;
            };
            if state != "0A" {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// Every session holds at least two sockets: lift the soft descriptor limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-parameter, then the same struct back in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}
