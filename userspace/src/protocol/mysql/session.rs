//! The command loop after login. MySQL is request–response: the client sends one command (one
//! logical packet, sequence id 0) and the server answers it completely before the next. So one
//! task reads a whole command from the client's buffer, turns it into a [`Command`] for the
//! gate, acts on the verdict — forward it, answer an ERR packet naming the rule (the server
//! never sees it, so the session and its transaction stay exactly as they were), or hold it
//! with nothing sent until a reviewer decides — and then relays the server's answer through
//! [`results`](super::results) before it reads the next command. While it waits (for the
//! client, a review, or the server) it watches the other side, so a client that leaves
//! withdraws a held request and a server that closes ends the session.
//!
//! Commands: COM_QUERY (any number of statements, judged by the riskiest);
//! COM_STMT_PREPARE (judged; a statement that needs review is prepared, and each execution is
//! reviewed with its parameters, so one approval runs it once); COM_STMT_EXECUTE,
//! SEND_LONG_DATA, RESET, FETCH and CLOSE bound to the statement id the gateway saw prepared;
//! COM_INIT_DB (`USE`), COM_FIELD_LIST (`SHOW COLUMNS`), COM_RESET_CONNECTION and
//! COM_CHANGE_USER (judged as a reset: the session stays the gateway's account, whatever user
//! the client names); COM_PING, COM_SET_OPTION, COM_STATISTICS, COM_QUIT. Replication, binlog
//! dumps, shutdown, debug and the deprecated commands are refused; an unknown command byte
//! ends the session.
//!
//! Audit: a command's record is queued before it goes to the server and acknowledged before
//! any of its answer reaches the client.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::{self, Registry};
use super::codec::{self, FrameError, command as com, errno};
use super::params;
use super::results::{Kind, Relay, RelayError, Response};
use super::roles::{self, Roles, Step, SwitchError};
use super::views::{LookupError, Views};
use crate::audit::{Ack, AuditError, CommandEvent, MaskTally, ReviewRecord, SessionRecorder};
use crate::gate::{self, Judge, Judged, Verdict};
use crate::model::{Class, Command, Decision, Dialect, Facts};
use crate::protocol::freshness;

/// Largest command accepted (COM_QUERY text, an execute's parameters): the whole command is
/// held until it is judged. MySQL's own `max_allowed_packet` defaults to 16 MiB.
pub const MAX_COMMAND: usize = 64 * 1024 * 1024;

/// Read buffer size of each direction.
const READ_CAPACITY: usize = 64 * 1024;

/// Bytes a client may send ahead while a command is held or answered.
const MAX_AHEAD: usize = 1024 * 1024;

/// Prepared statements a session may hold at once.
const MAX_STATEMENTS: usize = 100_000;

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("empty command packet")]
    Empty,
    #[error("more than {MAX_STATEMENTS} prepared statements")]
    TooManyStatements,
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("the server closed the connection mid-answer")]
    ServerGone,
    /// The gateway's own catalog lookup left the server connection in an unknown state.
    #[error("looking up views for masking: {0}")]
    Views(#[source] LookupError),
    /// The gateway could not switch roles on a connection it cannot trust any more (the way
    /// back from an elevation, or a switch whose answer never came): the session ends rather
    /// than go on in an unknown role.
    #[error("the gateway's own `{sql}` failed: {source}")]
    Role {
        sql: String,
        #[source]
        source: SwitchError,
    },
}

impl SessionError {
    /// The ERR packet the client gets before the session ends (`None`: the connection is
    /// gone or the message would not reach anyone).
    pub fn client_error(&self) -> Option<(u16, &'static str, String)> {
        match self {
            SessionError::Io(_) => None,
            SessionError::Frame(FrameError::TooLarge { .. }) => {
                Some((errno::PACKET_TOO_LARGE, "08S01", format!("airlock: {self}")))
            }
            SessionError::UnknownCommand(_) => {
                Some((errno::UNKNOWN_COMMAND, "08S01", format!("airlock: {self}")))
            }
            SessionError::Audit(_) => Some((
                errno::OUT_OF_RESOURCES,
                "HY000",
                format!("airlock: the audit log cannot record this session: {self}"),
            )),
            SessionError::Role { .. } => Some((
                errno::SPECIFIC_ACCESS_DENIED,
                "HY000",
                format!("airlock: {self}; the session ends"),
            )),
            _ => Some((errno::MALFORMED_PACKET, "08S01", format!("airlock: {self}"))),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// COM_QUIT.
    Quit,
    ClientClosed,
    ServerClosed,
}

/// A statement the client prepared through the gateway.
#[derive(Debug)]
struct Statement {
    text: Arc<str>,
    params: u16,
    /// Parameter types from the last execute that sent them.
    types: Option<Vec<u8>>,
    /// SEND_LONG_DATA went to the server since the last execute or reset.
    long_data: bool,
    /// Masking rules of its last execute (for the fetches of a cursor).
    mask: Arc<[String]>,
    /// Its last execute touched a masked column (the fetches' errors are cut too).
    touched: bool,
    /// Column definitions of its cursor, for masked fetches.
    columns: Vec<Vec<u8>>,
}

/// What the loop needs about the session besides the streams.
pub struct Env<'a, J: Judge> {
    pub id: u64,
    pub judge: &'a J,
    pub target: &'a str,
    /// The caller's subject (who may KILL this session's queries through the gateway).
    pub subject: &'a str,
    pub recorder: &'a mut SessionRecorder,
    pub relay: Relay<'a>,
    /// The client expects caching_sha2_password's fast-auth marker after COM_CHANGE_USER.
    pub fast_auth: bool,
    /// Bytes read from the client and written to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The database roles commands run as (`None`: the target lists none). The session is
    /// in its base role when the loop starts.
    pub roles: Option<Roles>,
}

/// The role a verdict runs a command as.
#[derive(Debug, Clone, Default)]
struct Want {
    run_as: Option<String>,
    /// Approved for this one command.
    elevate: Option<String>,
    /// The command may change the role itself: unknown after it.
    resets: bool,
}

/// One judged command's audit record on its way to the server.
enum Outgoing {
    /// Queued: its number, and the acknowledgement the answer waits for.
    Queued { n: u64, ack: Option<Ack> },
    /// Not queued yet: a command policy let through whose role switch may still refuse it
    /// (then it is recorded as a denial with the server's reason, never as allowed).
    Deferred(Box<ToRecord>),
}

/// A command record waiting for its role switch.
struct ToRecord {
    text: String,
    decision: Decision,
    facts: Arc<crate::model::Facts>,
    review: Option<ReviewRecord>,
}

impl Outgoing {
    /// The acknowledgement of a queued record.
    fn take_ack(&mut self) -> Option<Ack> {
        match self {
            Outgoing::Queued { ack, .. } => ack.take(),
            Outgoing::Deferred(_) => None,
        }
    }
}

/// Runs the command loop until one side ends the session.
pub async fn run<CR, CW, SR, SW, J>(
    env: &mut Env<'_, J>,
    mut cr: CR,
    cw: &mut CW,
    mut sr: SR,
    sw: &mut SW,
) -> Result<Exit, SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
    J: Judge,
{
    let mut loop_ = Loop {
        cbuf: BytesMut::with_capacity(READ_CAPACITY),
        sbuf: BytesMut::with_capacity(READ_CAPACITY),
        out: BytesMut::new(),
        statements: HashMap::new(),
        last_prepared: None,
        pending_prepare: None,
        pending_types: None,
        views: Views::default(),
        quoted: false,
        changes_catalog: false,
    };
    let r = loop_.serve(env, &mut cr, cw, &mut sr, sw).await;
    if let Err(e) = &r
        && let Some((code, state, message)) = e.client_error()
    {
        let mut out = BytesMut::new();
        let mut seq = 1;
        codec::put_err(&mut out, &mut seq, code, state, &message);
        let _ = cw.write_all(&out).await;
        let _ = cw.flush().await;
    }
    let _ = sw.shutdown().await;
    r
}

struct Loop {
    cbuf: BytesMut,
    sbuf: BytesMut,
    out: BytesMut,
    statements: HashMap<u32, Statement>,
    last_prepared: Option<u32>,
    /// The relation names the session's statements used, and which are views.
    views: Views,
    /// A command that touched a masked column ran: the server's warnings may quote its
    /// values.
    quoted: bool,
    /// The text of the COM_STMT_PREPARE being answered.
    pending_prepare: Option<Arc<str>>,
    /// Parameter types of the execute being planned, stored once it is sent to the server.
    pending_types: Option<(u32, Vec<u8>)>,
    /// The command being answered may create, change or drop views.
    changes_catalog: bool,
}

/// What to do with one command after judging it.
enum Plan {
    /// Forward the command's bytes (or `rewritten`) and relay an answer of this kind, in the
    /// role `role` says (`None`: whatever role the session is in).
    Forward {
        kind: Kind,
        mask: Arc<[String]>,
        rewritten: Option<Vec<u8>>,
        statement: Option<u32>,
        role: Option<Want>,
        quotes: Quotes,
    },
    /// Answer the client with an ERR packet (the server never sees the command).
    Refuse {
        code: u16,
        state: &'static str,
        message: String,
    },
    /// Consume the command without an answer (a SEND_LONG_DATA or CLOSE of a statement the
    /// server does not have either).
    Drop,
    /// COM_QUIT.
    Quit,
}

/// What the server's messages about a command may quote.
#[derive(Debug, Clone, Copy, Default)]
struct Quotes {
    /// The command names a column an active column rule may mask, or cannot be traced.
    touched: bool,
    /// The command lists the session's warnings or errors (`SHOW WARNINGS`).
    shows_warnings: bool,
}

impl Quotes {
    /// What the messages about a command with `facts`, run under masking rules `mask`, may
    /// quote.
    fn of(relay: &Relay<'_>, mask: &[String], facts: &Facts, views: &Views) -> Self {
        Quotes {
            touched: relay.touches(mask, &facts.lineage, views),
            shows_warnings: facts.kinds.contains(&"show_warnings"),
        }
    }
}

/// A statement name quoted as a MySQL identifier.
fn quote_ident(name: &[u8]) -> String {
    format!("`{}`", String::from_utf8_lossy(name).replace('`', "``"))
}

/// Whether a statement may create, change or drop views (after it, what the session knows of
/// its relation names may be wrong).
fn rewrites_catalog(facts: &crate::model::Facts) -> bool {
    facts
        .statement_classes
        .iter()
        .any(|c| matches!(c, Class::Ddl | Class::Admin | Class::Unknown))
}

/// The ERR code of a policy refusal: statements on tables get 1142 ("command denied"), the
/// rest 1227 ("access denied; you need privileges").
fn denial_code(facts: &crate::model::Facts) -> u16 {
    match facts.class {
        Class::Read | Class::Write | Class::Ddl | Class::Transaction | Class::Session => {
            errno::TABLE_ACCESS_DENIED
        }
        _ => errno::SPECIFIC_ACCESS_DENIED,
    }
}

/// The gateway lexes SQL with backslash escapes and `"` as a string quote, as MySQL does by
/// default. When the server says it reads them otherwise (sql_mode NO_BACKSLASH_ESCAPES or
/// ANSI_QUOTES, from the status flags of its last answer), a backslash could end a string
/// for the server that continues for the gateway: such statements are refused.
fn lexing_refusal(status: u16, text: &str) -> Option<Plan> {
    use codec::status::{ANSI_QUOTES, NO_BACKSLASH_ESCAPES};
    (status & (NO_BACKSLASH_ESCAPES | ANSI_QUOTES) != 0 && text.contains('\\')).then(|| {
        Plan::Refuse {
            code: errno::SPECIFIC_ACCESS_DENIED,
            state: "42000",
            message: "airlock: this session's sql_mode (NO_BACKSLASH_ESCAPES or ANSI_QUOTES) \
                      makes the server read backslashes differently from the gateway; \
                      statements containing a backslash are refused"
                .into(),
        }
    })
}

/// The answer to a command on a statement the gateway never saw prepared.
fn unknown_statement(id: u32) -> Plan {
    Plan::Refuse {
        code: errno::UNKNOWN_STMT,
        state: "HY000",
        message: format!("Unknown prepared statement handler ({id}) given to airlock"),
    }
}

/// The database a COM_CHANGE_USER names (user, auth data, then the database), if it is
/// readable.
fn change_user_database(body: &[u8]) -> Option<&[u8]> {
    let user_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[user_end + 1..];
    // Auth data: one length byte (CLIENT_SECURE_CONNECTION), then the data.
    let (&len, rest) = rest.split_first()?;
    let rest = rest.get(usize::from(len)..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// Reads a statement id at the start of a command body.
fn statement_id(body: &[u8]) -> Result<u32, SessionError> {
    body.get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(SessionError::Frame(FrameError::Malformed(
            "statement command",
        )))
}

/// Refusal of commands the gateway does not relay.
fn refused(what: &str) -> Plan {
    Plan::Refuse {
        code: errno::NOT_SUPPORTED,
        state: "42000",
        message: format!("airlock: {what} is not allowed through the gateway"),
    }
}

fn forward(kind: Kind) -> Plan {
    Plan::Forward {
        kind,
        mask: Arc::from(Vec::new()),
        rewritten: None,
        statement: None,
        role: None,
        quotes: Quotes::default(),
    }
}

/// Forward in the role `want` says.
fn forward_as(kind: Kind, want: Want) -> Plan {
    Plan::Forward {
        kind,
        mask: Arc::from(Vec::new()),
        rewritten: None,
        statement: None,
        role: Some(want),
        quotes: Quotes::default(),
    }
}

impl Loop {
    async fn serve<CR, CW, SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        cr: &mut CR,
        cw: &mut CW,
        sr: &mut SR,
        sw: &mut SW,
    ) -> Result<Exit, SessionError>
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        loop {
            // A whole command, watching the server meanwhile.
            let packet = loop {
                if let Some(p) = codec::check_packet(&self.cbuf, MAX_COMMAND, "command")? {
                    break p;
                }
                if self.cbuf.capacity() - self.cbuf.len() < READ_CAPACITY / 4 {
                    self.cbuf.reserve(READ_CAPACITY);
                }
                tokio::select! {
                    n = cr.read_buf(&mut self.cbuf) => {
                        let n = n?;
                        if n == 0 {
                            return Ok(Exit::ClientClosed);
                        }
                        env.bytes_in += n as u64;
                    }
                    n = sr.read_buf(&mut self.sbuf) => {
                        // The server speaks only when spoken to, except to say goodbye (an
                        // ERR for a timeout or a kill, then EOF): pass that on and end.
                        if n? == 0 {
                            return Ok(Exit::ServerClosed);
                        }
                        cw.write_all(&self.sbuf).await?;
                        cw.flush().await?;
                        env.bytes_out += self.sbuf.len() as u64;
                        self.sbuf.clear();
                    }
                }
            };
            if packet.first_seq != 0 {
                return Err(FrameError::Sequence {
                    got: packet.first_seq,
                    expected: 0,
                }
                .into());
            }
            let payload = packet.payload(&self.cbuf).into_owned();
            let total = packet.total;
            let last_seq = packet.last_seq;
            let plan = self.plan(env, &payload, cr, sr, sw).await?;
            let Some((plan, outgoing)) = plan else {
                return Ok(Exit::ClientClosed);
            };
            let new_types = self.pending_types.take();
            match plan {
                Plan::Drop => self.cbuf.advance(total),
                Plan::Quit => {
                    sw.write_all(&self.cbuf[..total]).await?;
                    sw.flush().await?;
                    return Ok(Exit::Quit);
                }
                Plan::Refuse {
                    code,
                    state,
                    message,
                } => {
                    self.refuse(
                        env,
                        cw,
                        (total, last_seq),
                        (code, state, &message),
                        outgoing,
                    )
                    .await?;
                }
                Plan::Forward {
                    kind,
                    mask,
                    rewritten,
                    statement,
                    role,
                    quotes,
                } => {
                    let resets = role.as_ref().is_some_and(|w| w.resets);
                    // The role first: a switch the server refused refuses the command.
                    let back = match role {
                        Some(want) => match self.obey_role(env, &want, sr, sw).await? {
                            Ok(back) => back,
                            Err(message) => {
                                let what = (errno::SPECIFIC_ACCESS_DENIED, "42000", &*message);
                                self.refuse(env, cw, (total, last_seq), what, outgoing)
                                    .await?;
                                continue;
                            }
                        },
                        None => None,
                    };
                    let mut outgoing = self.queue(env, outgoing, None).await?;
                    match &rewritten {
                        Some(p) => {
                            self.out.clear();
                            let mut seq = 0;
                            codec::put_packet(&mut self.out, &mut seq, p);
                            sw.write_all(&self.out).await?;
                        }
                        None => sw.write_all(&self.cbuf[..total]).await?,
                    }
                    sw.flush().await?;
                    self.cbuf.advance(total);
                    if let Some((id, t)) = new_types
                        && let Some(s) = self.statements.get_mut(&id)
                    {
                        s.types = Some(t);
                    }
                    // The answer is numbered after the client's command, whatever went
                    // upstream.
                    let mut last = last_seq;
                    let kind = if kind == Kind::ChangeUserFast {
                        // caching_sha2_password's "fast auth success" before the OK.
                        self.out.clear();
                        let mut seq = last_seq.wrapping_add(1);
                        codec::put_packet(&mut self.out, &mut seq, &[0x01, 0x03]);
                        last = last_seq.wrapping_add(1);
                        Kind::Single
                    } else {
                        self.out.clear();
                        kind
                    };
                    // Warnings may quote values of any earlier command that touched a
                    // masked column (the server keeps them past commands that raise none).
                    let warnings = quotes.shows_warnings && self.quoted;
                    self.quoted |= quotes.touched;
                    let mut resp =
                        Response::new(kind, mask, last).quoting(quotes.touched, warnings);
                    if kind == Kind::Fetch
                        && let Some(s) = statement.and_then(|id| self.statements.get(&id))
                    {
                        resp = resp.with_columns(s.columns.clone());
                    }
                    let mut ack = outgoing.as_mut().and_then(Outgoing::take_ack);
                    if kind == Kind::Fetch {
                        env.relay.start_fetch(&mut resp, &mut self.out);
                    }
                    self.relay_answer(env, &mut resp, &mut ack, cr, cw, sr)
                        .await?;
                    if std::mem::take(&mut self.changes_catalog) {
                        freshness::catalog_changed();
                    }
                    self.after(env, &mut resp, statement, outgoing).await;
                    match back {
                        // Before the next command is even looked at.
                        Some(sql) => self.restore(env, sr, sw, sql).await?,
                        None if resets => {
                            if let Some(r) = env.roles.as_mut() {
                                r.forget();
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Answers the command at the start of the client buffer (`total` bytes, last sequence
    /// id `last_seq`) with an ERR packet, once its record is durable.
    async fn refuse<CW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        cw: &mut CW,
        (total, last_seq): (usize, u8),
        (code, state, message): (u16, &str, &str),
        outgoing: Option<Outgoing>,
    ) -> Result<(), SessionError>
    where
        CW: AsyncWrite + Unpin,
        J: Judge,
    {
        let outgoing = self.queue(env, outgoing, Some(message)).await?;
        if let Some(Outgoing::Queued { ack: Some(ack), .. }) = outgoing {
            ack.durable().await?;
        }
        self.cbuf.advance(total);
        self.out.clear();
        let mut seq = last_seq.wrapping_add(1);
        codec::put_err(&mut self.out, &mut seq, code, state, message);
        cw.write_all(&self.out).await?;
        cw.flush().await?;
        env.bytes_out += self.out.len() as u64;
        Ok(())
    }

    /// Puts the server in the role a command runs as (see [`roles`](super::roles)), before
    /// the command goes out. `Ok(Err(message))`: the server refused the switch; refuse the
    /// command. `Ok(Ok(Some(sql)))`: an elevation; send `sql` once the command is answered.
    async fn obey_role<SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        want: &Want,
        sr: &mut SR,
        sw: &mut SW,
    ) -> Result<Result<Option<String>, String>, SessionError>
    where
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        let Some(roles) = env.roles.as_mut() else {
            return Ok(Ok(None));
        };
        let (sql, back) = match roles.plan(want.run_as.as_deref(), want.elevate.as_deref()) {
            Step::Run => return Ok(Ok(None)),
            Step::Refuse(message) => {
                tracing::warn!(session = env.id, %message, "role: command refused");
                return Ok(Err(message));
            }
            Step::Switch(sql) => (sql, None),
            Step::Elevate { before, after } => (before, Some(after)),
        };
        match roles::exchange(sr, sw, &mut self.sbuf, &sql).await {
            Ok(status) => {
                if let Some(s) = status {
                    env.relay.status = s;
                }
                tracing::debug!(session = env.id, %sql, elevated = back.is_some(), "role switched");
                Ok(Ok(back))
            }
            Err(e) if e.is_refusal() => {
                let message = match roles.switched(Err(&e)) {
                    Err(m) => m,
                    Ok(()) => format!("airlock: the gateway could not switch roles: {e}"),
                };
                tracing::warn!(session = env.id, %sql, error = %e, "role switch refused: command refused");
                Ok(Err(message))
            }
            Err(source) => {
                roles.forget();
                Err(SessionError::Role { sql, source })
            }
        }
    }

    /// The way back after an elevated command: anything but the server's OK ends the session.
    async fn restore<SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        sr: &mut SR,
        sw: &mut SW,
        sql: String,
    ) -> Result<(), SessionError>
    where
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        match roles::exchange(sr, sw, &mut self.sbuf, &sql).await {
            Ok(status) => {
                if let Some(s) = status {
                    env.relay.status = s;
                }
                tracing::debug!(session = env.id, %sql, "role restored after the approved command");
                Ok(())
            }
            Err(source) => {
                if let Some(r) = env.roles.as_mut() {
                    r.forget();
                }
                tracing::error!(session = env.id, %sql, error = %source, "role not restored after an elevated command: the session ends");
                Err(SessionError::Role { sql, source })
            }
        }
    }

    /// Judges one command and says what to do with it. `None`: the client left while it was
    /// held.
    async fn plan<CR, SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        payload: &[u8],
        cr: &mut CR,
        sr: &mut SR,
        sw: &mut SW,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        let (&cmd, body) = payload.split_first().ok_or(SessionError::Empty)?;
        let plain = |p: Plan| Ok(Some((p, None)));
        match cmd {
            com::QUIT => plain(Plan::Quit),
            com::PING | com::SET_OPTION | com::STATISTICS => plain(forward(Kind::Single)),
            com::QUERY => {
                let Ok(text) = std::str::from_utf8(body) else {
                    return plain(Plan::Refuse {
                        code: errno::SPECIFIC_ACCESS_DENIED,
                        state: "42000",
                        message: "airlock: the statement is not valid UTF-8; the gateway \
                                  judges UTF-8 SQL only"
                            .into(),
                    });
                };
                if let Some(p) = lexing_refusal(env.relay.status, text) {
                    return plain(p);
                }
                if let Some(kill) = cancel::parse_kill(text)
                    && let Some(plan) = self.kill(env, kill).await?
                {
                    return Ok(Some(plan));
                }
                let judged = self.judge_sql(env, text, sr, sw).await?;
                self.judged_with(env, text, judged, cr, Kind::Text).await
            }
            com::PROCESS_KILL => {
                let id = statement_id(body)?;
                let kill = cancel::Kill {
                    query_only: false,
                    id: u64::from(id),
                };
                match self.kill(env, kill).await? {
                    Some(plan) => Ok(Some(plan)),
                    None => {
                        self.judged(env, &format!("KILL {id}"), cr, Kind::Single)
                            .await
                    }
                }
            }
            com::INIT_DB => {
                let text = format!("USE {}", quote_ident(body));
                self.judged(env, &text, cr, Kind::Single).await
            }
            com::FIELD_LIST => {
                let table = body.split(|&b| b == 0).next().unwrap_or_default();
                let text = format!("SHOW COLUMNS FROM {}", quote_ident(table));
                self.judged(env, &text, cr, Kind::FieldList).await
            }
            com::PROCESS_INFO => self.judged(env, "SHOW PROCESSLIST", cr, Kind::Text).await,
            com::RESET_CONNECTION => {
                let mut r = self
                    .judged(env, "RESET CONNECTION", cr, Kind::Single)
                    .await?;
                if let Some((Plan::Forward { role, .. }, _)) = &mut r {
                    // The server forgets its prepared statements; so do we. It drops the role.
                    self.statements.clear();
                    self.last_prepared = None;
                    if let Some(w) = role {
                        w.resets = true;
                    }
                }
                Ok(r)
            }
            com::CHANGE_USER => self.change_user(env, body, cr).await,
            com::STMT_PREPARE => {
                let Ok(text) = std::str::from_utf8(body) else {
                    return plain(Plan::Refuse {
                        code: errno::SPECIFIC_ACCESS_DENIED,
                        state: "42000",
                        message: "airlock: the statement is not valid UTF-8".into(),
                    });
                };
                if let Some(p) = lexing_refusal(env.relay.status, text) {
                    return plain(p);
                }
                let judged = self.judge_sql(env, text, sr, sw).await?;
                let r = self.judged_prepare(env, text, judged).await?;
                if matches!(r.0, Plan::Forward { .. }) {
                    self.pending_prepare = Some(Arc::from(text));
                }
                Ok(Some(r))
            }
            com::STMT_EXECUTE => self.execute(env, body, cr, sr, sw).await,
            com::STMT_SEND_LONG_DATA => {
                let id = statement_id(body)?;
                match self.statements.get_mut(&id) {
                    Some(s) => {
                        s.long_data = true;
                        plain(forward(Kind::None))
                    }
                    None => plain(Plan::Drop),
                }
            }
            com::STMT_CLOSE => {
                let id = statement_id(body)?;
                if self.statements.remove(&id).is_some() {
                    if self.last_prepared == Some(id) {
                        self.last_prepared = None;
                    }
                    plain(forward(Kind::None))
                } else {
                    plain(Plan::Drop)
                }
            }
            com::STMT_RESET => {
                let id = statement_id(body)?;
                match self.statements.get_mut(&id) {
                    Some(s) => {
                        s.long_data = false;
                        plain(forward(Kind::Single))
                    }
                    None => plain(unknown_statement(id)),
                }
            }
            com::STMT_FETCH => {
                let id = statement_id(body)?;
                match self.statements.get(&id) {
                    Some(s) => plain(Plan::Forward {
                        kind: Kind::Fetch,
                        mask: s.mask.clone(),
                        rewritten: None,
                        statement: Some(id),
                        role: None,
                        quotes: Quotes {
                            touched: s.touched,
                            shows_warnings: false,
                        },
                    }),
                    None => plain(unknown_statement(id)),
                }
            }
            com::BINLOG_DUMP
            | com::BINLOG_DUMP_GTID
            | com::REGISTER_SLAVE
            | com::TABLE_DUMP
            | com::CONNECT_OUT => plain(refused("replication")),
            com::SHUTDOWN => plain(refused("COM_SHUTDOWN")),
            com::DEBUG => plain(refused("COM_DEBUG")),
            com::REFRESH => plain(refused("COM_REFRESH (use FLUSH)")),
            com::CREATE_DB | com::DROP_DB => plain(refused("COM_CREATE_DB/COM_DROP_DB (use SQL)")),
            com::MULTI => plain(refused("COM_MULTI")),
            com::STMT_BULK_EXECUTE => plain(refused("COM_STMT_BULK_EXECUTE")),
            com::SLEEP | com::TIME | com::CONNECT | com::DELAYED_INSERT | com::DAEMON => {
                plain(refused("this internal command"))
            }
            other => Err(SessionError::UnknownCommand(other)),
        }
    }

    /// A `KILL` of a session the gateway minted the id of: the caller's own session is
    /// cancelled on the server by its real thread id; another caller's is refused. `None`:
    /// not one of ours, judge it as SQL.
    async fn kill<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        kill: cancel::Kill,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError> {
        let Ok(id) = u32::try_from(kill.id) else {
            return Ok(None);
        };
        match Registry::global().resolve(env.target, id, env.subject) {
            Ok(thread) => {
                let what = if kill.query_only {
                    "QUERY"
                } else {
                    "CONNECTION"
                };
                let text = format!("KILL {what} {id}");
                tracing::info!(
                    session = env.id,
                    minted = id,
                    "KILL of the caller's own session through the gateway"
                );
                let decision = Decision::Allow {
                    rule: "airlock:own-session".into(),
                    mask: Vec::new(),
                    run_as: None,
                };
                let outgoing = self
                    .record(
                        env,
                        &text,
                        &decision,
                        &Facts::single("kill", Class::Admin),
                        None,
                    )
                    .await?;
                let mut rewritten = vec![com::QUERY];
                rewritten.extend_from_slice(format!("KILL {what} {thread}").as_bytes());
                // Killing one's own thread needs no privilege: whatever role the session is in.
                Ok(Some((
                    Plan::Forward {
                        kind: Kind::Text,
                        mask: Arc::from(Vec::new()),
                        rewritten: Some(rewritten),
                        statement: None,
                        role: None,
                        quotes: Quotes::default(),
                    },
                    outgoing,
                )))
            }
            Err(cancel::Refusal::NotOwner) => Ok(Some((
                Plan::Refuse {
                    code: errno::KILL_DENIED,
                    state: "HY000",
                    message: format!("airlock: you are not owner of thread {id}"),
                },
                None,
            ))),
            Err(cancel::Refusal::Unknown) => Ok(None),
        }
    }

    /// Queues a command record (when the session is recorded).
    async fn record<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        decision: &Decision,
        facts: &Facts,
        approval: Option<ReviewRecord>,
    ) -> Result<Option<Outgoing>, SessionError> {
        if !env.recorder.is_recording() {
            return Ok(None);
        }
        let (n, ack) = env
            .recorder
            .command(CommandEvent {
                command: &Command::sql(Dialect::Mysql, text),
                facts,
                decision,
                approval,
                caller: None,
            })
            .await?;
        Ok(Some(Outgoing::Queued { n, ack: Some(ack) }))
    }

    /// Records a command policy let through: at once, or, when the session switches roles,
    /// once the switch is made (see [`Outgoing::Deferred`]).
    async fn record_allowed<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        decision: Decision,
        facts: &Arc<crate::model::Facts>,
        review: Option<ReviewRecord>,
    ) -> Result<Option<Outgoing>, SessionError> {
        if env.roles.is_none() || !env.recorder.is_recording() {
            return self.record(env, text, &decision, facts, review).await;
        }
        Ok(Some(Outgoing::Deferred(Box::new(ToRecord {
            text: text.to_owned(),
            decision,
            facts: Arc::clone(facts),
            review,
        }))))
    }

    /// Queues a deferred record: as decided, or as a denial when the gateway refused the
    /// command after all (`refused`: the message the client gets).
    async fn queue<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        outgoing: Option<Outgoing>,
        refused: Option<&str>,
    ) -> Result<Option<Outgoing>, SessionError> {
        match outgoing {
            Some(Outgoing::Deferred(r)) => {
                let ToRecord {
                    text,
                    decision,
                    facts,
                    review,
                } = *r;
                let decision = match refused {
                    Some(message) => decision.refused(message.to_owned()),
                    None => decision,
                };
                self.record(env, &text, &decision, &facts, review).await
            }
            other => Ok(other),
        }
    }

    /// Waits for a held command's verdict, reading ahead from the client meanwhile. `None`:
    /// the client left (the request is withdrawn).
    async fn wait<CR: AsyncRead + Unpin>(
        &mut self,
        session: u64,
        hold: gate::Hold,
        cr: &mut CR,
    ) -> Result<Option<Verdict>, SessionError> {
        let mut wait = hold.start(Arc::new(gate::LogNotice { session }));
        loop {
            tokio::select! {
                v = &mut wait => return Ok(Some(match v {
                    // A hold never resolves to another hold; refuse rather than loop.
                    Verdict::Hold(_) => Verdict::Deny {
                        message: "airlock: internal error: approval did not resolve".into(),
                    },
                    v => v,
                })),
                n = cr.read_buf(&mut self.cbuf), if self.cbuf.len() < MAX_AHEAD => {
                    if n? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Judges `text`, waits out a hold, records the decision; forwards with `kind` when
    /// allowed.
    async fn judged<CR, J>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        cr: &mut CR,
        kind: Kind,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        J: Judge,
    {
        let judged = env
            .judge
            .judge_through(&Command::sql(Dialect::Mysql, text), &self.views);
        self.judged_with(env, text, judged, cr, kind).await
    }

    /// Judges SQL through the views it reads: when column masking depends on what its
    /// relation names stand for, the names the session has not seen are looked up on the
    /// server connection first (it is idle between commands) and the statement is judged
    /// again. A lookup the server refuses leaves its names untraceable (masked columns are
    /// then refused); one that breaks the connection ends the session.
    async fn judge_sql<SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        sr: &mut SR,
        sw: &mut SW,
    ) -> Result<Judged, SessionError>
    where
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        self.views.refresh();
        let command = Command::sql(Dialect::Mysql, text);
        let judged = env.judge.judge_through(&command, &self.views);
        if !judged.views_matter {
            return Ok(judged);
        }
        let names = self.views.unresolved(&judged.facts.lineage);
        if names.is_empty() {
            return Ok(judged);
        }
        // An unstarted hold files no request.
        drop(judged);
        let deprecate_eof = env.relay.deprecate_eof();
        match self
            .views
            .resolve(sr, sw, &mut self.sbuf, deprecate_eof, names)
            .await
        {
            Ok(()) => {}
            Err(e @ LookupError::Refused { .. }) => {
                tracing::warn!(session = env.id, error = %e, "looking up views for masking failed");
            }
            Err(e) => return Err(SessionError::Views(e)),
        }
        Ok(env.judge.judge_through(&command, &self.views))
    }

    /// [`Loop::judged`] with the verdict given.
    async fn judged_with<CR, J>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        judged: Judged,
        cr: &mut CR,
        kind: Kind,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        J: Judge,
    {
        if rewrites_catalog(&judged.facts) && !matches!(judged.verdict, Verdict::Deny { .. }) {
            self.views.invalidate();
            // Every session's lookups, now and again once the server has answered.
            freshness::catalog_changed();
            self.changes_catalog = true;
        }
        let Some((verdict, outgoing, facts)) = self.settle(env, text, judged, cr).await? else {
            return Ok(None);
        };
        Ok(Some((
            match verdict {
                Verdict::Allow {
                    mask,
                    run_as,
                    elevate,
                    ..
                } => Plan::Forward {
                    kind,
                    quotes: Quotes::of(&env.relay, &mask, &facts, &self.views),
                    mask: Arc::from(mask),
                    rewritten: None,
                    statement: None,
                    role: Some(Want {
                        run_as,
                        elevate,
                        resets: Roles::resets(&facts),
                    }),
                },
                Verdict::Deny { message } => {
                    tracing::info!(session = env.id, %message, "statement denied");
                    Plan::Refuse {
                        code: denial_code(&facts),
                        state: "42000",
                        message,
                    }
                }
                Verdict::Hold(_) => Plan::Refuse {
                    code: errno::SPECIFIC_ACCESS_DENIED,
                    state: "42000",
                    message: "airlock: internal error: approval did not resolve".into(),
                },
            },
            outgoing,
        )))
    }

    /// A verdict after any hold, with the command's record queued.
    async fn settle<CR, J>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        judged: Judged,
        cr: &mut CR,
    ) -> Result<Option<(Verdict, Option<Outgoing>, Arc<crate::model::Facts>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        J: Judge,
    {
        // `views_matter` was seen to before: the statement was judged through its views.
        let Judged {
            verdict,
            facts,
            record,
            ..
        } = judged;
        let mut review = None;
        let verdict = match verdict {
            Verdict::Hold(hold) => {
                tracing::info!(session = env.id, "statement held for approval");
                let trail = hold.trail();
                let waited = self.wait(env.id, hold, cr).await?;
                // The review that released, refused or was withdrawn with it goes on record.
                review = trail.take().as_ref().map(gate::session::review_record);
                match waited {
                    Some(v) => v,
                    None => {
                        if let Some(decision) = record {
                            self.record(env, text, &decision, &facts, review).await?;
                        }
                        return Ok(None);
                    }
                }
            }
            v => v,
        };
        let outgoing = match record {
            Some(decision) if matches!(verdict, Verdict::Allow { .. }) => {
                self.record_allowed(env, text, decision, &facts, review)
                    .await?
            }
            Some(decision) => self.record(env, text, &decision, &facts, review).await?,
            None => None,
        };
        Ok(Some((verdict, outgoing, facts)))
    }

    /// COM_STMT_PREPARE: a denied statement is refused; one that needs review is prepared
    /// (preparing runs nothing) and reviewed at each execution, with its parameters.
    async fn judged_prepare<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        text: &str,
        judged: Judged,
    ) -> Result<(Plan, Option<Outgoing>), SessionError> {
        let Judged {
            verdict,
            facts,
            record,
            ..
        } = judged;
        let outgoing = match record {
            Some(decision) if !matches!(verdict, Verdict::Deny { .. }) => {
                self.record_allowed(env, text, decision, &facts, None)
                    .await?
            }
            Some(decision) => self.record(env, text, &decision, &facts, None).await?,
            None => None,
        };
        Ok((
            match verdict {
                Verdict::Deny { message } => {
                    tracing::info!(session = env.id, %message, "prepare denied");
                    Plan::Refuse {
                        code: denial_code(&facts),
                        state: "42000",
                        message,
                    }
                }
                // Preparing runs nothing, and the server checks the statement's privileges
                // then: it is prepared in the role it will execute in (once approved, for a
                // held one).
                Verdict::Allow { run_as, .. } => forward_as(
                    Kind::Prepare,
                    Want {
                        run_as,
                        ..Want::default()
                    },
                ),
                // Held: dropping the unstarted hold files no request.
                Verdict::Hold(hold) => {
                    let (run_as, elevate) = hold.roles();
                    let want = Want {
                        run_as: run_as.map(str::to_owned),
                        elevate: elevate.map(str::to_owned),
                        resets: false,
                    };
                    forward_as(Kind::Prepare, want)
                }
            },
            outgoing,
        ))
    }

    /// COM_STMT_EXECUTE: judged again by the statement's text (policy may have changed); a
    /// statement that needs review is held with its parameters shown.
    async fn execute<CR, SR, SW, J>(
        &mut self,
        env: &mut Env<'_, J>,
        body: &[u8],
        cr: &mut CR,
        sr: &mut SR,
        sw: &mut SW,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
        J: Judge,
    {
        let header = params::header(body)
            .map_err(|_| SessionError::Frame(FrameError::Malformed("COM_STMT_EXECUTE")))?;
        // MariaDB: statement id -1 is the one prepared last (prepare and execute pipelined).
        let id = if header.statement == u32::MAX {
            self.last_prepared.unwrap_or(u32::MAX)
        } else {
            header.statement
        };
        let Some(stmt) = self.statements.get_mut(&id) else {
            return Ok(Some((unknown_statement(header.statement), None)));
        };
        // Kept aside until the execute reaches the server: one denied or withdrawn here never
        // changes the types the server holds, so neither may it change the gateway's.
        let new_types = match params::new_types(body, stmt.params) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Some((
                    Plan::Refuse {
                        code: errno::MALFORMED_PACKET,
                        state: "HY000",
                        message: format!("airlock: {e}"),
                    },
                    None,
                )));
            }
        };
        let text = stmt.text.clone();
        let (long_data, nparams) = (stmt.long_data, stmt.params);
        // Through the views as they are now: what the statement's names stand for may have
        // changed since it was prepared (views.rs).
        let mut judged = self.judge_sql(env, &text, sr, sw).await?;
        let mut shown: Cow<'_, str> = Cow::Borrowed(&text);
        if matches!(judged.verdict, Verdict::Hold(_)) {
            // The reviewer approves this execution: the statement with its values.
            let refuse = |message: String| {
                Ok(Some((
                    Plan::Refuse {
                        code: errno::SPECIFIC_ACCESS_DENIED,
                        state: "42000",
                        message,
                    },
                    None,
                )))
            };
            if long_data {
                return refuse(
                    "airlock: this statement needs review, and parameters sent as long data \
                     cannot be shown to a reviewer"
                        .into(),
                );
            }
            let types = match &new_types {
                Some(t) => t.clone(),
                None => self
                    .statements
                    .get(&id)
                    .and_then(|s| s.types.clone())
                    .unwrap_or_default(),
            };
            let rendered = match params::render(body, nparams, &types) {
                Ok(r) => r,
                Err(e) => return refuse(format!("airlock: {e}")),
            };
            let annotated = params::annotate(&text, &rendered);
            drop(judged);
            judged = env
                .judge
                .judge_through(&Command::sql(Dialect::Mysql, &annotated), &self.views);
            shown = Cow::Owned(annotated);
        }
        let Some((verdict, outgoing, facts)) = self.settle(env, &shown, judged, cr).await? else {
            return Ok(None);
        };
        let plan = match verdict {
            Verdict::Allow {
                mask,
                run_as,
                elevate,
                ..
            } => {
                let mask: Arc<[String]> = Arc::from(mask);
                let quotes = Quotes::of(&env.relay, &mask, &facts, &self.views);
                if let Some(s) = self.statements.get_mut(&id) {
                    s.mask = mask.clone();
                    s.touched = quotes.touched;
                    s.long_data = false;
                }
                self.pending_types = new_types.map(|t| (id, t));
                let rewritten = (header.statement != id).then(|| {
                    let mut p = vec![com::STMT_EXECUTE];
                    p.extend_from_slice(&id.to_le_bytes());
                    p.extend_from_slice(&body[4..]);
                    p
                });
                Plan::Forward {
                    kind: Kind::Binary,
                    quotes,
                    mask,
                    rewritten,
                    statement: Some(id),
                    role: Some(Want {
                        run_as,
                        elevate,
                        resets: Roles::resets(&facts),
                    }),
                }
            }
            Verdict::Deny { message } => Plan::Refuse {
                code: denial_code(&facts),
                state: "42000",
                message,
            },
            Verdict::Hold(_) => Plan::Refuse {
                code: errno::SPECIFIC_ACCESS_DENIED,
                state: "42000",
                message: "airlock: internal error: approval did not resolve".into(),
            },
        };
        Ok(Some((plan, outgoing)))
    }

    /// COM_CHANGE_USER never switches accounts: the session stays the gateway's. It is
    /// judged and done as a reset of the session (COM_RESET_CONNECTION to the server); the
    /// user name the client asks for is logged and ignored.
    async fn change_user<CR, J>(
        &mut self,
        env: &mut Env<'_, J>,
        body: &[u8],
        cr: &mut CR,
    ) -> Result<Option<(Plan, Option<Outgoing>)>, SessionError>
    where
        CR: AsyncRead + Unpin,
        J: Judge,
    {
        let user = body.split(|&b| b == 0).next().unwrap_or_default();
        tracing::info!(
            session = env.id,
            requested_user = %String::from_utf8_lossy(user),
            "COM_CHANGE_USER: the session stays the gateway's account"
        );
        if change_user_database(body).is_some_and(|d| !d.is_empty()) {
            return Ok(Some((
                Plan::Refuse {
                    code: errno::NOT_SUPPORTED,
                    state: "42000",
                    message: "airlock: COM_CHANGE_USER with a database is not supported through \
                              the gateway; change the database with USE"
                        .into(),
                },
                None,
            )));
        }
        let r = self
            .judged(env, "RESET CONNECTION", cr, Kind::Single)
            .await?;
        Ok(r.map(|(plan, outgoing)| match plan {
            Plan::Forward { mask, role, .. } => {
                self.statements.clear();
                self.last_prepared = None;
                (
                    Plan::Forward {
                        kind: if env.fast_auth {
                            Kind::ChangeUserFast
                        } else {
                            Kind::Single
                        },
                        mask,
                        rewritten: Some(vec![com::RESET_CONNECTION]),
                        statement: None,
                        // The server's reset drops the role.
                        role: role.map(|w| Want { resets: true, ..w }),
                        quotes: Quotes::default(),
                    },
                    outgoing,
                )
            }
            other => (other, outgoing),
        }))
    }

    /// Relays the server's answer to the client until it is complete.
    async fn relay_answer<CR, CW, SR, J>(
        &mut self,
        env: &mut Env<'_, J>,
        resp: &mut Response,
        ack: &mut Option<Ack>,
        cr: &mut CR,
        cw: &mut CW,
        sr: &mut SR,
    ) -> Result<(), SessionError>
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        J: Judge,
    {
        loop {
            let fed = env.relay.feed(resp, &mut self.sbuf, &mut self.out)?;
            if fed.pos > 0 || !self.out.is_empty() {
                // No answer before the command's record is acknowledged.
                if let Some(a) = ack.take() {
                    a.durable().await?;
                }
                let sent = if self.out.is_empty() {
                    cw.write_all(&self.sbuf[fed.run..fed.pos]).await?;
                    fed.pos - fed.run
                } else {
                    self.out.extend_from_slice(&self.sbuf[fed.run..fed.pos]);
                    cw.write_all(&self.out).await?;
                    let n = self.out.len();
                    self.out.clear();
                    n
                };
                env.bytes_out += sent as u64;
                cw.flush().await?;
                self.sbuf.advance(fed.pos);
            }
            if resp.done() {
                return Ok(());
            }
            if self.sbuf.capacity() - self.sbuf.len() < READ_CAPACITY / 4 {
                self.sbuf.reserve(READ_CAPACITY);
            }
            tokio::select! {
                n = sr.read_buf(&mut self.sbuf) => {
                    if n? == 0 {
                        return Err(SessionError::ServerGone);
                    }
                }
                n = cr.read_buf(&mut self.cbuf), if self.cbuf.len() < MAX_AHEAD => {
                    let n = n?;
                    if n == 0 {
                        // The client left mid-answer: closing the server connection stops
                        // the statement.
                        return Err(SessionError::Io(std::io::ErrorKind::ConnectionReset.into()));
                    }
                    env.bytes_in += n as u64;
                }
            }
        }
    }

    /// After an answer: statement bookkeeping and the result record.
    async fn after<J: Judge>(
        &mut self,
        env: &mut Env<'_, J>,
        resp: &mut Response,
        statement: Option<u32>,
        outgoing: Option<Outgoing>,
    ) {
        if let Some(p) = resp.prepared
            && let Some(text) = self.pending_prepare.take()
        {
            if self.statements.len() < MAX_STATEMENTS {
                self.statements.insert(
                    p.statement,
                    Statement {
                        text,
                        params: p.params,
                        types: None,
                        long_data: false,
                        mask: Arc::from(Vec::new()),
                        touched: false,
                        columns: Vec::new(),
                    },
                );
                self.last_prepared = Some(p.statement);
            } else {
                tracing::warn!(
                    session = env.id,
                    "prepared statement limit reached; not tracked"
                );
            }
        }
        self.pending_prepare = None;
        if resp.cursor
            && let Some(s) = statement.and_then(|id| self.statements.get_mut(&id))
        {
            s.columns = resp.take_columns();
        }
        let Some(Outgoing::Queued { n, .. }) = outgoing else {
            return;
        };
        let record = resp.totals.record(resp.started);
        match env.recorder.result(n, record).await {
            Ok(ack) => drop(ack),
            Err(e) => tracing::warn!(error = %e, "audit: result record not queued"),
        }
        if !resp.totals.masked.is_empty() {
            let mut tally = MaskTally::default();
            for (rule, count) in resp.totals.masked.iter() {
                tally.add(env.relay.rule_name(rule), u64::from(count));
            }
            if let Err(e) = env.recorder.masking(n, &tally).await {
                tracing::warn!(error = %e, "audit: masking record not queued");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslashes_are_refused_only_when_the_server_lexes_them_otherwise() {
        let autocommit = 0x0002;
        assert!(lexing_refusal(autocommit, r"SELECT 'a\'; DROP TABLE t; -- '").is_none());
        assert!(lexing_refusal(autocommit | 0x0200, r"SELECT 'a\'; DROP TABLE t; -- '").is_some());
        assert!(
            lexing_refusal(autocommit | 0x8000, r#"SELECT "a\"; DROP TABLE t; -- ""#).is_some()
        );
        assert!(lexing_refusal(autocommit | 0x0200, "SELECT 'a'").is_none());
    }

    #[test]
    fn change_user_database_is_read_past_the_auth_data() {
        // user "bob", 3 bytes of auth data, database "app".
        let body = b"bob\0\x03abcapp\0\x2d\x00";
        assert_eq!(change_user_database(body), Some(&b"app"[..]));
        assert_eq!(change_user_database(b"bob\0\x05ab"), None);
        assert_eq!(quote_ident(b"we`ird"), "`we``ird`");
    }
}
