//! Reading the log back: session search and transcripts. A full scan of the segments (the log
//! is append-only JSON lines; an index can come later without changing the format).

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use super::AuditError;
use super::record::{ApprovalOutcome, EndReason, Event, Record};
use crate::model::Class;

/// Most tables/programs/objects a session summary lists.
const MAX_TOUCHED: usize = 32;
use super::writer::list_segments;

/// Calls `f` with every complete, parseable record in order. Lines that do not parse are
/// skipped here; `airlock audit verify` reports them.
fn for_each_record(dir: &Path, mut f: impl FnMut(Record)) -> Result<(), AuditError> {
    let segs = list_segments(dir).map_err(|e| AuditError::io(dir, &e))?;
    for (_, path) in segs {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Retention may delete a segment while we read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AuditError::io(&path, &e)),
        };
        let mut reader = std::io::BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AuditError::io(&path, &e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(rec) = serde_json::from_slice::<Record>(&line[..line.len() - 1]) {
                f(rec);
            }
        }
    }
    Ok(())
}

/// Every complete record of the log in `dir`, in order.
pub fn read_records(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let mut out = Vec::new();
    for_each_record(dir, |r| out.push(r))?;
    Ok(out)
}

/// Filters for [`search_sessions`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Subject (substring, case-insensitive) or an exact group name.
    pub identity: Option<String>,
    /// Exact target name.
    pub target: Option<String>,
    /// Sessions still running at or after this time (µs since the epoch).
    pub since: Option<u64>,
    /// Sessions started at or before this time.
    pub until: Option<u64>,
    /// Some command's text contains this (case-insensitive).
    pub text: Option<String>,
    /// At most this many sessions (the most recent ones).
    pub limit: Option<usize>,
}

/// One session in `airlock sessions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub id: String,
    /// µs since the epoch.
    pub started: u64,
    pub ended: Option<u64>,
    pub subject: String,
    pub groups: Vec<String>,
    pub target: String,
    pub protocol: String,
    pub client: Option<SocketAddr>,
    pub user: Option<String>,
    pub comm: Option<String>,
    pub commands: u64,
    pub denied: u64,
    pub reviewed: u64,
    /// Reviews recorded (`approval` records), and how many of them approved or granted.
    pub approvals: u64,
    pub approved: u64,
    /// Classes of the commands, least risky first.
    pub classes: Vec<Class>,
    /// Tables, programs and objects the commands touched (the first 32).
    pub touched: Vec<String>,
    pub masked_values: u64,
    pub end_reason: Option<EndReason>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    #[serde(skip)]
    text_match: bool,
}

/// Sessions matching `q`, oldest first (sessions whose start was deleted by retention are left
/// out).
pub fn search_sessions(dir: &Path, q: &SessionQuery) -> Result<Vec<SessionSummary>, AuditError> {
    let needle = q.text.as_ref().map(|t| t.to_lowercase());
    let mut order = Vec::new();
    let mut map: HashMap<String, SessionSummary> = HashMap::new();
    for_each_record(dir, |rec| {
        let Some(id) = rec.session else { return };
        if let Event::SessionStart(s) = &rec.event {
            order.push(id.clone());
            map.insert(
                id.clone(),
                SessionSummary {
                    id,
                    started: rec.ts,
                    ended: None,
                    subject: s.subject.clone(),
                    groups: s.groups.clone(),
                    target: s.target.clone(),
                    protocol: s.protocol.clone(),
                    client: s.client,
                    user: s.workload.as_ref().and_then(|w| w.user.clone()),
                    comm: s.workload.as_ref().map(|w| w.comm.clone()),
                    commands: 0,
                    denied: 0,
                    reviewed: 0,
                    approvals: 0,
                    approved: 0,
                    classes: Vec::new(),
                    touched: Vec::new(),
                    masked_values: 0,
                    end_reason: None,
                    bytes_from_client: 0,
                    bytes_to_client: 0,
                    text_match: needle.is_none(),
                },
            );
            return;
        }
        let Some(s) = map.get_mut(&id) else { return };
        match &rec.event {
            Event::Command(c) => {
                s.commands += 1;
                match c.action.as_ref() {
                    "deny" => s.denied += 1,
                    "review" => s.reviewed += 1,
                    _ => {}
                }
                if let Some(n) = &needle
                    && !s.text_match
                    && c.text().to_lowercase().contains(n.as_str())
                {
                    s.text_match = true;
                }
                for class in &c.facts.classes {
                    if !s.classes.contains(class) {
                        s.classes.push(*class);
                        s.classes.sort();
                    }
                }
                for t in c.facts.touched() {
                    if s.touched.len() < MAX_TOUCHED && !s.touched.iter().any(|x| x == t) {
                        s.touched.push(t.to_owned());
                    }
                }
            }
            Event::Approval(a) => {
                s.approvals += 1;
                if matches!(
                    a.review.outcome,
                    ApprovalOutcome::Approved | ApprovalOutcome::Grant
                ) {
                    s.approved += 1;
                }
            }
            Event::Masking(m) => s.masked_values += m.rules.iter().map(|r| r.values).sum::<u64>(),
            Event::SessionEnd(e) => {
                s.ended = Some(rec.ts);
                s.end_reason = Some(e.reason);
                s.bytes_from_client = e.bytes_from_client;
                s.bytes_to_client = e.bytes_to_client;
            }
            _ => {}
        }
    })?;
    let identity = q.identity.as_ref().map(|i| i.to_lowercase());
    let mut out: Vec<SessionSummary> = order
        .into_iter()
        .filter_map(|id| map.remove(&id))
        .filter(|s| {
            s.text_match
                && q.target.as_ref().is_none_or(|t| *t == s.target)
                && q.until.is_none_or(|u| s.started <= u)
                && q.since
                    .is_none_or(|since| s.ended.is_none_or(|e| e >= since))
                && identity.as_ref().is_none_or(|i| {
                    s.subject.to_lowercase().contains(i.as_str())
                        || s.groups.iter().any(|g| g.to_lowercase() == *i)
                })
        })
        .collect();
    if let Some(limit) = q.limit
        && out.len() > limit
    {
        out.drain(..out.len() - limit);
    }
    Ok(out)
}

/// The records of one session, by id or unique id prefix.
pub fn load_session(dir: &Path, id: &str) -> Result<(String, Vec<Record>), AuditError> {
    let mut ids: Vec<String> = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    for_each_record(dir, |rec| {
        if let Some(s) = &rec.session
            && s.starts_with(id)
        {
            if !ids.contains(s) {
                ids.push(s.clone());
            }
            records.push(rec);
        }
    })?;
    match ids.len() {
        0 => Err(AuditError::NotFound(format!(
            "no session `{id}` in the log"
        ))),
        1 => Ok((ids.remove(0), records)),
        n => {
            // An exact match wins over longer ids that share the prefix.
            if ids.iter().any(|s| s == id) {
                records.retain(|r| r.session.as_deref() == Some(id));
                return Ok((id.to_owned(), records));
            }
            Err(AuditError::NotFound(format!(
                "`{id}` matches {n} sessions ({}); give more of the id",
                ids.join(", ")
            )))
        }
    }
}
