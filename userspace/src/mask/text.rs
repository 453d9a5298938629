//! The text-stream entry point: output of commands and shells, logs, any text that arrives in
//! chunks. Detectors only (a stream has no columns); a value split across chunks is still
//! masked, because only text that no later byte can extend into a match is released.
//!
//! What is held back: everything after the last newline (detector matches do not cross lines,
//! except private-key blocks, which are held from their `-----BEGIN` line until their `-----END`
//! line). A line longer than [`MAX_HOLD`] is released up to [`OVERLAP`] bytes before its end,
//! never cutting through a match. A key block longer than [`MAX_HOLD`] is suppressed whole and
//! replaced by one redaction: refuse rather than leak.

use bytes::{BufMut, BytesMut};

use super::detect::{self, Match};
use super::{Active, MaskCounts, MaskError, Masker, REDACTED, RuleSet};

/// Most bytes held back waiting for a line's end (or a key block's).
pub const MAX_HOLD: usize = 64 * 1024;
/// How much of an over-long line stays held (longer than any token a detector matches, PEM
/// blocks aside).
pub const OVERLAP: usize = 16 * 1024;

const KEY_BEGIN: &[u8] = b"-----BEGIN ";
const KEY_END: &[u8] = b"-----END ";

/// Masks one text stream. Feed it chunks in order; call [`finish`](Self::finish) at the end.
pub struct TextMasker {
    masker: Masker,
    active: Active,
    held: BytesMut,
    /// Inside a key block too long to hold: dropping bytes until its end line.
    suppressing: bool,
    matches: Vec<Match>,
    totals: MaskCounts,
}

impl std::fmt::Debug for TextMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextMasker")
            .field("held", &self.held.len())
            .field("suppressing", &self.suppressing)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// A masker for one text stream under the `active` rules (their detectors; column and
    /// path rules have nothing to match in a stream). An unknown rule name is an error.
    pub fn text(&self, active: &[String]) -> Result<TextMasker, MaskError> {
        Ok(TextMasker {
            masker: self.clone(),
            active: self.active(active)?,
            held: BytesMut::new(),
            suppressing: false,
            matches: Vec::new(),
            totals: MaskCounts::default(),
        })
    }

    /// One whole text value (a server message) through the `active` rules' detectors: the
    /// masked value, or `None` when no detector is active or none matched (or a rule name is
    /// unknown: then nothing here can mask it, and the caller's own cut stands).
    pub fn detect_in(&self, active: &[String], value: &[u8]) -> Option<BytesMut> {
        let mut tm = self.text(active).ok()?;
        if tm.is_passthrough() {
            return None;
        }
        let mut out = BytesMut::with_capacity(value.len());
        tm.feed(value, &mut out);
        tm.finish(&mut out);
        (out[..] != *value).then_some(out)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

impl TextMasker {
    /// Whether the stream's rules have any detector (otherwise the caller may pass it as is).
    pub fn is_passthrough(&self) -> bool {
        self.active.detectors.is_empty()
    }

    /// Bytes held back, waiting for more of the stream.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Masks the next chunk, appending to `out` whatever can be released now.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        if self.is_passthrough() {
            out.put_slice(chunk);
            return;
        }
        self.held.extend_from_slice(chunk);
        self.release(out, false);
    }

    /// The end of the stream: masks and releases everything held.
    pub fn finish(&mut self, out: &mut BytesMut) {
        self.release(out, true);
    }

    /// Counts of everything masked so far; resets them.
    pub fn take_counts(&mut self) -> MaskCounts {
        std::mem::take(&mut self.totals)
    }

    fn release(&mut self, out: &mut BytesMut, end: bool) {
        loop {
            if self.suppressing {
                match find(&self.held, KEY_END) {
                    Some(at) => match line_end(&self.held, at) {
                        Some(after) => {
                            let _ = self.held.split_to(after);
                            self.suppressing = false;
                        }
                        // The end marker's line has not ended: keep the marker, wait.
                        None if !end && self.held.len() - at <= MAX_HOLD => {
                            let _ = self.held.split_to(at);
                            return;
                        }
                        None => {
                            self.held.clear();
                            self.suppressing = false;
                            return;
                        }
                    },
                    None => {
                        // Keep only what could be the start of the end marker.
                        let keep = (KEY_END.len() - 1).min(self.held.len());
                        let drop = self.held.len() - keep;
                        let _ = self.held.split_to(drop);
                        if end {
                            self.held.clear();
                        }
                        return;
                    }
                }
            }
            let cut = self.cut(end);
            if cut == 0 {
                if !end
                    && self.held.len() > MAX_HOLD
                    && let Some(at) = self.open_key_block()
                {
                    // A key block that does not end within the limit: hide it whole and drop
                    // the rest of it as it comes.
                    out.put_slice(REDACTED);
                    out.put_u8(b'\n');
                    self.totals.add(self.key_rule());
                    self.suppressing = true;
                    let _ = self.held.split_to(at);
                    continue;
                }
                return;
            }
            let text = self.held.split_to(cut);
            self.emit(&text, out);
            if end && !self.held.is_empty() {
                continue;
            }
            return;
        }
    }

    /// How many held bytes can be released now.
    fn cut(&mut self, end: bool) -> usize {
        let held = &self.held[..];
        if let Some(begin) = self.open_key_block() {
            // Everything before the block's line can go; the block waits for its end.
            if end {
                return held.len();
            }
            return line_start(held, begin);
        }
        if end {
            return held.len();
        }
        let mut cut = held
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        if cut == 0 && held.len() > MAX_HOLD {
            // One very long line: release all but its tail, never cutting through a match.
            cut = held.len() - OVERLAP;
            self.matches.clear();
            detect::scan(held, self.active.detectors, &mut self.matches);
            for m in &self.matches {
                if m.start < cut && m.end > cut {
                    cut = m.start;
                }
            }
        }
        cut
    }

    /// Where an unterminated private-key block starts in the held text.
    fn open_key_block(&self) -> Option<usize> {
        let held = &self.held[..];
        let mut from = 0;
        let mut open = None;
        while let Some(at) = find(&held[from..], KEY_BEGIN).map(|a| a + from) {
            match find(&held[at..], KEY_END) {
                Some(e) if line_end(held, at + e).is_some() => {
                    from = at + e + KEY_END.len();
                    open = None;
                }
                _ => {
                    open = Some(at);
                    break;
                }
            }
        }
        open
    }

    /// The rules a private-key match counts under (the rule owning that detector, if active).
    fn key_rule(&self) -> RuleSet {
        let rule = self.active.det_rule[crate::config::policy::Detector::PrivateKey as usize];
        if rule == super::NO_RULE {
            RuleSet::default()
        } else {
            RuleSet::one(super::RuleId(rule))
        }
    }

    fn emit(&mut self, text: &[u8], out: &mut BytesMut) {
        self.matches.clear();
        detect::scan(text, self.active.detectors, &mut self.matches);
        if self.matches.is_empty() {
            out.put_slice(text);
            return;
        }
        let mut matches = std::mem::take(&mut self.matches);
        self.masker
            .replace(&self.active, text, false, &mut matches, out);
        self.matches = matches;
        // One count per masked span, so stream counts read like value counts elsewhere.
        for m in &self.matches {
            let rule = super::RuleId(self.active.det_rule[m.detector as usize]);
            self.totals.add(RuleSet::one(rule));
        }
    }
}

/// The index just past the end of the line holding `at`, if that line has ended.
fn line_end(b: &[u8], at: usize) -> Option<usize> {
    b[at..].iter().position(|&c| c == b'\n').map(|p| at + p + 1)
}

/// The start of the line holding `at`.
fn line_start(b: &[u8], at: usize) -> usize {
    b[..at]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |p| p + 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::{Detector, MaskRuleSpec, MaskStyle};

    fn masker(detectors: &[Detector], style: MaskStyle) -> Masker {
        Masker::new(
            &[MaskRuleSpec {
                name: "d".into(),
                columns: Vec::new(),
                json_paths: Vec::new(),
                detectors: detectors.to_vec(),
                style,
                except_groups: Vec::new(),
                computed: Default::default(),
                compared: Default::default(),
            }],
            b"0123456789abcdef0123456789abcdef",
        )
        .unwrap()
    }

    fn run(m: &mut TextMasker, chunks: &[&[u8]]) -> String {
        let mut out = BytesMut::new();
        for c in chunks {
            m.feed(c, &mut out);
        }
        m.finish(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let mk = masker(&[Detector::Email, Detector::Card], MaskStyle::Redact);
        let text = b"user ada@example.com paid with 4111 1111 1111 1111\nnext line\n";
        // Every split point, including inside the email and the card number.
        for split in 0..text.len() {
            let mut m = mk.text(&["d".into()]).unwrap();
            let out = run(&mut m, &[&text[..split], &text[split..]]);
            assert!(!out.contains("ada@example.com"), "split {split}: {out}");
            assert!(!out.contains("4111 1111 1111 1111"), "split {split}: {out}");
            assert!(out.contains("next line\n"), "{out}");
            assert_eq!(m.take_counts().total(), 2, "split {split}");
        }
        // Byte by byte.
        let mut m = mk.text(&["d".into()]).unwrap();
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let out = run(&mut m, &chunks);
        assert!(
            !out.contains("ada@example.com") && !out.contains("1111 1111"),
            "{out}"
        );
    }

    #[test]
    fn only_complete_lines_are_released() {
        let mk = masker(&[Detector::Email], MaskStyle::Redact);
        let mut m = mk.text(&["d".into()]).unwrap();
        let mut out = BytesMut::new();
        m.feed(b"first line\nsecond ada@exam", &mut out);
        assert_eq!(&out[..], b"first line\n");
        assert_eq!(m.held(), b"second ada@exam".len());
        m.feed(b"ple.com", &mut out);
        m.finish(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("ada@"));
    }

    #[test]
    fn private_key_blocks_are_held_until_they_end() {
        let mk = masker(&[Detector::PrivateKey], MaskStyle::Redact);
        let block = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n";
        let text = format!("before\n{block}after\n");
        for split in 0..text.len() {
            let mut m = mk.text(&["d".into()]).unwrap();
            let out = run(
                &mut m,
                &[&text.as_bytes()[..split], &text.as_bytes()[split..]],
            );
            assert!(!out.contains("MIIEvQIB"), "split {split}: {out}");
            assert!(
                out.starts_with("before\n") && out.ends_with("after\n"),
                "{out}"
            );
        }
        // A block that never ends within the hold limit is hidden, not leaked.
        let mut m = mk.text(&["d".into()]).unwrap();
        let mut out = BytesMut::new();
        m.feed(b"-----BEGIN PRIVATE KEY-----\n", &mut out);
        for _ in 0..2000 {
            m.feed(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n", &mut out);
        }
        m.feed(b"-----END PRIVATE KEY-----\nvisible\n", &mut out);
        m.finish(&mut out);
        let s = String::from_utf8_lossy(&out);
        assert!(!s.contains("QUJDREVG"), "key bytes leaked");
        assert!(s.contains("visible"), "{s}");
        assert!(m.held() == 0);
    }

    #[test]
    fn long_lines_are_bounded_and_never_cut_through_a_match() {
        let mk = masker(&[Detector::Email], MaskStyle::Redact);
        let mut m = mk.text(&["d".into()]).unwrap();
        let mut out = BytesMut::new();
        let filler = vec![b'x'; 1000];
        let mut sent = 0;
        while sent < 4 * MAX_HOLD {
            m.feed(&filler, &mut out);
            m.feed(b" ada@example.com ", &mut out);
            sent += filler.len() + 17;
            assert!(m.held() <= MAX_HOLD + 1017, "held {}", m.held());
        }
        m.finish(&mut out);
        let s = String::from_utf8_lossy(&out);
        assert!(!s.contains("ada@"), "an email leaked at a cut");
        let emails = sent / (filler.len() + 17);
        let redacted = std::str::from_utf8(REDACTED).unwrap();
        assert_eq!(s.matches(redacted).count(), emails);
        assert_eq!(m.take_counts().total(), emails as u64);
    }

    #[test]
    fn no_detectors_pass_through() {
        let mk = masker(&[Detector::Email], MaskStyle::Redact);
        let mut m = mk.text(&[]).unwrap();
        assert!(m.is_passthrough());
        let mut out = BytesMut::new();
        m.feed(b"ada@example.com", &mut out);
        assert_eq!(&out[..], b"ada@example.com");
        assert!(mk.text(&["nope".into()]).is_err());
    }
}
