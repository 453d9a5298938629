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
//! Server → client: only headers are parsed, except ReadyForQuery (transaction status) and,
//! while a denial is pending, ErrorResponse. Messages we do not inspect are streamed through
//! even when incomplete, so a huge row or COPY never sits whole in memory.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, ErrorFields, FrameError, HEADER_LEN, Reader};
use crate::approval::{Approvals, Outcome, ReviewRequest};
use crate::policy::Decision;

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

/// Decides one command; `mod.rs` binds it to the identity, target and policy.
pub trait Judge {
    fn judge(&self, command: &str) -> Verdict;
}

#[derive(Debug)]
struct Stmt {
    text: Arc<str>,
    /// Batch in which it was parsed (and decided).
    parsed_in: u64,
}

#[derive(Debug)]
struct Portal {
    text: Arc<str>,
    /// Set when Parse and Bind happened in this batch: Execute reuses the Parse decision.
    decided_in: Option<u64>,
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
    /// The verdict a held command resolved to, used when its message is handled again.
    decided: Option<Verdict>,
}

impl<J: Judge> Front<'_, J> {
    fn decide(&mut self, command: &str) -> Verdict {
        match self.decided.take() {
            // A hold never resolves to another hold; refuse rather than loop.
            Some(Verdict::Hold(_)) => Verdict::Deny {
                message: "airlock: internal error: approval did not resolve".into(),
            },
            Some(v) => v,
            None => self.judge.judge(command),
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
                match self.decide(text) {
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
                match self.decide(text) {
                    Verdict::Hold(h) => Action::Hold(h),
                    Verdict::Allow { .. } => {
                        let stmt = Stmt {
                            text: Arc::from(text),
                            parsed_in: self.batch,
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
                    self.unnamed_stmt.as_ref()
                } else {
                    self.statements.get(stmt_name)
                };
                // A statement we never saw does not exist on the server either: it will fail.
                if let Some(stmt) = stmt {
                    let p = Portal {
                        text: stmt.text.clone(),
                        decided_in: (stmt.parsed_in == self.batch).then_some(self.batch),
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
                Action::Forward
            }
            b'E' => {
                let name = Reader::new(body, "Execute").cstr()?;
                let portal = if name.is_empty() {
                    self.unnamed_portal.as_ref()
                } else {
                    self.portals.get(name)
                };
                let verdict = match portal {
                    // Parsed, decided and bound in this very batch: that decision stands.
                    Some(p) if p.decided_in == Some(self.batch) => None,
                    Some(p) => {
                        let text = p.text.clone();
                        Some(self.decide(&text))
                    }
                    // Not bound through us (e.g. a cursor DECLAREd in SQL): we cannot tell what
                    // it runs, so refuse.
                    None => Some(Verdict::Deny {
                        message: format!(
                            "airlock: portal \"{name}\" was not bound through the gateway; use FETCH"
                        ),
                    }),
                };
                match verdict {
                    None | Some(Verdict::Allow { .. }) => Action::Forward,
                    Some(Verdict::Hold(h)) => Action::Hold(h),
                    Some(Verdict::Deny { message }) => {
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
                Action::Forward
            }
            b'S' => {
                self.discarding = false;
                self.batch += 1;
                Action::Forward
            }
            b'D' | b'H' | b'd' | b'c' | b'f' => Action::Forward,
            b'F' => {
                // The fastpath function call runs a function by OID, with no SQL for policy to
                // judge: refused.
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
        self.discarding = true;
    }
}

/// Runs both directions until one side ends. `server_buf` holds bytes the server already sent.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, SR, SW, J>(
    session: u64,
    judge: &J,
    shared: &Shared,
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
        decided: None,
    };
    let up = client_to_server(&mut front, &mut client_read, &mut server_write);
    let down = server_to_client(shared, server_read, client_write, server_buf);
    let exit = tokio::select! {
        r = up => r,
        r = down => r,
    };
    let _ = server_write.shutdown().await;
    exit
}

async fn client_to_server<R, W, J>(
    front: &mut Front<'_, J>,
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
        if r.read_buf(&mut buf).await? == 0 {
            return Ok(Exit::ClientClosed);
        }
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
    let mut pass = 0usize;
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
            let Some(h) = codec::peek_header(&buf[pos..])? else {
                break;
            };
            let avail = buf.len() - pos;
            let inspect =
                h.tag == b'Z' || (h.tag == b'E' && shared.pending.load(Ordering::Acquire));
            // MASK HOOK: when the command's decision carries masking rules, RowDescription
            // ('T'), DataRow ('D') and CopyData ('d') must be held whole and rewritten here
            // (into `out`, like the ErrorResponse swap below) instead of streamed.
            if avail < h.total {
                if inspect {
                    buf.reserve(h.total - avail);
                } else {
                    pass = h.total - avail;
                    pos = buf.len();
                }
                break;
            }
            let end = pos + h.total;
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
                b'E' if inspect => {
                    if let Some(replacement) = take_injection(shared, &buf[pos + HEADER_LEN..end])?
                    {
                        out.extend_from_slice(&buf[run..pos]);
                        out.extend_from_slice(&replacement);
                        run = end;
                    }
                }
                _ => {}
            }
            pos = end;
        }
        if pos > 0 {
            if out.is_empty() {
                w.write_all(&buf[run..pos]).await?;
            } else {
                out.extend_from_slice(&buf[run..pos]);
                w.write_all(&out).await?;
                out.clear();
            }
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
