//! The answer side of the session: which command each server message answers, masking of
//! result rows and COPY OUT data, and the result records of the audit log.
//!
//! The client → server half pushes one [`Expect`] for every message it forwards that the server
//! answers (Query, Parse, Bind, Describe, Execute, Close, Sync), in order; the server answers in
//! the same order, so the server → client half pops them as the answers complete. That is how
//! a DataRow of an Execute finds the masking rules of the statement behind its portal, and how
//! the second result set of a multi-statement Query is still tied to that Query. An Execute
//! has no RowDescription of its own: when its command is masked, the client half puts a
//! Describe of the portal in front of it, whose RowDescription (carrying the result formats
//! the Bind asked for) builds the plan and is not forwarded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, BytesMut};

use super::catalog::CatalogCache;
use super::codec::{self, ErrorFields, HEADER_LEN, Reader};
use super::messages;
use super::origin::{self, CopySpec, Field, SideConn};
use super::rows;
use super::types::{oid, value_kind};
use crate::audit::{Ack, AuditError, CommandResult, MaskTally, SessionRecorder};
use crate::mask::{ColumnPlan, ColumnRef, MaskCounts, Masker, RuleId, ValueFormat};
use crate::metrics::Metrics;
use crate::model::Facts;
use crate::model::lineage::{Flow, Source};
use crate::policy::sql::lineage;
use crate::protocol::freshness;
use prometheus_client::metrics::counter::Counter;

/// Result descriptions whose plans a session keeps for reuse.
const PLAN_CACHE: usize = 16;

/// A command as policy decided it, carried to its answer.
#[derive(Debug)]
pub struct Cmd {
    /// Its number in the session's audit log (0 until queued, or unrecorded).
    pub n: AtomicU64,
    /// Masking rules for the answer (after `except_groups`); empty: none.
    pub mask: Box<[String]>,
    pub text: Arc<str>,
    /// Denied: its answer is our error, and it has no result record.
    pub denied: bool,
    /// What classification found, shared with the cache: the lineage of its result columns
    /// (which computed columns carry masked values) and, for errors, which columns it names.
    pub facts: Arc<Facts>,
}

impl Cmd {
    pub fn new(text: Arc<str>, mask: Vec<String>, denied: bool, facts: Arc<Facts>) -> Arc<Self> {
        Arc::new(Cmd {
            n: AtomicU64::new(0),
            mask: mask.into_boxed_slice(),
            text,
            denied,
            facts,
        })
    }

    fn masked(&self) -> bool {
        !self.mask.is_empty()
    }
}

/// A server answer the session is waiting for.
#[derive(Debug)]
pub enum Expect {
    /// Everything up to ReadyForQuery.
    Query {
        cmd: Arc<Cmd>,
        started: Instant,
    },
    /// ParseComplete; `done` is set when it comes (the server holds the statement).
    Parse {
        done: Arc<AtomicBool>,
    },
    /// BindComplete; `done` is set when it comes (the server holds the portal).
    Bind {
        done: Arc<AtomicBool>,
    },
    Close,
    /// RowDescription or NoData (after ParameterDescription for a statement). `cmd` is set
    /// when the described statement or portal is masked; `injected` when the gateway sent the
    /// Describe itself (its answer is not forwarded); `feeds` when the client's own Describe of
    /// a portal comes right before its masked Execute, so that its answer builds the Execute's
    /// plan and no Describe needs to be injected.
    Describe {
        cmd: Option<Arc<Cmd>>,
        injected: bool,
        feeds: bool,
    },
    /// Rows then CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute {
        cmd: Arc<Cmd>,
        started: Instant,
    },
    Sync,
    /// The gateway's own role switch (see [`roles`](super::roles)): everything up to its
    /// ReadyForQuery is for the gateway, none of it for the client.
    Internal,
    /// The gateway's own `SET LOCAL ROLE` inside the client's pipeline: answered up to its
    /// last CloseComplete (`closes` counts them), or failed with the pipeline.
    InternalInline {
        closes: u8,
    },
}

/// The session's audit recorder, shared by both halves.
#[derive(Debug)]
pub struct AuditSink {
    rec: tokio::sync::Mutex<SessionRecorder>,
    acks: std::sync::Mutex<Vec<Ack>>,
    has_acks: AtomicBool,
    enabled: bool,
}

impl AuditSink {
    pub fn new(rec: SessionRecorder) -> Self {
        Self {
            enabled: rec.is_recording(),
            rec: tokio::sync::Mutex::new(rec),
            acks: std::sync::Mutex::new(Vec::new()),
            has_acks: AtomicBool::new(false),
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The recorder back, to end the session.
    pub fn into_inner(self) -> SessionRecorder {
        self.rec.into_inner()
    }

    pub(super) async fn recorder(&self) -> tokio::sync::MutexGuard<'_, SessionRecorder> {
        self.rec.lock().await
    }

    /// Keeps an acknowledgement to await before the next answer goes to the client.
    pub(super) fn hold(&self, ack: Ack) {
        if ack.is_written() {
            return;
        }
        if let Ok(mut a) = self.acks.lock() {
            a.push(ack);
            self.has_acks.store(true, Ordering::Release);
        }
    }

    /// Waits until every command queued so far is acknowledged (fail closed on error).
    pub(super) async fn settle(&self) -> Result<(), AuditError> {
        if !self.has_acks.load(Ordering::Acquire) {
            return Ok(());
        }
        let acks = match self.acks.lock() {
            Ok(mut a) => {
                self.has_acks.store(false, Ordering::Release);
                std::mem::take(&mut *a)
            }
            Err(_) => return Err(AuditError::Closed),
        };
        for a in acks {
            a.durable().await?;
        }
        Ok(())
    }
}

/// What to do with one server message.
pub enum Act {
    Forward,
    Drop,
    /// Send what was appended to the replacement buffer instead.
    Replace,
}

/// The running totals of the answer at the head of the queue.
#[derive(Debug, Default)]
struct Acc {
    rows: Option<u64>,
    bytes: u64,
    error: Option<String>,
    /// Masked values by rule (named only when the audit record is written).
    masked: MaskCounts,
}

/// What a plan was built from, and what the client gets for that RowDescription. A
/// RowDescription carries everything a plan depends on besides the catalog's names (table
/// OIDs, attribute numbers, field names, type OIDs, formats), so the same bytes under the same
/// rules give the same plan for as long as the cached names are kept (until DDL). Repeated
/// queries and prepared statements then skip parsing, catalog lookups and rule matching.
struct PlanKey {
    /// The RowDescription body as the server sent it.
    desc: Box<[u8]>,
    /// The command's active masking rules.
    mask: Box<[String]>,
    /// The classification the plan's replaced computed columns come from (the same statement
    /// shape shares one; compared by pointer, kept alive here so that it cannot be reused).
    facts: Arc<Facts>,
    /// The whole RowDescription message with masked columns announced as `text`, when that
    /// changes it (see [`announce_text`]).
    announce: Option<Box<[u8]>>,
}

impl PlanKey {
    fn matches(&self, desc: &[u8], cmd: &Cmd) -> bool {
        Arc::ptr_eq(&self.facts, &cmd.facts) && *self.desc == *desc && *self.mask == *cmd.mask
    }

    /// Forward the RowDescription, or send its rewritten form.
    fn act(&self, rep: &mut BytesMut) -> Act {
        match &self.announce {
            Some(m) => {
                rep.extend_from_slice(m);
                Act::Replace
            }
            None => Act::Forward,
        }
    }
}

/// COPY OUT masking state.
#[derive(Debug, Clone, Copy)]
struct CopyOut {
    csv: Option<rows::CsvOptions>,
    /// The next CopyData is the header line.
    header: bool,
}

/// The server → client half's view of results.
pub struct Back<'a> {
    pub(super) expect: &'a std::sync::Mutex<VecDeque<Expect>>,
    pub(super) audit: &'a AuditSink,
    pub(super) masker: Arc<Masker>,
    pub(super) metrics: &'a Metrics,
    pub(super) side: Option<SideConn>,
    pub(super) cache: CatalogCache,
    /// Set by the client half after DDL: names may have changed.
    pub(super) stale: &'a AtomicBool,
    /// The session sent DDL: at the next ReadyForQuery, every session's lookups start over.
    pub(super) ddl_sent: &'a AtomicBool,
    /// The plan of the result set being streamed, when masked.
    plan: Option<ColumnPlan>,
    /// What `plan` was built from, when it goes back to `plans` at the end of the result set.
    plan_key: Option<PlanKey>,
    /// Plans of recent result descriptions, least recently used first, with their scratch
    /// buffers: a result set seen before reuses its plan instead of building one.
    plans: Vec<(PlanKey, ColumnPlan)>,
    /// `airlock_masked_values_total{rule}` counters by rule id, resolved once per session.
    counters: Vec<Option<Counter>>,
    /// Rows must go through the plan (it is not passthrough).
    rows_masked: bool,
    copy: Option<CopyOut>,
    /// COPY OUT statements seen in the current Query.
    copies: usize,
    /// Statements of the current Query already complete: the next result set belongs to the
    /// statement with this index.
    statement: usize,
    /// After a masking failure: drop everything until ReadyForQuery.
    pub(super) suppress: bool,
    acc: Acc,
    /// The last command that ran under masking rules: its rules mask notifications, which
    /// arrive between commands.
    last_masked: Option<Arc<Cmd>>,
}

/// A masking failure: the client gets this error, and nothing more of the result.
struct Refusal(String);

impl<'a> Back<'a> {
    pub fn new(
        expect: &'a std::sync::Mutex<VecDeque<Expect>>,
        audit: &'a AuditSink,
        masker: Arc<Masker>,
        metrics: &'a Metrics,
        side: Option<SideConn>,
        stale: &'a AtomicBool,
        ddl_sent: &'a AtomicBool,
    ) -> Self {
        Self {
            expect,
            audit,
            masker,
            metrics,
            side,
            cache: CatalogCache::new(),
            stale,
            ddl_sent,
            plan: None,
            plan_key: None,
            plans: Vec::new(),
            counters: Vec::new(),
            rows_masked: false,
            copy: None,
            copies: 0,
            statement: 0,
            suppress: false,
            acc: Acc::default(),
            last_masked: None,
        }
    }

    /// A NotificationResponse's payload (a trigger's `pg_notify(…, row_to_json(NEW)::text)`
    /// carries whole rows) masked like an answer of this session: whole under column rules
    /// (it names no columns), else through the detectors of the session's last masking rules,
    /// or of every rule before the session ran anything under masking.
    fn notification(&self, body: &[u8], rep: &mut BytesMut) -> Result<Act, Refusal> {
        let mut r = Reader::new(body, "NotificationResponse");
        let (Ok(pid), Ok(channel), Ok(payload)) = (r.i32(), r.cstr(), r.cstr()) else {
            return Err(Refusal("a notification that does not parse".into()));
        };
        let all: Vec<String>;
        let (rules, whole): (&[String], bool) = match &self.last_masked {
            Some(c) => (
                &c.mask,
                self.masker
                    .column_rules(&c.mask)
                    .map_or(true, |r| !r.is_empty()),
            ),
            None => {
                all = self.masker.rule_names().map(str::to_owned).collect();
                (&all, false)
            }
        };
        let masked: Option<Vec<u8>> = if whole {
            (!payload.is_empty()).then(|| crate::mask::REDACTED.to_vec())
        } else {
            self.masker
                .detect_in(rules, payload.as_bytes())
                .map(|b| b.iter().copied().filter(|&c| c != 0).collect())
        };
        let Some(payload) = masked else {
            return Ok(Act::Forward);
        };
        codec::put_message(rep, b'A', |o| {
            o.put_i32(pid);
            codec::put_cstr(o, channel.as_bytes());
            o.put_slice(&payload);
            o.put_u8(0);
        });
        Ok(Act::Replace)
    }

    /// Whether DataRow / CopyData messages must be held whole and passed to [`Back::on_message`].
    #[inline]
    pub fn rows_masked(&self) -> bool {
        self.rows_masked
    }

    /// Counts answer bytes for the result record.
    #[inline]
    pub fn count(&mut self, bytes: usize) {
        self.acc.bytes += bytes as u64;
    }

    fn head<T>(&self, f: impl FnOnce(Option<&Expect>) -> T) -> T {
        match self.expect.lock() {
            Ok(q) => f(q.front()),
            Err(_) => f(None),
        }
    }

    fn pop(&self) -> Option<Expect> {
        self.expect.lock().ok().and_then(|mut q| q.pop_front())
    }

    /// The command whose answer is streaming now (Query or Execute at the head).
    fn current_cmd(&self) -> Option<Arc<Cmd>> {
        self.head(|h| match h {
            Some(Expect::Query { cmd, .. } | Expect::Execute { cmd, .. }) => Some(cmd.clone()),
            _ => None,
        })
    }

    /// The command a server error or notice belongs to: the one whose answer is streaming,
    /// else the next queued one that carries a command (an error at Bind of a masked portal).
    fn message_cmd(&self) -> Option<Arc<Cmd>> {
        match self.expect.lock() {
            Ok(q) => q.iter().find_map(|e| match e {
                Expect::Query { cmd, .. } | Expect::Execute { cmd, .. } => Some(cmd.clone()),
                Expect::Describe { cmd: Some(cmd), .. } => Some(cmd.clone()),
                _ => None,
            }),
            Err(_) => None,
        }
    }

    /// Handles one whole server message. `rep` receives a replacement when `Act::Replace`.
    pub async fn on_message(&mut self, tag: u8, msg: &[u8], rep: &mut BytesMut) -> Act {
        let body = &msg[HEADER_LEN..];
        let act = match self.handle(tag, body, rep).await {
            Ok(a) => a,
            Err(refusal) => self.refuse(refusal, rep),
        };
        if self.suppress && tag != b'Z' && !matches!(act, Act::Replace) {
            return Act::Drop;
        }
        act
    }

    /// One whole DataRow while [`Back::rows_masked`]: the same as [`Back::on_message`], but
    /// synchronous, since masking a row never waits (the per-row path of a masked result).
    pub fn on_row(&mut self, msg: &[u8], rep: &mut BytesMut) -> Act {
        let act = match self.data_row(&msg[HEADER_LEN..], rep) {
            Ok(a) => a,
            Err(refusal) => self.refuse(refusal, rep),
        };
        if self.suppress && !matches!(act, Act::Replace) {
            return Act::Drop;
        }
        act
    }

    /// The client gets one ErrorResponse in place of the message, and nothing more of the
    /// result.
    fn refuse(&mut self, Refusal(message): Refusal, rep: &mut BytesMut) -> Act {
        tracing::warn!(%message, "masking refused a result");
        self.end_result_set();
        self.acc.error = Some(message.clone());
        rep.clear();
        codec::put_error(
            rep,
            &ErrorFields {
                severity: "ERROR",
                code: "0A000",
                message: &format!("airlock: {message}"),
                detail: None,
                hint: None,
            },
        );
        // Whatever the server still sends for this batch is dropped; ReadyForQuery ends the
        // suppression.
        self.suppress = true;
        Act::Replace
    }

    fn data_row(&mut self, body: &[u8], rep: &mut BytesMut) -> Result<Act, Refusal> {
        if let Some(plan) = self.plan.as_mut() {
            if !self.rows_masked {
                return Ok(Act::Forward);
            }
            return match rows::mask_data_row(plan, body, rep) {
                Ok(o) if o.rewritten => Ok(Act::Replace),
                Ok(_) => Ok(Act::Forward),
                Err(e) => Err(Refusal(format!("masking failed: {e}"))),
            };
        }
        if !self.suppress && self.current_cmd().is_some_and(|c| c.masked()) {
            // Rows of a masked command without a plan: never send them unmasked.
            return Err(Refusal(
                "masking: result columns could not be resolved".into(),
            ));
        }
        Ok(Act::Forward)
    }

    async fn handle(&mut self, tag: u8, body: &[u8], rep: &mut BytesMut) -> Result<Act, Refusal> {
        match tag {
            b'D' => self.data_row(body, rep),
            b'd' => {
                let (Some(plan), Some(copy)) = (self.plan.as_mut(), self.copy.as_mut()) else {
                    return Ok(Act::Forward);
                };
                if copy.header {
                    copy.header = false;
                    return Ok(Act::Forward);
                }
                let r = match copy.csv {
                    Some(o) => rows::mask_copy_csv(plan, body, o, rep),
                    None => rows::mask_copy_data(plan, body, rep),
                };
                match r {
                    Ok(o) if o.rewritten => Ok(Act::Replace),
                    Ok(_) => Ok(Act::Forward),
                    Err(e) => Err(Refusal(format!("masking failed: {e}"))),
                }
            }
            b'T' => self.row_description(body, rep).await,
            b'H' => {
                let cmd = self.current_cmd();
                let index = self.copies;
                self.copies += 1;
                match cmd {
                    Some(cmd) if cmd.masked() => {
                        self.copy_out(&cmd, index, body).await?;
                        Ok(Act::Forward)
                    }
                    _ => Ok(Act::Forward),
                }
            }
            b'C' | b'I' | b's' => {
                if tag != b's' {
                    self.statement += 1;
                }
                if tag == b'C' {
                    let rows = command_rows(body);
                    if let Some(r) = rows {
                        // The server's counts: a Query of several statements can sum past u64.
                        let total = self.acc.rows.get_or_insert(0);
                        *total = total.saturating_add(r);
                    }
                }
                self.end_result_set();
                let is_execute = self.head(|h| matches!(h, Some(Expect::Execute { .. })));
                if is_execute && let Some(e) = self.pop() {
                    self.finish(e, None).await;
                }
                Ok(Act::Forward)
            }
            b'E' => {
                let (message, act) = match self.message_cmd().filter(|c| c.masked()) {
                    Some(cmd) => {
                        let touched = self.names_masked_column(&cmd).await;
                        let m = messages::mask(tag, body, &self.masker, &cmd, touched);
                        let act = match m.message {
                            Some(msg) => {
                                rep.extend_from_slice(&msg);
                                Act::Replace
                            }
                            None => Act::Forward,
                        };
                        (m.text, act)
                    }
                    None => (
                        codec::parse_error(body)
                            .map(|e| e.message.to_string())
                            .unwrap_or_else(|_| "error".into()),
                        Act::Forward,
                    ),
                };
                self.end_result_set();
                let in_query = self.head(|h| matches!(h, Some(Expect::Query { .. })));
                if in_query {
                    self.acc.error.get_or_insert(message);
                } else {
                    // Extended protocol: the server skips to Sync.
                    loop {
                        let sync = self.head(|h| matches!(h, Some(Expect::Sync) | None));
                        if sync {
                            break;
                        }
                        if let Some(e) = self.pop() {
                            self.finish(e, Some(&message)).await;
                        }
                    }
                }
                Ok(act)
            }
            b'A' => self.notification(body, rep),
            b'N' => match self.message_cmd().filter(|c| c.masked()) {
                Some(cmd) => {
                    let touched = self.names_masked_column(&cmd).await;
                    match messages::mask(tag, body, &self.masker, &cmd, touched).message {
                        Some(msg) => {
                            rep.extend_from_slice(&msg);
                            Ok(Act::Replace)
                        }
                        None => Ok(Act::Forward),
                    }
                }
                None => Ok(Act::Forward),
            },
            b'Z' => {
                if self.ddl_sent.load(Ordering::Acquire)
                    && self.ddl_sent.swap(false, Ordering::AcqRel)
                {
                    freshness::catalog_changed();
                }
                self.end_result_set();
                self.suppress = false;
                self.copies = 0;
                self.statement = 0;
                while let Some(e) = self.pop() {
                    let done = matches!(e, Expect::Sync | Expect::Query { .. });
                    self.finish(e, None).await;
                    if done {
                        break;
                    }
                }
                Ok(Act::Forward)
            }
            b'1' | b'2' | b'3' | b'n' => {
                let injected =
                    self.head(|h| matches!(h, Some(Expect::Describe { injected: true, .. })));

                // What the gateway knows the server now holds: only a confirmed Parse or Bind
                // (one skipped after an error, or failing itself, created nothing).
                match self.pop() {
                    Some(Expect::Parse { done } | Expect::Bind { done })
                        if tag == b'1' || tag == b'2' =>
                    {
                        done.store(true, Ordering::Release);
                    }
                    _ => {}
                }
                if tag == b'n' && injected {
                    return Ok(Act::Drop);
                }
                Ok(Act::Forward)
            }
            _ => Ok(Act::Forward),
        }
    }

    async fn row_description(&mut self, body: &[u8], rep: &mut BytesMut) -> Result<Act, Refusal> {
        enum Kind {
            Query(Arc<Cmd>),
            Describe {
                cmd: Option<Arc<Cmd>>,
                injected: bool,
                feeds: bool,
            },
            Other,
        }
        let kind = self.head(|h| match h {
            Some(Expect::Query { cmd, .. }) => Kind::Query(cmd.clone()),
            Some(Expect::Describe {
                cmd,
                injected,
                feeds,
            }) => Kind::Describe {
                cmd: cmd.clone(),
                injected: *injected,
                feeds: *feeds,
            },
            _ => Kind::Other,
        });
        match kind {
            Kind::Query(cmd) => {
                self.end_result_set();
                if !cmd.masked() {
                    return Ok(Act::Forward);
                }
                let (key, plan) = self.planned(body, &cmd).await?;
                let act = key.act(rep);
                self.start_result_set(plan, Some(key), None);
                Ok(act)
            }
            Kind::Describe {
                cmd,
                injected,
                feeds,
            } => {
                self.pop();
                let Some(cmd) = cmd else {
                    return Ok(if injected { Act::Drop } else { Act::Forward });
                };
                let (key, plan) = self.planned(body, &cmd).await?;
                // An injected Describe's answer is only for us; the client's gets the columns
                // announced the way its rows will come.
                let act = if injected { Act::Drop } else { key.act(rep) };
                if injected || feeds {
                    // The Execute that follows streams through this plan.
                    self.start_result_set(plan, Some(key), None);
                } else {
                    self.shelve(key, plan);
                }
                Ok(act)
            }
            // Rows whose command the gateway cannot name (the answers no longer line up with
            // what it forwarded): never sent on unplanned.
            Kind::Other => Err(Refusal(
                "a result the gateway did not expect; its rows are not sent".into(),
            )),
        }
    }

    /// The plan for a RowDescription under `mask`: the cached one when the same description
    /// was planned before under the same rules, else a new one.
    async fn planned(&mut self, body: &[u8], cmd: &Cmd) -> Result<(PlanKey, ColumnPlan), Refusal> {
        self.drop_stale_names();
        if let Some(i) = self.plans.iter().position(|(k, _)| k.matches(body, cmd)) {
            return Ok(self.plans.remove(i));
        }
        let fields = parse_fields(body)?;
        let plan = self.build_plan(&fields, cmd).await?;
        let announce = announce_text(&plan, &fields, body);
        let key = PlanKey {
            desc: body.into(),
            mask: cmd.mask.clone(),
            facts: Arc::clone(&cmd.facts),
            announce,
        };
        Ok((key, plan))
    }

    /// Keeps a plan for the next result set with the same description (most recent last).
    fn shelve(&mut self, key: PlanKey, plan: ColumnPlan) {
        if self.plans.len() >= PLAN_CACHE {
            self.plans.remove(0);
        }
        self.plans.push((key, plan));
    }

    /// After DDL the cached names, and every plan built from them, may be wrong: this
    /// session's, another session's through the gateway, or any after a while
    /// ([`CatalogCache::expire_stale`]). Too many names cached (they come from the client)
    /// also start the cache over.
    fn drop_stale_names(&mut self) {
        if self.cache.names_full() || self.cache.expire_stale() {
            self.stale.store(true, Ordering::Release);
        }
        if self.stale.swap(false, Ordering::AcqRel) {
            self.cache.invalidate();
            self.plans.clear();
            // The active plan was built before the DDL; it is not shelved again.
            self.plan_key = None;
        }
    }

    async fn copy_out(&mut self, cmd: &Cmd, index: usize, body: &[u8]) -> Result<(), Refusal> {
        let binary = body.first().copied() == Some(1);
        if binary {
            return Err(Refusal(
                "binary COPY cannot be masked; use COPY in text or CSV format".into(),
            ));
        }
        let spec: CopySpec = origin::copy_spec(&cmd.text, index)
            .map_err(|e| Refusal(format!("masking COPY: {e}")))?;
        if spec.binary {
            return Err(Refusal(
                "binary COPY cannot be masked; use COPY in text or CSV format".into(),
            ));
        }
        let side = self
            .side
            .as_mut()
            .ok_or_else(|| Refusal("masking COPY: no catalog connection".into()))?;
        let mut fields = side
            .describe(&spec.select)
            .await
            .map_err(|e| Refusal(format!("masking COPY: {e}")))?;
        let ncols = body
            .get(1..3)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(-1);
        if usize::try_from(ncols).ok() != Some(fields.len()) {
            return Err(Refusal(
                "masking COPY: the COPY's columns do not match its query".into(),
            ));
        }
        for f in &mut fields {
            f.format = 0;
        }
        let plan = self.build_plan(&fields, cmd).await?;
        self.start_result_set(
            plan,
            None,
            Some(CopyOut {
                csv: spec.csv,
                header: spec.header,
            }),
        );
        Ok(())
    }

    /// Resolves the fields (side connection for tables not cached) and plans the masking.
    async fn build_plan(&mut self, fields: &[Field], cmd: &Cmd) -> Result<ColumnPlan, Refusal> {
        let mask = &cmd.mask;
        self.drop_stale_names();
        let missing = self
            .cache
            .missing_tables(fields.iter().map(|f| (f.table, f.attnum)));
        if !missing.is_empty() {
            let side = self
                .side
                .as_mut()
                .ok_or_else(|| Refusal("masking: no catalog connection".into()))?;
            side.lookup(&mut self.cache, &missing)
                .await
                .map_err(|e| Refusal(format!("masking: {e}")))?;
        }
        // Computed columns are traced by name: views among the names must be seen through.
        let lineage = &cmd.facts.lineage;
        if fields.iter().any(|f| f.table == 0)
            || lineage.statements.iter().any(|s| s.has_computed_outputs())
        {
            self.resolve_names(cmd).await?;
        }
        let mut cols = Vec::with_capacity(fields.len());
        for f in fields {
            let format =
                ValueFormat::from_code(f.format).map_err(|e| Refusal(format!("masking: {e}")))?;
            let c: ColumnRef<'_> = self
                .cache
                .column_ref(&f.name, f.table, f.attnum, f.type_oid, format)
                .ok_or_else(|| {
                    Refusal(format!(
                        "masking: the table of column \"{}\" (oid {}) is not in the catalog",
                        f.name, f.table
                    ))
                })?;
            cols.push(c);
        }
        let replace = self.computed_masked(fields, cmd)?;
        self.masker
            .plan_with(&cols, mask, &replace)
            .map_err(|e| Refusal(format!("masking: {e}")))
    }

    /// Resolves the relation names the command's lineage uses (to see views), on the
    /// catalog connection, once per name and session.
    async fn resolve_names(&mut self, cmd: &Cmd) -> Result<(), Refusal> {
        if self
            .masker
            .column_rules(&cmd.mask)
            .map_or(true, |r| r.is_empty())
        {
            return Ok(());
        }
        let names = self.cache.missing_names(
            cmd.facts
                .lineage
                .sources()
                .map(|s| (s.schema.as_deref(), &*s.table)),
        );
        if names.is_empty() {
            return Ok(());
        }
        let side = self
            .side
            .as_mut()
            .ok_or_else(|| Refusal("masking: no catalog connection".into()))?;
        side.resolve(&mut self.cache, &names)
            .await
            .map_err(|e| Refusal(format!("masking: {e}")))
    }

    /// The first rule that masks a column among `cols` (relation OID, attribute number).
    fn cols_rule(&self, cols: &[(u32, i16)], rules: &[RuleId]) -> Option<RuleId> {
        cols.iter().find_map(|&(rel, att)| {
            let c = self.cache.lookup(rel, att)?;
            rules.iter().copied().find(|&r| {
                self.masker
                    .rule_may_mask(r, Some(&c.schema), &c.table, Some(&c.column))
            })
        })
    }

    /// A view column's rule, traced through the view's definition. A view column that
    /// cannot be traced (a function the gateway does not know, nesting deeper than it
    /// follows) is replaced whole by the first rule.
    fn view_column_rule(&self, oid: u32, attnum: i16, rules: &[RuleId]) -> Option<RuleId> {
        if !self.cache.is_view(oid) {
            return None;
        }
        match self.cache.view_column(oid, attnum) {
            // A plain reference was resolved to its table column and is masked as it.
            Some((Flow::Plain, _)) => None,
            Some((_, cols)) => self.cols_rule(&cols, rules),
            None => rules.first().copied(),
        }
    }

    /// The first active column rule that may mask a source named in a statement: by its
    /// globs, or through the view the name resolves to.
    fn source_rule(&self, src: &Source, rules: &[RuleId]) -> Option<RuleId> {
        rules
            .iter()
            .copied()
            .find(|&r| {
                self.masker.rule_may_mask(
                    r,
                    src.schema.as_deref(),
                    &src.table,
                    src.column.as_deref(),
                )
            })
            .or_else(|| {
                if !self.cache.names_view(src.schema.as_deref(), &src.table) {
                    return None;
                }
                match self.cache.trace(src, 0) {
                    Some((_, cols)) => self.cols_rule(&cols, rules),
                    None => rules.first().copied(),
                }
            })
    }

    /// Whether an error or notice of `cmd` may quote a masked column's value: the command
    /// names one (directly or through a view), or cannot be traced.
    async fn names_masked_column(&mut self, cmd: &Cmd) -> bool {
        let Ok(rules) = self.masker.column_rules(&cmd.mask) else {
            return true;
        };
        if rules.is_empty() {
            return false;
        }
        if cmd.facts.lineage.unknown().is_some() {
            return true;
        }
        self.drop_stale_names();
        if self.resolve_names(cmd).await.is_err() {
            return true;
        }
        cmd.facts
            .lineage
            .sources()
            .any(|s| self.source_rule(s, &rules).is_some())
    }

    /// Which result columns carry a masked column's values computed into them (by their
    /// lineage, given which ones the server reported no origin for), or from a view's column
    /// computed from one: replaced whole.
    fn computed_masked(&self, fields: &[Field], cmd: &Cmd) -> Result<Vec<Option<RuleId>>, Refusal> {
        let rules = self
            .masker
            .column_rules(&cmd.mask)
            .map_err(|e| Refusal(format!("masking: {e}")))?;
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let computed: Vec<bool> = fields.iter().map(|f| f.table == 0).collect();
        // A Query's k-th result set belongs to its k-th statement; an Execute runs one.
        let statement = self.head(|h| match h {
            Some(Expect::Query { .. }) => self.statement,
            _ => 0,
        });
        let rule_for = |src: &Source| self.source_rule(src, &rules);
        let mut replace = lineage::redactions(
            &cmd.facts.lineage,
            statement,
            &computed,
            rule_for,
            rules.first().copied(),
        );
        for (r, f) in replace.iter_mut().zip(fields) {
            if r.is_none() && f.table != 0 {
                *r = self.view_column_rule(f.table, f.attnum, &rules);
            }
        }
        Ok(replace)
    }

    /// Streams the rows that follow through `plan`; `key`: it goes back to the plan cache at
    /// the end.
    fn start_result_set(&mut self, plan: ColumnPlan, key: Option<PlanKey>, copy: Option<CopyOut>) {
        self.end_result_set();
        self.rows_masked = !plan.is_passthrough();
        self.plan = Some(plan);
        self.plan_key = key;
        self.copy = copy;
    }

    /// Takes the finished result set's counts into metrics and the audit tally, and keeps its
    /// plan for reuse.
    fn end_result_set(&mut self) {
        self.rows_masked = false;
        self.copy = None;
        let Some(mut plan) = self.plan.take() else {
            return;
        };
        let counts = plan.take_counts();
        if !counts.is_empty() {
            for (rule, n) in counts.iter() {
                self.counter(&plan, rule).inc_by(u64::from(n));
            }
            self.acc.masked.merge(&counts);
        }
        if let Some(key) = self.plan_key.take() {
            self.shelve(key, plan);
        }
    }

    /// The metrics counter of a rule, resolved on first use.
    fn counter(&mut self, plan: &ColumnPlan, rule: RuleId) -> &Counter {
        let i = usize::from(rule.0);
        if self.counters.len() <= i {
            self.counters.resize(i + 1, None);
        }
        self.counters[i].get_or_insert_with(|| self.metrics.mask_rule(plan.rule_name(rule)))
    }

    /// One expected answer is complete: its result (and masking) record for the audit log.
    async fn finish(&mut self, e: Expect, error: Option<&str>) {
        let (cmd, started) = match e {
            Expect::Query { cmd, started } | Expect::Execute { cmd, started } => (cmd, started),
            Expect::Describe {
                injected, feeds, ..
            } if injected || feeds => {
                // Its plan belonged to an Execute that will not run now.
                self.end_result_set();
                return;
            }
            _ => return,
        };
        if !cmd.mask.is_empty() {
            self.last_masked = Some(Arc::clone(&cmd));
        }
        let acc = std::mem::take(&mut self.acc);
        if cmd.denied || !self.audit.enabled() {
            return;
        }
        let n = cmd.n.load(Ordering::Acquire);
        let result = CommandResult {
            rows: acc.rows,
            bytes: acc.bytes,
            duration: started.elapsed(),
            error: acc.error.or_else(|| error.map(str::to_owned)),
            ..CommandResult::default()
        };
        let mut tally = MaskTally::default();
        for (rule, n) in acc.masked.iter() {
            tally.add(self.masker.rule_name(rule), u64::from(n));
        }
        let mut rec = self.audit.recorder().await;
        // Result records are not waited for: the command record was, before its answer.
        match rec.result(n, result).await {
            Ok(ack) => drop(ack),
            Err(e) => tracing::warn!(error = %e, "audit: result record not queued"),
        }
        match rec.masking(n, &tally).await {
            Ok(ack) => drop(ack),
            Err(e) => tracing::warn!(error = %e, "audit: masking record not queued"),
        }
    }
}

fn parse_fields(body: &[u8]) -> Result<Vec<Field>, Refusal> {
    origin::parse_row_description(body).map_err(|e| Refusal(format!("masking: {e}")))
}

/// The RowDescription message (`T`, length, `body`) with columns masked whole in a non-text
/// type announced as `text` (drivers would fail to parse the replacement as, say, a date).
/// `None`: nothing to change, forward the original.
fn announce_text(plan: &ColumnPlan, fields: &[Field], body: &[u8]) -> Option<Box<[u8]>> {
    let mut change = fields
        .iter()
        .enumerate()
        .filter(|(i, f)| plan.masked_as_text(*i, value_kind(f.type_oid)))
        .map(|(_, f)| f)
        .peekable();
    change.peek()?;
    let mut msg = BytesMut::with_capacity(HEADER_LEN + body.len());
    codec::put_message(&mut msg, b'T', |o| o.extend_from_slice(body));
    for f in change {
        let at = HEADER_LEN + f.type_at;
        msg[at..at + 4].copy_from_slice(&oid::TEXT.to_be_bytes());
        // typlen -1 (varlena), typmod -1.
        msg[at + 4..at + 6].copy_from_slice(&(-1i16).to_be_bytes());
        msg[at + 6..at + 10].copy_from_slice(&(-1i32).to_be_bytes());
    }
    Some(msg.to_vec().into_boxed_slice())
}

/// The row count of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`, …).
fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let last = tag.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// Builds one FATAL ErrorResponse (session start-up failures, and the audit log failing
/// mid-session).
pub fn error_message(code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    codec::put_error(
        &mut out,
        &ErrorFields {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        },
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn rows_from_command_tags() {
        assert_eq!(command_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_rows(b"INSERT 0 7\0"), Some(7));
        assert_eq!(command_rows(b"BEGIN\0"), None);
        let mut b = BytesMut::new();
        b.put_u8(0);
        assert_eq!(command_rows(&b), None);
    }

    use crate::audit::Recorder;
    use crate::config::policy::{Detector, MaskRuleSpec, MaskStyle};

    fn masker() -> Arc<Masker> {
        let rule = |name: &str, columns: &[&str], detectors: &[Detector], style| MaskRuleSpec {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            json_paths: Vec::new(),
            detectors: detectors.to_vec(),
            style,
            except_groups: vec![],
            computed: Default::default(),
            compared: Default::default(),
        };
        Arc::new(
            Masker::new(
                &[
                    rule("date-redact", &["*.*.since"], &[], MaskStyle::Redact),
                    rule("mail", &[], &[Detector::Email], MaskStyle::Redact),
                ],
                b"0123456789abcdef-key",
            )
            .unwrap(),
        )
    }

    fn mask(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// A RowDescription of computed columns (table OID 0): (name, type OID, format).
    fn row_description(cols: &[(&str, u32, i16)]) -> BytesMut {
        let mut m = BytesMut::new();
        codec::put_message(&mut m, b'T', |o| {
            o.put_i16(cols.len() as i16);
            for (name, ty, format) in cols {
                codec::put_cstr(o, name.as_bytes());
                o.put_u32(0);
                o.put_i16(0);
                o.put_u32(*ty);
                o.put_i16(-1);
                o.put_i32(-1);
                o.put_i16(*format);
            }
        });
        m
    }

    fn data_row(values: &[&str]) -> BytesMut {
        let mut m = BytesMut::new();
        codec::put_message(&mut m, b'D', |o| {
            o.put_i16(values.len() as i16);
            for v in values {
                o.put_i32(v.len() as i32);
                o.put_slice(v.as_bytes());
            }
        });
        m
    }

    fn msg(tag: u8, body: &[u8]) -> BytesMut {
        let mut m = BytesMut::new();
        codec::put_message(&mut m, tag, |o| o.put_slice(body));
        m
    }

    struct Fixture {
        expect: std::sync::Mutex<VecDeque<Expect>>,
        audit: AuditSink,
        metrics: Metrics,
        stale: AtomicBool,
        ddl_sent: AtomicBool,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                expect: std::sync::Mutex::new(VecDeque::new()),
                audit: AuditSink::new(Recorder::disabled().admit_session().unwrap()),
                metrics: Metrics::new(),
                stale: AtomicBool::new(false),
                ddl_sent: AtomicBool::new(false),
            }
        }
        fn back(&self) -> Back<'_> {
            Back::new(
                &self.expect,
                &self.audit,
                masker(),
                &self.metrics,
                None,
                &self.stale,
                &self.ddl_sent,
            )
        }
        fn push(&self, e: Expect) {
            self.expect.lock().unwrap().push_back(e);
        }

        /// A client's Describe of the portal whose Execute and Sync follow (it feeds the
        /// Execute's masking plan).
        fn push_fed_execute(&self, cmd: Arc<Cmd>) {
            self.push(Expect::Describe {
                cmd: Some(cmd.clone()),
                injected: false,
                feeds: true,
            });
            self.push(Expect::Execute {
                cmd,
                started: Instant::now(),
            });
            self.push(Expect::Sync);
        }
    }

    /// One statement's classification, shared by its runs as the cache shares it.
    fn facts() -> Arc<Facts> {
        static FACTS: std::sync::OnceLock<Arc<Facts>> = std::sync::OnceLock::new();
        Arc::clone(FACTS.get_or_init(|| Arc::new(Facts::default())))
    }

    fn query(names: &[&str]) -> Expect {
        Expect::Query {
            cmd: Cmd::new(Arc::from("SELECT"), mask(names), false, facts()),
            started: Instant::now(),
        }
    }

    /// Runs one message through `back`: what the client gets.
    async fn through(back: &mut Back<'_>, m: &[u8]) -> Option<Vec<u8>> {
        let mut rep = BytesMut::new();
        let act = if m[0] == b'D' && back.rows_masked() {
            back.on_row(m, &mut rep)
        } else {
            back.on_message(m[0], m, &mut rep).await
        };
        match act {
            Act::Forward => Some(m.to_vec()),
            Act::Replace => Some(rep.to_vec()),
            Act::Drop => None,
        }
    }

    fn type_oids(rd: &[u8]) -> Vec<u32> {
        origin::parse_row_description(&rd[HEADER_LEN..])
            .unwrap()
            .iter()
            .map(|f| f.type_oid)
            .collect()
    }

    fn notification(payload: &str) -> BytesMut {
        let mut m = BytesMut::new();
        codec::put_message(&mut m, b'A', |o| {
            o.put_i32(42);
            codec::put_cstr(o, b"changes");
            codec::put_cstr(o, payload.as_bytes());
        });
        m
    }

    /// A notification's payload (a trigger's row as JSON) is masked like an answer: by every
    /// rule's detectors before the session ran anything masked, then by its last rules (whole
    /// under a column rule).
    #[tokio::test]
    async fn notification_payloads_are_masked() {
        let fx = Fixture::new();
        let mut back = fx.back();
        let row = r#"{"id": 1, "email": "ada@example.com"}"#;
        let sent = through(&mut back, &notification(row)).await.unwrap();
        let text = String::from_utf8_lossy(&sent);
        assert!(
            !text.contains("ada@example.com") && text.contains("changes"),
            "{text}"
        );
        // After a command under a column rule: the payload names no columns, so it goes whole.
        fx.push(query(&["date-redact", "mail"]));
        through(&mut back, &msg(b'C', b"SELECT 0\0")).await.unwrap();
        through(&mut back, &msg(b'Z', b"I")).await.unwrap();
        let sent = through(&mut back, &notification(r#"{"since": "2020-01-01"}"#))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&sent);
        assert!(
            !text.contains("2020-01-01") && text.contains("[REDACTED]"),
            "{text}"
        );
        // Nothing to mask: forwarded as it came.
        let plain = notification("");
        assert_eq!(through(&mut back, &plain).await.unwrap(), plain.to_vec());
    }

    #[tokio::test]
    async fn repeated_result_sets_reuse_their_plan_until_ddl() {
        let fx = Fixture::new();
        let mut back = fx.back();
        let rd = row_description(&[("id", 23, 0), ("note", 25, 0), ("since", 1082, 0)]);
        let row = data_row(&["7", "write to a@example.com", "2020-01-01"]);
        let active = ["date-redact", "mail"];
        for round in 0..3 {
            if round == 2 {
                fx.stale.store(true, Ordering::Release);
            }
            fx.push(query(&active));
            // The date column is announced as text, from the cache as from a new plan.
            let sent = through(&mut back, &rd).await.unwrap();
            assert_eq!(type_oids(&sent), [23, 25, oid::TEXT], "{round}");
            let sent = through(&mut back, &row).await.unwrap();
            let text = String::from_utf8_lossy(&sent);
            assert!(!text.contains("a@example.com"), "{round}: {text}");
            assert!(!text.contains("2020-01-01"), "{round}: {text}");
            through(&mut back, &msg(b'C', b"SELECT 1\0")).await.unwrap();
            through(&mut back, &msg(b'Z', b"I")).await.unwrap();
            // One plan kept, and reused (not added again) by the next round.
            assert_eq!(back.plans.len(), 1, "{round}");
        }
        // DDL dropped the old plan: the third round built a new one.
        assert!(!fx.stale.load(Ordering::Acquire));
        // Other rules over the same description are another plan.
        fx.push(query(&["mail"]));
        let sent = through(&mut back, &rd).await.unwrap();
        assert_eq!(type_oids(&sent), [23, 25, 1082]);
        let sent = through(&mut back, &row).await.unwrap();
        assert!(String::from_utf8_lossy(&sent).contains("2020-01-01"));
        through(&mut back, &msg(b'C', b"SELECT 1\0")).await.unwrap();
        assert_eq!(back.plans.len(), 2);
        // Counts went to the metrics, by rule.
        let metrics = fx.metrics.encode();
        assert!(
            metrics.contains("airlock_masked_values_total{rule=\"mail\"} 4"),
            "{metrics}"
        );
        assert!(
            metrics.contains("airlock_masked_values_total{rule=\"date-redact\"} 3"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn the_clients_describe_feeds_the_execute_that_follows() {
        let fx = Fixture::new();
        let mut back = fx.back();
        let cmd = Cmd::new(
            Arc::from("SELECT"),
            mask(&["mail"]),
            false,
            Arc::new(Facts::default()),
        );
        fx.push(Expect::Bind {
            done: Arc::default(),
        });
        fx.push_fed_execute(cmd);
        through(&mut back, &msg(b'2', b"")).await.unwrap();
        let rd = row_description(&[("note", 25, 1)]);
        // Forwarded (it is the client's), and the plan stays for the rows.
        assert_eq!(through(&mut back, &rd).await.unwrap(), rd.to_vec());
        assert!(back.rows_masked());
        let sent = through(&mut back, &data_row(&["b@example.org"]))
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&sent).contains("b@example.org"));
        through(&mut back, &msg(b'C', b"SELECT 1\0")).await.unwrap();
        assert!(!back.rows_masked());
        through(&mut back, &msg(b'Z', b"I")).await.unwrap();
        assert!(fx.expect.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_after_a_feeding_describe_without_columns_are_refused() {
        let fx = Fixture::new();
        let mut back = fx.back();
        let cmd = Cmd::new(
            Arc::from("SELECT"),
            mask(&["mail"]),
            false,
            Arc::new(Facts::default()),
        );
        fx.push_fed_execute(cmd);
        assert!(through(&mut back, &msg(b'n', b"")).await.is_some());
        let sent = through(&mut back, &data_row(&["c@example.net"]))
            .await
            .unwrap();
        assert_eq!(sent[0], b'E');
        assert!(!String::from_utf8_lossy(&sent).contains("c@example.net"));
        // Nothing more of the result goes out.
        assert!(
            through(&mut back, &data_row(&["c@example.net"]))
                .await
                .is_none()
        );
        assert!(through(&mut back, &msg(b'Z', b"I")).await.is_some());
    }

    #[tokio::test]
    async fn row_counts_of_several_commands_saturate_instead_of_overflowing() {
        // Two CommandCompletes of one Query, the first claiming u64::MAX rows: their sum used
        // to overflow.
        let fx = Fixture::new();
        let mut back = fx.back();
        fx.push(query(&[]));
        through(&mut back, &msg(b'C', b"SELECT 18446744073709551615\0")).await;
        through(&mut back, &msg(b'C', b"INSERT 0 3\0")).await;
        assert_eq!(back.acc.rows, Some(u64::MAX));
    }
}
