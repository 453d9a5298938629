//! Writing replacements: redaction, partial (keep the last four), keyed hash.

use bytes::{BufMut, BytesMut};

use super::MaskError;

/// What full redaction writes in place of a value or span.
pub const REDACTED_TEXT: &str = "[REDACTED]";
/// [`REDACTED_TEXT`] as bytes.
pub const REDACTED: &[u8] = REDACTED_TEXT.as_bytes();

/// Hex characters of the keyed hash written by the hash style (64 bits of HMAC-SHA256).
pub const HASH_HEX_LEN: usize = 16;

/// Shortest key accepted for the hash style.
pub const MIN_KEY_LEN: usize = 16;

/// The HMAC-SHA256 key; ring precomputes the key pads once.
#[derive(Clone)]
pub(crate) struct Hasher(Option<ring::hmac::Key>);

impl Hasher {
    pub(crate) fn new(key: &[u8]) -> Result<Self, MaskError> {
        if key.is_empty() {
            return Ok(Self(None));
        }
        if key.len() < MIN_KEY_LEN {
            return Err(MaskError::WeakKey { len: key.len() });
        }
        Ok(Self(Some(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            key,
        ))))
    }

    pub(crate) fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// Writes the first 64 bits of HMAC-SHA256(key, value) as lower-case hex. Not domain
    /// separated by rule or column on purpose: the same value hashes the same everywhere, so
    /// masked columns still join.
    pub(crate) fn write(&self, value: &[u8], out: &mut BytesMut) {
        const HEXD: &[u8; 16] = b"0123456789abcdef";
        // `new` refuses hash rules without a key; an unkeyed hasher here would be a bug, and
        // redaction is the safe fallback.
        let Some(key) = &self.0 else {
            out.put_slice(REDACTED);
            return;
        };
        let tag = ring::hmac::sign(key, value);
        let tag = tag.as_ref();
        let mut hex = [0u8; HASH_HEX_LEN];
        for (k, &b) in tag[..HASH_HEX_LEN / 2].iter().enumerate() {
            hex[2 * k] = HEXD[usize::from(b >> 4)];
            hex[2 * k + 1] = HEXD[usize::from(b & 15)];
        }
        out.put_slice(&hex);
    }
}

static SHAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_punctuation() || b.is_ascii_whitespace();
        i += 1;
    }
    t
};

/// Characters that partial masking keeps in place so the shape stays readable.
#[inline(always)]
fn is_shape(b: u8) -> bool {
    SHAPE[usize::from(b)]
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Replaces every character but punctuation and spaces with `*`, keeping the last four such
/// characters when at least four others are hidden (so a short value is hidden whole).
pub(crate) fn write_partial(value: &[u8], out: &mut BytesMut) {
    const KEEP: usize = 4;
    if value.is_ascii() {
        // One byte per character: copy, then star the hidden bytes in place.
        let start = out.len();
        out.put_slice(value);
        let written = &mut out[start..];
        let total = written.iter().filter(|&&b| !is_shape(b)).count();
        let mut hide = if total >= 2 * KEEP {
            total - KEEP
        } else {
            total
        };
        for b in written.iter_mut() {
            if hide == 0 {
                break;
            }
            if !is_shape(*b) {
                *b = b'*';
                hide -= 1;
            }
        }
        return;
    }
    let mut total = 0usize;
    let mut k = 0;
    while k < value.len() {
        let step = utf8_len(value[k]).min(value.len() - k);
        if step > 1 || !is_shape(value[k]) {
            total += 1;
        }
        k += step;
    }
    let keep_from = if total >= 2 * KEEP {
        total - KEEP
    } else {
        total
    };
    let mut seen = 0usize;
    let mut k = 0;
    while k < value.len() {
        let step = utf8_len(value[k]).min(value.len() - k);
        if step == 1 && is_shape(value[k]) {
            out.put_u8(value[k]);
        } else {
            if seen >= keep_from {
                out.put_slice(&value[k..k + step]);
            } else {
                out.put_u8(b'*');
            }
            seen += 1;
        }
        k += step;
    }
}

/// Writes `s` as a JSON string literal, so a masked json/jsonb value stays valid JSON. Runs
/// that need no escape are copied whole: this sits on the JSON masking hot path, where a byte
/// at a time cost most of the throughput.
pub(crate) fn write_json_string(s: &[u8], out: &mut BytesMut) {
    const HEXD: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.put_u8(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        out.put_slice(&s[start..i]);
        start = i + 1;
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            _ => out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEXD[usize::from(b >> 4)],
                HEXD[usize::from(b & 15)],
            ]),
        }
    }
    out.put_slice(&s[start..]);
    out.put_u8(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls_only() {
        let mut out = BytesMut::new();
        write_json_string(b"plain", &mut out);
        write_json_string(b"", &mut out);
        write_json_string(b"a\"b\\c\n\x01\x1f \xc3\xa9", &mut out);
        assert_eq!(
            &out[..],
            b"\"plain\"\"\"\"a\\\"b\\\\c\\u000a\\u0001\\u001f \xc3\xa9\""
        );
        // What a JSON parser reads back is the original text.
        let raw = "a\"b\\c\n\u{1}\u{1f} é";
        let mut one = BytesMut::new();
        write_json_string(raw.as_bytes(), &mut one);
        assert_eq!(serde_json::from_slice::<String>(&one).unwrap(), raw);
    }
}
