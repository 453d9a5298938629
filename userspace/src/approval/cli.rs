//! `airlock requests|approve|deny|revoke|plan submit`: clients of the daemon's approvals API.
//!
//! The API address comes from `--api`, else `daemon.api` in `--config`. The bearer token from
//! `--token`/`AIRLOCK_API_TOKEN`, else the admin token file (`--token-file`, else the one the
//! config names), else the token `airlock login` cached.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

use super::model::{ApprovalRequest, Ruling};

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiArgs {
    /// API address (host:port); default `daemon.api` from --config.
    #[arg(long, env = "AIRLOCK_API")]
    pub api: Option<SocketAddr>,
    /// The daemon's config file (for the API address and the admin token file).
    #[arg(long, env = "AIRLOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin token file (default from the config: <state_dir>/api.token).
    #[arg(long, env = "AIRLOCK_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A bearer token (admin or OIDC).
    #[arg(long, env = "AIRLOCK_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl ApiArgs {
    fn connect(&self) -> anyhow::Result<Api> {
        let config = match &self.config {
            Some(p) => Some(crate::config::Config::load(p)?),
            None => None,
        };
        let addr = self
            .api
            .or_else(|| config.as_ref().and_then(|c| c.daemon.api))
            .ok_or_else(|| {
                anyhow!("no API address: pass --api HOST:PORT or --config FILE with daemon.api")
            })?;
        let token = self.token.clone().map(Ok).unwrap_or_else(|| {
            let file = self.token_file.clone().or_else(|| {
                config.as_ref().map(|c| {
                    c.daemon
                        .approvals
                        .token_path(&c.daemon.state_dir)
                })
            });
            if let Some(f) = &file
                && let Ok(t) = read_token(f)
            {
                return Ok(t);
            }
            crate::identity::login::cached_token().ok_or_else(|| {
                anyhow!(
                    "no credentials: the admin token file ({}) is not readable and there is no `airlock login` token",
                    file.map(|f| f.display().to_string()).unwrap_or_else(|| "none given".into())
                )
            })
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Api {
            base: format!("http://{addr}"),
            token,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            rt,
        })
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        bail!("{}: empty token file", path.display());
    }
    Ok(t.to_owned())
}

impl Api {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut req = self.client.request(method, &url).bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            let resp = req.send().await.with_context(|| format!("calling {url}"))?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{url}: answer is not JSON ({status})"))?;
            if !status.is_success() {
                let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("error");
                bail!("{msg} (HTTP {})", status.as_u16());
            }
            Ok(v)
        })
    }
}

fn age(ms: u64) -> String {
    let s = super::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = crate::audit::cli::escape_controls(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut s: String = flat.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// `airlock requests [--pending] [--json]`.
pub fn requests(args: &ApiArgs, pending: bool, json: bool) -> anyhow::Result<()> {
    let api = args.connect()?;
    let v = api.call(
        reqwest::Method::GET,
        if pending {
            "/v1/requests?pending=true"
        } else {
            "/v1/requests"
        },
        None,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: Vec<ApprovalRequest> = serde_json::from_value(v)?;
    if list.is_empty() {
        println!("no {}requests", if pending { "pending " } else { "" });
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:<6} {:<16} {:<12} {:<5} {:<14} {:<8} COMMAND",
        "ID", "STATE", "AGE", "SUBJECT", "TARGET", "VOTES", "APPROVERS", "DRY RUN"
    );
    for r in list {
        let approvals = r.approvals();
        let command = match r.commands.as_slice() {
            [one] => one_line(&one.text, 60),
            many => format!(
                "plan: {} commands{}",
                many.len(),
                r.task
                    .as_ref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            ),
        };
        println!(
            "{:<12} {:<9} {:<6} {:<16} {:<12} {:<5} {:<14} {:<8} {}",
            r.id,
            r.state.as_str(),
            age(r.created_ms),
            one_line(&r.subject, 16),
            one_line(&r.target, 12),
            format!("{approvals}/{}", r.quorum),
            r.eligible_groups().cloned().collect::<Vec<_>>().join(","),
            super::text::dry_run_short(r.dry_run.as_ref()),
            command
        );
    }
    Ok(())
}

/// Request ids go into URL paths: letters, digits and `-` only.
fn check_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("{id:?} is not a request id");
    }
    Ok(())
}

/// `airlock requests ID [--json]`: one request with its whole review context.
pub fn show(args: &ApiArgs, id: &str, json: bool) -> anyhow::Result<()> {
    check_id(id)?;
    let api = args.connect()?;
    let v = api.call(reqwest::Method::GET, &format!("/v1/requests/{id}"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r: ApprovalRequest = serde_json::from_value(v)?;
    // A client's control characters must not redraw what the reviewer reads.
    print!(
        "{}",
        crate::audit::cli::escape_controls(&super::text::describe(&r, super::now_ms()))
    );
    Ok(())
}

/// `airlock approve|deny|revoke ID [--reason …]`.
pub fn decide(
    args: &ApiArgs,
    id: &str,
    verdict: Ruling,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    check_id(id)?;
    let api = args.connect()?;
    let action = match verdict {
        Ruling::Approve => "approve",
        Ruling::Deny => "deny",
        Ruling::Revoke => "revoke",
    };
    let body = serde_json::to_vec(&without_nulls(serde_json::json!({ "reason": reason })))?;
    let v = api.call(
        reqwest::Method::POST,
        &format!("/v1/requests/{id}/{action}"),
        Some(body),
    )?;
    let r: ApprovalRequest = serde_json::from_value(v)?;
    let approvals = r.approvals();
    println!(
        "request {}: {} ({approvals}/{} approvals)",
        r.id,
        r.state.as_str(),
        r.quorum
    );
    Ok(())
}

/// `object` without its `null` fields: the API refuses `null` where its document says string or
/// integer, and an absent field is what an unset option means.
fn without_nulls(object: serde_json::Value) -> serde_json::Value {
    match object {
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// `airlock plan submit FILE`: FILE is YAML or JSON with `target`, `commands` and optionally
/// `subject`, `groups`, `task`, `ttl_seconds`, `uses`.
pub fn plan_submit(args: &ApiArgs, file: &Path, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plan: super::PlanSubmission =
        serde_norway::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let body = serde_json::to_vec(&without_nulls(serde_json::json!({
        "target": plan.target, "subject": plan.subject, "groups": plan.groups, "task": plan.task,
        "commands": plan.commands, "ttl_seconds": plan.ttl_seconds, "uses": plan.uses,
    })))?;
    let api = args.connect()?;
    let v = api.call(reqwest::Method::POST, "/v1/plans", Some(body))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r: ApprovalRequest = serde_json::from_value(v)?;
    println!(
        "plan {} submitted: {} commands for {} on {}; approve with: airlock approve {}",
        r.id,
        r.commands.len(),
        r.subject,
        r.target,
        r.id
    );
    Ok(())
}

/// `airlock credentials rotate TARGET` through a running daemon's API: the daemon rotates
/// and records it in the audit log.
pub fn rotate_credentials(args: &ApiArgs, target: &str) -> anyhow::Result<()> {
    let api = args.connect()?;
    let v = api.call(
        reqwest::Method::POST,
        &format!("/v1/targets/{target}/rotate-credentials"),
        None,
    )?;
    println!(
        "rotated the gateway's password on {target} (by the daemon, recorded in the audit log); new sessions read it from {}",
        v.get("password_file")
            .and_then(|f| f.as_str())
            .unwrap_or("?")
    );
    Ok(())
}
