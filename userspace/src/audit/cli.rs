//! `airlock sessions`, `airlock replay`, `airlock audit verify | export | import | keygen`.
//!
//! Each function takes a parsed args struct (`clap::Args`, to embed in the command tree) and
//! prints to stdout. Failures, including a log that does not verify, are `Err`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::record::{EndReason, Event, Record};
use super::time::{format_ts, now_us, parse_time};
use super::{
    SessionQuery, generate_key, load_public_key, load_session, public_key_path, search_sessions,
};

/// Where the log is: `--dir`, or the `daemon.audit` section of `--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogLocation {
    /// The daemon's configuration file (its `daemon.audit` section locates the log and key).
    #[arg(long, env = "AIRLOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// The audit log directory (overrides the config).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl LogLocation {
    /// The log directory and the signing key path.
    pub fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let daemon = match &self.config {
            Some(path) => crate::config::Config::load(path)?.daemon,
            None => crate::config::DaemonConfig::default(),
        };
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| daemon.audit.dir(&daemon.state_dir));
        Ok((dir, daemon.audit.signing_key(&daemon.state_dir)))
    }

    fn dir(&self) -> anyhow::Result<PathBuf> {
        let (dir, _) = self.resolve()?;
        if !dir.is_dir() {
            bail!(
                "{}: no audit log here (give --dir or --config)",
                dir.display()
            );
        }
        Ok(dir)
    }
}

/// Arguments of `airlock sessions`.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Subject (substring) or group name.
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// Sessions active at or after: RFC 3339 UTC, a date, or an age (`2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Sessions started at or before (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Some command contains this text (case-insensitive).
    #[arg(long)]
    pub text: Option<String>,
    /// Show at most this many (the most recent).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `airlock replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Session id (or a unique prefix of it).
    pub session: String,
    /// Print the session's records as JSON lines instead of a transcript.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `airlock audit verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Public key file (default: `<signing key>.pub` from the config).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Verify this export file instead of the log directory.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A header line (signed head and anchor), then the records byte for byte.
    Jsonl,
}

/// Arguments of `airlock audit export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub log: LogLocation,
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Arguments of `airlock audit import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// An export file.
    pub file: PathBuf,
    /// Empty or new directory to recreate the log in.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Arguments of `airlock audit keygen`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Key file to write (default: `daemon.audit.signing_key` from the config).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing key (the old one is still needed to verify the existing log).
    #[arg(long)]
    pub force: bool,
}

fn time_arg(s: &Option<String>, now: u64) -> anyhow::Result<Option<u64>> {
    s.as_deref()
        .map(|s| parse_time(s, now).map_err(anyhow::Error::msg))
        .transpose()
}

/// `airlock sessions`.
pub fn sessions(args: &SessionsArgs) -> anyhow::Result<()> {
    let dir = args.log.dir()?;
    let now = now_us();
    let q = SessionQuery {
        identity: args.identity.clone(),
        target: args.target.clone(),
        since: time_arg(&args.since, now)?,
        until: time_arg(&args.until, now)?,
        text: args.text.clone(),
        limit: args.limit,
    };
    let found = search_sessions(&dir, &q)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &found)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<27} {:>9} {:<24} {:<12} {:>5} {:>5} {:<13}",
        "SESSION", "STARTED", "DURATION", "IDENTITY", "TARGET", "CMDS", "DENY", "END"
    )?;
    for s in &found {
        let duration = s
            .ended
            .map(|e| format_duration_us(e.saturating_sub(s.started)))
            .unwrap_or_else(|| "-".into());
        let end = s.end_reason.map(reason_str).unwrap_or("(open)");
        writeln!(
            out,
            "{:<16} {:<27} {:>9} {:<24} {:<12} {:>5} {:>5} {:<13}",
            s.id,
            format_ts(s.started),
            duration,
            s.subject,
            s.target,
            s.commands,
            s.denied,
            end
        )?;
    }
    Ok(())
}

fn reason_str(r: EndReason) -> &'static str {
    match r {
        EndReason::ClientClosed => "client_closed",
        EndReason::ServerClosed => "server_closed",
        EndReason::Denied => "denied",
        EndReason::Error => "error",
        EndReason::Shutdown => "shutdown",
        EndReason::AuditFailure => "audit_failure",
        EndReason::Dropped => "dropped",
    }
}

fn format_duration_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.3}s", us as f64 / 1e6)
    }
}

/// Writes the transcript of one session: each event with its time relative to the start.
pub fn render_transcript(records: &[Record], out: &mut dyn Write) -> std::io::Result<()> {
    let Some(t0) = records.first().map(|r| r.ts) else {
        return Ok(());
    };
    for rec in records {
        let at = format!("[+{:>10.6}s]", rec.ts.saturating_sub(t0) as f64 / 1e6);
        match &rec.event {
            Event::SessionStart(s) => {
                writeln!(
                    out,
                    "session {} on {} ({}) started {}",
                    rec.session.as_deref().unwrap_or("?"),
                    s.target,
                    s.protocol,
                    format_ts(rec.ts)
                )?;
                writeln!(
                    out,
                    "  identity: {} groups [{}]",
                    s.subject,
                    s.groups.join(", ")
                )?;
                if let Some(w) = &s.workload {
                    writeln!(
                        out,
                        "  workload: pid {} uid {}{} comm {:?} cgroup {}",
                        w.tgid,
                        w.uid,
                        w.user
                            .as_ref()
                            .map(|u| format!(" ({u})"))
                            .unwrap_or_default(),
                        w.comm,
                        w.cgroup_path
                            .clone()
                            .unwrap_or_else(|| w.cgroup_id.to_string())
                    )?;
                }
                let addr =
                    |a: Option<std::net::SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
                writeln!(
                    out,
                    "  client {} → original destination {}",
                    addr(s.client),
                    addr(s.original_dst)
                )?;
                if let Some(tls) = &s.tls {
                    writeln!(
                        out,
                        "  tls {} {}",
                        tls.version,
                        tls.cipher.as_deref().unwrap_or("")
                    )?;
                }
            }
            Event::Command(c) => {
                writeln!(out, "{at} #{} > {}", c.n, c.text)?;
                let mut line = format!(
                    "{:>15} {} (rule {}; classes {}",
                    "",
                    c.action,
                    c.rule,
                    c.classes.join(",")
                );
                if let Some(k) = &c.kind {
                    line.push_str(&format!("; {k}"));
                }
                line.push(')');
                if let Some(r) = &c.reason {
                    line.push_str(&format!(": {r}"));
                }
                if let Some(a) = &c.approval {
                    line.push_str(&format!(
                        " approval {} {:?} by {}",
                        a.id,
                        a.outcome,
                        a.approvers.join(", ")
                    ));
                }
                writeln!(out, "{line}")?;
            }
            Event::Approval(a) => writeln!(
                out,
                "{at} #{} approval {} {:?} by {}",
                a.n,
                a.approval.id,
                a.approval.outcome,
                a.approval.approvers.join(", ")
            )?,
            Event::Result(r) => {
                let what = match (&r.error, r.rows) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(1)) => "1 row".into(),
                    (None, Some(rows)) => format!("{rows} rows"),
                    (None, None) => "ok".into(),
                };
                writeln!(
                    out,
                    "{at} #{} < {what}, {} bytes, {}",
                    r.n,
                    r.bytes,
                    format_duration_us(r.duration_us)
                )?;
            }
            Event::Masking(m) => {
                let rules: Vec<String> = m
                    .rules
                    .iter()
                    .map(|r| format!("{} ×{}", r.rule, r.values))
                    .collect();
                writeln!(out, "{at} #{} masked {}", m.n, rules.join(", "))?;
            }
            Event::SessionEnd(e) => writeln!(
                out,
                "{at} end: {}{} after {}, {} commands, {} bytes from client, {} bytes to client",
                reason_str(e.reason),
                e.detail
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                format_duration_us(e.duration_us),
                e.commands,
                e.bytes_from_client,
                e.bytes_to_client
            )?,
            Event::Open(_) => {}
        }
    }
    Ok(())
}

/// `airlock replay SESSION`.
pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let dir = args.log.dir()?;
    let (_, records) = load_session(&dir, &args.session)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &records {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    render_transcript(&records, &mut out)?;
    Ok(())
}

/// `airlock audit verify`: prints the report; `Err` when the log does not verify.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let (dir, signing_key) = args.log.resolve()?;
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| public_key_path(&signing_key));
    let key = load_public_key(&key_path)
        .with_context(|| "verification needs the log's public key (--key FILE)")?;
    let (what, report) = match &args.export {
        Some(file) => (file.clone(), super::verify_export(file, &key)?),
        None => {
            if !dir.is_dir() {
                bail!(
                    "{}: no audit log here (give --dir or --config)",
                    dir.display()
                );
            }
            (dir.clone(), super::verify(&dir, &key)?)
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        for issue in &report.issues {
            writeln!(out, "{issue}")?;
        }
        writeln!(
            out,
            "{}: {} records in {} file(s), seq {}..{}, {} sessions ({} open); signed head at seq {}{}; {} unsigned record(s) after it{}",
            what.display(),
            report.records,
            report.files,
            report.first_seq.map_or("-".into(), |s| s.to_string()),
            report.last_seq.map_or("-".into(), |s| s.to_string()),
            report.sessions,
            report.open_sessions,
            report.signed_seq.map_or("-".into(), |s| s.to_string()),
            report
                .signed_at
                .map(|t| format!(" ({})", format_ts(t)))
                .unwrap_or_default(),
            report.unsigned_tail,
            report
                .anchored_seq
                .map(|s| format!("; retention anchor at seq {s}"))
                .unwrap_or_default(),
        )?;
        writeln!(out, "{}", if report.ok { "OK" } else { "FAILED" })?;
    }
    if !report.ok {
        bail!(
            "the audit log does not verify ({} error(s))",
            report.errors().count()
        );
    }
    Ok(())
}

/// `airlock audit export --format jsonl`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let dir = args.log.dir()?;
    let ExportFormat::Jsonl = args.format;
    let n = match &args.output {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| path.display().to_string())?,
            );
            let n = super::export(&dir, &mut f)?;
            f.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .with_context(|| path.display().to_string())?;
            n
        }
        None => super::export(&dir, &mut std::io::stdout().lock())?,
    };
    eprintln!("exported {n} records");
    Ok(())
}

/// `airlock audit import FILE --dir DIR`.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let n = super::import(&args.file, &args.dir)?;
    println!("imported {n} records into {}", args.dir.display());
    Ok(())
}

/// `airlock audit keygen`.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let path = match &args.out {
        Some(p) => p.clone(),
        None => args.log.resolve()?.1,
    };
    let public = generate_key(&path, args.force)?;
    println!(
        "{}: new audit signing key; public key {} ({})",
        path.display(),
        super::record::to_hex(public.as_bytes()),
        public_key_path(Path::new(&path)).display()
    );
    Ok(())
}
