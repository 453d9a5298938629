//! `airlock sessions`, `airlock replay`,
//! `airlock audit verify | export | export-heads | import | keygen`.
//!
//! Each function takes a parsed args struct (`clap::Args`, to embed in the command tree) and
//! prints to stdout. Failures, including a log that does not verify, are `Err`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::keys::load_verify_keys;
use super::record::SignedHead;
use super::record::{EndReason, Event, FactsRecord, Record, ReviewRecord};
use super::time::{format_ts, now_us, parse_time};
use super::writer::HEAD_FILE;
use super::{
    SessionQuery, VerifyOptions, generate_key, load_heads, load_public_key, load_session,
    load_signing_key, public_key_path, search_sessions,
};
use crate::model::Command;

/// Characters of a recorded body `audit` shows in a session's listing.
const BODY_SHOWN: usize = 200;

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
    /// Print the transcript even when the session has terminal recordings.
    #[arg(long)]
    pub transcript: bool,
    /// Play only the recording of this command number.
    #[arg(long)]
    pub command: Option<u64>,
    /// Play recordings this many times faster than they happened (default 1: real time).
    #[arg(long, default_value_t = 1.0, conflicts_with = "instant")]
    pub speed: f64,
    /// Play recordings without their pauses.
    #[arg(long)]
    pub instant: bool,
}

/// Arguments of `airlock audit verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Key file: the public key (`<signing key>.pub`), or the signing key itself, which also
    /// authenticates the records after the signed head by their MACs. Default: the
    /// configured signing key when readable, else its `.pub`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Verify this export file instead of the log directory.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Heads exported off the host (`airlock audit export-heads`): the log must still hold
    /// the record each one vouches for (catches a log cut back to an older head).
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// Fail unless the key vouches for every record: records after the signed head that are
    /// not authenticated (no MAC checked) fail too.
    #[arg(long)]
    pub strict: bool,
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `airlock audit export-heads`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportHeadsArgs {
    #[command(flatten)]
    pub log: LogLocation,
    /// Where to send the signed head: a file (one head per line, appended and synced),
    /// `syslog` (the local syslog socket, `syslog:/path` for another), or an `http(s)://`
    /// URL (POSTed as JSON). Repeat to send to several.
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// Keep running and send the head again whenever it moved, looking this often (`30s`).
    #[arg(long)]
    pub follow: Option<String>,
    /// Public key file the head must verify with (default: `<signing key>.pub`).
    #[arg(long)]
    pub key: Option<PathBuf>,
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
        "{:<16} {:<27} {:>9} {:<24} {:<12} {:>5} {:>5} {:>8} {:<13} {:<18} TOUCHED",
        "SESSION",
        "STARTED",
        "DURATION",
        "IDENTITY",
        "TARGET",
        "CMDS",
        "DENY",
        "APPROVED",
        "END",
        "CLASSES"
    )?;
    let out: &mut dyn Write = &mut TermSafe(&mut out);
    for s in &found {
        let duration = s
            .ended
            .map(|e| format_duration_us(e.saturating_sub(s.started)))
            .unwrap_or_else(|| "-".into());
        let end = s.end_reason.map(reason_str).unwrap_or("(open)");
        let classes: Vec<&str> = s.classes.iter().map(|c| c.as_str()).collect();
        writeln!(
            out,
            "{:<16} {:<27} {:>9} {:<24} {:<12} {:>5} {:>5} {:>8} {:<13} {:<18} {}",
            s.id,
            format_ts(s.started),
            duration,
            s.subject.replace('\n', " "),
            s.target,
            s.commands,
            s.denied,
            format!("{}/{}", s.approved, s.approvals),
            end,
            classes.join(","),
            s.touched.join(",").replace('\n', " ")
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

/// Text for a reviewer's terminal: control characters (C0 but newline and tab, DEL, C1) and
/// bidirectional overrides in what is written come out escaped (`\u{1b}`), so a value a client
/// put in a record (a command, an error the server echoed, a name) cannot move the cursor,
/// hide lines or reorder what the reviewer reads.
pub struct TermSafe<'a>(pub &'a mut dyn Write);

/// Whether a character would act on a terminal rather than show: controls (C0 but newline
/// and tab, DEL, C1) and bidirectional marks and overrides.
fn acts_on_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every character that would act on a terminal written as its escape
/// (`\u{1b}`); newlines stay.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out.into()
}

impl Write for TermSafe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Formatting writes whole `str` pieces, so a character is never split across calls.
        self.0
            .write_all(escape_controls(&String::from_utf8_lossy(buf)).as_bytes())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A free-text value on a transcript line: its own line breaks become marked continuation
/// lines, so it cannot pass for lines of the transcript.
fn field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\n') {
        text.replace('\n', &format!("\n{:>15} ┆ ", "")).into()
    } else {
        text.into()
    }
}

/// Writes the transcript of one session: each event with its time relative to the start
/// (through [`TermSafe`]).
pub fn render_transcript(records: &[Record], out: &mut dyn Write) -> std::io::Result<()> {
    let Some(t0) = records.first().map(|r| r.ts) else {
        return Ok(());
    };
    let out: &mut dyn Write = &mut TermSafe(out);
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
                    field(&s.subject),
                    field(&s.groups.join(", "))
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
                writeln!(out, "{at} #{} > {}", c.n, field(&c.text()))?;
                let mut line = format!("{:>15} {} (rule {})", "", c.action, c.rule);
                if let Some(r) = &c.reason {
                    line.push_str(&format!(": {r}"));
                }
                writeln!(out, "{}", field(&line))?;
                writeln!(
                    out,
                    "{:>15} {}",
                    "",
                    field(&describe_facts(&c.command, &c.facts))
                )?;
            }
            Event::Approval(a) => render_review(out, &at, a.n, &a.review)?,
            Event::Result(r) => {
                let what = match (&r.error, r.rows) {
                    (Some(e), _) => format!("error: {}", field(e)),
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
                for (which, body) in [("request", &r.request_body), ("answer", &r.answer_body)] {
                    if let Some(b) = body {
                        // Quoted and escaped: a recorded body may hold terminal control bytes.
                        let shown: String = b.text.chars().take(BODY_SHOWN).collect();
                        writeln!(
                            out,
                            "{:>15} {which} body, {} bytes{}: {shown:?}{}",
                            "",
                            b.bytes,
                            if b.truncated { ", truncated" } else { "" },
                            if b.text.chars().nth(BODY_SHOWN).is_some() {
                                "…"
                            } else {
                                ""
                            }
                        )?;
                    }
                }
            }
            Event::Recording(r) => writeln!(
                out,
                "{at} #{} recording {} ({} events, {} bytes{})",
                r.n,
                r.file,
                r.events,
                r.bytes,
                if r.truncated { ", truncated" } else { "" }
            )?,
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
                    .map(|d| format!(" ({})", field(d)))
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

/// One line of what classification found: class, kinds, what the command touches.
fn describe_facts(command: &Command<'_>, f: &FactsRecord) -> String {
    let mut parts = vec![command.kind().to_owned()];
    let classes: Vec<&str> = f.classes.iter().map(|c| c.as_str()).collect();
    parts.push(if classes.len() > 1 {
        format!("{} [{}]", f.class, classes.join(","))
    } else {
        f.class.to_string()
    });
    if !f.kinds.is_empty() {
        parts.push(f.kinds.join(","));
    }
    for (what, list) in [
        ("reads", &f.tables_read),
        ("writes", &f.tables_written),
        ("calls", &f.functions),
        ("runs", &f.programs),
        ("on", &f.objects),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    if let Some(l) = &f.limit {
        parts.push(format!("limit: {l}"));
    }
    if !f.notes.is_empty() {
        parts.push(format!("notes: {}", f.notes.join("; ")));
    }
    parts.join("; ")
}

/// A review: the request, each vote with voter and reason, how it ended, the grant used.
fn render_review(out: &mut dyn Write, at: &str, n: u64, r: &ReviewRecord) -> std::io::Result<()> {
    let mut head = format!("{at} #{n} approval {} {}", r.id, r.outcome.as_str());
    let mut about = Vec::new();
    if !r.rule.is_empty() {
        about.push(format!("rule {}", r.rule));
    }
    if !r.groups.is_empty() {
        about.push(format!("approvers {}", r.groups.join(", ")));
    }
    if r.quorum > 1 {
        about.push(format!("quorum {}", r.quorum));
    }
    if !r.escalated_to.is_empty() {
        about.push(format!("escalated to {}", r.escalated_to.join(", ")));
    }
    if let Some(m) = &r.mode {
        about.push(format!("{m} mode"));
    }
    if r.requested_at != 0 {
        about.push(format!("requested {}", format_ts(r.requested_at)));
    }
    if let Some(d) = r.decided_at {
        about.push(format!("decided {}", format_ts(d)));
    }
    if !about.is_empty() {
        head.push_str(&format!(" ({})", about.join("; ")));
    }
    writeln!(out, "{head}")?;
    for v in &r.votes {
        writeln!(
            out,
            "{:>15} {} by {} ({}) at {}{}",
            "",
            v.verdict,
            v.by,
            v.via,
            format_ts(v.at),
            v.reason
                .as_ref()
                .map(|r| format!(": {}", field(r)))
                .unwrap_or_default()
        )?;
    }
    if !r.decided_by.is_empty() {
        writeln!(out, "{:>15} by {}", "", r.decided_by.join(", "))?;
    }
    if let Some(g) = &r.grant {
        let mut line = format!("{:>15} grant: {} approved earlier", "", g.kind);
        if let Some(by) = &g.requested_by {
            line.push_str(&format!(", submitted by {by}"));
        }
        if let Some(task) = &g.task {
            line.push_str(&format!(" for {task:?}"));
        }
        line.push_str(&format!("; {} use(s) left", g.uses_left));
        if let Some(e) = g.expires_at {
            line.push_str(&format!(", valid until {}", format_ts(e)));
        }
        writeln!(out, "{line}")?;
    }
    // The reason it ended, unless a vote above already gave it.
    if let Some(reason) = &r.reason
        && !r.votes.iter().any(|v| v.reason.as_ref() == Some(reason))
    {
        writeln!(out, "{:>15} reason: {}", "", field(reason))?;
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
    let recordings: Vec<&super::RecordingRecord> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Recording(rec) if args.command.is_none_or(|n| n == rec.n) => Some(rec),
            _ => None,
        })
        .collect();
    if args.transcript || (recordings.is_empty() && args.command.is_none()) {
        render_transcript(&records, &mut out)?;
        return Ok(());
    }
    if recordings.is_empty() {
        bail!(
            "session has no recording of command {}",
            args.command.unwrap_or(0)
        );
    }
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let pace = if args.instant {
        crate::recording::Pace::Instant
    } else {
        crate::recording::Pace::Speed(args.speed)
    };
    for rec in recordings {
        // Play only what the chain vouches for: the bytes hashed are the bytes played.
        let bytes = super::verify::read_recording(&dir, rec).map_err(|problem| {
            anyhow::anyhow!("{problem}; not played (airlock audit verify names every such change)")
        })?;
        let (_, events) = crate::recording::parse(&dir.join(&rec.file), &bytes[..])?;
        crate::recording::play(&events, &mut out, pace)?;
    }
    Ok(())
}

/// `airlock audit verify`: prints the report; `Err` when the log does not verify (with
/// `--strict`, also when the key does not vouch for every record).
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let (dir, signing_key) = args.log.resolve()?;
    let key_path = match &args.key {
        Some(k) => k.clone(),
        // The signing key when this user may read it (the daemon's host), else the public.
        None if std::fs::File::open(&signing_key).is_ok() => signing_key.clone(),
        None => public_key_path(&signing_key),
    };
    let (public, mac) = load_verify_keys(&key_path)
        .with_context(|| "verification needs the log's public key (--key FILE)")?;
    let heads = match &args.heads {
        Some(path) => Some((
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            load_heads(path)?,
        )),
        None => None,
    };
    let opts = VerifyOptions {
        public: &public,
        mac: mac.as_ref(),
        heads: heads.as_ref().map(|(f, h)| (f.as_str(), h.as_slice())),
    };
    let (what, report) = match &args.export {
        Some(file) => (file.clone(), super::verify_export_with(file, &opts)?),
        None => {
            if !dir.is_dir() {
                bail!(
                    "{}: no audit log here (give --dir or --config)",
                    dir.display()
                );
            }
            (dir.clone(), super::verify_with(&dir, &opts)?)
        }
    };
    let passes = report.passes(args.strict);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        for issue in &report.issues {
            writeln!(out, "{issue}")?;
        }
        let tail = match (report.unsigned_tail, mac.is_some()) {
            (0, _) => "no unsigned records after it".to_owned(),
            (n, true) => format!(
                "{n} unsigned record(s) after it, {} authenticated by their MACs",
                report.authenticated_tail
            ),
            (n, false) => format!(
                "{n} unsigned record(s) after it (not authenticated: verify with the signing key to check their MACs)"
            ),
        };
        writeln!(
            out,
            "{}: {} records in {} file(s), seq {}..{}, {} sessions ({} open), format {}; signed head at seq {}{}; {tail}{}{}",
            what.display(),
            report.records,
            report.files,
            report.first_seq.map_or("-".into(), |s| s.to_string()),
            report.last_seq.map_or("-".into(), |s| s.to_string()),
            report.sessions,
            report.open_sessions,
            report
                .formats
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            report.signed_seq.map_or("-".into(), |s| s.to_string()),
            report
                .signed_at
                .map(|t| format!(" ({})", format_ts(t)))
                .unwrap_or_default(),
            report
                .anchored_seq
                .map(|s| format!("; retention anchor at seq {s}"))
                .unwrap_or_default(),
            match (&args.heads, report.heads_checked) {
                (Some(_), n) => format!("; {n} exported head(s) checked"),
                (None, _) => String::new(),
            },
        )?;
        writeln!(
            out,
            "{}",
            match (report.ok, passes) {
                (true, true) => "OK",
                (true, false) => "FAILED (--strict: the key does not vouch for every record)",
                _ => "FAILED",
            }
        )?;
    }
    if !report.ok {
        bail!(
            "the audit log does not verify ({} error(s))",
            report.errors().count()
        );
    }
    if !passes {
        bail!(
            "--strict: {} record(s) are not vouched for by the key",
            report
                .unsigned_tail
                .saturating_sub(report.authenticated_tail)
                .max(1)
        );
    }
    Ok(())
}

/// Where `airlock audit export-heads` sends heads.
enum HeadSink {
    File(PathBuf),
    Syslog(PathBuf),
    Url(String),
}

impl HeadSink {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(if s == "syslog" {
            HeadSink::Syslog(PathBuf::from("/dev/log"))
        } else if let Some(p) = s.strip_prefix("syslog:") {
            HeadSink::Syslog(PathBuf::from(p))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            reqwest::Url::parse(s).with_context(|| format!("--to {s}"))?;
            HeadSink::Url(s.to_owned())
        } else if s.contains("://") {
            bail!("--to {s}: only http(s) URLs, `syslog` and files are supported");
        } else {
            HeadSink::File(PathBuf::from(s))
        })
    }

    fn name(&self) -> String {
        match self {
            HeadSink::File(p) => p.display().to_string(),
            HeadSink::Syslog(p) => format!("syslog ({})", p.display()),
            HeadSink::Url(u) => u.clone(),
        }
    }

    /// Sends one head (its JSON line).
    fn send(
        &self,
        line: &str,
        http: &reqwest::Client,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<()> {
        match self {
            HeadSink::File(path) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| path.display().to_string())?;
                f.write_all(format!("{line}\n").as_bytes())
                    .and_then(|()| f.sync_data())
                    .with_context(|| path.display().to_string())?;
            }
            HeadSink::Syslog(socket) => {
                // authpriv.notice (10 * 8 + 5), RFC 3164 without a timestamp: the local
                // daemon stamps it.
                let msg = format!("<85>airlock-audit[{}]: head {line}", std::process::id());
                std::os::unix::net::UnixDatagram::unbound()
                    .and_then(|s| s.send_to(msg.as_bytes(), socket))
                    .with_context(|| format!("syslog socket {}", socket.display()))?;
            }
            HeadSink::Url(url) => rt.block_on(async {
                let resp = http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(line.to_owned())
                    .send()
                    .await
                    .with_context(|| url.clone())?;
                if !resp.status().is_success() {
                    bail!("{url}: {}", resp.status());
                }
                Ok(())
            })?,
        }
        Ok(())
    }
}

/// `airlock audit export-heads`: sends the signed head off the host, once or (`--follow`)
/// whenever it moves. Heads kept elsewhere catch what the host alone cannot: a log cut back
/// to an older, genuinely signed head (`airlock audit verify --heads FILE`).
pub fn export_heads(args: &ExportHeadsArgs) -> anyhow::Result<()> {
    let dir = args.log.dir()?;
    let key_path = match &args.key {
        Some(k) => k.clone(),
        None => public_key_path(&args.log.resolve()?.1),
    };
    let public = load_public_key(&key_path)
        .with_context(|| "the head is checked with the log's public key (--key FILE)")?;
    let sinks = args
        .to
        .iter()
        .map(|s| HeadSink::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let every = args
        .follow
        .as_deref()
        .map(crate::config::audit::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    // Per sink, the last seq it took.
    let mut sent: Vec<Option<u64>> = vec![None; sinks.len()];
    // The highest seq read from head.json so far.
    let mut newest: Option<u64> = None;
    loop {
        let path = dir.join(HEAD_FILE);
        let read = std::fs::read(&path)
            .with_context(|| path.display().to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<SignedHead>(&bytes)
                    .with_context(|| format!("{}: not a signed head", path.display()))
            })
            .and_then(|head| {
                if head.verify(&public) {
                    Ok(head)
                } else {
                    Err(anyhow::anyhow!(
                        "{}: not signed by the log's key ({}); not exporting it",
                        path.display(),
                        key_path.display()
                    ))
                }
            });
        let head = match (read, every) {
            (Ok(head), _) => head,
            (Err(e), None) => return Err(e),
            // Following: a bad head.json (garbled, replaced) must not stop the export for
            // good; the next signed head is shipped when it appears.
            (Err(e), Some(every)) => {
                tracing::error!(error = %format!("{e:#}"), "head not exported; checking again");
                std::thread::sleep(every);
                continue;
            }
        };
        if let Some(n) = newest
            && head.seq < n
        {
            // A signed head never moves back: an older one put back hides cut records.
            tracing::error!(
                seq = head.seq,
                newest = n,
                "head.json went back to an older head: records may have been cut (airlock audit verify --heads)"
            );
        }
        newest = Some(newest.map_or(head.seq, |n| n.max(head.seq)));
        let line = serde_json::to_string(&head)?;
        let mut failed = None;
        for (sink, last) in sinks.iter().zip(sent.iter_mut()) {
            if last.is_some_and(|l| head.seq <= l) {
                continue;
            }
            match sink.send(&line, &http, &rt) {
                Ok(()) => {
                    *last = Some(head.seq);
                    eprintln!("exported head seq {} to {}", head.seq, sink.name());
                }
                Err(e) if every.is_some() => {
                    tracing::warn!(sink = %sink.name(), error = %format!("{e:#}"), "head export failed; retrying");
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(every) = every else {
            return failed.map_or(Ok(()), Err);
        };
        std::thread::sleep(every);
    }
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

/// `airlock audit keygen`. Replacing (`--force`) the configured key of an existing log hands
/// the log over: with the daemon stopped, the old key must vouch for every record (as a
/// start checks), then the new key signs the chain's end and the retention anchor, and the old
/// key is kept as `<key>.old`.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let (dir, configured) = args.log.resolve()?;
    let path = args.out.clone().unwrap_or_else(|| configured.clone());
    let log_exists = dir.join(HEAD_FILE).exists();
    let old = if args.force && path == configured && log_exists && path.exists() {
        let old = load_signing_key(&path)?;
        // Refuse before touching the key: a log the old key cannot vouch for keeps it.
        super::recover::scan(
            &dir,
            &old.verifying_key(),
            &super::record_mac_key(&old),
            false,
        )
        .with_context(|| {
            format!(
                "the log in {} cannot be handed over to a new key",
                dir.display()
            )
        })?;
        let mut backup = path.as_os_str().to_owned();
        backup.push(".old");
        crate::secrets::write(
            Path::new(&backup),
            &std::fs::read(&path).with_context(|| path.display().to_string())?,
            0o600,
            true,
        )
        .with_context(|| PathBuf::from(&backup).display().to_string())?;
        Some(old)
    } else {
        None
    };
    let public = generate_key(&path, args.force)?;
    println!(
        "{}: new audit signing key; public key {} ({})",
        path.display(),
        super::record::to_hex(public.as_bytes()),
        public_key_path(Path::new(&path)).display()
    );
    if let Some(old) = old {
        let new = load_signing_key(&path)?;
        match super::recover::hand_over(&dir, &old, &new).with_context(|| {
            format!(
                "handing {} over to the new key (the old key is in {}.old)",
                dir.display(),
                path.display()
            )
        })? {
            Some(seq) => println!(
                "{}: handed over; the new key signs the head at seq {seq} (the old key is kept in {}.old)",
                dir.display(),
                path.display()
            ),
            None => println!("{}: empty log; nothing to hand over", dir.display()),
        }
    }
    Ok(())
}
