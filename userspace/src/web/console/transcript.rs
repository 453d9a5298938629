//! A session's records as the session page shows them: the facts of its start, one row per
//! command (decision, approval, rows or error), and the same as an asciicast v2 recording
//! with the recorded timing, so the player replays the session as it happened.

use std::collections::BTreeMap;

use crate::audit::{Event, Record, ReviewRecord, format_ts};

use super::views::TranscriptRow;

/// The session page's content.
#[derive(Debug, Default)]
pub struct Transcript {
    pub facts: Vec<(&'static str, String)>,
    pub rows: Vec<TranscriptRow>,
}

/// Who decided a review: each vote with its verdict (format 2), or the deciders format 1
/// recorded.
fn deciders(r: &ReviewRecord) -> String {
    let mut by: Vec<String> = r
        .votes
        .iter()
        .map(|v| format!("{} ({})", v.by, v.verdict))
        .collect();
    by.extend(r.decided_by.iter().cloned());
    by.join(", ")
}

/// A recorded value inside the player's terminal stream: its control characters escaped (a
/// client's ESC would drive the player), its line breaks indented under the line.
fn shown(text: &str) -> String {
    crate::audit::cli::escape_controls(text).replace('\n', "\r\n     ")
}

fn secs(us: u64) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}

impl Transcript {
    pub fn from_records(records: &[Record]) -> Self {
        let t0 = records.first().map_or(0, |r| r.ts);
        let mut facts = Vec::new();
        let mut rows: BTreeMap<u64, TranscriptRow> = BTreeMap::new();
        for rec in records {
            match &rec.event {
                Event::SessionStart(s) => {
                    facts.push(("Started", format_ts(rec.ts)));
                    facts.push(("Target", format!("{} ({})", s.target, s.protocol)));
                    facts.push(("Identity", s.subject.clone()));
                    facts.push(("Groups", s.groups.join(", ")));
                    if let Some(w) = &s.workload {
                        facts.push((
                            "Workload",
                            format!(
                                "{} (pid {}, uid {}{}) in {}",
                                w.comm,
                                w.tgid,
                                w.uid,
                                w.user.as_ref().map(|u| format!(" {u}")).unwrap_or_default(),
                                w.cgroup_path
                                    .clone()
                                    .unwrap_or_else(|| w.cgroup_id.to_string())
                            ),
                        ));
                    }
                    if let Some(c) = s.client {
                        facts.push(("Client", c.to_string()));
                    }
                    if let Some(tls) = &s.tls {
                        facts.push(("TLS", tls.version.clone()));
                    }
                }
                Event::Command(c) => {
                    let row = rows.entry(c.n).or_default();
                    row.n = c.n;
                    row.at = secs(rec.ts.saturating_sub(t0));
                    row.text = c.text().into_owned();
                    let classes: Vec<&str> = c.facts.classes.iter().map(|k| k.as_str()).collect();
                    row.classes = if classes.is_empty() {
                        c.facts.class.as_str().to_owned()
                    } else {
                        classes.join(", ")
                    };
                    if !c.facts.kinds.is_empty() {
                        row.classes = format!("{} · {}", row.classes, c.facts.kinds.join(", "));
                    }
                    row.action = c.action.to_string();
                    row.rule = c.rule.clone()
                        + &c.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default();
                }
                Event::Approval(a) => {
                    let row = rows.entry(a.n).or_default();
                    let r = &a.review;
                    row.approval =
                        format!("request {} {} by {}", r.id, r.outcome.as_str(), deciders(r));
                    if let Some(g) = &r.grant {
                        row.approval = format!("{} · {} grant", row.approval, g.kind);
                    }
                }
                Event::Result(r) => {
                    let row = rows.entry(r.n).or_default();
                    row.result = match (&r.error, r.rows) {
                        (Some(e), _) => format!("error: {e}"),
                        (None, Some(1)) => "1 row".into(),
                        (None, Some(n)) => format!("{n} rows"),
                        (None, None) => "ok".into(),
                    } + &format!(", {} bytes, {}", r.bytes, secs(r.duration_us));
                }
                Event::Masking(m) => {
                    let row = rows.entry(m.n).or_default();
                    let masked: Vec<String> = m
                        .rules
                        .iter()
                        .map(|r| format!("{} ×{}", r.rule, r.values))
                        .collect();
                    row.result = format!("{} · masked {}", row.result, masked.join(", "));
                }
                Event::SessionEnd(e) => {
                    facts.push((
                        "Ended",
                        format!(
                            "{} ({:?}{}), {} commands",
                            format_ts(rec.ts),
                            e.reason,
                            e.detail
                                .as_ref()
                                .map(|d| format!(": {d}"))
                                .unwrap_or_default(),
                            e.commands
                        ),
                    ));
                }
                // A terminal recording: the console links the file, not its records.
                Event::Open(_) | Event::Recording(_) => {}
            }
        }
        Transcript {
            facts,
            rows: rows.into_values().collect(),
        }
    }
}

/// The session as an asciicast v2 file: a header line, then `[seconds, "o", text]` events at
/// the times the records were written (what a terminal attached to the session would have
/// shown, in the transcript's words).
pub fn asciicast(records: &[Record]) -> String {
    let t0 = records.first().map_or(0, |r| r.ts);
    let mut out = String::new();
    let header = serde_json::json!({
        "version": 2,
        "width": 120,
        "height": 30,
        "timestamp": t0 / 1_000_000,
        "title": records.first().and_then(|r| r.session.clone()).unwrap_or_default(),
    });
    out.push_str(&header.to_string());
    out.push('\n');
    let mut push = |ts: u64, text: String| {
        let line = serde_json::json!([ts.saturating_sub(t0) as f64 / 1e6, "o", text]);
        out.push_str(&line.to_string());
        out.push('\n');
    };
    for rec in records {
        match &rec.event {
            Event::SessionStart(s) => push(
                rec.ts,
                format!(
                    "\x1b[1m-- session on {} ({}) as {} [{}]\x1b[0m\r\n",
                    s.target,
                    s.protocol,
                    shown(&s.subject),
                    shown(&s.groups.join(", "))
                ),
            ),
            Event::Command(c) => {
                let colour = match c.action.as_ref() {
                    "allow" => "32",
                    "deny" => "31",
                    _ => "33",
                };
                push(
                    rec.ts,
                    format!(
                        "\x1b[36m#{} >\x1b[0m {}\r\n   \x1b[{colour}m{}\x1b[0m (rule {})\r\n",
                        c.n,
                        shown(&c.text()),
                        c.action,
                        c.rule
                    ),
                );
            }
            Event::Approval(a) => push(
                rec.ts,
                format!(
                    "   approval {} {} by {}\r\n",
                    a.review.id,
                    a.review.outcome.as_str(),
                    deciders(&a.review)
                ),
            ),
            Event::Result(r) => push(
                rec.ts,
                match (&r.error, r.rows) {
                    (Some(e), _) => format!("   \x1b[31merror: {}\x1b[0m\r\n", shown(e)),
                    (None, Some(n)) => format!("   {n} row(s), {} bytes\r\n", r.bytes),
                    (None, None) => format!("   ok, {} bytes\r\n", r.bytes),
                },
            ),
            Event::SessionEnd(e) => push(
                rec.ts,
                format!(
                    "\x1b[1m-- end: {:?}, {} commands\x1b[0m\r\n",
                    e.reason, e.commands
                ),
            ),
            Event::Masking(_) | Event::Open(_) | Event::Recording(_) => {}
        }
    }
    out
}
