//! `airlock policy check` and `airlock policy explain`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Engine, Request};
use crate::config::Config;
use crate::model::{Command, Dialect, Identity, Protocol, Workload};

/// Arguments of `airlock policy explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The configuration/policy file.
    #[arg(long)]
    pub config: PathBuf,
    /// Target name.
    #[arg(long)]
    pub target: String,
    /// Subject of the caller (`unix:alice`, a token's `sub`).
    #[arg(long)]
    pub identity: String,
    /// Policy group of the caller (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Simulate the caller's unix user (workload matchers in `identities:` then apply).
    #[arg(long)]
    pub unix_user: Option<String>,
    /// Simulate the caller's uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Simulate the caller's cgroup v2 path.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Simulate the caller's command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// The command to judge.
    #[command(flatten)]
    pub command: CommandArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The command `policy explain` judges: exactly one form.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct CommandArgs {
    /// A SQL command (in the target's dialect; PostgreSQL for non-database targets).
    #[arg(long)]
    pub sql: Option<String>,
    /// A command line run on a host (SSH exec).
    #[arg(long)]
    pub exec: Option<String>,
    /// An interactive shell session.
    #[arg(long)]
    pub shell: bool,
    /// A file operation (SFTP): OP PATH [TO] (`read /srv/x`, `write notes.txt`,
    /// `rename /srv/a /srv/b`).
    #[arg(long, num_args = 2..=3, value_names = ["OP", "PATH"])]
    pub file: Option<Vec<String>>,
    /// An HTTP request: METHOD URL (an absolute URL or a path).
    #[arg(long, num_args = 2, value_names = ["METHOD", "URL"])]
    pub http: Option<Vec<String>>,
    /// A Kubernetes API request: VERB PATH (`delete /api/v1/namespaces/default/pods/web`;
    /// exec commands as `?command=` parameters).
    #[arg(long, num_args = 2, value_names = ["VERB", "PATH"])]
    pub kube: Option<Vec<String>>,
    /// A whole TCP connection.
    #[arg(long)]
    pub connect: bool,
}

impl CommandArgs {
    /// The command, and the protocol it is judged for (database targets give SQL its dialect).
    pub fn command(&self, target: Protocol) -> anyhow::Result<(Protocol, Command<'static>)> {
        let pair = |v: &Option<Vec<String>>| -> Option<(String, String)> {
            match v.as_deref() {
                Some([a, b]) => Some((a.clone(), b.clone())),
                _ => None,
            }
        };
        if let Some(sql) = &self.sql {
            let protocol = if target.dialect().is_some() {
                target
            } else {
                Protocol::Postgres
            };
            let dialect = protocol.dialect().unwrap_or(Dialect::Postgres);
            return Ok((
                protocol,
                Command::Sql {
                    dialect,
                    text: sql.clone().into(),
                    params: None,
                },
            ));
        }
        if let Some(line) = &self.exec {
            return Ok((
                Protocol::Ssh,
                Command::Exec {
                    line: line.clone().into(),
                },
            ));
        }
        if self.shell {
            return Ok((Protocol::Ssh, Command::Shell));
        }
        if let Some([op, path, to @ ..]) = self.file.as_deref() {
            let op: crate::model::FileOp = op.parse().map_err(anyhow::Error::msg)?;
            let norm = |p: &str| {
                super::files::normalize(p)
                    .ok_or_else(|| anyhow::anyhow!("{p}: climbs above the home directory"))
            };
            return Ok((
                Protocol::Ssh,
                Command::File {
                    op,
                    path: norm(path)?.into(),
                    to: to.first().map(|t| norm(t)).transpose()?.map(Into::into),
                },
            ));
        }
        if let Some((method, url)) = pair(&self.http) {
            let req = super::http::parse(&method, &url).map_err(anyhow::Error::msg)?;
            return Ok((Protocol::Http, Command::Http(req)));
        }
        if let Some((verb, path)) = pair(&self.kube) {
            let req = super::kube::parse(&verb, &path).map_err(anyhow::Error::msg)?;
            return Ok((Protocol::Kube, Command::Kube(req)));
        }
        Ok((Protocol::Tcp, Command::Connect))
    }
}

/// Validates a file and prints a summary.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    Engine::new(&config).with_context(|| format!("{}", path.display()))?;
    let shadow = config.rules.iter().filter(|r| r.shadow).count();
    let default = match config.default {
        crate::config::policy::DefaultAction::Deny => "deny",
        crate::config::policy::DefaultAction::Allow => "allow",
    };
    println!(
        "{}: ok ({} targets, {} identities, {} rules ({} shadow), default {}, {} masking rules)",
        path.display(),
        config.targets.len(),
        config.identities.len(),
        config.rules.len(),
        shadow,
        default,
        config.masking.len()
    );
    Ok(())
}

/// Explains one decision.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let engine = Engine::new(&config).with_context(|| format!("{}", args.config.display()))?;
    let target = config.target(&args.target).with_context(|| {
        format!(
            "{}: no target named `{}`",
            args.config.display(),
            args.target
        )
    })?;
    let simulated = args.unix_user.is_some()
        || args.uid.is_some()
        || args.cgroup.is_some()
        || args.comm.is_some();
    let mut identity = if simulated {
        let w = Workload {
            uid: args.uid.unwrap_or(u32::MAX),
            user: args.unix_user.clone(),
            cgroup_path: args.cgroup.clone(),
            comm: args.comm.clone().unwrap_or_default(),
            ..Default::default()
        };
        engine.identify(&w, None)
    } else {
        Identity::default()
    };
    identity.subject = args.identity.clone();
    for g in &args.groups {
        if !identity.groups.contains(g) {
            identity.groups.push(g.clone());
        }
    }
    let (protocol, command) = args.command.command(target.protocol)?;
    let req = Request {
        identity: &identity,
        target: &args.target,
        protocol,
        command: &command,
    };
    let e = engine.explain(&req);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("action:   {} (rule {})", e.action, e.rule);
    println!(
        "command:  {} ({} on {})",
        command, e.command_kind, e.protocol
    );
    if let Some(r) = &e.reason {
        println!("reason:   {r}");
    }
    let classes: Vec<&str> = e.classes.iter().map(|c| c.as_str()).collect();
    println!("classes:  {} (riskiest {})", classes.join(", "), e.class);
    println!("kinds:    {}", e.kinds.join(", "));
    if !e.tables_read.is_empty() {
        println!("reads:    {}", e.tables_read.join(", "));
    }
    if !e.tables_written.is_empty() {
        println!("writes:   {}", e.tables_written.join(", "));
    }
    if !e.functions.is_empty() {
        println!("calls:    {}", e.functions.join(", "));
    }
    if !e.programs.is_empty() {
        println!("programs: {}", e.programs.join(", "));
    }
    for o in &e.objects {
        println!("object:   {o}");
    }
    if let Some(r) = &e.run_as {
        println!("run as:   {r}");
    }
    if let Some(r) = &e.approved_run_as {
        println!("approved: runs as {r}");
    }
    if !e.mask.is_empty() {
        println!("mask:     {}", e.mask.join(", "));
    }
    if let Some(rules) = &e.record_bodies {
        println!("bodies:   recorded, masked with [{}]", rules.join(", "));
    }
    if let Some(r) = &e.review {
        println!(
            "review:   approvers {} quorum {} timeout {}s then {:?}, mode {:?}",
            r.approvers.join(","),
            r.quorum,
            r.timeout_seconds,
            r.on_timeout,
            r.mode
        );
    }
    if let Some(l) = &e.limit {
        println!("limit:    {l}");
    }
    for n in &e.notes {
        println!("note:     {n}");
    }
    for s in &e.shadow {
        println!("shadow:   rule {} would {}", s.rule, s.action.as_str());
    }
    println!("identity: {} groups [{}]", e.subject, e.groups.join(", "));
    println!("rules tried:");
    for t in &e.trace {
        let sh = if t.shadow { " (shadow)" } else { "" };
        println!("  {}{}: {}", t.rule, sh, t.result);
    }
    Ok(())
}
