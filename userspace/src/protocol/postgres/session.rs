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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, ErrorFields, FrameError, HEADER_LEN, Reader};
use super::results::{Act, AuditSink, Back, Cmd, Expect};
use crate::approval::{Approvals, Outcome, ReviewRequest};
use crate::audit::{AuditError, CommandEvent};
use crate::policy::Decision;
use crate::policy::classify::{Class, Classification};

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
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The client sent Terminate.
    Terminate,
    ClientClosed,
    ServerClosed,
}

/// The outcome of policy for one command, as the session loop acts on it.
#[derive(Debug)]
pub enum Verdict {
    Allow {
        rule: String,
        /// Masking rules for the answer (the masking step hooks in where DataRows pass).
        mask: Vec<String>,
    },
    Deny {
        /// The message for the client's ErrorResponse.
        message: String,
    },
    /// Held until a human decides: the session waits on it (sending the client the notices it
    /// emits) and then acts on the verdict it resolves to.
    Hold(Hold),
}

/// A command held for approval: started with the session's notice channel, it resolves to
/// `Allow` or `Deny`. Dropping it (the client went away) withdraws the request.
pub struct Hold(pub Box<dyn FnOnce(Notices) -> HeldFuture + Send>);

/// What a [`Hold`] becomes once started.
pub type HeldFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Turns a policy decision into a verdict. A review without an approval service (tests,
/// tools) is refused; the session's judge sends reviews to [`review`].
pub fn verdict(decision: Decision) -> Verdict {
    match decision {
        Decision::Allow { rule, mask } => Verdict::Allow { rule, mask },
        Decision::Deny { rule, reason } => Verdict::Deny {
            message: format!("airlock: denied by rule \"{rule}\": {reason}"),
        },
        Decision::Review { rule, .. } => Verdict::Deny {
            message: format!(
                "airlock: rule \"{rule}\" requires review, and approvals are not enabled on this gateway"
            ),
        },
    }
}

/// The approval hook: a command whose rule demands review is held (or refused with a request
/// id, in retry mode) by the approval service.
pub fn review(approvals: Option<&Arc<Approvals>>, request: ReviewRequest) -> Verdict {
    let Some(svc) = approvals.cloned() else {
        return verdict(request.decision);
    };
    Verdict::Hold(Hold(Box::new(move |notices: Notices| {
        Box::pin(async move {
            match svc.review(request, |text| notices.send(text)).await {
                Outcome::Allow { rule, mask, .. } => Verdict::Allow { rule, mask },
                Outcome::Deny { message } => Verdict::Deny { message },
            }
        })
    })))
}

/// NoticeResponses for the client, written by the server → client half between messages.
#[derive(Debug, Clone, Default)]
pub struct Notices(Arc<NoticeQueue>);

#[derive(Debug, Default)]
struct NoticeQueue {
    queue: Mutex<BytesMut>,
    ready: tokio::sync::Notify,
}

impl Notices {
    /// Queues a NoticeResponse with `text`.
    pub fn send(&self, text: &str) {
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
    /// Bytes read from the client and written to it.
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Notices for the client (a held command's request id).
    notices: Notices,
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
}

#[derive(Debug)]
struct Injection {
    id: u64,
    /// The ReadyForQuery (by count) that ends the batch it belongs to.
    batch: u64,
    error: Bytes,
}

/// A verdict with what the audit record needs.
#[derive(Debug)]
pub struct Judged {
    pub verdict: Verdict,
    /// The decision and classification for the audit log (`None` when not recording).
    pub record: Option<Record>,
    /// The command changes the schema: cached column names are dropped.
    pub ddl: bool,
}

/// What the audit log records about a command's judgement.
pub type Record = (Decision, Arc<Classification>);

/// Decides one command; `mod.rs` binds it to the identity, target and policy.
pub trait Judge {
    fn judge(&self, command: &str) -> Judged;
}

#[derive(Debug)]
struct Stmt {
    text: Arc<str>,
    /// Batch in which it was parsed (and decided).
    parsed_in: u64,
    /// The Parse decision's command.
    cmd: Arc<Cmd>,
    /// The Parse was held and approved: the approval covers one run, the first Bind of the
    /// statement in the same or the next batch (a driver's prepare, then execute). Taken by
    /// that Bind, so every later run is judged (and reviewed) again.
    approved: bool,
}

#[derive(Debug)]
struct Portal {
    text: Arc<str>,
    /// Set when Parse and Bind happened in this batch: Execute reuses the Parse decision.
    decided_in: Option<u64>,
    cmd: Arc<Cmd>,
}

/// What the session needs besides policy: the audit log, masking, metrics, and the catalog
/// connection masking resolves columns with.
pub struct Env<'a> {
    pub audit: &'a AuditSink,
    pub masker: Arc<crate::mask::Masker>,
    pub metrics: &'a crate::metrics::Metrics,
    /// `None`: no masking can be resolved (a masked answer is then refused).
    pub side: Option<super::origin::SideConn>,
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
}

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
    to_record: Vec<(Arc<Cmd>, Decision, Arc<Classification>)>,
    /// Answers owed for what this read forwards, pushed before it is written.
    expects: Vec<Expect>,
    /// The verdict a held command resolved to, used when its message is handled again.
    decided: Option<Verdict>,
    /// What the held command's first judgement said for the audit log (recorded once, with
    /// its final verdict).
    held: Option<(Option<Record>, bool)>,
    /// The last [`judge_or_hold`](Self::judge_or_hold) returned a held command's resolved
    /// verdict.
    resolved: bool,
    /// The portal of the client's Describe whose expectation is the last in `expects`: a
    /// masked Execute of it right after uses that Describe's answer for its plan.
    described: Option<(Box<str>, usize)>,
}

impl<J: Judge> Front<'_, J> {
    /// The command of one decision; queued for the audit log when recording.
    fn command(&mut self, text: &str, judged: Judged) -> (Arc<Cmd>, Verdict) {
        if judged.ddl {
            self.shared.stale.store(true, Ordering::Release);
        }
        let mut verdict = judged.verdict;
        // The rules move to the command; the verdict's copy is not used after this.
        let (mask, denied) = match &mut verdict {
            Verdict::Allow { mask, .. } => (std::mem::take(mask), false),
            Verdict::Deny { .. } | Verdict::Hold(_) => (Vec::new(), true),
        };
        let cmd = Cmd::new(Arc::from(text), mask, denied);
        if let Some((decision, class)) = judged.record {
            self.to_record.push((cmd.clone(), decision, class));
        }
        (cmd, verdict)
    }

    /// Queues this read's command records and publishes its expected answers; call before
    /// writing to the server.
    async fn publish(&mut self, audit: &AuditSink) -> Result<(), SessionError> {
        if !self.to_record.is_empty() {
            let mut rec = audit.recorder().await;
            for (cmd, decision, class) in self.to_record.drain(..) {
                let classes = class
                    .classes()
                    .iter()
                    .map(|c: Class| Cow::Borrowed(c.as_str()))
                    .collect();
                let (n, ack) = rec
                    .command(CommandEvent {
                        text: &cmd.text,
                        classes,
                        kind: class.kinds.first().map(|k| Cow::Borrowed(*k)),
                        decision: &decision,
                        approval: None,
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

    /// Judges a command, or returns the hold it must wait on. After the hold resolves, the
    /// same message is handled again and gets the resolved verdict here.
    fn judge_or_hold(&mut self, command: &str) -> Result<Judged, Hold> {
        let Judged {
            verdict,
            record,
            ddl,
        } = match self.decided.take() {
            Some(verdict) => {
                self.resolved = true;
                let (record, ddl) = self.held.take().unwrap_or((None, false));
                // A hold never resolves to another hold; refuse rather than loop.
                let verdict = match verdict {
                    Verdict::Hold(_) => Verdict::Deny {
                        message: "airlock: internal error: approval did not resolve".into(),
                    },
                    v => v,
                };
                Judged {
                    verdict,
                    record,
                    ddl,
                }
            }
            None => {
                self.resolved = false;
                self.judge.judge(command)
            }
        };
        match verdict {
            Verdict::Hold(h) => {
                self.held = Some((record, ddl));
                Err(h)
            }
            verdict => Ok(Judged {
                verdict,
                record,
                ddl,
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
        Ok(match tag {
            b'Q' => {
                let text = Reader::new(body, "Query").cstr()?;
                let judged = match self.judge_or_hold(text) {
                    Ok(j) => j,
                    Err(h) => return Ok(Action::Hold(h)),
                };
                let (cmd, verdict) = self.command(text, judged);
                self.expects.push(Expect::Query {
                    cmd,
                    started: Instant::now(),
                });
                match verdict {
                    Verdict::Hold(h) => Action::Hold(h),
                    Verdict::Allow { .. } => {
                        self.batch += 1;
                        Action::Forward
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
                let judged = match self.judge_or_hold(text) {
                    Ok(j) => j,
                    Err(h) => return Ok(Action::Hold(h)),
                };
                let (cmd, verdict) = self.command(text, judged);
                match verdict {
                    Verdict::Hold(h) => Action::Hold(h),
                    Verdict::Allow { .. } => {
                        self.expects.push(Expect::Parse);
                        let stmt = Stmt {
                            text: cmd.text.clone(),
                            parsed_in: self.batch,
                            cmd,
                            approved: self.resolved,
                        };
                        if name.is_empty() {
                            self.unnamed_stmt = Some(stmt);
                        } else if !self.statements.contains_key(name) {
                            // A duplicate name is an error on the server, which keeps the old
                            // statement; so do we.
                            if self.statements.len() >= MAX_NAMED {
                                return Err(SessionError::TooManyNamed);
                            }
                            self.statements.insert(name.into(), stmt);
                        }
                        Action::Forward
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
                    self.unnamed_stmt.as_mut()
                } else {
                    self.statements.get_mut(stmt_name)
                };
                // A statement we never saw does not exist on the server either: it will fail.
                if let Some(stmt) = stmt {
                    // An approved Parse covers this run when it follows at once; otherwise the
                    // Execute is judged (and held) on its own. Without this a prepared write
                    // would need two approvals, the first of which runs nothing.
                    let approved =
                        std::mem::take(&mut stmt.approved) && self.batch <= stmt.parsed_in + 1;
                    let p = Portal {
                        text: stmt.text.clone(),
                        decided_in: (stmt.parsed_in == self.batch || approved)
                            .then_some(self.batch),
                        cmd: stmt.cmd.clone(),
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
                self.expects.push(Expect::Bind);
                Action::Forward
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
                    // Parsed, decided and bound in this very batch: that decision stands.
                    Some(p) if p.decided_in == Some(self.batch) => Ok(p.cmd.clone()),
                    Some(p) => {
                        let text = p.text.clone();
                        let judged = match self.judge_or_hold(&text) {
                            Ok(j) => j,
                            Err(h) => return Ok(Action::Hold(h)),
                        };
                        match self.command(&text, judged) {
                            (cmd, Verdict::Allow { .. }) => Ok(cmd),
                            (_, Verdict::Deny { message }) => Err(message),
                            (_, Verdict::Hold(_)) => {
                                Err("airlock: internal error: approval did not resolve".into())
                            }
                        }
                    }
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
                        self.expects.push(Expect::Execute {
                            cmd,
                            started: Instant::now(),
                        });
                        if masked {
                            Action::Replace
                        } else {
                            Action::Forward
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
                self.expects.push(Expect::Close);
                Action::Forward
            }
            b'S' => {
                self.discarding = false;
                self.batch += 1;
                self.expects.push(Expect::Sync);
                Action::Forward
            }
            b'H' | b'd' | b'c' | b'f' => Action::Forward,
            b'F' => {
                // The fastpath function call runs a function by OID, with no SQL for policy to
                // judge: refused.
                self.expects.push(Expect::Query {
                    cmd: Cmd::new(Arc::from("<function call>"), Vec::new(), true),
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
        resolved: false,
        described: None,
    };
    let audit = env.audit;
    let back = Back::new(
        &shared.expect,
        env.audit,
        env.masker,
        env.metrics,
        env.side,
        &shared.stale,
    );
    let up = client_to_server(&mut front, audit, &mut client_read, &mut server_write);
    let down = server_to_client(shared, back, server_read, client_write, server_buf);
    let exit = tokio::select! {
        r = up => r,
        r = down => r,
    };
    let _ = server_write.shutdown().await;
    exit
}

async fn client_to_server<R, W, J>(
    front: &mut Front<'_, J>,
    audit: &AuditSink,
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
                    // What came before the held command goes to the server now.
                    out.extend_from_slice(&buf[run..pos]);
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        w.flush().await?;
                        out.clear();
                    }
                    run = pos;
                    let mut wait = (hold.0)(front.shared.notices.clone());
                    let verdict = loop {
                        // Keep reading while held, so a client that goes away withdraws the
                        // request; what it pipelines meanwhile waits in the buffer.
                        tokio::select! {
                            v = &mut wait => break v,
                            n = r.read_buf(&mut buf), if buf.len() < MAX_HELD_BUFFER => {
                                if n? == 0 {
                                    return Ok(Exit::ClientClosed);
                                }
                            }
                        }
                    };
                    front.decided = Some(verdict);
                    // Handle the same message again, now with its verdict.
                    continue;
                }
            }
            pos = end;
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
    mut r: R,
    w: &mut W,
    mut buf: BytesMut,
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
                    buf.reserve(h.total - avail);
                }
                break;
            }
            let end = pos + h.total;
            back.count(h.total);
            if streamed && !back.suppress {
                pos = end;
                continue;
            }
            let mut act = Act::Forward;
            rep.clear();
            match h.tag {
                b'Z' => {
                    let status = buf[pos + HEADER_LEN];
                    shared.status.store(status, Ordering::Relaxed);
                    let seen = shared.ready_seen.fetch_add(1, Ordering::Relaxed) + 1;
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
        };
        if n == 0 {
            return Ok(Exit::ServerClosed);
        }
    }
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
