//! The JSON entry point: documents (HTTP and Kubernetes bodies) rewritten as they stream
//! through. Values at a rule's JSON path are masked whole (an object or array there becomes
//! one masked string); every other string, and every number, goes through the detectors.
//!
//! The document is lexed push-style ([`super::json_lex`] over the bytes that arrived: tokens
//! out, a token cut by a chunk boundary waits for the next chunk), so a document of any size
//! streams with bounded memory and a value split across chunks is whole when it is judged.
//! Tokens are judged in place; what no rule changes is copied out as it was written (escapes
//! included), what a rule changes is written as a new JSON string. Insignificant whitespace
//! is dropped, so a caller must not forward the original length. A document that is not
//! JSON, nests deeper than [`MAX_DEPTH`] or holds a single token longer than [`MAX_TOKEN`] is
//! refused with an error: nothing more of it should be sent.

use bytes::{BufMut, BytesMut};

use super::detect::Match;
use super::json_lex::{Lexed, Lexer, Token, is_ws, unescape};
use super::{Active, MaskCounts, MaskError, MaskOutcome, Masker, RuleId, RuleSet};
use crate::config::policy::MaskStyle;

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 512;
/// Longest single token (a string, a number) accepted.
pub const MAX_TOKEN: usize = 16 * 1024 * 1024;

/// A JSON path as masking rules write it: `$`, then `.key`, `['key']`, `.*`, `[n]`, `[*]`,
/// and `..` (any depth) before a key or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(u64),
    /// `.*` or `[*]`: any key or index.
    Any,
    /// `..`: zero or more levels.
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A key, by its id among the keys the paths name ([`NO_KEY`]: none of them).
    Key(u32),
    Index(u64),
}

/// The id of a key no path names.
const NO_KEY: u32 = u32::MAX;

/// A path's segment with its key replaced by its id in the masker's key table, so that a
/// document's keys are compared with the paths' once, where they are read, and never copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    Key(u32),
    Index(u64),
    Any,
    Descend,
}

/// A path compiled against the masker's key table (built once, with the rules).
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    pats: Vec<Pat>,
    /// Without `..` a path matches only at its own depth.
    descends: bool,
}

impl Compiled {
    /// Compiles `path`, adding the keys it names to `keys` (each key once).
    pub(super) fn new(path: &JsonPath, keys: &mut Vec<Box<[u8]>>) -> Self {
        let pats: Vec<Pat> = path
            .0
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => {
                    let id = keys
                        .iter()
                        .position(|known| **known == *k.as_bytes())
                        .unwrap_or_else(|| {
                            keys.push(k.as_bytes().into());
                            keys.len() - 1
                        });
                    Pat::Key(u32::try_from(id).unwrap_or(NO_KEY - 1))
                }
                Seg::Index(n) => Pat::Index(*n),
                Seg::Any => Pat::Any,
                Seg::Descend => Pat::Descend,
            })
            .collect();
        let descends = pats.contains(&Pat::Descend);
        Compiled { pats, descends }
    }

    fn matches(&self, steps: &[Step]) -> bool {
        if !self.descends && self.pats.len() != steps.len() {
            return false;
        }
        fn go(pats: &[Pat], steps: &[Step]) -> bool {
            match pats.split_first() {
                None => steps.is_empty(),
                Some((Pat::Descend, rest)) => (0..=steps.len()).any(|i| go(rest, &steps[i..])),
                Some((pat, rest)) => match steps.split_first() {
                    None => false,
                    Some((step, after)) => {
                        let ok = match (pat, step) {
                            (Pat::Any, _) => true,
                            (Pat::Key(k), Step::Key(s)) => k == s,
                            (Pat::Index(n), Step::Index(i)) => n == i,
                            _ => false,
                        };
                        ok && go(rest, after)
                    }
                },
            }
        }
        go(&self.pats, steps)
    }
}

impl JsonPath {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("JSON path `{s}`: {why}");
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with `$`"))?;
        let b = rest.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    if b.get(i) == Some(&b'.') {
                        i += 1;
                        segs.push(Seg::Descend);
                    }
                    if b.get(i) == Some(&b'*') {
                        i += 1;
                        segs.push(Seg::Any);
                        continue;
                    }
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    if start == i {
                        return Err(bad("empty key"));
                    }
                    segs.push(Seg::Key(rest[start..i].to_owned()));
                }
                b'[' => {
                    let close = rest[i..]
                        .find(']')
                        .map(|c| c + i)
                        .ok_or_else(|| bad("unclosed `[`"))?;
                    let inner = rest[i + 1..close].trim();
                    if inner == "*" {
                        segs.push(Seg::Any);
                    } else if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                    {
                        segs.push(Seg::Key(q.to_owned()));
                    } else {
                        let n = inner
                            .parse::<u64>()
                            .map_err(|_| bad("`[…]` holds a number, `*` or a quoted key"))?;
                        segs.push(Seg::Index(n));
                    }
                    i = close + 1;
                }
                _ => return Err(bad("expected `.` or `[`")),
            }
        }
        if segs.last() == Some(&Seg::Descend) {
            return Err(bad("`..` must be followed by a key or `*`"));
        }
        Ok(JsonPath(segs))
    }
}

/// One open container.
#[derive(Debug)]
struct Frame {
    object: bool,
}

/// Masks one JSON document. Feed it chunks in order; call [`finish`](Self::finish) at the end.
pub struct JsonMasker {
    masker: Masker,
    active: Active,
    /// Path rules among the active ones, in configuration order; their keys index the
    /// masker's key table (`Inner::json_keys`), as a step's `Step::Key` does.
    paths: Vec<(u8, Compiled)>,
    lexer: Lexer,
    /// Bytes fed and not consumed by the parser yet (a token cut by a chunk boundary).
    pending: Vec<u8>,
    frames: Vec<Frame>,
    /// Where the next value sits (keys and indices from the root).
    steps: Vec<Step>,
    /// Masking a whole container: the frame depth it started at.
    skipping: Option<usize>,
    passthrough: bool,
    /// Bytes fed so far, and whether the top-level value is complete.
    fed: u64,
    complete: bool,
    matches: Vec<Match>,
    scratch: BytesMut,
    /// An escaped string's text.
    unescaped: Vec<u8>,
    totals: MaskCounts,
}

impl std::fmt::Debug for JsonMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonMasker")
            .field("depth", &self.frames.len())
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker for one JSON document under the `active` rules (their JSON paths and
    /// detectors). An unknown rule name is an error.
    pub fn json(&self, active: &[String]) -> Result<JsonMasker, MaskError> {
        let act = self.active(active)?;
        let paths: Vec<(u8, Compiled)> = self
            .inner
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| act.rules.contains(RuleId(*i as u8)))
            .flat_map(|(i, r)| r.paths.iter().map(move |p| (i as u8, p.clone())))
            .collect();
        Ok(JsonMasker {
            masker: self.clone(),
            passthrough: paths.is_empty() && act.detectors.is_empty(),
            active: act,
            paths,
            lexer: Lexer::new(MAX_DEPTH),
            pending: Vec::new(),
            frames: Vec::new(),
            steps: Vec::new(),
            skipping: None,
            fed: 0,
            complete: false,
            matches: Vec::new(),
            scratch: BytesMut::new(),
            unescaped: Vec::new(),
            totals: MaskCounts::default(),
        })
    }
}

impl JsonMasker {
    /// Whether nothing can change (the caller may forward the body as is).
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Counts of everything masked so far; resets them.
    pub fn take_counts(&mut self) -> MaskCounts {
        std::mem::take(&mut self.totals)
    }

    /// Parses the next chunk, appending the rewritten document so far to `out`. An error means
    /// the document is refused: send nothing more of it.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        if self.passthrough {
            out.put_slice(chunk);
            return Ok(());
        }
        self.fed += chunk.len() as u64;
        if self.pending.is_empty() {
            // The common case: parse the chunk in place; keep only the cut token's bytes.
            let used = self.drain(chunk, false, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let used = self.drain(&buf, false, out)?;
            buf.drain(..used);
            self.pending = buf;
        }
        if self.pending.len() > MAX_TOKEN {
            return Err(MaskError::Json(format!(
                "a single value longer than {MAX_TOKEN} bytes"
            )));
        }
        Ok(())
    }

    /// The end of the document: anything incomplete is an error.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        if self.passthrough || self.fed == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.pending);
        self.drain(&buf, true, out)?;
        if !self.frames.is_empty() || !self.complete {
            return Err(MaskError::Json("the document ended inside a value".into()));
        }
        Ok(())
    }

    /// Runs the parser over `input` until it needs more bytes (or, `ending`, to the end of the
    /// document); returns how many bytes of `input` it consumed.
    ///
    /// The output is the input without insignificant whitespace, with masked values replaced,
    /// so unchanged tokens are not copied one by one: `input[run..used]` (tokens and the
    /// separators between them, no whitespace) is owed to `out` and copied in one piece when
    /// a value is replaced, whitespace is met, or the input ends.
    fn drain(
        &mut self,
        input: &[u8],
        ending: bool,
        out: &mut BytesMut,
    ) -> Result<usize, MaskError> {
        let mut used = 0;
        let mut run = 0;
        loop {
            match self.lexer.next(&input[used..], ending) {
                Ok(Lexed::Token(token, at, consumed)) => {
                    let end = used + consumed;
                    if self.skipping.is_some() {
                        self.skip(token);
                        run = end;
                    } else {
                        let start = used + at;
                        // Between tokens: at most one separator, unless whitespace is there.
                        let gap = &input[used..start];
                        if gap.len() > 1 || gap.first().is_some_and(|&c| is_ws(c)) {
                            out.put_slice(&input[run..used]);
                            put_without_ws(gap, out);
                            run = start;
                        }
                        if self.on_token(token, &input[run..start], out)? {
                            run = end;
                        }
                    }
                    used = end;
                    self.complete = self.lexer.done();
                }
                Ok(Lexed::More(consumed)) => {
                    out.put_slice(&input[run..used]);
                    if self.skipping.is_none() {
                        // Separators read before the cut; inside a masked container, none.
                        put_without_ws(&input[used..used + consumed], out);
                    }
                    return Ok(used + consumed);
                }
                Err(e) => return Err(MaskError::Json(e)),
            }
        }
    }

    /// A rule whose path covers the value about to start.
    fn path_rule(&self) -> Option<u8> {
        self.paths
            .iter()
            .find(|(_, p)| p.matches(&self.steps))
            .map(|(r, _)| *r)
    }

    /// Moves an array's index before one of its values.
    fn value_start(&mut self) {
        if let Some(f) = self.frames.last()
            && !f.object
            && let Some(Step::Index(i)) = self.steps.last_mut()
        {
            *i = i.wrapping_add(1);
        }
    }

    /// A token inside a container masked whole: only its nesting matters.
    fn skip(&mut self, token: Token<'_>) {
        match token {
            Token::StartObject | Token::StartArray => self.frames.push(Frame { object: false }),
            Token::EndObject | Token::EndArray => {
                self.frames.pop();
                if Some(self.frames.len()) == self.skipping {
                    self.skipping = None;
                }
            }
            _ => {}
        }
    }

    /// Judges one token. Unchanged, it writes nothing (the caller copies it with its run) and
    /// returns `false`; replaced, it writes `before` (the run owed so far) and then the
    /// replacement, and returns `true`.
    fn on_token(
        &mut self,
        token: Token<'_>,
        before: &[u8],
        out: &mut BytesMut,
    ) -> Result<bool, MaskError> {
        match token {
            Token::Key { quoted, escaped } => {
                let mut text = std::mem::take(&mut self.unescaped);
                let key = token_text(quoted, escaped, &mut text)?;
                if !self.paths.is_empty()
                    && let Some(Step::Key(last)) = self.steps.last_mut()
                {
                    *last = self
                        .masker
                        .inner
                        .json_keys
                        .iter()
                        .position(|k| **k == *key)
                        .map_or(NO_KEY, |id| id as u32);
                }
                // Keys are data too (`{"alice@example.com": "admin"}`, a ConfigMap's keys):
                // the detectors read them as they read values. Most keys are short and
                // lower-case, without a byte any detector starts from: those are skipped
                // before the scan's set-up.
                let replaced = !self.active.detectors.is_empty()
                    && key.iter().any(|&b| super::detect::is_trigger(b))
                    && self.write_scanned(key, before, out, true);
                self.unescaped = text;
                Ok(replaced)
            }
            Token::StartObject | Token::StartArray => {
                self.value_start();
                let object = matches!(token, Token::StartObject);
                if let Some(rule) = self.path_rule() {
                    // The whole container is the masked value.
                    out.put_slice(before);
                    self.write_masked(rule, b"", out);
                    self.skipping = Some(self.frames.len());
                    self.frames.push(Frame { object });
                    return Ok(true);
                }
                self.frames.push(Frame { object });
                self.steps.push(if object {
                    Step::Key(NO_KEY)
                } else {
                    // Incremented to 0 by the first value.
                    Step::Index(u64::MAX)
                });
                Ok(false)
            }
            Token::EndObject | Token::EndArray => {
                self.frames.pop();
                self.steps.pop();
                Ok(false)
            }
            Token::String { quoted, escaped } => {
                self.value_start();
                let rule = self.path_rule();
                // An error ends the document, so the buffer lost with it does not matter.
                let mut text = std::mem::take(&mut self.unescaped);
                let value = token_text(quoted, escaped, &mut text)?;
                let replaced = match rule {
                    Some(rule) => {
                        out.put_slice(before);
                        self.write_masked(rule, value, out);
                        true
                    }
                    None => self.write_scanned(value, before, out, false),
                };
                self.unescaped = text;
                Ok(replaced)
            }
            Token::Number(number) => {
                self.value_start();
                Ok(match self.path_rule() {
                    Some(rule) => {
                        out.put_slice(before);
                        self.write_masked(rule, number, out);
                        true
                    }
                    None => self.write_scanned(number, before, out, false),
                })
            }
            Token::True | Token::False | Token::Null => {
                self.value_start();
                let literal: &[u8] = match token {
                    Token::True => b"true",
                    Token::False => b"false",
                    _ => b"null",
                };
                match self.path_rule() {
                    Some(rule) => {
                        out.put_slice(before);
                        self.write_masked(rule, literal, out);
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
        }
    }

    /// A value under a path rule: the rule's style over its text, as a JSON string (`null`
    /// for the null style).
    fn write_masked(&mut self, rule: u8, value: &[u8], out: &mut BytesMut) {
        self.totals.add(RuleSet::one(RuleId(rule)));
        let style = self.masker.style(rule);
        if style == MaskStyle::Null {
            out.put_slice(b"null");
            return;
        }
        self.scratch.clear();
        self.masker.write_style(style, value, &mut self.scratch);
        super::style::write_json_string(&self.scratch, out);
    }

    /// A string's text or a number through the detectors. Unchanged, nothing is written and
    /// `false` returned (the caller copies it as written); otherwise `before` and the masked
    /// value (a JSON string, or `null`) are written.
    /// A key (`key`) cannot be `null`: the null style writes it as `"[REDACTED]"`.
    fn write_scanned(
        &mut self,
        value: &[u8],
        before: &[u8],
        out: &mut BytesMut,
        key: bool,
    ) -> bool {
        self.scratch.clear();
        let mut matches = std::mem::take(&mut self.matches);
        let outcome = self.masker.scan_into(
            &self.active,
            b"",
            value,
            false,
            &mut matches,
            &mut self.scratch,
        );
        self.matches = matches;
        match outcome {
            MaskOutcome::Unchanged => return false,
            MaskOutcome::Replaced { rules } => {
                self.totals.add(rules);
                out.put_slice(before);
                super::style::write_json_string(&self.scratch, out);
            }
            MaskOutcome::Null { rule } => {
                self.totals.add(RuleSet::one(rule));
                out.put_slice(before);
                out.put_slice(if key { b"\"[REDACTED]\"" } else { b"null" });
            }
        }
        true
    }
}

/// A string token's text (`quoted`: with its quotes): as written, or unescaped into `buf`.
fn token_text<'a>(
    quoted: &'a [u8],
    escaped: bool,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], MaskError> {
    let raw = &quoted[1..quoted.len() - 1];
    if !escaped {
        return Ok(raw);
    }
    unescape(raw, buf).map_err(MaskError::Json)?;
    Ok(buf)
}

/// The separators among `gap` (bytes between two tokens), without the whitespace.
fn put_without_ws(gap: &[u8], out: &mut BytesMut) {
    for &c in gap {
        if !is_ws(c) {
            out.put_u8(c);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::{Detector, MaskRuleSpec};

    fn masker() -> Masker {
        let rule = |name: &str, paths: &[&str], detectors: &[Detector], style| MaskRuleSpec {
            name: name.into(),
            columns: Vec::new(),
            json_paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            detectors: detectors.to_vec(),
            style,
            except_groups: Vec::new(),
            computed: Default::default(),
            compared: Default::default(),
        };
        Masker::new(
            &[
                rule("emails", &["$.users[*].email"], &[], MaskStyle::Partial),
                rule(
                    "secrets",
                    &["$..password", "$.config.*"],
                    &[],
                    MaskStyle::Redact,
                ),
                rule(
                    "cards",
                    &[],
                    &[Detector::Card, Detector::Email],
                    MaskStyle::Redact,
                ),
            ],
            b"0123456789abcdef0123456789abcdef",
        )
        .unwrap()
    }

    fn all() -> Vec<String> {
        vec!["emails".into(), "secrets".into(), "cards".into()]
    }

    fn mask(chunks: &[&[u8]]) -> (serde_json::Value, u64) {
        let mut m = masker().json(&all()).unwrap();
        let mut out = BytesMut::new();
        for c in chunks {
            m.feed(c, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)));
        (v, m.take_counts().total())
    }

    const DOC: &str = r#"{"users": [{"id": 1, "email": "ada@example.com", "card": 4111111111111111},
        {"id": 2, "email": "bob@example.org", "note": "pays with 5500 0000 0000 0004"}],
        "config": {"token": "abc", "nested": {"x": [1,2]}},
        "deep": {"a": {"password": "hunter2"}}, "ok": true, "n": null, "f": 1.5e3}"#;

    #[test]
    fn paths_and_detectors_mask_a_document() {
        let (v, count) = mask(&[DOC.as_bytes()]);
        let s = v.to_string();
        for raw in [
            "ada@example.com",
            "bob@example.org",
            "4111111111111111",
            "5500 0000",
            "hunter2",
            "abc",
            "\"x\"",
        ] {
            assert!(!s.contains(raw), "{raw} leaked: {s}");
        }
        assert_eq!(v["users"][0]["id"], 1);
        assert_eq!(v["users"][1]["id"], 2);
        assert_eq!(v["ok"], true);
        assert!(v["n"].is_null());
        assert_eq!(v["f"], 1500.0);
        // Partial keeps the last four characters of the path-masked email.
        assert!(
            v["users"][0]["email"].as_str().unwrap().ends_with(".com"),
            "{s}"
        );
        // Whole containers under a path become one masked string.
        assert!(v["config"]["nested"].is_string(), "{s}");
        assert_eq!(count, 7, "{s}");
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let doc = DOC.as_bytes();
        let (whole, _) = mask(&[doc]);
        for split in 0..doc.len() {
            let (v, _) = mask(&[&doc[..split], &doc[split..]]);
            assert_eq!(v, whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(mask(&bytes).0, whole);
    }

    /// `doc` without the whitespace outside strings: what the masker writes when nothing in
    /// it is masked.
    fn squeeze(doc: &[u8]) -> Vec<u8> {
        let (mut out, mut in_str, mut esc) = (Vec::new(), false, false);
        for &c in doc {
            if in_str {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_str = false;
                }
            } else if c == b'"' {
                in_str = true;
            } else if is_ws(c) {
                continue;
            }
            out.push(c);
        }
        out
    }

    fn mask_bytes(active: &[String], chunks: &[&[u8]]) -> Vec<u8> {
        let mut m = masker().json(active).unwrap();
        let mut out = BytesMut::new();
        for c in chunks {
            m.feed(c, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn unchanged_spans_are_copied_as_written_in_any_chunking() {
        // Only the detectors are active and nothing here matches them.
        let doc = " {\"a\\\"b\" : [ 1 , -0.5e+3 ,\"x\\\\y\\u00e9 long enough\",true,false , null,{ },[]] ,\n\
                   \"Zoë Müller, naïve café ☕ 😀\":\t\"\" ,\"s\":\"plain text\",\"e\":{\"k\":[[],{}]}} \n";
        let doc = doc.as_bytes();
        let active = vec!["cards".to_owned()];
        let want = squeeze(doc);
        for step in 1..=doc.len() {
            let chunks: Vec<&[u8]> = doc.chunks(step).collect();
            assert_eq!(
                mask_bytes(&active, &chunks),
                want,
                "{}",
                String::from_utf8_lossy(&want)
            );
        }
        for split in 0..=doc.len() {
            let got = mask_bytes(&active, &[&doc[..split], &doc[split..]]);
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn masked_values_and_containers_between_unchanged_runs() {
        // Whitespace around masked values and inside masked containers; values that span
        // chunks; the bytes written must not depend on where the chunks were cut.
        let doc = br#" { "password" : "hunter2" , "n" : [ 1, {"password": [1, "a b", {"c": 2}] } , 3 ],
            "config": {"t" : 1}, "note": "mail ada@example.com now", "ok": true, "password": null } "#;
        let whole = mask_bytes(&all(), &[&doc[..]]);
        let s = String::from_utf8_lossy(&whole).into_owned();
        assert!(s.starts_with(r#"{"password":""#), "{s}");
        assert!(s.contains(r#"","n":[1,{"password":""#), "{s}");
        assert!(s.contains(r#""},3],"config":{"t":""#), "{s}");
        assert!(s.contains(r#""},"note":""#), "{s}");
        assert!(s.contains(r#"","ok":true,"password":""#), "{s}");
        assert!(s.ends_with(r#""}"#), "{s}");
        assert!(
            !s.contains("hunter2") && !s.contains("ada@") && !s.contains("a b"),
            "{s}"
        );
        serde_json::from_slice::<serde::de::IgnoredAny>(&whole).expect("JSON syntax");
        for split in 0..=doc.len() {
            let got = mask_bytes(&all(), &[&doc[..split], &doc[split..]]);
            assert_eq!(got, whole, "split at {split}");
        }
        for step in 1..8 {
            let chunks: Vec<&[u8]> = doc.chunks(step).collect();
            assert_eq!(mask_bytes(&all(), &chunks), whole, "step {step}");
        }
    }

    #[test]
    fn escapes_do_not_hide_a_value_from_paths_or_detectors() {
        // `\u0040` is `@` and `\u0061` is `a`: the rules judge the text, not its spelling.
        let doc = br#"{"users": [{"em\u0061il": "x"}], "note": "ada\u0040example.com", "k": "a\"b\u00e9"}"#;
        let (v, count) = mask(&[&doc[..]]);
        let s = v.to_string();
        assert_ne!(v["users"][0]["email"], "x", "{s}");
        assert!(!s.contains("ada@example.com"), "{s}");
        assert_eq!(v["k"], "a\"b\u{e9}");
        assert_eq!(count, 2, "{s}");
        // What no rule changes is copied as written.
        let mut m = masker().json(&all()).unwrap();
        let mut out = BytesMut::new();
        m.feed(br#"{"k" : "a\"b\u00e9", "n": -1.5e3}"#, &mut out)
            .unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(&out[..], br#"{"k":"a\"b\u00e9","n":-1.5e3}"#);
    }

    #[test]
    fn keys_go_through_the_detectors_and_still_steer_paths() {
        let doc = br#"{"members": {"alice@example.com": "admin", "b\u0040example.com": 1}, "users": [{"email": "x"}]}"#;
        let (v, count) = mask(&[&doc[..]]);
        let s = v.to_string();
        assert!(!s.contains("@example.com"), "{s}");
        assert_eq!(v["members"]["[REDACTED]"], 1, "{s}");
        assert_ne!(v["users"][0]["email"], "x", "{s}");
        assert_eq!(count, 3, "{s}");
    }

    #[test]
    fn numbers_beyond_f64_are_json_and_pass_as_written() {
        // RFC 8259 puts no limit on a number's range; the masker copies it as sent and masks
        // it under a path like any other value.
        let mut m = masker().json(&all()).unwrap();
        let mut out = BytesMut::new();
        m.feed(br#"{"n": 1118E1182, "password": -9e99999}"#, &mut out)
            .unwrap();
        m.finish(&mut out).unwrap();
        let s = String::from_utf8_lossy(&out).into_owned();
        assert!(s.starts_with(r#"{"n":1118E1182,"password":""#), "{s}");
        assert!(!s.contains("9e99999"), "{s}");
        serde_json::from_slice::<serde::de::IgnoredAny>(&out).expect("JSON syntax");
    }

    #[test]
    fn bad_documents_are_refused() {
        let mk = masker();
        for bad in [&b"{\"a\": }"[..], b"[1, 2", b"{\"a\" 1}", b"{", b"1 2"] {
            let mut m = mk.json(&all()).unwrap();
            let mut out = BytesMut::new();
            let r = m.feed(bad, &mut out).and_then(|()| m.finish(&mut out));
            assert!(r.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut m = mk.json(&all()).unwrap();
        let deep = "[".repeat(MAX_DEPTH + 10);
        let mut out = BytesMut::new();
        assert!(m.feed(deep.as_bytes(), &mut out).is_err());
    }

    #[test]
    fn paths_parse_strictly() {
        assert!(JsonPath::parse("$.a[*].b").is_ok());
        assert!(JsonPath::parse("$['a b'][0]").is_ok());
        assert!(JsonPath::parse("$..x").is_ok());
        for bad in ["a.b", "$.", "$[x]", "$..", "$.a[", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        // Compiled: `password` is key 0; a key no path names is NO_KEY.
        let mut keys = Vec::new();
        let p = Compiled::new(&JsonPath::parse("$..password").unwrap(), &mut keys);
        assert_eq!(keys, vec![Box::<[u8]>::from(&b"password"[..])]);
        assert!(p.matches(&[Step::Key(0)]));
        assert!(p.matches(&[Step::Key(NO_KEY), Step::Index(3), Step::Key(0)]));
        assert!(!p.matches(&[Step::Key(NO_KEY)]));
        assert!(!p.matches(&[Step::Key(0), Step::Key(NO_KEY)]));
        // Without `..` only values at the path's own depth match; a repeated key shares its id.
        let q = Compiled::new(&JsonPath::parse("$.a[*].password").unwrap(), &mut keys);
        assert_eq!(keys.len(), 2);
        assert!(q.matches(&[Step::Key(1), Step::Index(0), Step::Key(0)]));
        assert!(!q.matches(&[Step::Key(1), Step::Index(0)]));
        assert!(!q.matches(&[Step::Key(1), Step::Index(0), Step::Key(0), Step::Key(0)]));
    }

    #[test]
    fn no_rules_pass_through_untouched() {
        let mut m = masker().json(&[]).unwrap();
        assert!(m.is_passthrough());
        let mut out = BytesMut::new();
        m.feed(b"{ \"x\" :  1 }", &mut out).unwrap();
        assert_eq!(&out[..], b"{ \"x\" :  1 }");
    }
}
