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
    /// Run the daemon: kernel programs, listeners, API, metrics.
    Run {
        #[arg(long)]
        config: PathBuf,
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
    /// A session's transcript with timing.
    Replay(crate::audit::cli::ReplayArgs),
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List approval requests.
    Requests {
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
    /// Revoke a pending request or an unused approval; a held command is aborted.
    Revoke(DecideArgs),
    /// Pre-approved plans.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
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
    /// Check the hash chain and signatures; names any change, deletion, reordering or
    /// truncation.
    Verify(crate::audit::cli::VerifyArgs),
    /// Write the log as JSON lines (verifiable on its own with `verify --export`).
    Export(crate::audit::cli::ExportArgs),
    /// Load an export into a log directory.
    Import(crate::audit::cli::ImportArgs),
    /// Create the Ed25519 signing key.
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
    Explain(crate::policy::cli::ExplainArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Status {
            bpffs,
            config,
            json,
        } => bpffs_dir(bpffs, config).and_then(|dir| status(&dir, json)),
        Command::Uninstall { bpffs, config } => {
            bpffs_dir(bpffs, config).and_then(|dir| uninstall(&dir))
        }
        Command::Login(args) => login(&args),
        Command::Sessions(args) => crate::audit::cli::sessions(&args),
        Command::Replay(args) => crate::audit::cli::replay(&args),
        Command::Audit { command } => match command {
            AuditCommand::Verify(args) => crate::audit::cli::verify(&args),
            AuditCommand::Export(args) => crate::audit::cli::export(&args),
            AuditCommand::Import(args) => crate::audit::cli::import(&args),
            AuditCommand::Keygen(args) => crate::audit::cli::keygen(&args),
        },
        Command::Policy { command } => match command {
            PolicyCommand::Check { file } => crate::policy::cli::check(&file),
            PolicyCommand::Explain(args) => crate::policy::cli::explain(&args),
        },
        Command::Requests { pending, json, api } => {
            crate::approval::cli::requests(&api, pending, json)
        }
        Command::Approve(a) => decide(&a, crate::approval::Verdict::Approve),
        Command::Deny(a) => decide(&a, crate::approval::Verdict::Deny),
        Command::Revoke(a) => decide(&a, crate::approval::Verdict::Revoke),
        Command::Plan {
            command: PlanCommand::Submit { file, json, api },
        } => crate::approval::cli::plan_submit(&api, &file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn decide(a: &DecideArgs, verdict: crate::approval::Verdict) -> anyhow::Result<()> {
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

fn run(config: PathBuf) -> anyhow::Result<()> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::proxy::run(config))
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

fn bpffs_dir(bpffs: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = bpffs {
        return Ok(dir);
    }
    if let Some(path) = config {
        return Ok(crate::config::Config::load(&path)?.daemon.bpffs);
    }
    Ok(crate::config::DaemonConfig::default().bpffs)
}

fn status(bpffs: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let status = crate::intercept::bpf::pin_status(bpffs);
    // The daemon may live in another network namespace: read its socket table, never dial
    // the listener (that would be an unintercepted connection).
    let daemon_alive = status.daemon_tgid.is_some_and(process_alive);
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
    if json {
        let v = serde_json::json!({
            "bpffs": status.bpffs,
            "links": status.links,
            "targets": status.targets,
            "daemon_pid": status.daemon_tgid,
            "daemon_alive": daemon_alive,
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

/// A live (not zombie) airlock process.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ..." — comm may contain spaces, so split after the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    pid != 0 && !matches!(state, Some("Z" | "X"))
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
