//! The server's answer to one command, relayed to the client: which packets end it (OK, ERR,
//! EOF, the last result set of several), masking of text and binary protocol rows, and what
//! the audit log's result record says.
//!
//! Rows of an unmasked result stream through physical packet by physical packet, even a row
//! far larger than the read buffer. A masked result set holds its column definitions until the
//! plan is built from them (schema, original table and original column name: the masker's
//! column rules; the type: which values detectors scan), announces whole-masked columns of
//! non-text types as strings in the text protocol (a driver would fail to parse `***` as a
//! date), and holds each row whole to rewrite it. A rewritten row may take more or fewer
//! physical packets than the server's, so every packet to the client is numbered by the
//! gateway. Plans are cached per session by the column definitions' bytes and the command's
//! rules, so a repeated query builds none.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::ParseBuf;
use mysql_common::packets::Column;
use mysql_common::proto::MySerialize;
use prometheus_client::metrics::counter::Counter;

use super::codec::{self, FrameError, HEADER_LEN, MAX_PAYLOAD, errno, status};
use crate::audit::CommandResult;
use crate::mask::{
    ColumnPlan, ColumnRef, MaskCounts, MaskOutcome, Masker, REDACTED_TEXT, RuleId, ValueFormat,
    ValueKind,
};
use crate::metrics::Metrics;
use crate::model::lineage::{Lineage, Relations, Source};

/// Largest logical packet held whole: a masked row, a column definition, an OK. MySQL's own
/// `max_allowed_packet` cannot exceed 1 GiB either.
pub const MAX_HELD_PACKET: usize = 1 << 30;

/// Result descriptions whose plans a session keeps.
const PLAN_CACHE: usize = 16;
/// Most buffer space reserved ahead for a packet whose header has come: its length is the
/// server's claim (up to 16 MiB a physical packet), so larger packets grow the buffer as
/// their bytes arrive instead.
const RESERVE_AHEAD: usize = 1 << 20;

/// What answer a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    None,
    /// One packet, whatever it holds (OK, ERR, EOF, COM_STATISTICS' text).
    Single,
    /// Result sets with text rows, or OK, or ERR; several with MORE_RESULTS_EXISTS.
    Text,
    /// The same with binary rows (COM_STMT_EXECUTE).
    Binary,
    /// Binary rows then a terminator (COM_STMT_FETCH).
    Fetch,
    /// COM_STMT_PREPARE: the statement's id, parameter and column definitions.
    Prepare,
    /// COM_FIELD_LIST: column definitions then a terminator.
    FieldList,
    /// COM_CHANGE_USER done as a reset, for a client that expects caching_sha2_password's
    /// fast-auth marker first (the session loop sends it; then as `Single`).
    ChangeUserFast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Columns { left: u64 },
    ColumnsEof,
    Rows,
    PrepareParams { left: u64, cols: u64 },
    PrepareParamsEof { cols: u64 },
    PrepareCols { left: u64 },
    PrepareColsEof,
    FieldList,
    Done,
}

/// What a prepared statement's OK said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub statement: u32,
    pub columns: u16,
    pub params: u16,
}

/// Totals for the audit log's result record.
#[derive(Debug, Default)]
pub struct Totals {
    pub rows: u64,
    pub affected: Option<u64>,
    pub bytes: u64,
    pub error: Option<String>,
    pub masked: MaskCounts,
}

/// One command's answer in flight.
#[derive(Debug)]
pub struct Response {
    kind: Kind,
    state: State,
    /// Masking rules of the command (empty: rows are never parsed).
    mask: Arc<[String]>,
    /// Column definitions of the current result set, held while masking.
    columns: Vec<Vec<u8>>,
    /// The column count of the current result set, held with its definitions while masking
    /// (a refusal then replaces the whole result set).
    held_count: Option<Vec<u8>>,
    /// The plan of the current result set (index into the cache), when rows are rewritten.
    plan: Option<usize>,
    /// The next physical packet continues a streamed row.
    continued: bool,
    /// Bytes of a streamed physical packet still to forward.
    pass: usize,
    /// After a masking refusal: drop the rest of the answer.
    suppress: bool,
    /// The next sequence id towards the client.
    seq: u8,
    pub prepared: Option<Prepared>,
    /// A cursor was opened: the rows come with COM_STMT_FETCH.
    pub cursor: bool,
    pub totals: Totals,
    pub started: Instant,
    /// The command names a column an active column rule may mask (or cannot be traced): the
    /// server's messages about it may quote the column's values.
    touched: bool,
    /// The command shows the session's warnings or errors (`SHOW WARNINGS`) after a
    /// command that touched a masked column: their messages are cut like an error's.
    warnings: bool,
}

impl Response {
    /// The answer to a command whose last packet had sequence id `last_seq`.
    pub fn new(kind: Kind, mask: Arc<[String]>, last_seq: u8) -> Self {
        Self {
            kind,
            state: match kind {
                Kind::Fetch => State::Rows,
                Kind::FieldList => State::FieldList,
                Kind::None => State::Done,
                _ => State::Start,
            },
            mask,
            columns: Vec::new(),
            held_count: None,
            plan: None,
            continued: false,
            pass: 0,
            suppress: false,
            seq: last_seq.wrapping_add(1),
            prepared: None,
            cursor: false,
            totals: Totals::default(),
            started: Instant::now(),
            touched: false,
            warnings: false,
        }
    }

    /// What the server's messages in this answer may quote: `touched`, the command names a
    /// masked column; `warnings`, it lists warnings that an earlier such command raised.
    pub fn quoting(mut self, touched: bool, warnings: bool) -> Self {
        self.touched = touched;
        self.warnings = warnings;
        self
    }

    /// Whether the whole answer went through.
    pub fn done(&self) -> bool {
        self.state == State::Done && self.pass == 0 && !self.continued
    }

    /// The column definitions of the last result set, when they were held (for a cursor's
    /// fetches).
    pub fn take_columns(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.columns)
    }

    /// Sets the column definitions a fetch's rows follow (from the execute that opened the
    /// cursor).
    pub fn with_columns(mut self, columns: Vec<Vec<u8>>) -> Self {
        self.columns = columns;
        self
    }
}

/// Why an answer cannot be relayed; the session ends with it.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("protocol violation by the server: {0}")]
    Protocol(&'static str),
}

/// A cached plan and what it was built from.
struct Cached {
    columns: Vec<Vec<u8>>,
    mask: Arc<[String]>,
    binary: bool,
    plan: ColumnPlan,
    /// Column types (wire type, charset) for walking binary rows.
    types: Vec<(u8, u16)>,
    /// Column definitions to send instead (masked non-text columns announced as strings);
    /// `None`: the originals.
    announce: Option<Vec<Vec<u8>>>,
}

/// The session's relay state: masking, plans, metrics.
pub struct Relay<'a> {
    masker: Arc<Masker>,
    metrics: &'a Metrics,
    deprecate_eof: bool,
    cache: Vec<Cached>,
    counters: Vec<Option<Counter>>,
    scratch: BytesMut,
    row: Vec<u8>,
    /// Replacement packets of the packet at hand.
    rep: BytesMut,
    /// Server status flags from the last OK or EOF (NO_BACKSLASH_ESCAPES and ANSI_QUOTES
    /// change how the server lexes SQL).
    pub status: u16,
}

/// What the relay wants written to the client for what was fed: `out`'s bytes, then the read
/// buffer's `run..pos`; `pos` bytes of the read buffer are consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    pub run: usize,
    pub pos: usize,
}

impl<'a> Relay<'a> {
    /// Whether the server connection has CLIENT_DEPRECATE_EOF (result sets end with an OK).
    pub fn deprecate_eof(&self) -> bool {
        self.deprecate_eof
    }

    pub fn new(masker: Arc<Masker>, metrics: &'a Metrics, deprecate_eof: bool) -> Self {
        Self {
            masker,
            metrics,
            deprecate_eof,
            cache: Vec::new(),
            counters: Vec::new(),
            scratch: BytesMut::new(),
            row: Vec::new(),
            rep: BytesMut::new(),
            status: 0,
        }
    }

    /// Starts a COM_STMT_FETCH answer of a masked statement: its rows follow the plan of the
    /// columns its execute announced. On failure the client gets an ERR and no rows.
    pub fn start_fetch(&mut self, resp: &mut Response, out: &mut BytesMut) {
        if resp.mask.is_empty() {
            return;
        }
        let columns = std::mem::take(&mut resp.columns);
        match self.plan_for(&columns, &resp.mask, true) {
            Ok(idx) if !self.cache[idx].plan.is_passthrough() => resp.plan = Some(idx),
            Ok(_) => {}
            Err(message) => {
                self.refuse(resp, out, &message);
            }
        }
        resp.columns = columns;
    }

    /// Rule name for audit records.
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.masker.rule_name(rule)
    }

    /// Feeds server bytes from `buf` into `resp`. Packets to pass unchanged stay in `buf`
    /// (their sequence ids patched in place); rewritten ones go to `out` in order, with the
    /// bytes before them. See [`Fed`].
    pub fn feed(
        &mut self,
        resp: &mut Response,
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Fed, RelayError> {
        let mut pos = 0;
        let mut run = 0;
        while pos < buf.len() {
            if resp.pass > 0 {
                let n = resp.pass.min(buf.len() - pos);
                resp.pass -= n;
                if resp.suppress {
                    out.extend_from_slice(&buf[run..pos]);
                    pos += n;
                    run = pos;
                } else {
                    resp.totals.bytes += n as u64;
                    pos += n;
                }
                continue;
            }
            if resp.state == State::Done && !resp.continued {
                break;
            }
            let Some(h) = codec::peek_header(&buf[pos..]) else {
                break;
            };
            let avail = buf.len() - pos - HEADER_LEN;
            // A continuation of a streamed row, or a row of an unmasked result: streamed
            // physical packet by physical packet.
            let streamed = resp.continued
                || (resp.state == State::Rows
                    && resp.plan.is_none()
                    && h.len > 0
                    && avail >= 1
                    && !self.ends_rows(buf[pos + HEADER_LEN], h.len));
            if streamed {
                if !resp.continued {
                    resp.totals.rows += 1;
                }
                resp.continued = h.continued();
                if resp.suppress {
                    out.extend_from_slice(&buf[run..pos]);
                } else {
                    buf[pos + 3] = resp.seq;
                    resp.seq = resp.seq.wrapping_add(1);
                }
                let take = (HEADER_LEN + h.len).min(buf.len() - pos);
                resp.pass = HEADER_LEN + h.len - take;
                pos += take;
                if resp.suppress {
                    run = pos;
                } else {
                    resp.totals.bytes += take as u64;
                }
                continue;
            }
            if h.len > 0 && avail == 0 {
                break;
            }
            // Everything else is held whole.
            let Some(p) = codec::check_packet(&buf[pos..], MAX_HELD_PACKET, "result")? else {
                buf.reserve((HEADER_LEN + h.len).min(RESERVE_AHEAD));
                break;
            };
            let end = pos + p.total;
            let mut rep = std::mem::take(&mut self.rep);
            rep.clear();
            let act = self.packet(resp, &buf[pos..end], p, &mut rep);
            if act.is_ok() && matches!(act, Ok(Act::Replaced)) {
                out.extend_from_slice(&buf[run..pos]);
                out.extend_from_slice(&rep);
            }
            self.rep = rep;
            match act? {
                Act::Forward => {
                    // Renumber each physical packet of it.
                    let mut at = pos;
                    while at < end {
                        let ph = codec::peek_header(&buf[at..])
                            .ok_or(RelayError::Protocol("truncated packet"))?;
                        buf[at + 3] = resp.seq;
                        resp.seq = resp.seq.wrapping_add(1);
                        at += HEADER_LEN + ph.len;
                    }
                    resp.totals.bytes += p.total as u64;
                }
                Act::Replaced => run = end,
            }
            pos = end;
        }
        Ok(Fed { run, pos })
    }

    /// Whether a packet starting with `first` of payload length `len` ends the rows.
    fn ends_rows(&self, first: u8, len: usize) -> bool {
        first == 0xff || codec::is_terminator(first, len, self.deprecate_eof)
    }

    /// One whole logical packet. On `Replaced`, what the client gets instead is in `out`.
    fn packet(
        &mut self,
        resp: &mut Response,
        raw: &[u8],
        p: codec::Packet,
        out: &mut BytesMut,
    ) -> Result<Act, RelayError> {
        let payload = p.payload(raw);
        let first = payload.first().copied();
        if resp.suppress {
            self.advance(resp, &payload)?;
            return Ok(self.replace(out, resp, None));
        }
        if first == Some(0xff)
            && !resp.mask.is_empty()
            && matches!(resp.state, State::Start | State::Rows)
        {
            // The server's error, masked before the client and the record see it.
            self.advance(resp, &payload)?;
            if let Some(e) = codec::parse_err(&payload) {
                let text = mask_message(&self.masker, &resp.mask, resp.touched, &e.message);
                if let Cow::Owned(text) = text {
                    codec::put_err(out, &mut resp.seq, e.code, &e.state, &text);
                    return Ok(Act::Replaced);
                }
            }
            return Ok(Act::Forward);
        }
        match resp.state {
            State::Rows
                if resp.warnings && first.is_some_and(|b| !self.ends_rows(b, payload.len())) =>
            {
                if resp.kind != Kind::Text {
                    return Ok(self.refuse(
                        resp,
                        out,
                        "warnings that may quote a masked column are shown to a query only \
                         (SHOW WARNINGS, not prepared)",
                    ));
                }
                resp.totals.rows += 1;
                match mask_warning_row(&self.masker, &resp.mask, &payload) {
                    Some(row) => {
                        resp.totals.bytes += (row.len() + HEADER_LEN) as u64;
                        Ok(self.replace(out, resp, Some(&row)))
                    }
                    None => Ok(self.refuse(resp, out, "a malformed warning row was withheld")),
                }
            }
            State::Rows if first.is_some_and(|b| !self.ends_rows(b, payload.len())) => {
                resp.totals.rows += 1;
                let Some(idx) = resp.plan else {
                    return Ok(Act::Forward);
                };
                match self.mask_row(idx, &payload) {
                    Ok(false) => Ok(Act::Forward),
                    Ok(true) => {
                        let row = std::mem::take(&mut self.row);
                        resp.totals.bytes += (row.len() + HEADER_LEN) as u64;
                        let act = self.replace(out, resp, Some(&row));
                        self.row = row;
                        Ok(act)
                    }
                    Err(message) => Ok(self.refuse(resp, out, &message)),
                }
            }
            State::Start
                if !resp.mask.is_empty()
                    && matches!(resp.kind, Kind::Text | Kind::Binary)
                    && !matches!(first, Some(0x00 | 0xff | 0xfb)) =>
            {
                self.advance(resp, &payload)?;
                resp.held_count = Some(payload.into_owned());
                Ok(self.replace(out, resp, None))
            }
            State::Columns { .. } if !resp.mask.is_empty() => {
                // Held until the plan is built.
                resp.columns.push(payload.into_owned());
                self.advance_columns(resp)?;
                if matches!(resp.state, State::Columns { .. }) {
                    return Ok(self.replace(out, resp, None));
                }
                self.release_columns(resp, out)
            }
            _ => {
                self.advance(resp, &payload)?;
                Ok(Act::Forward)
            }
        }
    }

    /// Sends what the client gets instead of the packet at hand (`None`: nothing).
    fn replace(&mut self, out: &mut BytesMut, resp: &mut Response, with: Option<&[u8]>) -> Act {
        if let Some(payload) = with {
            codec::put_packet(out, &mut resp.seq, payload);
        }
        Act::Replaced
    }

    /// After the last held column definition: build the plan and send the definitions (or
    /// an ERR instead of the result set when it cannot be masked).
    fn release_columns(
        &mut self,
        resp: &mut Response,
        out: &mut BytesMut,
    ) -> Result<Act, RelayError> {
        let binary = matches!(resp.kind, Kind::Binary | Kind::Fetch);
        match self.plan_for(&resp.columns, &resp.mask, binary) {
            Ok(idx) => {
                if let Some(count) = resp.held_count.take() {
                    codec::put_packet(out, &mut resp.seq, &count);
                    resp.totals.bytes += (count.len() + HEADER_LEN) as u64;
                }
                let cached = &self.cache[idx];
                let defs = cached.announce.as_ref().unwrap_or(&cached.columns);
                for d in defs {
                    codec::put_packet(out, &mut resp.seq, d);
                    resp.totals.bytes += (d.len() + HEADER_LEN) as u64;
                }
                if !cached.plan.is_passthrough() {
                    resp.plan = Some(idx);
                }
                // The old EOF after the definitions is forwarded as it comes.
                Ok(Act::Replaced)
            }
            Err(message) => Ok(self.refuse(resp, out, &message)),
        }
    }

    /// The client gets an ERR in place of the rest of this answer.
    fn refuse(&mut self, resp: &mut Response, out: &mut BytesMut, message: &str) -> Act {
        tracing::warn!(%message, "masking refused a result");
        let text = format!("airlock: {message}");
        resp.held_count = None;
        codec::put_err(out, &mut resp.seq, errno::QUERY_INTERRUPTED, "HY000", &text);
        resp.totals.error = Some(text);
        resp.suppress = true;
        self.end_result_set(resp);
        Act::Replaced
    }

    /// Moves the state machine past one non-row packet.
    fn advance(&mut self, resp: &mut Response, payload: &[u8]) -> Result<(), RelayError> {
        let first = payload.first().copied();
        let eof = self.deprecate_eof;
        match resp.state {
            State::Start => match first {
                Some(0x00) if resp.kind == Kind::Prepare => {
                    let b = payload
                        .get(1..9)
                        .ok_or(RelayError::Protocol("short COM_STMT_PREPARE answer"))?;
                    let prepared = Prepared {
                        statement: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        columns: u16::from_le_bytes([b[4], b[5]]),
                        params: u16::from_le_bytes([b[6], b[7]]),
                    };
                    resp.prepared = Some(prepared);
                    let cols = u64::from(prepared.columns);
                    resp.state = match (prepared.params, cols) {
                        (0, 0) => State::Done,
                        (0, c) => State::PrepareCols { left: c },
                        (n, c) => State::PrepareParams {
                            left: u64::from(n),
                            cols: c,
                        },
                    };
                }
                Some(0x00) | Some(0xfe) if resp.kind == Kind::Single => {
                    if let Some(st) = codec::ok_status(payload) {
                        self.status = st;
                    }
                    resp.state = State::Done;
                }
                Some(0x00) => {
                    if let Some(st) = codec::ok_status(payload) {
                        self.status = st;
                    }
                    // The server's counts: a multi-statement answer can sum past u64.
                    resp.totals.affected = Some(
                        resp.totals
                            .affected
                            .unwrap_or(0)
                            .saturating_add(codec::ok_affected_rows(payload).unwrap_or(0)),
                    );
                    let more = codec::ok_status(payload)
                        .is_some_and(|s| s & status::MORE_RESULTS_EXISTS != 0);
                    if !more {
                        resp.state = State::Done;
                    }
                }
                Some(0xff) => {
                    self.error(resp, payload);
                    resp.state = State::Done;
                }
                _ if resp.kind == Kind::Single => resp.state = State::Done,
                Some(0xfb) => {
                    return Err(RelayError::Protocol(
                        "LOAD DATA LOCAL request, but the capability was not negotiated",
                    ));
                }
                _ => {
                    let (n, _) = codec::read_lenenc(payload)
                        .ok_or(RelayError::Protocol("bad column count"))?;
                    if n == 0 {
                        return Err(RelayError::Protocol("result set of zero columns"));
                    }
                    resp.columns.clear();
                    resp.state = State::Columns { left: n };
                }
            },
            State::Columns { .. } => self.advance_columns(resp)?,
            State::ColumnsEof => {
                if first != Some(0xfe) {
                    return Err(RelayError::Protocol("no EOF after column definitions"));
                }
                let s = codec::terminator_status(payload, false).unwrap_or(0);
                if s & status::CURSOR_EXISTS != 0 {
                    resp.cursor = true;
                    resp.state = State::Done;
                } else {
                    resp.state = State::Rows;
                }
            }
            State::Rows => {
                if first == Some(0xff) {
                    self.error(resp, payload);
                    self.end_result_set(resp);
                    resp.state = State::Done;
                    return Ok(());
                }
                let s = codec::terminator_status(payload, eof).unwrap_or(0);
                self.status = s;
                self.end_result_set(resp);
                if s & status::CURSOR_EXISTS != 0 && resp.kind == Kind::Binary {
                    resp.cursor = true;
                }
                resp.state = if s & status::MORE_RESULTS_EXISTS != 0 && resp.kind != Kind::Fetch {
                    State::Start
                } else {
                    State::Done
                };
            }
            State::PrepareParams { left, cols } => {
                resp.state = match (left - 1, eof) {
                    (0, false) => State::PrepareParamsEof { cols },
                    (0, true) if cols > 0 => State::PrepareCols { left: cols },
                    (0, true) => State::Done,
                    (l, _) => State::PrepareParams { left: l, cols },
                };
            }
            State::PrepareParamsEof { cols } => {
                resp.state = if cols > 0 {
                    State::PrepareCols { left: cols }
                } else {
                    State::Done
                };
            }
            State::PrepareCols { left } => {
                resp.state = match (left - 1, eof) {
                    (0, false) => State::PrepareColsEof,
                    (0, true) => State::Done,
                    (l, _) => State::PrepareCols { left: l },
                };
            }
            State::PrepareColsEof => resp.state = State::Done,
            State::FieldList => {
                if first == Some(0xff) {
                    self.error(resp, payload);
                    resp.state = State::Done;
                } else if first.is_some_and(|b| codec::is_terminator(b, payload.len(), eof)) {
                    resp.state = State::Done;
                }
            }
            State::Done => return Err(RelayError::Protocol("packet after the end of an answer")),
        }
        Ok(())
    }

    fn advance_columns(&mut self, resp: &mut Response) -> Result<(), RelayError> {
        if let State::Columns { left } = resp.state {
            resp.state = match left - 1 {
                0 if self.deprecate_eof => State::Rows,
                0 => State::ColumnsEof,
                l => State::Columns { left: l },
            };
        }
        Ok(())
    }

    fn error(&mut self, resp: &mut Response, payload: &[u8]) {
        let message = codec::parse_err(payload)
            .map(|e| {
                let text = if resp.mask.is_empty() {
                    Cow::Borrowed(e.message.as_str())
                } else {
                    mask_message(&self.masker, &resp.mask, resp.touched, &e.message)
                };
                format!("{text} ({})", e.code)
            })
            .unwrap_or_else(|| "error".into());
        resp.totals.error.get_or_insert(message);
    }

    /// Whether a command with `lineage`, run under masking rules `mask`, names a column an
    /// active column rule may mask (directly or through a view `relations` knows), or cannot
    /// be traced: then the server's messages about it may quote that column's values.
    pub fn touches(&self, mask: &[String], lineage: &Lineage, relations: &dyn Relations) -> bool {
        // A statement that names no column (BEGIN, SET, COMMIT) needs no rule looked up.
        if mask.is_empty() || (lineage.unknown().is_none() && lineage.sources().next().is_none()) {
            return false;
        }
        let Ok(rules) = self.masker.column_rules(mask) else {
            return true;
        };
        if rules.is_empty() {
            return false;
        }
        if lineage.unknown().is_some() {
            return true;
        }
        let masked = |s: &Source| {
            rules.iter().any(|&r| {
                self.masker
                    .rule_may_mask(r, s.schema.as_deref(), &s.table, s.column.as_deref())
            })
        };
        lineage.sources().any(|s| {
            masked(s)
                || match relations.expand(s) {
                    None => false,
                    Some(Ok(bases)) => bases.iter().any(masked),
                    Some(Err(())) => true,
                }
        })
    }

    /// Counts the finished result set's masked values into metrics and the totals.
    fn end_result_set(&mut self, resp: &mut Response) {
        let Some(idx) = resp.plan.take() else {
            return;
        };
        let counts = self.cache[idx].plan.take_counts();
        if counts.is_empty() {
            return;
        }
        for (rule, n) in counts.iter() {
            let i = usize::from(rule.0);
            if self.counters.len() <= i {
                self.counters.resize(i + 1, None);
            }
            let name = self.masker.rule_name(rule).to_owned();
            let metrics = self.metrics;
            self.counters[i]
                .get_or_insert_with(|| metrics.mask_rule(&name))
                .inc_by(u64::from(n));
        }
        resp.totals.masked.merge(&counts);
    }

    /// The plan for these column definitions under these rules: from the cache, or built.
    fn plan_for(
        &mut self,
        columns: &[Vec<u8>],
        mask: &Arc<[String]>,
        binary: bool,
    ) -> Result<usize, String> {
        if let Some(i) = self
            .cache
            .iter()
            .position(|c| c.binary == binary && *c.mask == **mask && c.columns == columns)
        {
            // Most recently used last.
            let c = self.cache.remove(i);
            self.cache.push(c);
            return Ok(self.cache.len() - 1);
        }
        let parsed = columns
            .iter()
            .map(|d| {
                ParseBuf(d)
                    .parse::<Column>(())
                    .map_err(|_| "masking: malformed column definition".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let format = if binary {
            ValueFormat::Binary
        } else {
            ValueFormat::Text
        };
        let names: Vec<(String, String, String)> = parsed
            .iter()
            .map(|c| {
                let name = if c.org_name_ref().is_empty() {
                    c.name_str().into_owned()
                } else {
                    c.org_name_str().into_owned()
                };
                (
                    c.schema_str().into_owned(),
                    c.org_table_str().into_owned(),
                    name,
                )
            })
            .collect();
        let refs: Vec<ColumnRef<'_>> = parsed
            .iter()
            .zip(&names)
            .map(|(c, (schema, table, name))| ColumnRef {
                schema: if table.is_empty() { "" } else { schema },
                table,
                column: name,
                kind: value_kind(c.column_type(), c.character_set()),
                type_id: c.column_type() as u32,
                format,
            })
            .collect();
        let plan = self
            .masker
            .plan(&refs, mask)
            .map_err(|e| format!("masking: {e}"))?;
        let mut announce = None;
        if !binary {
            for (i, c) in parsed.iter().enumerate() {
                if plan.masked_as_text(i, value_kind(c.column_type(), c.character_set())) {
                    let defs = announce.get_or_insert_with(|| columns.to_vec());
                    defs[i] = as_string_column(c);
                }
            }
        }
        let types = parsed
            .iter()
            .map(|c| (c.column_type() as u8, c.character_set()))
            .collect();
        if self.cache.len() >= PLAN_CACHE {
            self.cache.remove(0);
        }
        self.cache.push(Cached {
            columns: columns.to_vec(),
            mask: mask.clone(),
            binary,
            plan,
            types,
            announce,
        });
        Ok(self.cache.len() - 1)
    }

    /// Masks one row payload into `self.row`; `Ok(false)`: unchanged, forward the original.
    fn mask_row(&mut self, idx: usize, payload: &[u8]) -> Result<bool, String> {
        let cached = &mut self.cache[idx];
        self.row.clear();
        let r = if cached.binary {
            mask_binary_row(
                &mut cached.plan,
                &cached.types,
                payload,
                &mut self.row,
                &mut self.scratch,
            )
        } else {
            mask_text_row(&mut cached.plan, payload, &mut self.row, &mut self.scratch)
        };
        r.map_err(|e| format!("masking failed: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Forward,
    /// What the client gets was appended to `out` (possibly nothing).
    Replaced,
}

/// What masking needs to know of a MySQL column type.
fn value_kind(t: ColumnType, charset: u16) -> ValueKind {
    use ColumnType::*;
    const BINARY_CHARSET: u16 = 63;
    match t {
        MYSQL_TYPE_TINY
        | MYSQL_TYPE_SHORT
        | MYSQL_TYPE_INT24
        | MYSQL_TYPE_LONG
        | MYSQL_TYPE_YEAR
        | MYSQL_TYPE_FLOAT
        | MYSQL_TYPE_DOUBLE
        | MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_NULL => ValueKind::Plain,
        // Nineteen digits can be a card number: scanned as text.
        MYSQL_TYPE_LONGLONG | MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => ValueKind::Other,
        MYSQL_TYPE_JSON => ValueKind::Json { binary_prefix: 0 },
        MYSQL_TYPE_BIT | MYSQL_TYPE_GEOMETRY => ValueKind::Bytes,
        _ if charset == BINARY_CHARSET => ValueKind::Bytes,
        // `character_set_results` NULL sends each column in its own set, which may be one
        // the detectors cannot read.
        _ => match super::handshake::wide_charset(charset) {
            Some(charset) => ValueKind::WideText { charset },
            None => ValueKind::Text,
        },
    }
}

/// The column definition announced as a utf8mb4 VAR_STRING (its names kept).
fn as_string_column(c: &Column) -> Vec<u8> {
    const UTF8MB4_GENERAL_CI: u16 = 45;
    let flags = c.flags()
        - (ColumnFlags::UNSIGNED_FLAG
            | ColumnFlags::ZEROFILL_FLAG
            | ColumnFlags::BINARY_FLAG
            | ColumnFlags::NUM_FLAG
            | ColumnFlags::BLOB_FLAG
            | ColumnFlags::TIMESTAMP_FLAG
            | ColumnFlags::ENUM_FLAG
            | ColumnFlags::SET_FLAG);
    let announced = Column::new(ColumnType::MYSQL_TYPE_VAR_STRING)
        .with_schema(c.schema_ref())
        .with_table(c.table_ref())
        .with_org_table(c.org_table_ref())
        .with_name(c.name_ref())
        .with_org_name(c.org_name_ref())
        .with_flags(flags)
        .with_column_length(c.column_length().max(64 * 4))
        .with_character_set(UTF8MB4_GENERAL_CI)
        .with_decimals(0);
    let mut v = Vec::with_capacity(64);
    announced.serialize(&mut v);
    v
}

/// Masks a text protocol row (a length-encoded string or 0xFB per column) into `out`.
/// `Ok(false)`: nothing changed and nothing was written.
pub fn mask_text_row(
    plan: &mut ColumnPlan,
    payload: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut BytesMut,
) -> Result<bool, crate::mask::MaskError> {
    use crate::mask::MaskError;
    let mut pos = 0;
    // Bytes of `payload` before `copied` are already in `out` (once something changed).
    let mut copied = 0;
    let mut changed = false;
    for col in 0..plan.len() {
        let at = pos;
        if payload.get(pos) == Some(&0xfb) {
            pos += 1;
            continue;
        }
        let (value, used) = codec::read_lenenc_bytes(payload.get(pos..).unwrap_or_default())
            .ok_or(MaskError::MalformedRow("truncated value"))?;
        pos += used;
        scratch.clear();
        let outcome = plan.mask_value(col, value, scratch)?;
        if outcome == MaskOutcome::Unchanged {
            continue;
        }
        if !changed {
            out.reserve(payload.len() + 16);
            changed = true;
        }
        out.extend_from_slice(&payload[copied..at]);
        match outcome {
            MaskOutcome::Replaced { .. } => codec::put_lenenc_bytes(out, scratch),
            MaskOutcome::Null { .. } => out.push(0xfb),
            MaskOutcome::Unchanged => {}
        }
        copied = pos;
    }
    if pos != payload.len() {
        return Err(MaskError::RowShape {
            got: plan.len() + 1,
            expected: plan.len(),
        });
    }
    if changed {
        out.extend_from_slice(&payload[copied..]);
    }
    Ok(changed)
}

/// Bytes a binary protocol value of this type takes at the start of `b`.
fn binary_value_len(t: u8, b: &[u8]) -> Option<usize> {
    use ColumnType::*;
    let fixed = |n: usize| (b.len() >= n).then_some(n);
    match ColumnType::try_from(t).ok()? {
        MYSQL_TYPE_NULL => Some(0),
        MYSQL_TYPE_TINY => fixed(1),
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => fixed(2),
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 | MYSQL_TYPE_FLOAT => fixed(4),
        MYSQL_TYPE_LONGLONG | MYSQL_TYPE_DOUBLE => fixed(8),
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_TIME2 => {
            let n = usize::from(*b.first()?);
            fixed(1 + n)
        }
        _ => codec::read_lenenc_bytes(b).map(|(_, used)| used),
    }
}

/// Whether binary values of this type are length-encoded strings (what a replacement is
/// written as).
fn binary_is_lenenc(t: u8) -> bool {
    use ColumnType::*;
    !matches!(
        ColumnType::try_from(t),
        Ok(MYSQL_TYPE_NULL
            | MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_YEAR
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_DOUBLE
            | MYSQL_TYPE_DATE
            | MYSQL_TYPE_NEWDATE
            | MYSQL_TYPE_DATETIME
            | MYSQL_TYPE_TIMESTAMP
            | MYSQL_TYPE_TIME
            | MYSQL_TYPE_DATETIME2
            | MYSQL_TYPE_TIMESTAMP2
            | MYSQL_TYPE_TIME2)
            | Err(_)
    )
}

/// Masks a binary protocol row (0x00, NULL bitmap with a 2-bit offset, then the non-NULL
/// values by type) into `out`. `Ok(false)`: nothing changed and nothing was written.
pub fn mask_binary_row(
    plan: &mut ColumnPlan,
    types: &[(u8, u16)],
    payload: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut BytesMut,
) -> Result<bool, crate::mask::MaskError> {
    use crate::mask::MaskError;
    let n = types.len();
    let bitmap_len = (n + 7 + 2) / 8;
    if payload.first() != Some(&0x00) || payload.len() < 1 + bitmap_len {
        return Err(MaskError::MalformedRow("bad binary row header"));
    }
    let is_null = |bm: &[u8], i: usize| bm[(i + 2) / 8] & (1 << ((i + 2) % 8)) != 0;
    let bitmap = &payload[1..1 + bitmap_len];
    let mut pos = 1 + bitmap_len;
    let mut copied = pos;
    let mut changed = false;
    // The bitmap is rewritten when a value becomes NULL; `out` holds 0x00 + bitmap first.
    for (col, &(t, _)) in types.iter().enumerate() {
        if is_null(bitmap, col) {
            continue;
        }
        let at = pos;
        let len = binary_value_len(t, &payload[pos..])
            .ok_or(MaskError::MalformedRow("value runs past the row"))?;
        pos += len;
        if !binary_is_lenenc(t) {
            // Fixed-width and date/time values: detectors do not apply (the plan refuses
            // column rules on them in binary format).
            continue;
        }
        let (value, _) = codec::read_lenenc_bytes(&payload[at..pos])
            .ok_or(MaskError::MalformedRow("truncated value"))?;
        scratch.clear();
        let outcome = plan.mask_value(col, value, scratch)?;
        if outcome == MaskOutcome::Unchanged {
            continue;
        }
        if !changed {
            out.reserve(payload.len() + 16);
            out.extend_from_slice(&payload[..1 + bitmap_len]);
            changed = true;
        }
        out.extend_from_slice(&payload[copied..at]);
        match outcome {
            MaskOutcome::Replaced { .. } => codec::put_lenenc_bytes(out, scratch),
            MaskOutcome::Null { .. } => out[1 + (col + 2) / 8] |= 1 << ((col + 2) % 8),
            MaskOutcome::Unchanged => {}
        }
        copied = pos;
    }
    if pos != payload.len() {
        return Err(MaskError::MalformedRow(
            "trailing bytes after the last value",
        ));
    }
    if changed {
        out.extend_from_slice(&payload[copied..]);
    }
    Ok(changed)
}

impl Totals {
    /// The audit log's result record.
    pub fn record(&self, started: Instant) -> CommandResult {
        CommandResult {
            rows: if self.rows > 0 || self.affected.is_none() {
                Some(self.rows)
            } else {
                self.affected
            },
            bytes: self.bytes,
            duration: started.elapsed(),
            error: self.error.clone(),
            ..CommandResult::default()
        }
    }
}

#[allow(dead_code)]
fn _assert_limits() {
    const _: () = assert!(MAX_HELD_PACKET > MAX_PAYLOAD);
}

/// A server message (an ERR packet's, a warning's) as the client and the audit log may see
/// it under masking rules `mask`. When the command touched a masked column, quoted text is
/// cut: MySQL quotes the values it complains about (`Truncated incorrect DECIMAL value:
/// 'ada@…'`), and a value can hold the quote itself, so the cut runs to the last quote of the
/// kind (an unclosed one, to the end); names quoted beside it go too.
/// Then the active detectors run over what is left.
fn mask_message<'a>(
    masker: &Masker,
    mask: &[String],
    touched: bool,
    text: &'a str,
) -> Cow<'a, str> {
    let mut out: Cow<'a, str> = Cow::Borrowed(text);
    if touched && text.contains(['\'', '"']) {
        let mut cut = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(['\'', '"']) {
            let q = &rest[i..=i];
            cut.push_str(&rest[..=i]);
            // To the last quote of the kind: a value may hold the quote itself.
            match rest[i + 1..].rfind(q) {
                Some(len) => {
                    cut.push_str(REDACTED_TEXT);
                    cut.push_str(q);
                    rest = &rest[i + 1 + len + 1..];
                }
                None => {
                    cut.push_str(REDACTED_TEXT);
                    rest = "";
                }
            }
        }
        cut.push_str(rest);
        out = Cow::Owned(cut);
    }
    if let Some(masked) = masker.detect_in(mask, out.as_bytes()) {
        out = Cow::Owned(String::from_utf8_lossy(&masked).into_owned());
    }
    out
}

/// A text-protocol row of `SHOW WARNINGS` / `SHOW ERRORS` (level, code, message) with its
/// message cut as an error's; `None` when it does not read as one.
fn mask_warning_row(masker: &Masker, mask: &[String], payload: &[u8]) -> Option<Vec<u8>> {
    let [level, code, message] = codec::text_row_cells(payload)?[..] else {
        return None;
    };
    let message = message.map(|m| {
        let text = String::from_utf8_lossy(m);
        mask_message(masker, mask, true, &text).into_owned()
    });
    let mut row = Vec::with_capacity(payload.len() + 16);
    for cell in [level, code, message.as_deref().map(str::as_bytes)] {
        codec::put_text_cell(&mut row, cell);
    }
    Some(row)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
