//! Server messages that can carry values: ErrorResponse and NoticeResponse fields, masked
//! before the client and the audit log see them.
//!
//! `SELECT email::int FROM customers` fails with `invalid input syntax for type integer:
//! "ada@…"`: the server quotes the offending value. For a command with masking rules:
//!
//! - when the command names a column an active column rule may mask (in any role: result,
//!   comparison, stored), or its lineage is unknown, every field that can carry a value is
//!   cut down to what cannot: in the message and hint, quoted text (PostgreSQL's message
//!   style quotes every user-supplied value) unless it is one of the error's own identifier
//!   fields (schema, table, column, type, constraint), anything after `": "`, and `0x…`
//!   byte dumps become `[REDACTED]`; detail, context, internal query and fields this code
//!   does not know are replaced whole;
//! - then every such field goes through the active detectors, as any text value does.
//!
//! Identifier, position and source-location fields pass unchanged. A message that does not
//! parse is replaced by a generic one (fail closed).

use bytes::{BufMut, BytesMut};

use super::codec;
use super::results::Cmd;
use crate::mask::{Masker, REDACTED};

/// A field of an ErrorResponse/NoticeResponse: its type byte and value.
type Fields<'a> = Vec<(u8, &'a [u8])>;

fn parse(body: &[u8]) -> Option<Fields<'_>> {
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let (&code, after) = rest.split_first()?;
        if code == 0 {
            return Some(fields);
        }
        let end = after.iter().position(|&b| b == 0)?;
        fields.push((code, &after[..end]));
        rest = &after[end + 1..];
    }
}

/// Fields that never carry a value: severity, SQLSTATE, positions, source location, and
/// the names of catalog objects.
fn structural(code: u8) -> bool {
    matches!(
        code,
        b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R' | b's' | b't' | b'c' | b'd' | b'n'
    )
}

/// The message or hint with every value the server quoted or appended cut out; quoted
/// names equal to one of `idents` (the error's own identifier fields) stay.
fn redact_values(text: &[u8], idents: &[&[u8]]) -> Vec<u8> {
    // A server with `lc_messages` other than English quotes values in its language's marks
    // (`»…«`, `„…“`), which this reader does not know: the whole text goes.
    if !text.is_ascii() {
        return REDACTED.to_vec();
    }
    let (head, tail) = match text.windows(2).position(|w| w == b": ") {
        Some(i) => (&text[..i], Some(&text[i + 2..])),
        None => (text, None),
    };
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < head.len() {
        let b = head[i];
        if b == b'"' {
            match head[i + 1..].iter().position(|&c| c == b'"') {
                Some(len) => {
                    let inner = &head[i + 1..i + 1 + len];
                    out.push(b'"');
                    if idents.contains(&inner) {
                        out.extend_from_slice(inner);
                    } else {
                        out.extend_from_slice(REDACTED);
                    }
                    out.push(b'"');
                    i += len + 2;
                }
                None => {
                    out.push(b'"');
                    out.extend_from_slice(REDACTED);
                    i = head.len();
                }
            }
            continue;
        }
        // `0xe2 0x82 0xac`: bytes of a value.
        if b == b'0'
            && head.get(i + 1).is_some_and(|c| *c == b'x' || *c == b'X')
            && head.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            out.extend_from_slice(b"0x");
            out.extend_from_slice(REDACTED);
            i += 2;
            while head.get(i).is_some_and(u8::is_ascii_hexdigit) {
                i += 1;
            }
            continue;
        }
        // `index 97 out of valid range`: a number the server printed is a value too (a
        // character's code, a length); digits inside a word (`int4`) are part of a name.
        if b.is_ascii_digit() && (i == 0 || !is_word(head[i - 1])) {
            let end = head[i..]
                .iter()
                .position(|c| !is_word(*c))
                .map_or(head.len(), |n| i + n);
            out.extend_from_slice(REDACTED);
            i = end;
            continue;
        }
        out.push(b);
        i += 1;
    }
    if let Some(t) = tail
        && !t.is_empty()
    {
        out.extend_from_slice(b": ");
        out.extend_from_slice(REDACTED);
    }
    out
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Runs the active detectors over one field value; `None` when nothing matched.
fn detect(masker: &Masker, cmd: &Cmd, value: &[u8]) -> Option<Vec<u8>> {
    let out = masker.detect_in(&cmd.mask, value)?;
    // A value with a NUL would end the field early; detectors never write one.
    Some(out.iter().copied().filter(|&b| b != 0).collect())
}

/// What masking made of one ErrorResponse or NoticeResponse.
pub struct Masked {
    /// The whole replacement message (tag, length, fields), when anything changed.
    pub message: Option<BytesMut>,
    /// The (masked) primary message text, for the audit log.
    pub text: String,
}

/// Masks the body of an ErrorResponse (`tag` `E`) or NoticeResponse (`N`) of a command with
/// masking rules. `touched`: the command names a column an active column rule may mask
/// (directly or through a view), or cannot be traced.
pub fn mask(tag: u8, body: &[u8], masker: &Masker, cmd: &Cmd, touched: bool) -> Masked {
    let Some(fields) = parse(body) else {
        let mut msg = BytesMut::new();
        let text = "airlock: a malformed server message was withheld";
        codec::put_error(
            &mut msg,
            &codec::ErrorFields {
                severity: if tag == b'E' { "ERROR" } else { "NOTICE" },
                code: "XX000",
                message: text,
                detail: None,
                hint: None,
            },
        );
        msg[0] = tag;
        return Masked {
            message: Some(msg),
            text: text.into(),
        };
    };
    let idents: Vec<&[u8]> = fields
        .iter()
        .filter(|(c, _)| matches!(c, b's' | b't' | b'c' | b'd' | b'n'))
        .map(|(_, v)| *v)
        .collect();
    // A message a function wrote (`RAISE EXCEPTION '% is invalid', email`: SQLSTATE class
    // P0, or raised from PL/pgSQL code) follows no quoting style: replaced whole.
    let free_text = fields.iter().any(|(c, v)| {
        (*c == b'C' && v.starts_with(b"P0"))
            || (*c == b'W' && v.windows(8).any(|w| w == b"PL/pgSQL"))
    });
    let mut changed = false;
    let mut text = String::new();
    let mut out: Vec<(u8, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(fields.len());
    for (code, value) in fields {
        let mut v = std::borrow::Cow::Borrowed(value);
        if !structural(code) {
            if touched {
                let cut = match code {
                    b'M' | b'H' if !free_text => redact_values(value, &idents),
                    _ => REDACTED.to_vec(),
                };
                if cut != value {
                    v = std::borrow::Cow::Owned(cut);
                }
            }
            if let Some(d) = detect(masker, cmd, &v) {
                v = std::borrow::Cow::Owned(d);
            }
        }
        changed |= matches!(v, std::borrow::Cow::Owned(_));
        if code == b'M' {
            text = String::from_utf8_lossy(&v).into_owned();
        }
        out.push((code, v));
    }
    if !changed {
        return Masked {
            message: None,
            text,
        };
    }
    let mut msg = BytesMut::with_capacity(body.len() + 16);
    codec::put_message(&mut msg, tag, |o| {
        for (code, v) in &out {
            o.put_u8(*code);
            o.put_slice(v);
            o.put_u8(0);
        }
        o.put_u8(0);
    });
    Masked {
        message: Some(msg),
        text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_tails_and_bytes_are_cut() {
        let r = |t: &str, ids: &[&str]| {
            let ids: Vec<&[u8]> = ids.iter().map(|s| s.as_bytes()).collect();
            String::from_utf8(redact_values(t.as_bytes(), &ids)).unwrap()
        };
        assert_eq!(
            r(
                "invalid input syntax for type integer: \"ada@example.com\"",
                &[]
            ),
            "invalid input syntax for type integer: [REDACTED]"
        );
        assert_eq!(
            r(
                "new row for relation \"customers\" violates check constraint \"card_len\"",
                &["customers", "card_len"]
            ),
            "new row for relation \"customers\" violates check constraint \"card_len\""
        );
        assert_eq!(
            r(
                "value \"4111111111111111\" is out of range for type integer",
                &[]
            ),
            "value \"[REDACTED]\" is out of range for type integer"
        );
        assert_eq!(
            r(
                "character with byte sequence 0xe2 0x82 0xac in encoding \"UTF8\" has no equivalent",
                &[]
            ),
            "character with byte sequence 0x[REDACTED] 0x[REDACTED] 0x[REDACTED] in encoding \"[REDACTED]\" has no equivalent"
        );
        assert_eq!(r("unterminated \"abc", &[]), "unterminated \"[REDACTED]");
        assert_eq!(r("division by zero", &[]), "division by zero");
        // get_byte(…, ascii(substr(email, 1, 1))): the index is a character of the value.
        assert_eq!(
            r("index 97 out of valid range, 0..0", &[]),
            "index [REDACTED] out of valid range, [REDACTED]..[REDACTED]"
        );
        assert_eq!(
            r("value too long for type character varying(20)", &[]),
            "value too long for type character varying([REDACTED])"
        );
        assert_eq!(
            r("integer out of range for int4", &[]),
            "integer out of range for int4"
        );
        // A German server: `ungültige Eingabesyntax für Typ integer: »ada@example.com«`.
        assert_eq!(
            r(
                "ungültige Eingabesyntax für Typ integer: »ada@example.com«",
                &[]
            ),
            "[REDACTED]"
        );
    }
    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (c, v) in fields {
            b.push(*c);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    /// Message, detail, hint and where (context) of a notice or error: values cut when the
    /// command touches a masked column, detectors always; structural fields kept.
    #[test]
    fn notice_and_error_fields_are_masked() {
        use crate::mask::tests::{customer_masker, names};
        use crate::model::Facts;
        let masker = customer_masker();
        let cmd = Cmd::new(
            std::sync::Arc::from("SELECT 1"),
            names(&["email", "card", "secrets"]),
            false,
            std::sync::Arc::new(Facts::default()),
        );
        let raw = body(&[
            (b'S', "NOTICE"),
            (b'C', "00000"),
            (b'M', "value \"ada@example.com\" noted: ada@example.com"),
            (
                b'D',
                "Failing row contains (1, ada@example.com, 4111111111111111).",
            ),
            (b'H', "check \"4111111111111111\""),
            (
                b'W',
                "PL/pgSQL function f() line 3 at RAISE: AKIAIOSFODNN7EXAMPLE",
            ),
            (b't', "customers"),
        ]);
        for tag in [b'N', b'E'] {
            for touched in [true, false] {
                let m = mask(tag, &raw, &masker, &cmd, touched);
                let msg = m.message.expect("changed");
                assert_eq!(msg[0], tag);
                let text = String::from_utf8_lossy(&msg);
                for secret in [
                    "ada@example.com",
                    "4111111111111111",
                    "AKIAIOSFODNN7EXAMPLE",
                ] {
                    assert!(!text.contains(secret), "{touched}: {text}");
                    assert!(!m.text.contains(secret), "{touched}: {}", m.text);
                }
                assert!(
                    text.contains("customers") && text.contains("NOTICE"),
                    "{text}"
                );
            }
        }
        // Nothing to mask: the message goes through unchanged.
        let plain = body(&[(b'S', "NOTICE"), (b'M', "nothing here")]);
        assert!(mask(b'N', &plain, &masker, &cmd, true).message.is_none());
        // A function's own message (`RAISE EXCEPTION '% is invalid', email`) quotes nothing:
        // replaced whole when the command touches a masked column.
        let raised = body(&[
            (b'S', "ERROR"),
            (b'C', "P0001"),
            (b'M', "ada#example,com is invalid"),
        ]);
        let m = mask(b'E', &raised, &masker, &cmd, true);
        let text = String::from_utf8_lossy(&m.message.expect("changed")).into_owned();
        assert!(!text.contains("ada#example"), "{text}");
        assert!(text.contains("P0001"), "{text}");
    }
}
