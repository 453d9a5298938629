//! PostgreSQL's rows through the masking engine's columns entry point: DataRow and COPY OUT
//! (text and CSV) data.
//!
//! Both follow one contract: when nothing in the message changes, nothing is written and the
//! caller forwards the original frame (no copy); otherwise one complete replacement message
//! with recomputed lengths is appended to `out`. Unmasked columns are copied as raw byte
//! ranges, without re-encoding.

use bytes::{BufMut, BytesMut};

use crate::mask::{ColumnPlan, MaskError, MaskOutcome, RowOutcome, RuleSet};

/// PostgreSQL's row framing as methods of a plan (the free functions below, for readability
/// at call sites).
pub trait PgRows {
    /// [`mask_data_row`].
    fn mask_data_row(&mut self, body: &[u8], out: &mut BytesMut) -> Result<RowOutcome, MaskError>;
    /// [`mask_copy_data`].
    fn mask_copy_data(
        &mut self,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<RowOutcome, MaskError>;
    /// [`mask_copy_csv`].
    fn mask_copy_csv(
        &mut self,
        payload: &[u8],
        options: CsvOptions,
        out: &mut BytesMut,
    ) -> Result<RowOutcome, MaskError>;
}

impl PgRows for ColumnPlan {
    fn mask_data_row(&mut self, body: &[u8], out: &mut BytesMut) -> Result<RowOutcome, MaskError> {
        mask_data_row(self, body, out)
    }

    fn mask_copy_data(
        &mut self,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<RowOutcome, MaskError> {
        mask_copy_data(self, payload, out)
    }

    fn mask_copy_csv(
        &mut self,
        payload: &[u8],
        options: CsvOptions,
        out: &mut BytesMut,
    ) -> Result<RowOutcome, MaskError> {
        mask_copy_csv(self, payload, options, out)
    }
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at + 4)?;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn patch_i32(out: &mut BytesMut, at: usize, v: i32) {
    out[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn frame_len(len: usize) -> Result<i32, MaskError> {
    i32::try_from(len).map_err(|_| MaskError::MalformedRow("masked message exceeds 2 GiB"))
}

/// Runs `f`, which appends to `out`; on error whatever it appended is removed, so a refused
/// row never leaves a partial message behind.
fn all_or_nothing<T, E>(
    out: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> Result<T, E>,
) -> Result<T, E> {
    let base = out.len();
    let r = f(out);
    if r.is_err() {
        out.truncate(base);
    }
    r
}

/// Masks one DataRow. `body` is the message body (after the `D` byte and length): int16
/// column count, then per column an int32 length (-1 for NULL) and the bytes. On
/// `rewritten` a whole DataRow message (`D`, length, body) was appended to `out`; otherwise
/// forward the original. On error nothing is left in `out`.
pub fn mask_data_row(
    plan: &mut ColumnPlan,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    all_or_nothing(out, |out| data_row_inner(plan, body, out))
}

fn data_row_inner(
    plan: &mut ColumnPlan,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    let count = body
        .get(..2)
        .map(|s| i16::from_be_bytes([s[0], s[1]]))
        .ok_or(MaskError::MalformedRow("truncated column count"))?;
    let count =
        usize::try_from(count).map_err(|_| MaskError::MalformedRow("negative column count"))?;
    if count != plan.len() {
        return Err(MaskError::RowShape {
            got: count,
            expected: plan.len(),
        });
    }
    let mut outcome = RowOutcome::default();
    // Where the replacement message starts in `out`, once one is needed.
    let mut frame: Option<usize> = None;
    // Body bytes from here on are not yet copied into the replacement.
    let mut raw_from = 2;
    let mut pos = 2;
    for col in 0..count {
        let len_at = pos;
        let len = read_i32(body, pos).ok_or(MaskError::MalformedRow("truncated length"))?;
        pos += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| MaskError::MalformedRow("negative length"))?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or(MaskError::MalformedRow("value runs past the message"))?;
        let value = &body[pos..end];
        pos = end;
        if plan.passes(col) {
            continue;
        }
        match frame {
            Some(_) => {
                out.put_slice(&body[raw_from..len_at]);
                raw_from = len_at;
                let len_pos = out.len();
                out.put_i32(0);
                match plan.mask_value(col, value, out)? {
                    MaskOutcome::Unchanged => out.truncate(len_pos),
                    MaskOutcome::Replaced { rules } => {
                        let n = frame_len(out.len() - len_pos - 4)?;
                        patch_i32(out, len_pos, n);
                        outcome.counts.add(rules);
                        raw_from = end;
                    }
                    MaskOutcome::Null { rule } => {
                        patch_i32(out, len_pos, -1);
                        outcome.counts.add(RuleSet::one(rule));
                        raw_from = end;
                    }
                }
            }
            None => {
                let mark = out.len();
                let (new_len, rules) = match plan.mask_value(col, value, out)? {
                    MaskOutcome::Unchanged => continue,
                    MaskOutcome::Replaced { rules } => (frame_len(out.len() - mark)?, rules),
                    MaskOutcome::Null { rule } => (-1, RuleSet::one(rule)),
                };
                outcome.counts.add(rules);
                // The replacement value was written first (nothing is written for rows that
                // stay unchanged); slide it over to make room for the message header and the
                // columns before it, all in the same buffer.
                let written = out.len() - mark;
                let head = 1 + 4 + len_at + 4;
                // One reservation for the rest of the row: later copies do not regrow.
                out.reserve(head + body.len() - len_at + 64);
                out.resize(mark + head + written, 0);
                out.copy_within(mark..mark + written, mark + head);
                out[mark] = b'D';
                out[mark + 5..mark + 5 + len_at].copy_from_slice(&body[..len_at]);
                patch_i32(out, mark + 5 + len_at, new_len);
                frame = Some(mark);
                raw_from = end;
            }
        }
    }
    if pos != body.len() {
        return Err(MaskError::MalformedRow(
            "trailing bytes after the last column",
        ));
    }
    if let Some(start) = frame {
        out.put_slice(&body[raw_from..]);
        let n = frame_len(out.len() - start - 1)?;
        patch_i32(out, start + 1, n);
        outcome.rewritten = true;
    }
    Ok(outcome)
}

/// Masks the payload of one CopyData message of a text-format COPY OUT: one or more
/// complete lines, fields separated by tabs, `\N` for NULL, backslash escapes. Values are
/// unescaped before masking (so hashes match the DataRow path) and the replacements are
/// escaped again. On `rewritten` a whole CopyData message (`d`, length, payload) was
/// appended to `out`. A payload that does not end a line is refused: PostgreSQL sends one
/// row per CopyData, and a split row cannot be masked safely. CSV COPY is not supported:
/// its commas give the wrong field count, which is refused too.
pub fn mask_copy_data(
    plan: &mut ColumnPlan,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    all_or_nothing(out, |out| copy_inner(plan, payload, out))
}

fn copy_inner(
    plan: &mut ColumnPlan,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    let mut outcome = RowOutcome::default();
    if payload.is_empty() {
        return Ok(outcome);
    }
    if payload.last() != Some(&b'\n') {
        return Err(MaskError::MalformedCopy("CopyData does not end a line"));
    }
    let mut frame: Option<usize> = None;
    let mut raw_from = 0;
    let (mut unescaped, mut masked) = plan.take_scratch();
    let result = (|| {
        let mut line_start = 0;
        while line_start < payload.len() {
            let line_end = line_start
                + memchr::memchr(b'\n', &payload[line_start..])
                    .ok_or(MaskError::MalformedCopy("CopyData does not end a line"))?;
            let line = &payload[line_start..line_end];
            if line == b"\\." {
                line_start = line_end + 1;
                continue;
            }
            let fields = memchr::memchr_iter(b'\t', line).count() + 1;
            if fields != plan.len() {
                return Err(MaskError::RowShape {
                    got: fields,
                    expected: plan.len(),
                });
            }
            let mut fstart = line_start;
            for col in 0..fields {
                let fend = memchr::memchr(b'\t', &payload[fstart..line_end])
                    .map_or(line_end, |x| fstart + x);
                let field = &payload[fstart..fend];
                let next = fend + 1;
                if field == b"\\N" || plan.passes(col) {
                    fstart = next;
                    continue;
                }
                let value: &[u8] = if memchr::memchr(b'\\', field).is_some() {
                    unescaped.clear();
                    unescape_copy_text(field, &mut unescaped)
                        .map_err(|()| MaskError::MalformedCopy("bad escape"))?;
                    &unescaped
                } else {
                    field
                };
                masked.clear();
                let outcome_v = plan.mask_value(col, value, &mut masked)?;
                let rules = match outcome_v {
                    MaskOutcome::Unchanged => {
                        fstart = next;
                        continue;
                    }
                    MaskOutcome::Replaced { rules } => rules,
                    MaskOutcome::Null { rule } => RuleSet::one(rule),
                };
                outcome.counts.add(rules);
                if frame.is_none() {
                    frame = Some(out.len());
                    out.put_u8(b'd');
                    out.put_i32(0);
                }
                out.put_slice(&payload[raw_from..fstart]);
                match outcome_v {
                    MaskOutcome::Null { .. } => out.put_slice(b"\\N"),
                    _ => escape_copy_text(&masked, out),
                }
                raw_from = fend;
                fstart = next;
            }
            line_start = line_end + 1;
        }
        Ok(())
    })();
    plan.put_scratch(unescaped, masked);
    result?;
    if let Some(start) = frame {
        out.put_slice(&payload[raw_from..]);
        let n = frame_len(out.len() - start - 1)?;
        patch_i32(out, start + 1, n);
        outcome.rewritten = true;
    }
    Ok(outcome)
}

/// Options of a CSV-format COPY (`COPY ... TO STDOUT WITH (FORMAT csv, ...)`): PostgreSQL's
/// defaults are `,`, `"` and an escape equal to the quote. NULL is an unquoted empty field; a
/// custom `NULL 'x'` string is treated as an ordinary value (masking it can only over-mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
        }
    }
}

/// One CSV field: its bytes in the payload, whether it was quoted, and its decoded value
/// (written to `scratch` when quoted).
fn csv_field(
    payload: &[u8],
    start: usize,
    o: CsvOptions,
    scratch: &mut Vec<u8>,
) -> Result<(usize, bool), MaskError> {
    let n = payload.len();
    if payload.get(start) != Some(&o.quote) {
        let mut k = start;
        while k < n && payload[k] != o.delimiter && payload[k] != b'\n' {
            k += 1;
        }
        return Ok((k, false));
    }
    scratch.clear();
    let mut k = start + 1;
    loop {
        let b = *payload
            .get(k)
            .ok_or(MaskError::MalformedCopy("unterminated CSV quote"))?;
        let next = payload.get(k + 1).copied();
        if o.escape != o.quote && b == o.escape {
            match next {
                Some(x) if x == o.quote || x == o.escape => {
                    scratch.push(x);
                    k += 2;
                }
                _ => {
                    scratch.push(b);
                    k += 1;
                }
            }
        } else if b == o.quote {
            if o.escape == o.quote && next == Some(o.quote) {
                scratch.push(b);
                k += 2;
            } else {
                return Ok((k + 1, true));
            }
        } else {
            scratch.push(b);
            k += 1;
        }
    }
}

/// Writes a CSV field, always quoted, doubling (escaping) quote and escape characters.
pub fn write_csv_field(value: &[u8], o: CsvOptions, out: &mut BytesMut) {
    out.put_u8(o.quote);
    let mut from = 0;
    for (k, &b) in value.iter().enumerate() {
        if b == o.quote || b == o.escape {
            out.put_slice(&value[from..k]);
            out.put_u8(o.escape);
            out.put_u8(b);
            from = k + 1;
        }
    }
    out.put_slice(&value[from..]);
    out.put_u8(o.quote);
}

/// Like [`ColumnPlan::mask_copy_data`] for a CSV-format COPY OUT. Quoted fields may hold
/// delimiters and newlines; PostgreSQL still sends one row per CopyData. Masked fields are
/// written quoted; a nulled field becomes an unquoted empty field. A `HEADER` line, if the
/// COPY asked for one, has to be forwarded by the caller without calling this.
pub fn mask_copy_csv(
    plan: &mut ColumnPlan,
    payload: &[u8],
    options: CsvOptions,
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    all_or_nothing(out, |out| csv_inner(plan, payload, options, out))
}

fn csv_inner(
    plan: &mut ColumnPlan,
    payload: &[u8],
    o: CsvOptions,
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    let mut outcome = RowOutcome::default();
    if payload.is_empty() {
        return Ok(outcome);
    }
    if payload.last() != Some(&b'\n') {
        return Err(MaskError::MalformedCopy("CopyData does not end a line"));
    }
    let mut frame: Option<usize> = None;
    let mut raw_from = 0;
    let (mut unquoted, mut masked) = plan.take_scratch();
    let result = (|| {
        let mut pos = 0;
        while pos < payload.len() {
            let mut col = 0;
            loop {
                let (end, quoted) = csv_field(payload, pos, o, &mut unquoted)?;
                if col >= plan.len() {
                    return Err(MaskError::RowShape {
                        got: col + 1,
                        expected: plan.len(),
                    });
                }
                let value: &[u8] = if quoted {
                    &unquoted
                } else {
                    &payload[pos..end]
                };
                let is_null = !quoted && end == pos;
                if !is_null && !plan.passes(col) {
                    masked.clear();
                    let v = plan.mask_value(col, value, &mut masked)?;
                    let rules = match v {
                        MaskOutcome::Unchanged => None,
                        MaskOutcome::Replaced { rules } => Some(rules),
                        MaskOutcome::Null { rule } => Some(RuleSet::one(rule)),
                    };
                    if let Some(rules) = rules {
                        outcome.counts.add(rules);
                        if frame.is_none() {
                            frame = Some(out.len());
                            out.put_u8(b'd');
                            out.put_i32(0);
                        }
                        out.put_slice(&payload[raw_from..pos]);
                        if !matches!(v, MaskOutcome::Null { .. }) {
                            write_csv_field(&masked, o, out);
                        }
                        raw_from = end;
                    }
                }
                col += 1;
                match payload.get(end) {
                    Some(&b) if b == o.delimiter => pos = end + 1,
                    Some(b'\n') => {
                        pos = end + 1;
                        break;
                    }
                    // A quoted field must be followed by a delimiter or the end of the row.
                    _ => {
                        return Err(MaskError::MalformedCopy(
                            "unexpected byte after a CSV field",
                        ));
                    }
                }
            }
            if col != plan.len() {
                return Err(MaskError::RowShape {
                    got: col,
                    expected: plan.len(),
                });
            }
        }
        Ok(())
    })();
    plan.put_scratch(unquoted, masked);
    result?;
    if let Some(start) = frame {
        out.put_slice(&payload[raw_from..]);
        let n = frame_len(out.len() - start - 1)?;
        patch_i32(out, start + 1, n);
        outcome.rewritten = true;
    }
    Ok(outcome)
}

/// Decodes a COPY text field's backslash escapes (`\b \f \n \r \t \v \\`, `\NNN` octal,
/// `\xHH` hex; any other escaped byte stands for itself). `Err` on a trailing lone backslash.
#[allow(clippy::result_unit_err)]
pub fn unescape_copy_text(field: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let mut k = 0;
    while k < field.len() {
        let b = field[k];
        if b != b'\\' {
            out.push(b);
            k += 1;
            continue;
        }
        let c = *field.get(k + 1).ok_or(())?;
        k += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut digits = 1;
                while digits < 3 {
                    match field.get(k) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            k += 1;
                            digits += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if field.get(k).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(k) {
                        Some(&d) if d.is_ascii_hexdigit() => {
                            v = v * 16 + (d as char).to_digit(16).unwrap_or(0);
                            k += 1;
                            digits += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(())
}

/// Escapes a value for a COPY text field (the inverse of [`unescape_copy_text`]).
pub fn escape_copy_text(value: &[u8], out: &mut BytesMut) {
    let mut from = 0;
    for (k, &b) in value.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            8 => b"\\b",
            12 => b"\\f",
            11 => b"\\v",
            _ => continue,
        };
        out.put_slice(&value[from..k]);
        out.put_slice(esc);
        from = k + 1;
    }
    out.put_slice(&value[from..]);
}
