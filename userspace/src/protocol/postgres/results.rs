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

use bytes::BytesMut;

use super::codec::{self, ErrorFields, HEADER_LEN};
use super::origin::{self, CopySpec, Field, SideConn};
use crate::audit::{Ack, AuditError, CommandResult, MaskTally, SessionRecorder};
use crate::mask::{CatalogCache, ColumnPlan, ColumnRef, Masker, ValueFormat};
use crate::metrics::Metrics;

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
}

impl Cmd {
    pub fn new(text: Arc<str>, mask: Vec<String>, denied: bool) -> Arc<Self> {
        Arc::new(Cmd {
            n: AtomicU64::new(0),
            mask: mask.into_boxed_slice(),
            text,
            denied,
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
    Parse,
    Bind,
    Close,
    /// RowDescription or NoData (after ParameterDescription for a statement). `cmd` is set
    /// when the described statement or portal is masked; `injected` when the gateway sent the
    /// Describe itself (its answer is not forwarded).
    Describe {
        cmd: Option<Arc<Cmd>>,
        injected: bool,
    },
    /// Rows then CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute {
        cmd: Arc<Cmd>,
        started: Instant,
    },
    Sync,
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
    tally: MaskTally,
}

/// COPY OUT masking state.
#[derive(Debug, Clone, Copy)]
struct CopyOut {
    csv: Option<crate::mask::CsvOptions>,
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
    /// The plan of the result set being streamed, when masked.
    plan: Option<ColumnPlan>,
    /// Rows must go through the plan (it is not passthrough).
    rows_masked: bool,
    copy: Option<CopyOut>,
    /// COPY OUT statements seen in the current Query.
    copies: usize,
    /// After a masking failure: drop everything until ReadyForQuery.
    pub(super) suppress: bool,
    acc: Acc,
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
    ) -> Self {
        Self {
            expect,
            audit,
            masker,
            metrics,
            side,
            cache: CatalogCache::new(),
            stale,
            plan: None,
            rows_masked: false,
            copy: None,
            copies: 0,
            suppress: false,
            acc: Acc::default(),
        }
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

    /// Handles one whole server message. `rep` receives a replacement when `Act::Replace`.
    pub async fn on_message(&mut self, tag: u8, msg: &[u8], rep: &mut BytesMut) -> Act {
        let body = &msg[HEADER_LEN..];
        let act = match self.handle(tag, body, msg, rep).await {
            Ok(a) => a,
            Err(Refusal(message)) => {
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
                // Whatever the server still sends for this batch is dropped; ReadyForQuery
                // ends the suppression.
                self.suppress = true;
                Act::Replace
            }
        };
        if self.suppress && tag != b'Z' && !matches!(act, Act::Replace) {
            return Act::Drop;
        }
        act
    }

    async fn handle(
        &mut self,
        tag: u8,
        body: &[u8],
        msg: &[u8],
        rep: &mut BytesMut,
    ) -> Result<Act, Refusal> {
        match tag {
            b'D' => {
                if let Some(plan) = self.plan.as_mut() {
                    if !self.rows_masked {
                        return Ok(Act::Forward);
                    }
                    return match crate::mask::mask_data_row(plan, body, rep) {
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
            b'd' => {
                let (Some(plan), Some(copy)) = (self.plan.as_mut(), self.copy.as_mut()) else {
                    return Ok(Act::Forward);
                };
                if copy.header {
                    copy.header = false;
                    return Ok(Act::Forward);
                }
                let r = match copy.csv {
                    Some(o) => plan.mask_copy_csv(body, o, rep),
                    None => plan.mask_copy_data(body, rep),
                };
                match r {
                    Ok(o) if o.rewritten => Ok(Act::Replace),
                    Ok(_) => Ok(Act::Forward),
                    Err(e) => Err(Refusal(format!("masking failed: {e}"))),
                }
            }
            b'T' => self.row_description(body, msg, rep).await,
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
                if tag == b'C' {
                    let rows = command_rows(body);
                    if let Some(r) = rows {
                        *self.acc.rows.get_or_insert(0) += r;
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
                let message = codec::parse_error(body)
                    .map(|e| e.message.to_string())
                    .unwrap_or_else(|_| "error".into());
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
                Ok(Act::Forward)
            }
            b'Z' => {
                self.end_result_set();
                self.suppress = false;
                self.copies = 0;
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
                self.pop();
                if tag == b'n' && injected {
                    return Ok(Act::Drop);
                }
                Ok(Act::Forward)
            }
            _ => Ok(Act::Forward),
        }
    }

    async fn row_description(
        &mut self,
        body: &[u8],
        msg: &[u8],
        rep: &mut BytesMut,
    ) -> Result<Act, Refusal> {
        enum Kind {
            Query(Arc<Cmd>),
            Describe(Option<Arc<Cmd>>, bool),
            Other,
        }
        let kind = self.head(|h| match h {
            Some(Expect::Query { cmd, .. }) => Kind::Query(cmd.clone()),
            Some(Expect::Describe { cmd, injected }) => Kind::Describe(cmd.clone(), *injected),
            _ => Kind::Other,
        });
        match kind {
            Kind::Query(cmd) => {
                self.end_result_set();
                if !cmd.masked() {
                    return Ok(Act::Forward);
                }
                let fields = parse_fields(body)?;
                let plan = self.build_plan(&fields, &cmd.mask).await?;
                let rewritten = announce_text(&plan, &fields, msg, rep);
                self.start_result_set(plan, None);
                Ok(if rewritten {
                    Act::Replace
                } else {
                    Act::Forward
                })
            }
            Kind::Describe(cmd, injected) => {
                self.pop();
                let Some(cmd) = cmd else {
                    return Ok(if injected { Act::Drop } else { Act::Forward });
                };
                let fields = parse_fields(body)?;
                let plan = self.build_plan(&fields, &cmd.mask).await?;
                if injected {
                    // The Execute that follows streams through this plan.
                    self.start_result_set(plan, None);
                    return Ok(Act::Drop);
                }
                Ok(if announce_text(&plan, &fields, msg, rep) {
                    Act::Replace
                } else {
                    Act::Forward
                })
            }
            Kind::Other => Ok(Act::Forward),
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
        let plan = self.build_plan(&fields, &cmd.mask).await?;
        self.start_result_set(
            plan,
            Some(CopyOut {
                csv: spec.csv,
                header: spec.header,
            }),
        );
        Ok(())
    }

    /// Resolves the fields (side connection for tables not cached) and plans the masking.
    async fn build_plan(
        &mut self,
        fields: &[Field],
        mask: &[String],
    ) -> Result<ColumnPlan, Refusal> {
        if self.stale.swap(false, Ordering::AcqRel) {
            self.cache.invalidate();
        }
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
        self.masker
            .plan(&cols, mask)
            .map_err(|e| Refusal(format!("masking: {e}")))
    }

    fn start_result_set(&mut self, plan: ColumnPlan, copy: Option<CopyOut>) {
        self.rows_masked = !plan.is_passthrough();
        self.plan = Some(plan);
        self.copy = copy;
    }

    /// Takes the finished result set's counts into metrics and the audit tally.
    fn end_result_set(&mut self) {
        self.rows_masked = false;
        self.copy = None;
        let Some(mut plan) = self.plan.take() else {
            return;
        };
        let counts = plan.take_counts();
        for (rule, n) in counts.iter() {
            let name = plan.rule_name(rule);
            self.metrics.masked(name, u64::from(n));
            self.acc.tally.add(name, u64::from(n));
        }
    }

    /// One expected answer is complete: its result (and masking) record for the audit log.
    async fn finish(&mut self, e: Expect, error: Option<&str>) {
        let (cmd, started) = match e {
            Expect::Query { cmd, started } | Expect::Execute { cmd, started } => (cmd, started),
            Expect::Describe { injected: true, .. } => {
                // Its plan belonged to an Execute that will not run now.
                self.end_result_set();
                return;
            }
            _ => return,
        };
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
        };
        let mut rec = self.audit.recorder().await;
        // Result records are not waited for: the command record was, before its answer.
        match rec.result(n, result).await {
            Ok(ack) => drop(ack),
            Err(e) => tracing::warn!(error = %e, "audit: result record not queued"),
        }
        match rec.masking(n, &acc.tally).await {
            Ok(ack) => drop(ack),
            Err(e) => tracing::warn!(error = %e, "audit: masking record not queued"),
        }
    }
}

fn parse_fields(body: &[u8]) -> Result<Vec<Field>, Refusal> {
    origin::parse_row_description(body).map_err(|e| Refusal(format!("masking: {e}")))
}

/// Rewrites a RowDescription so that columns masked whole in a non-text type are announced as
/// `text` (drivers would fail to parse the replacement as, say, a date). `false`: unchanged.
fn announce_text(plan: &ColumnPlan, fields: &[Field], msg: &[u8], rep: &mut BytesMut) -> bool {
    let change: Vec<&Field> = fields
        .iter()
        .enumerate()
        .filter(|(i, f)| plan.masked_as_text(*i, f.type_oid))
        .map(|(_, f)| f)
        .collect();
    if change.is_empty() {
        return false;
    }
    let start = rep.len();
    rep.extend_from_slice(msg);
    for f in change {
        let at = start + HEADER_LEN + f.type_at;
        rep[at..at + 4].copy_from_slice(&crate::mask::oid::TEXT.to_be_bytes());
        // typlen -1 (varlena), typmod -1.
        rep[at + 4..at + 6].copy_from_slice(&(-1i16).to_be_bytes());
        rep[at + 6..at + 10].copy_from_slice(&(-1i32).to_be_bytes());
    }
    true
}

/// The row count of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`, …).
fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let last = tag.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// Builds one simple ErrorResponse (used when the audit log fails mid-session).
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
}
