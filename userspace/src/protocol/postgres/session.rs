//! The session loop after startup: two directions in one task.
//!
//! Client → server: every Query, Parse and Execute goes through one policy decision before the
//! server sees it. Messages are framed on a `BytesMut` (check, parse, advance); runs of allowed
//! messages are written straight from the read buffer, one write per read.
//!
//! A denied command must leave the session exactly as consistent as a real error would: the
//! server's transaction must fail too (an explicit transaction goes to the failed state, an
//! implicit one rolls back), and in the extended protocol everything up to Sync is discarded.
//! So instead of answering the client ourselves we replace the denied message with one that
//! makes the server fail cheaply and harmlessly — a Describe (extended) or a DEALLOCATE (simple)
//! of a statement named `airlock_denied_<n>` that cannot exist — and the server→client direction
//! swaps that one error for our 42501 ErrorResponse naming the rule. Transaction status,
//! error-until-Sync and pipelining then come from the server itself, in the right order.
//!
//! Server → client: DataRow and CopyData are streamed through even when incomplete, so a huge
//! row or COPY never sits whole in memory — unless the answer is masked, when each row is held
//! whole and rewritten ([`results`](super::results)). The small messages that end or describe a
//! result are parsed to tie every answer to its command (masking rules, audit result records).
//!
//! Audit: a command's record is queued before the command goes to the server, and its
//! acknowledgement awaited before any answer goes back to the client, so the write overlaps
//! the server's round trip and no client sees the effect of an unrecorded command.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::catalog::{RelName, Views};
use super::codec::{self, ErrorFields, FrameError, HEADER_LEN, Reader};
use super::results::{Act, AuditSink, Back, Cmd, Expect};
use super::roles::{Roles, Step};
use crate::approval::ReviewTrail;
use crate::audit::{AuditError, CommandEvent, ReviewRecord};
use crate::gate::{self, Hold, Judge, Judged, Verdict};
use crate::model::{Class, Command, Decision, Dialect, Facts};
use crate::protocol::freshness;
use crate::runtime::{Budget, Lease};

/// Name prefix of the statements used to make the server fail in place of a denied command.
const SENTINEL: &str = "airlock_denied_";

/// Read buffer size of each direction.
const READ_CAPACITY: usize = 64 * 1024;

/// Named statements and portals a session may hold at once; beyond that it is ended, so a
/// client cannot grow the gateway's memory without bound.
const MAX_NAMED: usize = 100_000;

/// Bytes a client may pipeline behind a held command before the gateway stops reading.
const MAX_HELD_BUFFER: usize = 1024 * 1024;

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unexpected message type {0:?} from the client")]
    UnexpectedMessage(char),
    #[error("more than {MAX_NAMED} named statements or portals")]
    TooManyNamed,
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Header(#[from] codec::HeaderError),
    #[error(
        "the gateway is buffering too much for unfinished messages; a {bytes}-byte message cannot wait"
    )]
    Budget { bytes: usize },
}

impl SessionError {
    /// The SQLSTATE the client's FATAL error carries.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SessionError::Header(codec::HeaderError::TooLong { .. }) => "54000",
            SessionError::Budget { .. } => "53200",
            _ => "08P01",
        }
    }
}

/// Leases room for an unfinished message of `total` bytes from the daemon-wide budget, unless
/// it fits the read buffer anyway or a lease is already held for it.
fn lease_for(
    budget: &Arc<Budget>,
    lease: &mut Option<Lease>,
    total: usize,
) -> Result<(), SessionError> {
    if lease.is_none() && total > READ_CAPACITY {
        *lease = Some(
            budget
                .lease(total)
                .ok_or(SessionError::Budget { bytes: total })?,
        );
    }
    Ok(())
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The client sent Terminate.
    Terminate,
    ClientClosed,
    ServerClosed,
    /// The daemon's grace period ran out: the client is owed FATAL 57P01 (admin_shutdown).
    Shutdown,
}

/// NoticeResponses for the client, written by the server → client half between messages.
#[derive(Debug, Clone, Default)]
pub struct Notices(Arc<NoticeQueue>);

#[derive(Debug, Default)]
struct NoticeQueue {
    queue: Mutex<BytesMut>,
    ready: tokio::sync::Notify,
}

impl gate::Notice for Notices {
    /// Queues a NoticeResponse with `text`.
    fn notice(&self, text: &str) {
        let mut msg = BytesMut::new();
        codec::put_error(
            &mut msg,
            &ErrorFields {
                severity: "NOTICE",
                code: "00000",
                message: text,
                detail: None,
                hint: None,
            },
        );
        // A NoticeResponse has the ErrorResponse's layout under tag 'N'.
        msg[0] = b'N';
        if let Ok(mut q) = self.0.queue.lock() {
            q.extend_from_slice(&msg);
        }
        self.0.ready.notify_one();
    }
}

impl Notices {
    fn take(&self) -> Option<BytesMut> {
        let mut q = self.0.queue.lock().ok()?;
        (!q.is_empty()).then(|| q.split())
    }
}

/// State the two directions share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Denials whose server error is still to be replaced.
    injections: Mutex<Vec<Injection>>,
    /// Fast check for `injections` being non-empty.
    pending: AtomicBool,
    /// ReadyForQuery messages seen from the server.
    ready_seen: AtomicU64,
    /// Transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    status: AtomicU8,
    /// Answers the server owes, in order (see [`results`](super::results)).
    expect: Mutex<VecDeque<Expect>>,
    /// The client ran DDL: cached column names may be stale.
    stale: AtomicBool,
    /// DDL went to the server: other sessions' lookups start over at its ReadyForQuery.
    ddl_sent: AtomicBool,
    /// Bytes read from the client and written to it.
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Notices for the client (a held command's request id).
    notices: Notices,
    /// The gateway's own role switches whose answers are still to come.
    internal: AtomicU64,
    /// The first error of the gateway's role switches since the client half last looked.
    role_error: Mutex<Option<String>>,
    /// The client half waits for every answer (see [`wait_synced`]).
    waiting: AtomicBool,
    ready: tokio::sync::Notify,
    /// Signalled after each ReadyForQuery, for a message that waits on an earlier batch's
    /// answers.
    answered: tokio::sync::Notify,
}

impl Shared {
    /// Shared state starting at the transaction status of the first ReadyForQuery.
    pub fn new(status: u8) -> Self {
        Self {
            status: AtomicU8::new(status),
            ..Self::default()
        }
    }

    /// The transaction status as of the last ReadyForQuery the server sent.
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::Relaxed)
    }

    /// Whether the server has answered batch `batch` in full (its ReadyForQuery came).
    fn answered(&self, batch: u64) -> bool {
        self.ready_seen.load(Ordering::Acquire) > batch
    }
}

#[derive(Debug)]
struct Injection {
    id: u64,
    /// The ReadyForQuery (by count) that ends the batch it belongs to.
    batch: u64,
    error: Bytes,
}

#[derive(Debug)]
struct Stmt {
    text: Arc<str>,
    /// Parameter types the Parse declared (0: left to the server).
    param_types: Arc<[u32]>,
    /// Batch in which it was parsed (and decided).
    parsed_in: u64,
    /// The server confirmed the Parse (ParseComplete). A Parse skipped after an error, or
    /// failing itself, leaves the server's statement of that name as it was, so a Bind in a
    /// later batch trusts this entry only once confirmed.
    done: Arc<AtomicBool>,
    /// The Parse decision's command.
    cmd: Arc<Cmd>,
    /// Policy sends it to review: nothing is held at Parse (no values yet); every Bind is
    /// judged, and held, with the values it binds, so an approval covers exactly one run with
    /// exactly those values.
    review: bool,
}

/// A bound portal: one run of a statement with fixed values, decided at its Bind (the
/// server runs a portal of a write once; later Executes only fetch more rows).
#[derive(Debug)]
struct Portal {
    cmd: Arc<Cmd>,
    /// Batch of its Bind.
    bound_in: u64,
    /// The server confirmed the Bind (BindComplete); see [`Stmt::done`].
    done: Arc<AtomicBool>,
}

/// What the session needs besides policy: the audit log, masking, metrics, and the catalog
/// connection masking resolves columns with.
pub struct Env<'a> {
    pub audit: &'a AuditSink,
    pub masker: Arc<crate::mask::Masker>,
    pub metrics: &'a crate::metrics::Metrics,
    /// `None`: no masking can be resolved (a masked answer is then refused).
    pub side: Option<super::origin::SideConn>,
    /// The client side's catalog connection, to see views before a statement runs (`None`:
    /// a statement whose masking depends on its names being views is refused).
    pub views: Option<super::origin::SideConn>,
    /// The daemon-wide budget for unfinished messages.
    pub buffers: Arc<Budget>,
    /// Longest SQL text a Query or Parse may carry (the policy's pre-parse limit).
    pub statement_limit: usize,
    /// The daemon's drain signal.
    pub drain: &'a crate::drain::Watch,
    /// The roles commands run as, when the target lists any (the session is in its base
    /// role already).
    pub roles: Option<Roles>,
}

/// What to do with one client message.
enum Action {
    Forward,
    Drop,
    /// Replace with the bytes left in the scratch buffer.
    Replace,
    Terminate,
    /// Wait for the held command's verdict, then handle the message again with it.
    Hold(Hold),
    /// Write the bytes left in the scratch buffer (the gateway's role switch) and wait until
    /// the server answered everything, then handle the message again.
    Wait,
    /// Resolve these relation names on the catalog connection, then handle the message again.
    Resolve(Vec<RelName>),
    /// Send what came before, wait until the server has answered this batch, then handle
    /// the message again (it refers to a statement or portal whose creation is unconfirmed).
    Await(u64),
}

/// Why a command cannot be judged yet.
enum Pending {
    /// Held for approval.
    Hold(Hold),
    /// Its masking depends on whether these names are views.
    Resolve(Vec<RelName>),
}

impl From<Pending> for Action {
    fn from(p: Pending) -> Self {
        match p {
            Pending::Hold(h) => Action::Hold(h),
            Pending::Resolve(n) => Action::Resolve(n),
        }
    }
}

/// A command judged in this read, to record before it goes upstream: with its decision,
/// what classification found, and the review that released or refused it.
type ToRecord = (Arc<Cmd>, Decision, Arc<Facts>, Option<ReviewRecord>);

/// A held command's first judgement for the audit log (its decision, facts, the trail of its
/// review) and its text.
type HeldRecord = (Option<Decision>, Arc<Facts>, ReviewTrail, Arc<str>);

/// The client → server half's state: what the client prepared, and discard-until-Sync.
struct Front<'a, J: Judge> {
    judge: &'a J,
    shared: &'a Shared,
    session: u64,
    statements: HashMap<Box<str>, Stmt>,
    unnamed_stmt: Option<Stmt>,
    portals: HashMap<Box<str>, Portal>,
    unnamed_portal: Option<Portal>,
    /// After a denial in the extended protocol, until the client's Sync.
    discarding: bool,
    /// ReadyForQuery-producing messages (Sync, Query, FunctionCall) sent to the server: the
    /// current batch is the next one.
    batch: u64,
    next_injection: u64,
    /// Commands judged in this read, to record before they go upstream.
    to_record: Vec<ToRecord>,
    /// Answers owed for what this read forwards, pushed before it is written.
    expects: Vec<Expect>,
    /// The verdict a held command resolved to, used when its message is handled again.
    decided: Option<Verdict>,
    /// What the held command's first judgement said for the audit log (recorded once, with
    /// its final verdict and its review), and its text.
    held: Option<HeldRecord>,
    /// The review of the held command that just resolved, recorded with it.
    review: Option<ReviewRecord>,
    /// The portal of the client's Describe whose expectation is the last in `expects`: a
    /// masked Execute of it right after uses that Describe's answer for its plan.
    described: Option<(Box<str>, usize)>,
    /// What the relation names of this session's commands are (views seen through).
    views: Views,
    views_side: Option<super::origin::SideConn>,
    /// The database roles commands run as (`None`: the target names none).
    roles: Option<super::roles::Roles>,
    /// Extended-protocol messages went to the server since the last Sync.
    mid_batch: bool,
    /// A command judged before a wait for the server (role switch), handled again after it.
    parked: Option<Judged>,
    /// The role switch sent before the parked command, to check before it goes on.
    switched: bool,
    /// The way back after an elevated command, once its switch there was checked.
    elevated: Option<BytesMut>,
    /// The way back after a statement elevated in the middle of a pipeline: sent right
    /// behind its Execute (or in front of the Sync).
    inline_after: Option<BytesMut>,
}

/// What the role a command runs as asks of the session.
// The verdict moves through once per command; boxing it would allocate for every command.
#[allow(clippy::large_enum_variant)]
enum RoleGo {
    /// Send the command (and then these bytes, the way back from an elevation).
    Go(Judged, Option<BytesMut>),
    /// Wait with [`Action::Wait`] (the scratch buffer holds a switch, or nothing).
    Wait,
}

impl<J: Judge> Front<'_, J> {
    /// Obeys the role a verdict runs the command as (see [`roles`](super::roles)): switches
    /// first when needed, or refuses the command when the switch cannot be made.
    fn obey_role(&mut self, mut judged: Judged, scratch: &mut BytesMut) -> RoleGo {
        let Some(roles) = self.roles.as_mut() else {
            return RoleGo::Go(judged, None);
        };
        if !matches!(judged.verdict, Verdict::Allow { .. }) {
            return RoleGo::Go(judged, None);
        }
        let synced = self.shared.ready_seen.load(Ordering::SeqCst) >= self.batch;
        let error = if synced {
            self.shared
                .role_error
                .lock()
                .ok()
                .and_then(|mut e| e.take())
        } else {
            None
        };
        // The record says what happened: a denial by the rule, with the server's reason.
        let refuse = |judged: &mut Judged, message: String| {
            tracing::warn!(session = self.session, %message, "role switch refused the command");
            judged.record = judged.record.take().map(|d| d.refused(message.clone()));
            judged.verdict = Verdict::Deny { message };
        };
        if std::mem::take(&mut self.switched) {
            let after = self.elevated.take();
            if let Err(message) = roles.switched(error) {
                refuse(&mut judged, message);
                return RoleGo::Go(judged, None);
            }
            if after.is_some() {
                return RoleGo::Go(judged, after);
            }
        } else if error.is_some() {
            // The way back after an elevation failed: the role is set again below.
            roles.forget();
        }
        let server = super::roles::Server {
            synced,
            status: self.shared.status(),
            mid_batch: self.mid_batch,
        };
        // Borrowed, not cloned: this runs for every allowed command.
        let (run_as, elevate) = match &judged.verdict {
            Verdict::Allow {
                run_as, elevate, ..
            } => (run_as.as_deref(), elevate.as_deref()),
            _ => (None, None),
        };
        let step = roles.plan(run_as, elevate, &judged.facts, server);
        match step {
            Step::Run => RoleGo::Go(judged, None),
            Step::Sync => {
                self.parked = Some(judged);
                RoleGo::Wait
            }
            Step::Switch(bytes) => {
                self.internal(&bytes, scratch);
                self.switched = true;
                self.parked = Some(judged);
                RoleGo::Wait
            }
            Step::Elevate { before, after } => {
                self.internal(&before, scratch);
                self.switched = true;
                self.elevated = Some(after);
                self.parked = Some(judged);
                RoleGo::Wait
            }
            Step::Inline { before, after } => {
                self.inline(&before, scratch);
                self.inline_after = Some(after);
                RoleGo::Go(judged, None)
            }
            Step::Refuse(message) => {
                refuse(&mut judged, message);
                RoleGo::Go(judged, None)
            }
        }
    }

    /// Queues a `SET LOCAL ROLE` inside the client's pipeline into `out`.
    fn inline(&mut self, bytes: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(bytes);
        self.expects.push(Expect::InternalInline { closes: 0 });
        self.shared.internal.fetch_add(1, Ordering::SeqCst);
    }

    /// The message goes out behind what the role switch put in `scratch`, if anything.
    fn behind(scratch: &mut BytesMut, msg: &[u8]) -> Action {
        if scratch.is_empty() {
            Action::Forward
        } else {
            scratch.extend_from_slice(msg);
            Action::Replace
        }
    }

    /// After an allowed command: the role is unknown when it may have changed it.
    fn ran(&mut self, facts: &Facts) {
        if let Some(r) = self.roles.as_mut() {
            r.ran(facts);
        }
    }

    /// Queues the gateway's own switch (it ends with a Sync) into `out`.
    fn internal(&mut self, bytes: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(bytes);
        self.batch += 1;
        self.expects.push(Expect::Internal);
        self.shared.internal.fetch_add(1, Ordering::SeqCst);
    }

    /// The command of one decision; queued for the audit log when recording.
    fn command(&mut self, text: &str, judged: Judged) -> (Arc<Cmd>, Verdict) {
        if judged.facts.classes().contains(Class::Ddl) {
            self.shared.stale.store(true, Ordering::Release);
            self.views.invalidate();
            // Every session's lookups, now and again once the server is ready after it.
            freshness::catalog_changed();
            self.shared.ddl_sent.store(true, Ordering::Release);
        }
        let mut verdict = judged.verdict;
        // The rules move to the command; the verdict's copy is not used after this.
        let (mask, denied) = match &mut verdict {
            Verdict::Allow { mask, .. } => (std::mem::take(mask), false),
            Verdict::Deny { .. } | Verdict::Hold(_) => (Vec::new(), true),
        };
        let cmd = Cmd::new(Arc::from(text), mask, denied, Arc::clone(&judged.facts));
        let review = self.review.take();
        if let Some(decision) = judged.record {
            self.to_record
                .push((cmd.clone(), decision, judged.facts, review));
        }
        (cmd, verdict)
    }

    /// Queues the record of a held command whose client went away (its review withdrawn).
    fn withdraw_held(&mut self) {
        if let Some((Some(decision), facts, trail, text)) = self.held.take() {
            let review = trail.take().as_ref().map(gate::session::review_record);
            let cmd = Cmd::new(text, Vec::new(), true, Arc::clone(&facts));
            self.to_record.push((cmd, decision, facts, review));
        }
    }

    /// Queues this read's command records and publishes its expected answers; call before
    /// writing to the server.
    async fn publish(&mut self, audit: &AuditSink) -> Result<(), SessionError> {
        if !self.to_record.is_empty() {
            let mut rec = audit.recorder().await;
            for (cmd, decision, facts, review) in self.to_record.drain(..) {
                let (n, ack) = rec
                    .command(CommandEvent {
                        command: &Command::sql(Dialect::Postgres, &cmd.text),
                        facts: &facts,
                        decision: &decision,
                        approval: review,
                        caller: None,
                    })
                    .await?;
                cmd.n.store(n, Ordering::Release);
                audit.hold(ack);
            }
        }
        self.described = None;
        if !self.expects.is_empty()
            && let Ok(mut q) = self.shared.expect.lock()
        {
            q.extend(self.expects.drain(..));
        }
        Ok(())
    }

    /// Judges a command, or returns the hold it must wait on, or the relation names to
    /// resolve first (when column masking let it through by names that may be views). After
    /// either, the same message is handled again and gets the verdict here.
    fn judge_or_hold(&mut self, command: &Command<'_>) -> Result<Judged, Pending> {
        let Judged {
            verdict,
            facts,
            record,
            ..
        } = match (self.parked.take(), self.decided.take()) {
            (Some(parked), decided) => {
                // Judged before a wait for the server: same verdict (a resolved hold stays
                // resolved).
                self.decided = decided;
                parked
            }
            (None, Some(verdict)) => {
                let (record, facts) = match self.held.take() {
                    Some((record, facts, trail, _)) => {
                        self.review = trail.take().as_ref().map(gate::session::review_record);
                        (record, facts)
                    }
                    None => (None, Arc::new(Facts::default())),
                };
                // A hold never resolves to another hold; refuse rather than loop.
                let verdict = match verdict {
                    Verdict::Hold(_) => Verdict::Deny {
                        message: "airlock: internal error: approval did not resolve".into(),
                    },
                    v => v,
                };
                Judged {
                    verdict,
                    facts,
                    record,
                    views_matter: false,
                    record_bodies: None,
                }
            }
            (None, None) => {
                self.views.refresh();
                let judged = self.judge.judge_through(command, &self.views);
                if judged.views_matter {
                    let names = self.views.unresolved(&judged.facts.lineage);
                    if !names.is_empty() {
                        return Err(Pending::Resolve(names));
                    }
                }
                judged
            }
        };
        match verdict {
            Verdict::Hold(h) => {
                self.held = Some((record, facts, h.trail(), Arc::from(&*command.text())));
                Err(Pending::Hold(h))
            }
            verdict => Ok(Judged {
                verdict,
                facts,
                record,
                views_matter: false,
                record_bodies: None,
            }),
        }
    }

    fn handle(
        &mut self,
        tag: u8,
        msg: &[u8],
        scratch: &mut BytesMut,
    ) -> Result<Action, SessionError> {
        let body = &msg[HEADER_LEN..];
        if self.discarding && tag != b'S' && tag != b'X' {
            return Ok(Action::Drop);
        }
        // A simple Query or FunctionCall before an extended-protocol batch's Sync: after an
        // error in that batch the server ignores it (up to the Sync), so the answers would no
        // longer line up with what the gateway expects. No client library sends one there.
        if self.mid_batch && matches!(tag, b'Q' | b'F') {
            return Err(SessionError::UnexpectedMessage(char::from(tag)));
        }
        Ok(match tag {
            b'Q' => {
                let text = Reader::new(body, "Query").cstr()?;
                let judged = match self.judge_or_hold(&Command::sql(Dialect::Postgres, text)) {
                    Ok(j) => j,
                    Err(p) => return Ok(p.into()),
                };
                let (judged, after) = match self.obey_role(judged, scratch) {
                    RoleGo::Go(j, after) => (j, after),
                    RoleGo::Wait => return Ok(Action::Wait),
                };
                let facts = judged.facts.clone();
                let (cmd, verdict) = self.command(text, judged);
                self.expects.push(Expect::Query {
                    cmd,
                    started: Instant::now(),
                });
                match verdict {
                    Verdict::Hold(h) => Action::Hold(h),
                    Verdict::Allow { .. } => {
                        self.batch += 1;
                        self.ran(&facts);
                        match after {
                            // The way back right behind the elevated statement.
                            Some(after) => {
                                scratch.extend_from_slice(msg);
                                self.internal(&after, scratch);
                                Action::Replace
                            }
                            None => Action::Forward,
                        }
                    }
                    Verdict::Deny { message } => {
                        self.deny_simple(&message, scratch);
                        Action::Replace
                    }
                }
            }
            b'P' => {
                let mut r = Reader::new(body, "Parse");
                let name = r.cstr()?;
                let text = r.cstr()?;
                let param_types: Arc<[u32]> = super::params::parse_types(r.rest())?.into();
                let (cmd, verdict, review) =
                    match self.judge_or_hold(&Command::sql(Dialect::Postgres, text)) {
                        Ok(judged) => {
                            let (judged, after) = match self.obey_role(judged, scratch) {
                                RoleGo::Go(j, after) => (j, after),
                                RoleGo::Wait => return Ok(Action::Wait),
                            };
                            let facts = judged.facts.clone();
                            let (cmd, verdict) = self.command(text, judged);
                            if let Verdict::Allow { .. } = verdict {
                                self.ran(&facts);
                                if let (Some(after), Some(roles)) = (after, self.roles.as_mut()) {
                                    // The way back goes after the pipeline's Sync.
                                    roles.after_sync = Some(after);
                                }
                            }
                            (cmd, verdict, false)
                        }
                        Err(Pending::Resolve(names)) => return Ok(Action::Resolve(names)),
                        // Review waits for the values: preparing runs nothing, so the Parse
                        // goes on and each Bind is held. The hold was never started: no
                        // request exists, and the Bind's judgement is what is recorded.
                        Err(Pending::Hold(_not_yet)) => {
                            self.held = None;
                            let cmd = Cmd::new(
                                Arc::from(text),
                                Vec::new(),
                                false,
                                Arc::new(Facts::default()),
                            );
                            let allow = Verdict::Allow {
                                rule: String::new(),
                                mask: Vec::new(),
                                approval: None,
                                run_as: None,
                                elevate: None,
                            };
                            (cmd, allow, true)
                        }
                    };
                match verdict {
                    Verdict::Hold(h) => Action::Hold(h),
                    Verdict::Allow { .. } => {
                        self.mid_batch = true;
                        let done = Arc::new(AtomicBool::new(false));
                        self.expects.push(Expect::Parse { done: done.clone() });
                        let stmt = Stmt {
                            text: cmd.text.clone(),
                            param_types,
                            parsed_in: self.batch,
                            done,
                            cmd,
                            review,
                        };
                        if name.is_empty() {
                            self.unnamed_stmt = Some(stmt);
                        } else {
                            // A name the gateway holds: the server keeps its statement (a
                            // duplicate is an error) or, when SQL `DEALLOCATE` removed it
                            // unseen, takes this one. The record follows this Parse either
                            // way; its `done` flag says whether the server holds it, and a
                            // later Bind of one it does not hold is refused, never judged
                            // as text the server is not running.
                            if !self.statements.contains_key(name)
                                && self.statements.len() >= MAX_NAMED
                            {
                                return Err(SessionError::TooManyNamed);
                            }
                            self.statements.insert(name.into(), stmt);
                        }
                        Self::behind(scratch, msg)
                    }
                    Verdict::Deny { message } => {
                        self.deny_extended(&message, scratch);
                        Action::Replace
                    }
                }
            }
            b'B' => {
                let mut r = Reader::new(body, "Bind");
                let portal = r.cstr()?;
                let stmt_name = r.cstr()?;
                let stmt = if stmt_name.is_empty() {
                    self.unnamed_stmt.as_ref()
                } else {
                    self.statements.get(stmt_name)
                };
                // Prepared behind the gateway's back (SQL PREPARE), or one whose Close the
                // server may have skipped: nothing the gateway can judge. Refused.
                let Some(stmt) = stmt else {
                    self.deny_extended(
                        &format!(
                            "airlock: prepared statement \"{stmt_name}\" was not prepared through the gateway"
                        ),
                        scratch,
                    );
                    return Ok(Action::Replace);
                };
                // From an earlier batch: the server holds this statement only if its Parse
                // was confirmed; until that batch is answered, wait.
                if stmt.parsed_in != self.batch && !stmt.done.load(Ordering::Acquire) {
                    if !self.shared.answered(stmt.parsed_in) {
                        return Ok(Action::Await(stmt.parsed_in));
                    }
                    self.deny_extended(
                        &format!(
                            "airlock: prepared statement \"{stmt_name}\" was not created on the server (its Parse failed or was skipped); prepare it again"
                        ),
                        scratch,
                    );
                    return Ok(Action::Replace);
                }
                {
                    // Parsed, decided and allowed in this very batch: that decision stands.
                    // Otherwise (a prepared statement run again, or one policy sends to
                    // review) this run is judged now, with the values it binds.
                    let cmd = if !stmt.review && stmt.parsed_in == self.batch {
                        stmt.cmd.clone()
                    } else {
                        let (text, types) = (stmt.text.clone(), stmt.param_types.clone());
                        let mut values = Vec::new();
                        super::params::bind_values(r.rest(), &types, &mut values)?;
                        let command = Command::sql_bound(Dialect::Postgres, &text, &values);
                        let judged = match self.judge_or_hold(&command) {
                            Ok(j) => j,
                            Err(p) => return Ok(p.into()),
                        };
                        // The role this run is judged to run as: an approved one elevated in
                        // the pipeline (back right behind its Execute), or switched first.
                        let judged = match self.obey_role(judged, scratch) {
                            RoleGo::Go(j, after) => {
                                // Elevated at the start of a pipeline: back after its Sync.
                                if let (Some(after), Some(roles)) = (after, self.roles.as_mut()) {
                                    roles.after_sync = Some(after);
                                }
                                j
                            }
                            RoleGo::Wait => return Ok(Action::Wait),
                        };
                        let facts = judged.facts.clone();
                        match self.command(&text, judged) {
                            (cmd, Verdict::Allow { .. }) => {
                                self.ran(&facts);
                                cmd
                            }
                            (_, Verdict::Deny { message }) => {
                                self.deny_extended(&message, scratch);
                                return Ok(Action::Replace);
                            }
                            (_, Verdict::Hold(_)) => {
                                self.deny_extended(
                                    "airlock: internal error: approval did not resolve",
                                    scratch,
                                );
                                return Ok(Action::Replace);
                            }
                        }
                    };
                    let done = Arc::new(AtomicBool::new(false));
                    self.expects.push(Expect::Bind { done: done.clone() });
                    let p = Portal {
                        cmd,
                        bound_in: self.batch,
                        done,
                    };
                    if portal.is_empty() {
                        self.unnamed_portal = Some(p);
                    } else {
                        if self.portals.len() >= MAX_NAMED {
                            return Err(SessionError::TooManyNamed);
                        }
                        self.portals.insert(portal.into(), p);
                    }
                }
                self.mid_batch = true;
                // Behind a role switch in front of it, if any.
                Self::behind(scratch, msg)
            }
            b'D' => {
                let mut r = Reader::new(body, "Describe");
                let kind = r.u8()?;
                let name = r.cstr()?;
                let cmd = match kind {
                    b'S' if name.is_empty() => self.unnamed_stmt.as_ref().map(|s| &s.cmd),
                    b'S' => self.statements.get(name).map(|s| &s.cmd),
                    _ if name.is_empty() => self.unnamed_portal.as_ref().map(|p| &p.cmd),
                    _ => self.portals.get(name).map(|p| &p.cmd),
                };
                self.expects.push(Expect::Describe {
                    cmd: cmd.filter(|c| !c.mask.is_empty()).cloned(),
                    injected: false,
                    feeds: false,
                });
                self.described = (kind == b'P').then(|| (name.into(), self.expects.len() - 1));
                self.mid_batch = true;
                Action::Forward
            }
            b'E' => {
                let name = Reader::new(body, "Execute").cstr()?;
                let portal = if name.is_empty() {
                    self.unnamed_portal.as_ref()
                } else {
                    self.portals.get(name)
                };
                let decided = match portal {
                    // Decided at its Bind, with its values. From an earlier batch, only once
                    // the server confirmed that Bind: a skipped or failed one leaves the
                    // server's portal of that name (another statement, other rules) in place.
                    Some(p) if p.bound_in != self.batch && !p.done.load(Ordering::Acquire) => {
                        if !self.shared.answered(p.bound_in) {
                            return Ok(Action::Await(p.bound_in));
                        }
                        Err(format!(
                            "airlock: portal \"{name}\" was not created on the server (its Bind failed or was skipped)"
                        ))
                    }
                    // During COPY FROM STDIN the server ignores Sync and Flush, so after an
                    // extended-protocol COPY the answers no longer line up with what the
                    // gateway expects (and the next result could go out unplanned). Clients
                    // send COPY as a simple query (psql, psycopg, asyncpg, pgx, JDBC).
                    Some(p) if p.cmd.facts.kinds.contains(&"copy_from") => Err(
                        "airlock: COPY FROM STDIN is accepted as a simple query only, not through the extended protocol"
                            .into(),
                    ),
                    Some(p) => Ok(p.cmd.clone()),
                    // Not bound through us (e.g. a cursor DECLAREd in SQL): we cannot tell what
                    // it runs, so refuse.
                    None => Err(format!(
                        "airlock: portal \"{name}\" was not bound through the gateway; use FETCH"
                    )),
                };
                match decided {
                    Ok(cmd) => {
                        let mut masked = !cmd.mask.is_empty();
                        if masked && self.feed_from_describe(name, &cmd) {
                            masked = false;
                        }
                        if masked {
                            // The rows need their columns: describe the portal first (its
                            // answer builds the plan and is not forwarded).
                            self.expects.push(Expect::Describe {
                                cmd: Some(cmd.clone()),
                                injected: true,
                                feeds: false,
                            });
                            codec::put_message(scratch, b'D', |o| {
                                o.put_u8(b'P');
                                codec::put_cstr(o, name.as_bytes());
                            });
                            scratch.extend_from_slice(msg);
                        }
                        self.mid_batch = true;
                        self.expects.push(Expect::Execute {
                            cmd,
                            started: Instant::now(),
                        });
                        // Behind a role switch in front of it, or masked: rewritten.
                        let replaced = masked || !scratch.is_empty();
                        if replaced && !masked {
                            scratch.extend_from_slice(msg);
                        }
                        match self.inline_after.take() {
                            // The way back from an elevation right behind the statement.
                            Some(after) => {
                                if !replaced {
                                    scratch.extend_from_slice(msg);
                                }
                                self.inline(&after, scratch);
                                Action::Replace
                            }
                            None if replaced => Action::Replace,
                            None => Action::Forward,
                        }
                    }
                    Err(message) => {
                        self.deny_extended(&message, scratch);
                        Action::Replace
                    }
                }
            }
            b'C' => {
                let mut r = Reader::new(body, "Close");
                let kind = r.u8()?;
                let name = r.cstr()?;
                match (kind, name.is_empty()) {
                    (b'S', true) => self.unnamed_stmt = None,
                    (b'S', false) => {
                        self.statements.remove(name);
                    }
                    (b'P', true) => self.unnamed_portal = None,
                    (b'P', false) => {
                        self.portals.remove(name);
                    }
                    _ => {}
                }
                // A Close never fails, so it cannot make the server skip what follows: pgjdbc
                // sends its dead statements' Closes right before a simple Query.
                self.expects.push(Expect::Close);
                Action::Forward
            }
            b'S' => {
                self.discarding = false;
                self.mid_batch = false;
                if let Some(after) = self.inline_after.take() {
                    // An elevated statement that was never executed: back before the Sync.
                    self.inline(&after, scratch);
                }
                self.batch += 1;
                self.expects.push(Expect::Sync);
                if !scratch.is_empty() {
                    scratch.extend_from_slice(msg);
                    if let Some(after) = self.roles.as_mut().and_then(|r| r.after_sync.take()) {
                        self.internal(&after, scratch);
                    }
                    return Ok(Action::Replace);
                }
                match self.roles.as_mut().and_then(|r| r.after_sync.take()) {
                    Some(after) => {
                        scratch.extend_from_slice(msg);
                        self.internal(&after, scratch);
                        Action::Replace
                    }
                    None => Action::Forward,
                }
            }
            b'H' | b'd' | b'c' | b'f' => Action::Forward,
            b'F' => {
                // The fastpath function call runs a function by OID, with no SQL for policy to
                // judge: refused.
                self.expects.push(Expect::Query {
                    cmd: Cmd::new(
                        Arc::from("<function call>"),
                        Vec::new(),
                        true,
                        Arc::new(Facts::default()),
                    ),
                    started: Instant::now(),
                });
                self.deny_simple(
                    "airlock: the function call protocol is not allowed through the gateway",
                    scratch,
                );
                Action::Replace
            }
            b'X' => Action::Terminate,
            other => return Err(SessionError::UnexpectedMessage(char::from(other))),
        })
    }

    fn register(&mut self, message: &str, batch: u64) -> u64 {
        let id = self.next_injection;
        self.next_injection += 1;
        let mut err = BytesMut::new();
        codec::put_error(
            &mut err,
            &ErrorFields {
                severity: "ERROR",
                code: "42501",
                message,
                detail: None,
                hint: None,
            },
        );
        tracing::info!(session = self.session, %message, "statement denied");
        if let Ok(mut list) = self.shared.injections.lock() {
            list.push(Injection {
                id,
                batch,
                error: err.freeze(),
            });
            self.shared.pending.store(true, Ordering::Release);
        }
        id
    }

    /// Simple protocol: a DEALLOCATE of a statement that cannot exist takes the Query's place.
    /// Resolves relation names on the client side's catalog connection; names it cannot
    /// resolve are judged as views that cannot be traced.
    async fn resolve(&mut self, names: Vec<RelName>) {
        if self.views.cache.names_full() {
            self.views.invalidate();
        }
        match self.views_side.as_mut() {
            Some(side) => {
                if let Err(e) = side.resolve(&mut self.views.cache, &names).await {
                    tracing::warn!(
                        session = self.session,
                        error = %e,
                        "resolving relation names for masking failed"
                    );
                }
            }
            None => tracing::warn!(
                session = self.session,
                "no catalog connection to resolve relation names for masking"
            ),
        }
        // Whatever is still not known is untraceable (and never asked for again).
        let left = self
            .views
            .cache
            .missing_names(names.iter().map(|(s, n)| (s.as_deref(), n.as_str())));
        self.views.fail(left);
    }

    fn deny_simple(&mut self, message: &str, scratch: &mut BytesMut) {
        self.batch += 1;
        let id = self.register(message, self.batch);
        codec::put_message(scratch, b'Q', |o| {
            o.put_slice(format!("DEALLOCATE {SENTINEL}{id}").as_bytes());
            o.put_u8(0);
        });
    }

    /// Extended protocol: a Describe of a statement that cannot exist takes the message's place;
    /// the server then discards until Sync, as do we.
    fn deny_extended(&mut self, message: &str, scratch: &mut BytesMut) {
        let id = self.register(message, self.batch + 1);
        codec::put_message(scratch, b'D', |o| {
            o.put_u8(b'S');
            codec::put_cstr(o, format!("{SENTINEL}{id}").as_bytes());
        });
        self.expects.push(Expect::Describe {
            cmd: None,
            injected: false,
            feeds: false,
        });
        self.discarding = true;
        self.mid_batch = true;
    }

    /// When the message before this masked Execute of `portal` (Flush aside) was the client's
    /// own Describe of the same portal, its answer carries the same columns and formats as an
    /// injected Describe's would: it builds the Execute's plan (under the Execute's rules) and
    /// no Describe is injected. `false`: inject one.
    fn feed_from_describe(&mut self, portal: &str, cmd: &Arc<Cmd>) -> bool {
        let Some((name, at)) = self.described.take() else {
            return false;
        };
        if &*name != portal || at + 1 != self.expects.len() {
            return false;
        }
        match self.expects.last_mut() {
            Some(Expect::Describe {
                cmd: c,
                injected: false,
                feeds,
            }) => {
                *c = Some(cmd.clone());
                *feeds = true;
                true
            }
            _ => false,
        }
    }
}

/// Runs both directions until one side ends. `server_buf` holds bytes the server already sent.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, SR, SW, J>(
    session: u64,
    judge: &J,
    shared: &Shared,
    env: Env<'_>,
    mut client_read: CR,
    client_write: &mut CW,
    server_read: SR,
    mut server_write: SW,
    server_buf: BytesMut,
) -> Result<Exit, SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
    J: Judge,
{
    let mut front = Front {
        judge,
        shared,
        session,
        statements: HashMap::new(),
        unnamed_stmt: None,
        portals: HashMap::new(),
        unnamed_portal: None,
        discarding: false,
        batch: 0,
        next_injection: 0,
        to_record: Vec::new(),
        expects: Vec::new(),
        decided: None,
        held: None,
        review: None,
        described: None,
        inline_after: None,
        roles: env.roles,
        mid_batch: false,
        parked: None,
        switched: false,
        elevated: None,
        views: Views::default(),
        views_side: env.views,
    };
    let audit = env.audit;
    let (buffers, statement_limit) = (env.buffers.clone(), env.statement_limit);
    let drain = env.drain;
    let back = Back::new(
        &shared.expect,
        env.audit,
        env.masker,
        env.metrics,
        env.side,
        &shared.stale,
        &shared.ddl_sent,
    );
    let up = client_to_server(
        &mut front,
        audit,
        (&buffers, statement_limit),
        &mut client_read,
        &mut server_write,
    );
    let down = server_to_client(
        shared,
        back,
        &buffers,
        server_read,
        client_write,
        server_buf,
        drain,
    );
    let exit = tokio::select! {
        r = up => r,
        r = down => r,
    };
    if matches!(exit, Ok(Exit::Shutdown)) {
        // Log the server session out properly rather than leaving it an unexpected EOF.
        let _ = server_write.write_all(&[b'X', 0, 0, 0, 4]).await;
    }
    let _ = server_write.shutdown().await;
    exit
}

async fn client_to_server<R, W, J>(
    front: &mut Front<'_, J>,
    audit: &AuditSink,
    (buffers, statement_limit): (&Arc<Budget>, usize),
    r: &mut R,
    w: &mut W,
) -> Result<Exit, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    J: Judge,
{
    let mut buf = BytesMut::with_capacity(READ_CAPACITY);
    let mut out = BytesMut::new();
    let mut scratch = BytesMut::new();
    // Bytes of a partly received CopyData still to forward, or of a discarded one to drop.
    let mut pass = 0usize;
    let mut skip = 0usize;
    // Budget held for the unfinished message at the front of `buf`.
    let mut lease: Option<Lease> = None;
    loop {
        let got = r.read_buf(&mut buf).await?;
        if got == 0 {
            return Ok(Exit::ClientClosed);
        }
        front
            .shared
            .bytes_from_client
            .fetch_add(got as u64, Ordering::Relaxed);
        let mut pos = 0;
        let mut run = 0;
        let mut terminate = false;
        while pos < buf.len() {
            if pass > 0 {
                let n = pass.min(buf.len() - pos);
                pass -= n;
                pos += n;
                continue;
            }
            if skip > 0 {
                let n = skip.min(buf.len() - pos);
                out.extend_from_slice(&buf[run..pos]);
                skip -= n;
                pos += n;
                run = pos;
                continue;
            }
            let Some(h) = codec::peek_header(&buf[pos..])? else {
                break;
            };
            // Refused on its header alone: an unknown type, or longer than its type allows.
            codec::check_frontend(h, statement_limit)?;
            let avail = buf.len() - pos;
            if avail < h.total {
                if h.tag == b'd' {
                    // Stream COPY data through (or away) without holding it whole.
                    if front.discarding {
                        out.extend_from_slice(&buf[run..pos]);
                        skip = h.total - avail;
                        run = buf.len();
                    } else {
                        pass = h.total - avail;
                    }
                    pos = buf.len();
                } else {
                    lease_for(buffers, &mut lease, h.total)?;
                    buf.reserve(h.total - avail);
                }
                break;
            }
            let end = pos + h.total;
            scratch.clear();
            match front.handle(h.tag, &buf[pos..end], &mut scratch)? {
                Action::Forward => {}
                Action::Drop => {
                    out.extend_from_slice(&buf[run..pos]);
                    run = end;
                }
                Action::Replace => {
                    out.extend_from_slice(&buf[run..pos]);
                    out.extend_from_slice(&scratch);
                    run = end;
                }
                Action::Terminate => {
                    pos = end;
                    terminate = true;
                    break;
                }
                Action::Hold(hold) => {
                    // What came before the held command goes to the server now, recorded and
                    // with its answers expected first.
                    out.extend_from_slice(&buf[run..pos]);
                    front.publish(audit).await?;
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        w.flush().await?;
                        out.clear();
                    }
                    run = pos;
                    let mut wait = hold.start(Arc::new(front.shared.notices.clone()));
                    let verdict = loop {
                        // Keep reading while held, so a client that goes away withdraws the
                        // request; what it pipelines meanwhile waits in the buffer.
                        tokio::select! {
                            v = &mut wait => break v,
                            n = r.read_buf(&mut buf), if buf.len() < MAX_HELD_BUFFER => {
                                if n? == 0 {
                                    drop(wait);
                                    front.withdraw_held();
                                    front.publish(audit).await?;
                                    return Ok(Exit::ClientClosed);
                                }
                            }
                        }
                    };
                    front.decided = Some(verdict);
                    // Handle the same message again, now with its verdict.
                    continue;
                }
                Action::Wait => {
                    // What came before, then the gateway's switch; the command waits.
                    out.extend_from_slice(&buf[run..pos]);
                    out.extend_from_slice(&scratch);
                    front.publish(audit).await?;
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        w.flush().await?;
                        out.clear();
                    }
                    run = pos;
                    wait_synced(front.shared, front.batch).await;
                    continue;
                }
                Action::Resolve(names) => {
                    // What came before goes to the server first (it may define the names),
                    // recorded and expected as usual.
                    out.extend_from_slice(&buf[run..pos]);
                    front.publish(audit).await?;
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        w.flush().await?;
                        out.clear();
                    }
                    run = pos;
                    front.resolve(names).await;
                    // Judge the same message again, now through its views.
                    continue;
                }
                Action::Await(batch) => {
                    out.extend_from_slice(&buf[run..pos]);
                    front.publish(audit).await?;
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        w.flush().await?;
                        out.clear();
                    }
                    run = pos;
                    loop {
                        // Created before the check, so a ReadyForQuery between is not missed.
                        let answered = front.shared.answered.notified();
                        if front.shared.answered(batch) {
                            break;
                        }
                        tokio::select! {
                            () = answered => {}
                            n = r.read_buf(&mut buf), if buf.len() < MAX_HELD_BUFFER => {
                                if n? == 0 {
                                    return Ok(Exit::ClientClosed);
                                }
                            }
                        }
                    }
                    continue;
                }
            }
            pos = end;
            // Whole and handled: the message the lease was for (always the first) is done.
            lease = None;
        }
        front.publish(audit).await?;
        if out.is_empty() {
            if run == 0 {
                w.write_all(&buf[..pos]).await?;
            } else {
                w.write_all(&buf[run..pos]).await?;
            }
        } else {
            out.extend_from_slice(&buf[run..pos]);
            w.write_all(&out).await?;
            out.clear();
        }
        w.flush().await?;
        buf.advance(pos);
        if terminate {
            return Ok(Exit::Terminate);
        }
        if buf.capacity() - buf.len() < READ_CAPACITY / 4 {
            buf.reserve(READ_CAPACITY);
        }
    }
}

async fn server_to_client<R, W>(
    shared: &Shared,
    mut back: Back<'_>,
    buffers: &Arc<Budget>,
    mut r: R,
    w: &mut W,
    mut buf: BytesMut,
    drain: &crate::drain::Watch,
) -> Result<Exit, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    buf.reserve(READ_CAPACITY);
    let mut out = BytesMut::new();
    let mut rep = BytesMut::new();
    // Bytes of a partly received message still to forward, or to drop.
    let mut pass = 0usize;
    let mut skip = 0usize;
    let mut lease: Option<Lease> = None;
    let audit = back.audit;
    loop {
        let mut pos = 0;
        let mut run = 0;
        while pos < buf.len() {
            if pass > 0 {
                let n = pass.min(buf.len() - pos);
                pass -= n;
                pos += n;
                continue;
            }
            if skip > 0 {
                let n = skip.min(buf.len() - pos);
                out.extend_from_slice(&buf[run..pos]);
                skip -= n;
                pos += n;
                run = pos;
                continue;
            }
            let Some(h) = codec::peek_header(&buf[pos..])? else {
                break;
            };
            let avail = buf.len() - pos;
            // Rows and COPY data stream through unless masked (or dropped after a refusal);
            // every other message is small and parsed whole.
            let streamed = (h.tag == b'D' || h.tag == b'd') && !back.rows_masked();
            if avail < h.total {
                if streamed {
                    back.count(h.total);
                    if back.suppress {
                        out.extend_from_slice(&buf[run..pos]);
                        skip = h.total - avail;
                        run = buf.len();
                    } else {
                        pass = h.total - avail;
                    }
                    pos = buf.len();
                } else {
                    lease_for(buffers, &mut lease, h.total)?;
                    buf.reserve(h.total - avail);
                }
                break;
            }
            let end = pos + h.total;
            lease = None;
            back.count(h.total);
            if streamed && !back.suppress {
                pos = end;
                continue;
            }
            if shared.internal.load(Ordering::SeqCst) > 0
                && internal_answer(shared, h.tag, &buf[pos..end])?
            {
                // The gateway's own role switch: the client sees none of it.
                out.extend_from_slice(&buf[run..pos]);
                run = end;
                pos = end;
                continue;
            }
            let mut act = Act::Forward;
            rep.clear();
            match h.tag {
                b'Z' => {
                    let status = buf[pos + HEADER_LEN];
                    shared.status.store(status, Ordering::Relaxed);
                    let seen = shared.ready_seen.fetch_add(1, Ordering::SeqCst) + 1;
                    if shared.waiting.load(Ordering::SeqCst) {
                        shared.ready.notify_waiters();
                    }
                    shared.answered.notify_waiters();
                    if shared.pending.load(Ordering::Acquire) {
                        // Injections of finished batches were discarded by the server (an
                        // earlier error in the same batch): the client already has an error.
                        retire(shared, seen);
                    }
                }
                b'E' if shared.pending.load(Ordering::Acquire) => {
                    if let Some(replacement) = take_injection(shared, &buf[pos + HEADER_LEN..end])?
                    {
                        rep.extend_from_slice(&replacement);
                        act = Act::Replace;
                    }
                }
                _ => {}
            }
            let msg = &buf[pos..end];
            let back_act = if h.tag == b'D' && back.rows_masked() {
                back.on_row(msg, &mut rep)
            } else if matches!(act, Act::Replace) {
                // Our denial replaces the server's error: the answer side only keeps count.
                let mut ignored = BytesMut::new();
                match back.on_message(h.tag, msg, &mut ignored).await {
                    Act::Drop => Act::Drop,
                    _ => Act::Forward,
                }
            } else {
                back.on_message(h.tag, msg, &mut rep).await
            };
            match (act, back_act) {
                (_, Act::Drop) => {
                    out.extend_from_slice(&buf[run..pos]);
                    run = end;
                }
                (Act::Replace, _) | (_, Act::Replace) => {
                    out.extend_from_slice(&buf[run..pos]);
                    out.extend_from_slice(&rep);
                    run = end;
                }
                _ => {}
            }
            pos = end;
        }
        if pos > 0 {
            // No answer before the records of the commands it answers are acknowledged.
            audit.settle().await?;
            let sent = if out.is_empty() {
                w.write_all(&buf[run..pos]).await?;
                pos - run
            } else {
                out.extend_from_slice(&buf[run..pos]);
                w.write_all(&out).await?;
                let n = out.len();
                out.clear();
                n
            };
            shared
                .bytes_to_client
                .fetch_add(sent as u64, Ordering::Relaxed);
            w.flush().await?;
            buf.advance(pos);
        }
        if buf.capacity() - buf.len() < READ_CAPACITY / 4 {
            buf.reserve(READ_CAPACITY);
        }
        // Between whole messages, a held command's notice may go to the client.
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n?,
            () = shared.notices.0.ready.notified(), if pass == 0 => {
                if let Some(notices) = shared.notices.take() {
                    w.write_all(&notices).await?;
                    w.flush().await?;
                }
                continue;
            }
            // Between whole messages the client can take an error: the shutdown deadline. (A
            // command held for approval waits in the other half, which is dropped with its
            // wait: the request is withdrawn.)
            () = drain.deadline(), if pass == 0 => return Ok(Exit::Shutdown),
        };
        if n == 0 {
            return Ok(Exit::ServerClosed);
        }
    }
}

/// Whether this server message answers the gateway's own role switch (at the head of the
/// expected answers); its error is kept for the client half, its ReadyForQuery ends it.
fn internal_answer(shared: &Shared, tag: u8, msg: &[u8]) -> Result<bool, FrameError> {
    let Ok(mut q) = shared.expect.lock() else {
        return Ok(false);
    };
    if tag == b'A' {
        // Notifications are the client's, whenever they come.
        return Ok(false);
    }
    if let Some(Expect::InternalInline { closes }) = q.front_mut() {
        match tag {
            b'3' => {
                *closes += 1;
                if *closes == super::roles::CLOSES {
                    q.pop_front();
                    shared.internal.fetch_sub(1, Ordering::SeqCst);
                }
            }
            b'E' => {
                // The pipeline failed at the switch: the client's statements after it are
                // skipped by the server, and the client sees its error.
                q.pop_front();
                shared.internal.fetch_sub(1, Ordering::SeqCst);
                let e = codec::parse_error(&msg[HEADER_LEN..])?;
                tracing::warn!(code = e.code, message = e.message, "role switch failed");
                if let Ok(mut slot) = shared.role_error.lock() {
                    slot.get_or_insert_with(|| format!("{} ({})", e.message, e.code));
                }
                return Ok(false);
            }
            _ => {}
        }
        return Ok(true);
    }
    if !matches!(q.front(), Some(Expect::Internal)) {
        return Ok(false);
    }
    match tag {
        b'E' => {
            let e = codec::parse_error(&msg[HEADER_LEN..])?;
            tracing::warn!(code = e.code, message = e.message, "role switch failed");
            if let Ok(mut slot) = shared.role_error.lock() {
                slot.get_or_insert_with(|| format!("{} ({})", e.message, e.code));
            }
        }
        b'Z' => {
            q.pop_front();
            shared.internal.fetch_sub(1, Ordering::SeqCst);
            shared.status.store(msg[HEADER_LEN], Ordering::Relaxed);
            let seen = shared.ready_seen.fetch_add(1, Ordering::SeqCst) + 1;
            if shared.waiting.load(Ordering::SeqCst) {
                shared.ready.notify_waiters();
            }
            drop(q);
            if shared.pending.load(Ordering::Acquire) {
                retire(shared, seen);
            }
        }
        _ => {}
    }
    Ok(true)
}

/// Waits until the server answered everything sent (a ReadyForQuery for each of `batch`
/// batches).
async fn wait_synced(shared: &Shared, batch: u64) {
    shared.waiting.store(true, Ordering::SeqCst);
    loop {
        let ready = shared.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if shared.ready_seen.load(Ordering::SeqCst) >= batch {
            break;
        }
        ready.await;
    }
    shared.waiting.store(false, Ordering::SeqCst);
}

fn retire(shared: &Shared, seen: u64) {
    if let Ok(mut list) = shared.injections.lock() {
        list.retain(|i| i.batch > seen);
        shared.pending.store(!list.is_empty(), Ordering::Release);
    }
}

/// If this ErrorResponse is the server's answer to one of our sentinel statements, the
/// client's ErrorResponse for the denial.
fn take_injection(shared: &Shared, body: &[u8]) -> Result<Option<Bytes>, FrameError> {
    let e = codec::parse_error(body)?;
    let Some(at) = e.message.find(SENTINEL) else {
        return Ok(None);
    };
    let digits = &e.message[at + SENTINEL.len()..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let Ok(id) = digits[..end].parse::<u64>() else {
        return Ok(None);
    };
    let Ok(mut list) = shared.injections.lock() else {
        return Ok(None);
    };
    let Some(i) = list.iter().position(|i| i.id == id) else {
        return Ok(None);
    };
    let inj = list.swap_remove(i);
    shared.pending.store(!list.is_empty(), Ordering::Release);
    Ok(Some(inj.error))
}
