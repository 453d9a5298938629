//! `airlock policy check` and `airlock policy explain`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Engine, Request};
use crate::config::Config;
use crate::identity::{Identity, Workload};

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
    /// The command (SQL).
    #[arg(long)]
    pub sql: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Validates a file and prints a summary.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    Engine::new(&config).with_context(|| format!("{}", path.display()))?;
    let shadow = config.rules.iter().filter(|r| r.shadow).count();
    let default = match config.default {
        super::spec::DefaultAction::Deny => "deny",
        super::spec::DefaultAction::Allow => "allow",
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
    let req = Request {
        identity: &identity,
        target: &args.target,
        protocol: target.protocol,
        command: &args.sql,
    };
    let e = engine.explain(&req);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("action:   {} (rule {})", e.action, e.rule);
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
    if !e.mask.is_empty() {
        println!("mask:     {}", e.mask.join(", "));
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
