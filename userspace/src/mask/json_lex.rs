//! A push lexer for JSON documents that stream through the masker: tokens borrowed from the
//! bytes that arrived, a token cut by a chunk boundary reported as "more" (the caller keeps
//! its bytes and feeds them again with the next chunk), the whole grammar checked (RFC 8259:
//! structure, string escapes and UTF-8, number syntax, literals), nesting bounded.
//!
//! Why not a crate: the masker needs tokens in place, as raw bytes it can copy out unchanged,
//! from a parser that is fed arbitrary chunks. actson (a byte at a time) reached 70–80 MiB/s
//! and json-event-parser's low-level parser ~115 MiB/s, most of it in the parser
//! (docs/decisions/http-engine.md); the streaming JSON crates that remain pull from a reader.
//! Here a string's end, escapes, control characters and non-ASCII bytes are found in one pass
//! eight bytes at a time; only strings holding non-ASCII bytes go through the standard
//! library's UTF-8 validation, so unchanged text costs a scan and a copy.

use memchr::memchr;

/// One token. Strings and keys are their bytes as written, quotes included (so an unchanged
/// one is copied out in one piece); `escaped` says whether [`unescape`] is needed to read
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token<'a> {
    StartObject,
    EndObject,
    StartArray,
    EndArray,
    Key { quoted: &'a [u8], escaped: bool },
    String { quoted: &'a [u8], escaped: bool },
    Number(&'a [u8]),
    True,
    False,
    Null,
}

/// What one call to [`Lexer::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lexed<'a> {
    /// A token, where it starts in the input (after whitespace and separators), and the bytes
    /// of the input consumed.
    Token(Token<'a>, usize, usize),
    /// The input ends inside a token (or is all whitespace): feed the rest again with more.
    More(usize),
}

/// A whole string: its bytes with the quotes, whether it holds escapes, and the input offset
/// after it.
struct Str<'a> {
    quoted: &'a [u8],
    escaped: bool,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value: the document's start, after a colon, after a comma in an array.
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After a comma in an object.
    Key,
    Colon,
    CommaOrEnd,
    /// The top-level value is complete: only whitespace may follow.
    Done,
}

/// The lexer's state between chunks.
#[derive(Debug)]
pub(super) struct Lexer {
    /// Open containers, `true` for an object.
    stack: Vec<bool>,
    max_depth: usize,
    expect: Expect,
    /// An unfinished string at the input's start: bytes after its opening quote already
    /// scanned (never inside an escape), and whether they held an escape.
    resume: usize,
    resume_escaped: bool,
    /// Whether they held a byte ≥ 0x80 (the string's UTF-8 is then checked when it ends).
    resume_non_ascii: bool,
    /// Where escaped strings are resolved to check them.
    check: Vec<u8>,
}

impl Lexer {
    pub(super) fn new(max_depth: usize) -> Self {
        Self {
            stack: Vec::new(),
            max_depth,
            expect: Expect::Value,
            resume: 0,
            resume_escaped: false,
            resume_non_ascii: false,
            check: Vec::new(),
        }
    }

    /// Whether the top-level value is complete.
    pub(super) fn done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// The next token of `input`. `ending`: no more bytes will come, so a number or literal
    /// at the end is complete and anything unfinished is an error.
    // Inlined into the masker's loop: one call per token, whose result would otherwise go
    // through memory.
    #[inline]
    pub(super) fn next<'a>(&mut self, input: &'a [u8], ending: bool) -> Result<Lexed<'a>, String> {
        let mut i = 0;
        loop {
            while i < input.len() && is_ws(input[i]) {
                i += 1;
            }
            let Some(&b) = input.get(i) else {
                if ending && self.expect != Expect::Done {
                    return Err("the document ended inside a value".into());
                }
                return Ok(Lexed::More(i));
            };
            match self.expect {
                Expect::Done => {
                    return Err(format!("{} after the document's end", show(b)));
                }
                Expect::Colon if b == b':' => {
                    self.expect = Expect::Value;
                    i += 1;
                }
                Expect::Colon => return Err(format!("expected `:`, found {}", show(b))),
                Expect::CommaOrEnd => match (b, self.stack.last()) {
                    (b',', Some(&object)) => {
                        self.expect = if object { Expect::Key } else { Expect::Value };
                        i += 1;
                    }
                    (b'}', Some(true)) => return Ok(self.close(Token::EndObject, i)),
                    (b']', Some(false)) => return Ok(self.close(Token::EndArray, i)),
                    _ => {
                        return Err(format!(
                            "expected `,` or the container's end, found {}",
                            show(b)
                        ));
                    }
                },
                Expect::KeyOrEnd if b == b'}' => return Ok(self.close(Token::EndObject, i)),
                Expect::ValueOrEnd if b == b']' => return Ok(self.close(Token::EndArray, i)),
                Expect::KeyOrEnd | Expect::Key => {
                    if b != b'"' {
                        return Err(format!("expected a key, found {}", show(b)));
                    }
                    return match self.string(input, i, ending)? {
                        Some(Str {
                            quoted,
                            escaped,
                            end,
                        }) => {
                            self.expect = Expect::Colon;
                            Ok(Lexed::Token(Token::Key { quoted, escaped }, i, end))
                        }
                        None => Ok(Lexed::More(i)),
                    };
                }
                Expect::Value | Expect::ValueOrEnd => return self.value(input, i, b, ending),
            }
        }
    }

    fn close<'a>(&mut self, token: Token<'a>, at: usize) -> Lexed<'a> {
        self.stack.pop();
        self.after_value();
        Lexed::Token(token, at, at + 1)
    }

    fn after_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        };
    }

    fn value<'a>(
        &mut self,
        input: &'a [u8],
        i: usize,
        b: u8,
        ending: bool,
    ) -> Result<Lexed<'a>, String> {
        let token = match b {
            b'{' | b'[' => {
                if self.stack.len() >= self.max_depth {
                    return Err(format!("nested deeper than {}", self.max_depth));
                }
                let object = b == b'{';
                self.stack.push(object);
                self.expect = if object {
                    Expect::KeyOrEnd
                } else {
                    Expect::ValueOrEnd
                };
                let t = if object {
                    Token::StartObject
                } else {
                    Token::StartArray
                };
                return Ok(Lexed::Token(t, i, i + 1));
            }
            b'"' => match self.string(input, i, ending)? {
                Some(Str {
                    quoted,
                    escaped,
                    end,
                }) => (Token::String { quoted, escaped }, end),
                None => return Ok(Lexed::More(i)),
            },
            b'-' | b'0'..=b'9' => {
                let len = input[i..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(input.len() - i);
                if i + len == input.len() && !ending {
                    return Ok(Lexed::More(i));
                }
                let n = &input[i..i + len];
                if !valid_number(n) {
                    return Err(format!("invalid number `{}`", String::from_utf8_lossy(n)));
                }
                (Token::Number(n), i + len)
            }
            b't' | b'f' | b'n' => {
                let (word, t): (&[u8], _) = match b {
                    b't' => (b"true", Token::True),
                    b'f' => (b"false", Token::False),
                    _ => (b"null", Token::Null),
                };
                let have = &input[i..input.len().min(i + word.len())];
                if have.len() < word.len() && word.starts_with(have) && !ending {
                    return Ok(Lexed::More(i));
                }
                if have != word {
                    return Err(format!("expected `{}`", String::from_utf8_lossy(word)));
                }
                (t, i + word.len())
            }
            _ => return Err(format!("expected a value, found {}", show(b))),
        };
        self.after_value();
        Ok(Lexed::Token(token.0, i, token.1))
    }

    /// The string whose opening quote is at `start`: its bytes with the quotes, whether it has
    /// escapes, and where it ends (after the closing quote); `None` when the input ends first.
    fn string<'a>(
        &mut self,
        input: &'a [u8],
        start: usize,
        ending: bool,
    ) -> Result<Option<Str<'a>>, String> {
        let body = start + 1;
        let mut k = body + self.resume;
        let mut escaped = self.resume_escaped;
        let mut non_ascii = self.resume_non_ascii;
        let close = loop {
            match string_stop(input, k, !non_ascii) {
                Some(p) if input[p] == b'"' => break p,
                Some(p) if input[p] == b'\\' && p + 1 < input.len() => {
                    escaped = true;
                    k = p + 2;
                }
                Some(p) if input[p] < 0x20 => {
                    return Err(format!("control character 0x{:02x} in a string", input[p]));
                }
                Some(p) if input[p] >= 0x80 => {
                    // Checked whole at the end; stop looking for such bytes.
                    non_ascii = true;
                    k = p + 1;
                }
                found => {
                    if ending {
                        return Err("the document ended inside a string".into());
                    }
                    // Resume before a trailing backslash, whose escape is not complete.
                    self.resume = found.unwrap_or(input.len()) - body;
                    self.resume_escaped = escaped;
                    self.resume_non_ascii = non_ascii;
                    return Ok(None);
                }
            }
        };
        self.resume = 0;
        self.resume_escaped = false;
        self.resume_non_ascii = false;
        let raw = &input[body..close];
        if non_ascii && std::str::from_utf8(raw).is_err() {
            return Err("a string that is not UTF-8".into());
        }
        if escaped {
            // Escapes are rare: checking them by resolving them costs little.
            unescape(raw, &mut self.check)?;
        }
        Ok(Some(Str {
            quoted: &input[start..=close],
            escaped,
            end: close + 1,
        }))
    }
}

/// The first byte of `s` at or after `k` that a string's scan must look at: `"`, `\\`, a
/// control character, or (`high`) a byte ≥ 0x80. Eight bytes at a time: strings are mostly
/// short, where `memchr2` plus separate control and UTF-8 passes cost more than one SWAR pass.
#[inline]
fn string_stop(s: &[u8], mut k: usize, high: bool) -> Option<usize> {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = L * 0x80;
    let hi = if high { H } else { 0 };
    while let Some(w) = s.get(k..).and_then(|r| r.first_chunk::<8>()) {
        let x = u64::from_le_bytes(*w);
        let q = x ^ (L * u64::from(b'"'));
        let b = x ^ (L * u64::from(b'\\'));
        // "haszero"/"hasless" from Bit Twiddling Hacks: a borrow can only flag lanes above a
        // true hit, so the lowest flagged lane is exact.
        let m = ((q.wrapping_sub(L) & !q)
            | (b.wrapping_sub(L) & !b)
            | (x.wrapping_sub(L * 0x20) & !x)
            | (x & hi))
            & H;
        if m != 0 {
            return Some(k + (m.trailing_zeros() / 8) as usize);
        }
        k += 8;
    }
    let tail = s.get(k..).unwrap_or_default();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (high && c >= 0x80))
        .map(|off| k + off)
}

/// JSON's insignificant whitespace (RFC 8259).
#[inline]
pub(super) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn valid_number(n: &[u8]) -> bool {
    let digits = |s: &[u8], i: usize| s[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(n.first() == Some(&b'-'));
    match n.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(n, i),
        _ => return false,
    }
    if n.get(i) == Some(&b'.') {
        let d = digits(n, i + 1);
        if d == 0 {
            return false;
        }
        i += 1 + d;
    }
    if matches!(n.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(n.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let d = digits(n, i);
        if d == 0 {
            return false;
        }
        i += d;
    }
    i == n.len()
}

/// The text of a string's bytes between its quotes (which [`Lexer`] found free of control characters and
/// valid UTF-8, and whose escapes it checked with this function), escapes resolved, into
/// `out`. An invalid escape or a lone surrogate is an error.
pub(super) fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut i = 0;
    while let Some(off) = memchr(b'\\', &raw[i..]) {
        out.extend_from_slice(&raw[i..i + off]);
        let p = i + off;
        let Some(&c) = raw.get(p + 1) else {
            return Err("a string ends in a lone backslash".into());
        };
        i = p + 2;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(raw, i)?;
                i += 4;
                let cp = match hi {
                    0xD800..=0xDBFF => {
                        if raw.get(i..i + 2) != Some(b"\\u") {
                            return Err("a lone surrogate in a string".into());
                        }
                        let lo = hex4(raw, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err("a lone surrogate in a string".into());
                        }
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err("a lone surrogate in a string".into()),
                    _ => hi,
                };
                let ch = char::from_u32(cp).ok_or("an invalid \\u escape")?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            other => return Err(format!("invalid escape `\\{}`", other.escape_ascii())),
        };
        out.push(simple);
    }
    out.extend_from_slice(&raw[i..]);
    Ok(())
}

fn hex4(raw: &[u8], i: usize) -> Result<u32, String> {
    let h = raw
        .get(i..i + 4)
        .ok_or("a short \\u escape")?
        .iter()
        .try_fold(0u32, |acc, &c| {
            let d = (c as char).to_digit(16)?;
            Some(acc << 4 | d)
        });
    h.ok_or_else(|| "an invalid \\u escape".into())
}

fn show(b: u8) -> String {
    format!("`{}`", b.escape_ascii())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every token of `doc` fed in pieces of `step` bytes, as the masker feeds them.
    fn lex(doc: &[u8], step: usize) -> Result<Vec<String>, String> {
        let mut lx = Lexer::new(64);
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut chunks: Vec<&[u8]> = doc.chunks(step.max(1)).collect();
        if chunks.is_empty() {
            chunks.push(b"");
        }
        let last = chunks.len() - 1;
        for (n, chunk) in chunks.into_iter().enumerate() {
            pending.extend_from_slice(chunk);
            let mut used = 0;
            loop {
                match lx.next(&pending[used..], n == last)? {
                    Lexed::Token(t, _, c) => {
                        out.push(format!("{t:?}"));
                        used += c;
                    }
                    Lexed::More(c) => {
                        used += c;
                        break;
                    }
                }
            }
            pending.drain(..used);
        }
        if !lx.done() {
            return Err("incomplete".into());
        }
        Ok(out)
    }

    #[test]
    fn tokens_are_the_same_whatever_the_chunking() {
        let doc = br#" {"a\"b": [1, -0.5e+3, "x\\y\u00e9", true, false, null, {}, []], "": "" } "#;
        let whole = lex(doc, doc.len()).unwrap();
        assert_eq!(whole.len(), 17, "{whole:?}");
        for step in 1..doc.len() {
            assert_eq!(lex(doc, step).unwrap(), whole, "step {step}");
        }
        for top in [&b"12"[..], b"\"s\"", b"true", b"null", b"-0"] {
            for step in 1..=top.len() {
                assert_eq!(lex(top, step).unwrap().len(), 1);
            }
        }
    }

    #[test]
    fn long_strings_lex_the_same_whatever_the_chunking() {
        // Strings longer than the eight-byte scan, with escapes, multi-byte UTF-8 (cut by
        // chunk boundaries in every place) and a quote escaped right at a word's edge.
        let doc = "[\"0123456\\\"89abcdef\\\\\", \"Zoë Müller naïve café ☕ 😀 and more\", \
                   \"abcdefgh\\u00e9ijklmnop\\ud83d\\ude00qrstuvwx\", \"\", \"abcdefg\\n\"]";
        let whole = lex(doc.as_bytes(), doc.len()).unwrap();
        assert_eq!(whole.len(), 7, "{whole:?}");
        for step in 1..doc.len() {
            assert_eq!(lex(doc.as_bytes(), step).unwrap(), whole, "step {step}");
        }
    }

    #[test]
    fn the_string_scan_stops_where_a_byte_loop_does() {
        let naive = |s: &[u8], k: usize, high: bool| {
            (k..s.len()).find(|&i| {
                let c = s[i];
                c == b'"' || c == b'\\' || c < 0x20 || (high && c >= 0x80)
            })
        };
        let mut buf = [b'a'; 24];
        for c1 in 0..=255u8 {
            for c2 in [0u8, 0x1f, 0x20, b'"', b'\\', b'a', 0x7f, 0x80, 0xc3, 0xff] {
                for p in 0..buf.len() - 1 {
                    buf.fill(b'a');
                    buf[p] = c1;
                    buf[p + 1] = c2;
                    for k in [0, 1, 7, 8, 9, p, p + 1] {
                        for high in [false, true] {
                            assert_eq!(
                                string_stop(&buf, k, high),
                                naive(&buf, k, high),
                                "{c1:#x} {c2:#x} at {p} from {k} high {high}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_documents_are_errors_in_any_chunking() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"[,1]",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"[1 2]",
            b"1 2",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"[-]",
            b"[+1]",
            b"[tru]",
            b"[nul]",
            b"[truex]",
            b"\"a\x01b\"",
            b"\"\xff\"",
            b"\"\\x\"",
            b"\"abcdefghijklmn\x01opq\"",
            b"\"abcdefghij\xc3\xa9klmn\xffo\"",
            b"\"abcdefghij\xe2\x98\"",
            b"\"abcdefghijklmn\\q\"",
            b"\"\\u12\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"unterminated",
            b"[1}",
            b"{\"a\":1]",
            b"]",
        ] {
            for step in [1, 2, bad.len().max(1)] {
                assert!(
                    lex(bad, step).is_err(),
                    "{} (step {step})",
                    bad.escape_ascii()
                );
            }
        }
        let deep = "[".repeat(65);
        assert!(lex(deep.as_bytes(), 7).is_err());
    }

    #[test]
    fn escapes_resolve_like_a_json_parser() {
        let raw = br#"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00"#;
        let mut out = Vec::new();
        unescape(raw, &mut out).unwrap();
        assert!(unescape(b"ab\\", &mut Vec::new()).is_err());
        let want: String = serde_json::from_slice(&[&b"\""[..], raw, b"\""].concat()).unwrap();
        assert_eq!(out, want.as_bytes());
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for ok in ["0", "-0", "12", "1.5", "1e9", "1E+9", "-1.25e-3"] {
            assert!(valid_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".1", "1e", "1e+", "--1", "1-2", "1.2.3",
        ] {
            assert!(!valid_number(bad.as_bytes()), "{bad}");
        }
    }
}
