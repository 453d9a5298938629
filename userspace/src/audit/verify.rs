//! Verification of a log directory or an export, and export / import.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use ring::hmac;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::AuditError;
use super::record::{
    ChainHash, Event, FORMAT, MacCheck, Record, SignedAnchor, SignedHead, check_mac, to_hex,
};
use super::writer::{ANCHOR_FILE, HEAD_FILE, list_segments, segment_name, write_atomic};

/// How bad an issue is: any error makes the report fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// What kind of problem verify found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// A record's content no longer matches the hash its successor carries.
    Modified,
    /// A record is not a valid record at all.
    Unparseable,
    /// Records are missing (seq gap, missing segment, missing start of the log).
    Deleted,
    /// Records are out of order or duplicated.
    Reordered,
    /// The log ends before the record the signed head vouches for.
    Truncated,
    /// The record at the signed head's seq is not the one that was signed.
    HeadMismatch,
    /// A head or anchor signature is not valid for the given key.
    BadSignature,
    /// The log has records but no signed head.
    MissingHead,
    /// The first kept record does not match the retention anchor.
    AnchorMismatch,
    /// A session's own chain is broken (sprev, record count).
    SessionChain,
    /// A segment's name does not match its first record.
    Misnamed,
    /// A partial last line from a crash: never acknowledged, tolerated at the very end.
    TornTail,
    /// A partial line anywhere else.
    PartialRecord,
    /// A start took over records that no head had signed (a crash inside `head_interval`).
    UnsignedRecovered,
    /// An `open` record names a different key than the one verifying (key rotation, or the
    /// wrong key file).
    KeyChanged,
    /// A terminal recording is missing or its content does not match the hash on the chain.
    Recording,
    /// Records after the signed head that nothing vouches for yet: no signature covers them,
    /// and their MACs were not checked (verify had only the public key) or they have none
    /// (format 1). Anyone could have appended them.
    UnsignedTail,
    /// A record after the signed head whose MAC is missing or not made with the log's key:
    /// changed, or appended by someone without the key.
    Unauthenticated,
    /// An `open` record of a format newer than this version knows.
    UnknownFormat,
}

/// One finding, with where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    pub kind: IssueKind,
    /// Segment (or export) file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line number in that file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub message: String,
    /// The records it names are vouched for neither by a signature nor by a MAC checked
    /// with the key: `airlock audit verify --strict` fails on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unvouched: bool,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{sev}[{kind}]")?;
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " {file}:{line}")?,
            (Some(file), None) => write!(f, " {file}")?,
            _ => {}
        }
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        if let Some(s) = &self.session {
            write!(f, " session {s}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The outcome of [`verify`] or [`verify_export`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// No errors (warnings allowed).
    pub ok: bool,
    pub files: usize,
    pub records: u64,
    /// Sessions that started in the verified range.
    pub sessions: u64,
    /// Sessions without an end record (running, or cut off by a crash).
    pub open_sessions: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The seq the signed head vouches for.
    pub signed_seq: Option<u64>,
    /// When the head was signed (µs since the epoch).
    pub signed_at: Option<u64>,
    /// Records after the signed head: they chain, but no signature covers them yet.
    pub unsigned_tail: u64,
    /// Of those, how many carry a valid MAC (checked only when verify has the signing key).
    pub authenticated_tail: u64,
    /// Record formats named by the `open` records seen (1 before formats were named).
    pub formats: Vec<u32>,
    /// Exported heads (`--heads`) checked against the log.
    pub heads_checked: u64,
    /// First seq the retention anchor vouches for, when old segments were deleted.
    pub anchored_seq: Option<u64>,
    pub issues: Vec<Issue>,
}

impl Report {
    /// Issues of severity error.
    pub fn errors(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|i| i.severity == Severity::Error)
    }

    /// Whether the log verifies; `strict` also demands that the key vouches for every record
    /// (no unsigned, unauthenticated tail).
    pub fn passes(&self, strict: bool) -> bool {
        self.ok && !(strict && self.issues.iter().any(|i| i.unvouched))
    }
}

/// What [`verify_with`] checks the log against.
#[derive(Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Verifies the signed head and the retention anchor.
    pub public: &'a VerifyingKey,
    /// The records' MAC key ([`super::record_mac_key`] of the signing key): with it, records
    /// after the signed head are authenticated one by one. Only the key's holder has it.
    pub mac: Option<&'a hmac::Key>,
    /// Heads exported off the host (`airlock audit export-heads`), with the file they came
    /// from: the log must still hold the record each one vouches for.
    pub heads: Option<(&'a str, &'a [SignedHead])>,
}

impl<'a> VerifyOptions<'a> {
    /// Checks against the public key only.
    pub fn public(public: &'a VerifyingKey) -> Self {
        VerifyOptions {
            public,
            mac: None,
            heads: None,
        }
    }
}

#[derive(Clone)]
struct Loc {
    file: String,
    line: u64,
}

struct SessState {
    last: ChainHash,
    records: u64,
}

/// What is wrong with a recording the chain names (`None`: present and unchanged).
pub(crate) fn check_recording(dir: &Path, r: &super::record::RecordingRecord) -> Option<String> {
    let mut f = match open_recording(dir, r) {
        Ok(f) => f,
        Err(problem) => return Some(problem),
    };
    let mut hasher = sha2::Sha256::new();
    match std::io::copy(&mut f, &mut hasher) {
        Ok(bytes) => recording_changed(r, bytes, hasher),
        Err(e) => Some(format!("recording {}: {e}", r.file)),
    }
}

/// The bytes of a recording the chain names, read once and checked against its hash (so
/// what is shown is what was checked), or what is wrong with it.
pub(crate) fn read_recording(
    dir: &Path,
    r: &super::record::RecordingRecord,
) -> Result<Vec<u8>, String> {
    let mut f = open_recording(dir, r)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes)
        .map_err(|e| format!("recording {}: {e}", r.file))?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(&bytes);
    match recording_changed(r, bytes.len() as u64, hasher) {
        Some(problem) => Err(problem),
        None => Ok(bytes),
    }
}

/// Opens a recording inside the log directory, never through a link.
fn open_recording(dir: &Path, r: &super::record::RecordingRecord) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let rel = Path::new(&r.file);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "recording path {} leaves the log directory",
            r.file
        ));
    }
    let path = dir.join(rel);
    let problem = |e: std::io::Error| format!("recording {} of command {}: {e}", r.file, r.n);
    crate::recording::check_dirs(&path).map_err(problem)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(problem)?;
    if !f.metadata().map_err(problem)?.file_type().is_file() {
        return Err(format!("recording {} is not a regular file", r.file));
    }
    Ok(f)
}

fn recording_changed(
    r: &super::record::RecordingRecord,
    bytes: u64,
    hasher: sha2::Sha256,
) -> Option<String> {
    let sum = ChainHash(hasher.finalize().into());
    (sum != r.sha256 || bytes != r.bytes).then(|| format!(
        "recording {} of command {} was changed: {bytes} bytes with SHA-256 {sum}, the chain says {} bytes with {}",
        r.file, r.n, r.bytes, r.sha256
    ))
}

/// Walks the chain one line at a time.
struct Checker<'k> {
    key: &'k VerifyingKey,
    mac: Option<&'k hmac::Key>,
    /// Exported heads by seq, with their line in the heads file.
    exported: HashMap<u64, Vec<(SignedHead, u64, bool)>>,
    exported_file: String,
    /// Format of the records being read (from the last `open` record; 0 before one).
    format: u32,
    /// A record of format 2 or later was read: the log never goes back to lines without a
    /// MAC unless a head signs over them (a MAC-less record after the head, even behind an
    /// `open` that claims format 1, was written without the key).
    macs_seen: bool,
    /// Records after the signed head that nothing vouched for, and the first of them.
    unvouched: u64,
    first_unvouched: Option<(Loc, u64)>,
    head: Option<SignedHead>,
    anchor: Option<SignedAnchor>,
    expected: Option<u64>,
    prev: Option<(ChainHash, Loc, u64)>,
    sessions: HashMap<String, SessState>,
    head_found: bool,
    report: Report,
    /// The log directory, whose recordings are checked against their hashes (not for exports,
    /// which hold only the records).
    dir: Option<std::path::PathBuf>,
}

impl<'k> Checker<'k> {
    fn new(
        opts: &VerifyOptions<'k>,
        head: Option<SignedHead>,
        anchor: Option<SignedAnchor>,
    ) -> Self {
        let mut exported: HashMap<u64, Vec<(SignedHead, u64, bool)>> = HashMap::new();
        let mut exported_file = String::new();
        if let Some((file, heads)) = opts.heads {
            exported_file = file.to_owned();
            for (i, h) in heads.iter().enumerate() {
                exported
                    .entry(h.seq)
                    .or_default()
                    .push((h.clone(), i as u64 + 1, false));
            }
        }
        Checker {
            key: opts.public,
            mac: opts.mac,
            exported,
            exported_file,
            format: 0,
            macs_seen: false,
            unvouched: 0,
            first_unvouched: None,
            head,
            anchor,
            expected: None,
            prev: None,
            sessions: HashMap::new(),
            head_found: false,
            report: Report::default(),
            dir: None,
        }
    }

    fn issue(
        &mut self,
        severity: Severity,
        kind: IssueKind,
        loc: Option<&Loc>,
        seq: Option<u64>,
        session: Option<&str>,
        message: String,
    ) {
        self.report.issues.push(Issue {
            severity,
            kind,
            file: loc.map(|l| l.file.clone()),
            line: loc.map(|l| l.line),
            seq,
            session: session.map(str::to_owned),
            message,
            unvouched: false,
        });
    }

    fn error(
        &mut self,
        kind: IssueKind,
        loc: &Loc,
        seq: Option<u64>,
        session: Option<&str>,
        m: String,
    ) {
        self.issue(Severity::Error, kind, Some(loc), seq, session, m);
    }

    /// Checks one complete line.
    fn line(&mut self, loc: Loc, bytes: &[u8]) {
        let hash = ChainHash::of_line(bytes);
        let rec: Record = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                let seq = self.expected;
                self.error(
                    IssueKind::Unparseable,
                    &loc,
                    seq,
                    None,
                    format!("not a valid record (changed or corrupted): {e}"),
                );
                self.expected = seq.map(|s| s + 1);
                self.prev = Some((hash, loc, seq.unwrap_or(0)));
                return;
            }
        };
        let seq = rec.seq;
        let session = rec.session.as_deref();
        match (&self.prev, self.expected) {
            (None, _) => match &self.anchor {
                Some(a) if seq > a.seq => self.error(
                    IssueKind::Deleted,
                    &loc,
                    Some(seq),
                    session,
                    format!(
                        "records {}..{} are missing: the log must start at or before the retention anchor (seq {})",
                        a.seq,
                        seq - 1,
                        a.seq
                    ),
                ),
                Some(_) => {}
                None if seq != 0 => self.error(
                    IssueKind::Deleted,
                    &loc,
                    Some(seq),
                    session,
                    format!("records 0..{} are missing: the log starts at seq {seq} and no retention anchor vouches for that", seq - 1),
                ),
                None if rec.prev != ChainHash::ZERO => self.error(
                    IssueKind::Modified,
                    &loc,
                    Some(seq),
                    session,
                    "the first record's prev is not zero".into(),
                ),
                None => {}
            },
            (Some((prev_hash, prev_loc, prev_seq)), Some(expected)) => {
                if seq == expected {
                    if rec.prev != *prev_hash {
                        let (pl, ps) = (prev_loc.clone(), *prev_seq);
                        self.error(
                            IssueKind::Modified,
                            &pl,
                            Some(ps),
                            None,
                            format!(
                                "record seq {ps} was changed: its hash does not match the prev of seq {seq} at {}:{}",
                                loc.file, loc.line
                            ),
                        );
                    }
                } else if seq > expected {
                    self.error(
                        IssueKind::Deleted,
                        &loc,
                        Some(seq),
                        session,
                        format!("records {expected}..{} are missing before this record", seq - 1),
                    );
                } else {
                    self.error(
                        IssueKind::Reordered,
                        &loc,
                        Some(seq),
                        session,
                        format!("record seq {seq} appears after seq {} (reordered or duplicated)", expected - 1),
                    );
                }
            }
            (Some(_), None) => {}
        }
        if let Some(a) = &self.anchor
            && a.seq == seq
            && rec.prev != a.prev
        {
            self.error(
                IssueKind::AnchorMismatch,
                &loc,
                Some(seq),
                session,
                "the record at the retention anchor does not carry the anchored prev hash".into(),
            );
        }
        if let Some(h) = &self.head
            && h.seq == seq
        {
            self.head_found = true;
            if h.hash != hash {
                self.error(
                    IssueKind::HeadMismatch,
                    &loc,
                    Some(seq),
                    session,
                    "this record is not the one the signed head vouches for (rewritten?)".into(),
                );
            }
        }
        if let Some(exported) = self.exported.get_mut(&seq) {
            let mut wrong = Vec::new();
            for (h, line, found) in exported.iter_mut() {
                *found = true;
                if h.hash != hash {
                    wrong.push((h.ts, *line));
                }
            }
            for (ts, line) in wrong {
                let at = Loc {
                    file: self.exported_file.clone(),
                    line,
                };
                self.error(
                    IssueKind::HeadMismatch,
                    &at,
                    Some(seq),
                    session,
                    format!(
                        "the head exported at {} vouches for a different record at seq {seq} ({}:{}): the log was rewritten",
                        super::time::format_ts(ts),
                        loc.file,
                        loc.line
                    ),
                );
            }
        }
        if let Event::Open(o) = &rec.event {
            self.format = o.format;
            if !self.report.formats.contains(&o.format) {
                self.report.formats.push(o.format);
            }
            if o.format > FORMAT {
                self.issue(
                    Severity::Warning,
                    IssueKind::UnknownFormat,
                    Some(&loc),
                    Some(seq),
                    None,
                    format!(
                        "records from here on are in format {}, newer than this airlock knows ({FORMAT}); update it to read them",
                        o.format
                    ),
                );
            }
        }
        self.tail_record(&loc, seq, session, bytes, rec.mac.is_some());
        self.macs_seen |= rec.mac.is_some() || self.format >= 2;
        if let Event::Open(o) = &rec.event
            && let Some(n) = o.unsigned_before.filter(|n| *n > 0)
        {
            // From format 2 a start adopts only records whose MACs it checked.
            let authenticated = o.format >= 2;
            self.issue(
                Severity::Warning,
                IssueKind::UnsignedRecovered,
                Some(&loc),
                Some(seq),
                None,
                if authenticated {
                    format!("this start found {n} record(s) before it that no head had signed yet (left by a crash); it checked their MACs before signing over them")
                } else {
                    format!("this start found {n} record(s) before it that no head had signed yet (left by a crash) and signed over them without authenticating them (format 1)")
                },
            );
            if !authenticated && let Some(i) = self.report.issues.last_mut() {
                i.unvouched = true;
            }
        }
        if let Event::Open(o) = &rec.event
            && o.public_key != to_hex(self.key.as_bytes())
        {
            self.issue(
                Severity::Warning,
                IssueKind::KeyChanged,
                Some(&loc),
                Some(seq),
                None,
                format!(
                    "the recorder that started here used public key {}",
                    o.public_key
                ),
            );
        }
        if let (Event::Recording(r), Some(dir)) = (&rec.event, &self.dir)
            && let Some(problem) = check_recording(dir, r)
        {
            self.error(IssueKind::Recording, &loc, Some(seq), session, problem);
        }
        if let Some(sid) = session {
            self.session_record(&loc, seq, sid, &rec, hash);
        }
        self.report.records += 1;
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.expected = Some(seq + 1);
        self.prev = Some((hash, loc, seq));
    }

    /// A record after the signed head: authenticated by its MAC when verify has the key.
    fn tail_record(
        &mut self,
        loc: &Loc,
        seq: u64,
        session: Option<&str>,
        bytes: &[u8],
        has_mac: bool,
    ) {
        if self.head.as_ref().is_some_and(|h| seq <= h.seq) {
            return;
        }
        // Format 2 writes a MAC on every line; before the first `open` (a log retention cut)
        // the line itself says which format it is.
        let format = match self.format {
            0 if has_mac => 2,
            0 => 1,
            f => f,
        };
        let Some(key) = self.mac else {
            self.unvouched(loc, seq);
            return;
        };
        match check_mac(key, bytes) {
            MacCheck::Valid => self.report.authenticated_tail += 1,
            MacCheck::Missing if format < 2 && !self.macs_seen => self.unvouched(loc, seq),
            MacCheck::Missing => self.error(
                IssueKind::Unauthenticated,
                loc,
                Some(seq),
                session,
                if format < 2 {
                    "follows the signed head and carries no MAC, after records that had one (a log does not go back to format 1 behind its head): written by someone without the key".into()
                } else {
                    "follows the signed head but carries no MAC, though its format always has one: written by someone without the key".into()
                },
            ),
            MacCheck::Invalid => self.error(
                IssueKind::Unauthenticated,
                loc,
                Some(seq),
                session,
                "follows the signed head but its MAC was not made with this log's key: changed, or appended by someone without the key".into(),
            ),
        }
    }

    fn unvouched(&mut self, loc: &Loc, seq: u64) {
        self.unvouched += 1;
        if self.first_unvouched.is_none() {
            self.first_unvouched = Some((loc.clone(), seq));
        }
    }

    fn session_record(&mut self, loc: &Loc, seq: u64, sid: &str, rec: &Record, hash: ChainHash) {
        let partial_log = self.anchor.is_some() || self.report.first_seq.is_some_and(|s| s > 0);
        match &rec.event {
            Event::SessionStart(_) => {
                if self.sessions.contains_key(sid) {
                    self.error(
                        IssueKind::SessionChain,
                        loc,
                        Some(seq),
                        Some(sid),
                        "session started twice".into(),
                    );
                }
                if rec.sprev != Some(ChainHash::ZERO) {
                    self.error(
                        IssueKind::SessionChain,
                        loc,
                        Some(seq),
                        Some(sid),
                        "session start does not open a session chain".into(),
                    );
                }
                self.report.sessions += 1;
                self.sessions.insert(
                    sid.to_owned(),
                    SessState {
                        last: hash,
                        records: 1,
                    },
                );
            }
            event => {
                let end = matches!(event, Event::SessionEnd(_));
                match self.sessions.get_mut(sid) {
                    Some(st) => {
                        let expected_records = st.records;
                        let chained = rec.sprev == Some(st.last);
                        st.last = hash;
                        st.records += 1;
                        if !chained {
                            self.error(IssueKind::SessionChain, loc, Some(seq), Some(sid),
                                "does not chain to the previous record of its session (a record of this session was changed, deleted or reordered)".into());
                        }
                        if let Event::SessionEnd(e) = event
                            && e.records != expected_records
                        {
                            self.error(
                                IssueKind::SessionChain,
                                loc,
                                Some(seq),
                                Some(sid),
                                format!(
                                    "session end counts {} records but {} precede it",
                                    e.records, expected_records
                                ),
                            );
                        }
                        if end {
                            self.sessions.remove(sid);
                        }
                    }
                    // Its start lies in segments that retention deleted.
                    None if partial_log => {}
                    None => self.error(
                        IssueKind::SessionChain,
                        loc,
                        Some(seq),
                        Some(sid),
                        "record of a session whose start is missing".into(),
                    ),
                }
            }
        }
    }

    fn finish(mut self, files: usize) -> Report {
        self.report.files = files;
        if let Some(a) = self.anchor.clone() {
            self.report.anchored_seq = Some(a.seq);
            if !a.verify(self.key) {
                self.issue(
                    Severity::Error,
                    IssueKind::BadSignature,
                    Some(&Loc {
                        file: ANCHOR_FILE.into(),
                        line: 1,
                    }),
                    Some(a.seq),
                    None,
                    "the retention anchor's signature is not valid for this key".into(),
                );
            }
        }
        match self.head.clone() {
            Some(h) => {
                self.report.signed_seq = Some(h.seq);
                self.report.signed_at = Some(h.ts);
                if !h.verify(self.key) {
                    self.issue(Severity::Error, IssueKind::BadSignature, Some(&Loc { file: HEAD_FILE.into(), line: 1 }), Some(h.seq), None,
                        "the head's signature is not valid for this key (the chain was rewritten, or this is not the log's key)".into());
                }
                let anchor = self.anchor.clone();
                match self.report.last_seq {
                    // Retention deleted everything up to the anchor, the head's record with it.
                    _ if anchor.as_ref().is_some_and(|a| h.seq < a.seq) => {
                        if anchor
                            .as_ref()
                            .is_some_and(|a| h.seq + 1 != a.seq || h.hash != a.prev)
                        {
                            self.issue(Severity::Error, IssueKind::HeadMismatch, None, Some(h.seq), None,
                                "the signed head is older than the retention anchor and does not meet it".into());
                        }
                        self.report.unsigned_tail = self.report.records;
                    }
                    Some(last) if last < h.seq => {
                        let loc = self.prev.as_ref().map(|p| p.1.clone());
                        self.issue(Severity::Error, IssueKind::Truncated, loc.as_ref(), Some(last), None,
                            format!("the log ends at seq {last} but the signed head vouches for seq {}: records {}..{} were cut off", h.seq, last + 1, h.seq));
                    }
                    None => self.issue(
                        Severity::Error,
                        IssueKind::Truncated,
                        None,
                        None,
                        None,
                        format!(
                            "the log is empty but the signed head vouches for seq {}",
                            h.seq
                        ),
                    ),
                    Some(last) => {
                        if !self.head_found {
                            self.issue(
                                Severity::Error,
                                IssueKind::Deleted,
                                None,
                                Some(h.seq),
                                None,
                                "the record the signed head vouches for is missing".into(),
                            );
                        }
                        self.report.unsigned_tail = last - h.seq;
                    }
                }
            }
            None if self.report.records > 0 => self.issue(
                Severity::Error,
                IssueKind::MissingHead,
                None,
                None,
                None,
                "the log has records but no signed head (head.json missing)".into(),
            ),
            None => {}
        }
        if self.unvouched > 0
            && let Some((loc, seq)) = self.first_unvouched.clone()
        {
            let why = if self.mac.is_some() {
                "they carry no MAC (format 1)"
            } else {
                "their MACs can only be checked with the signing key (give --key <secret key file>, or --config on the host)"
            };
            self.issue(
                Severity::Warning,
                IssueKind::UnsignedTail,
                Some(&loc),
                Some(seq),
                None,
                format!(
                    "{} record(s) from here on follow the signed head and nothing vouches for them yet: no signature covers them, and {why}. Anyone could have appended them",
                    self.unvouched
                ),
            );
            if let Some(i) = self.report.issues.last_mut() {
                i.unvouched = true;
            }
        }
        self.check_exported_heads();
        self.report.open_sessions = self.sessions.len() as u64;
        let ok = !self
            .report
            .issues
            .iter()
            .any(|i| i.severity == Severity::Error);
        self.report.ok = ok;
        self.report
    }
}

impl Checker<'_> {
    /// Every exported head must be signed by the key and vouch for a record the log still
    /// holds (or that retention deleted behind a signed anchor).
    fn check_exported_heads(&mut self) {
        let mut heads: Vec<(SignedHead, u64, bool)> =
            self.exported.drain().flat_map(|(_, v)| v).collect();
        heads.sort_by_key(|(_, line, _)| *line);
        let file = self.exported_file.clone();
        for (h, line, found) in heads {
            self.report.heads_checked += 1;
            let loc = Loc {
                file: file.clone(),
                line,
            };
            let at = super::time::format_ts(h.ts);
            if !h.verify(self.key) {
                self.error(
                    IssueKind::BadSignature,
                    &loc,
                    Some(h.seq),
                    None,
                    format!("the head exported at {at} is not signed by this log's key"),
                );
                continue;
            }
            if found {
                continue;
            }
            let deleted_by_retention = self.anchor.as_ref().is_some_and(|a| h.seq < a.seq);
            match self.report.last_seq {
                _ if deleted_by_retention => {}
                Some(last) if last < h.seq => self.error(
                    IssueKind::Truncated,
                    &loc,
                    Some(h.seq),
                    None,
                    format!(
                        "the log ends at seq {last}, but the head exported at {at} vouches for seq {}: records {}..{} were cut off (and an older head put back)",
                        h.seq,
                        last + 1,
                        h.seq
                    ),
                ),
                _ => self.error(
                    IssueKind::Deleted,
                    &loc,
                    Some(h.seq),
                    None,
                    format!(
                        "the record the head exported at {at} vouches for (seq {}) is missing",
                        h.seq
                    ),
                ),
            }
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, AuditError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AuditError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io(path, &e)),
    }
}

/// Verifies the log in `dir` against `public_key`: every change, deletion, reordering or
/// truncation becomes an [`Issue`] that names the file, line, seq and session. `Err` only when
/// the directory cannot be read at all; a corrupt head or anchor file is an issue.
pub fn verify(dir: &Path, public_key: &VerifyingKey) -> Result<Report, AuditError> {
    verify_with(dir, &VerifyOptions::public(public_key))
}

/// [`verify`] with the records' MAC key (records after the signed head are authenticated)
/// and heads exported off the host (a log cut back to an older head is caught).
pub fn verify_with(dir: &Path, opts: &VerifyOptions<'_>) -> Result<Report, AuditError> {
    let mut early = Vec::new();
    let head = load_signed::<SignedHead>(&dir.join(HEAD_FILE), &mut early)?;
    let anchor = load_signed::<SignedAnchor>(&dir.join(ANCHOR_FILE), &mut early)?;
    let segs = list_segments(dir).map_err(|e| AuditError::io(dir, &e))?;
    let mut c = Checker::new(opts, head, anchor);
    c.dir = Some(dir.to_owned());
    c.report.issues = early;
    for (i, (first_seq, path)) in segs.iter().enumerate() {
        let name = segment_name(*first_seq);
        let data = std::fs::read(path).map_err(|e| AuditError::io(path, &e))?;
        let newest = i + 1 == segs.len();
        let mut line_no = 0u64;
        let mut rest = &data[..];
        while !rest.is_empty() {
            line_no += 1;
            let loc = Loc {
                file: name.clone(),
                line: line_no,
            };
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    if line_no == 1 {
                        let named = serde_json::from_slice::<Record>(&rest[..end]).map(|r| r.seq);
                        if let Ok(seq) = named
                            && seq != *first_seq
                        {
                            c.error(
                                IssueKind::Misnamed,
                                &loc,
                                Some(seq),
                                None,
                                format!(
                                    "segment is named for seq {first_seq} but starts with seq {seq}"
                                ),
                            );
                        }
                    }
                    c.line(loc, &rest[..end]);
                    rest = &rest[end + 1..];
                }
                None if newest => {
                    c.issue(Severity::Warning, IssueKind::TornTail, Some(&loc), None, None, format!(
                        "partial last record ({} bytes, no newline) from a crash: never acknowledged; the recorder removes it at its next start",
                        rest.len()));
                    rest = &[];
                }
                None => {
                    c.error(IssueKind::PartialRecord, &loc, None, None, format!(
                        "partial record ({} bytes, no newline) at the end of a segment that is not the newest", rest.len()));
                    rest = &[];
                }
            }
        }
    }
    Ok(c.finish(segs.len()))
}

fn load_signed<T: for<'de> Deserialize<'de>>(
    path: &Path,
    issues: &mut Vec<Issue>,
) -> Result<Option<T>, AuditError> {
    match read_json(path) {
        Ok(v) => Ok(v),
        Err(AuditError::Corrupt { message, .. }) => {
            issues.push(Issue {
                severity: Severity::Error,
                kind: IssueKind::BadSignature,
                file: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                line: Some(1),
                seq: None,
                session: None,
                message: format!("does not parse: {message}"),
                unvouched: false,
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The first line of an export: what signs the records that follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Format version (1).
    pub airlock_audit_export: u32,
    pub head: Option<SignedHead>,
    pub anchor: Option<SignedAnchor>,
    /// Records in the export.
    pub records: u64,
}

/// Writes the log in `dir` as one JSON-lines stream: an [`ExportHeader`] line, then every
/// complete record line byte for byte (so the hashes still hold). A torn tail is left out.
/// Returns the number of records.
pub fn export(dir: &Path, out: &mut dyn Write) -> Result<u64, AuditError> {
    // Head and anchor first: the head only ever vouches for records already on disk.
    let head: Option<SignedHead> = read_json(&dir.join(HEAD_FILE))?;
    let anchor: Option<SignedAnchor> = read_json(&dir.join(ANCHOR_FILE))?;
    let segs = list_segments(dir).map_err(|e| AuditError::io(dir, &e))?;
    let mut lines = Vec::new();
    for (_, path) in &segs {
        let data = std::fs::read(path).map_err(|e| AuditError::io(path, &e))?;
        let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        lines.push(data[..end].to_vec());
    }
    let records: u64 = lines
        .iter()
        .map(|l| l.iter().filter(|&&b| b == b'\n').count() as u64)
        .sum();
    let header = ExportHeader {
        airlock_audit_export: 1,
        head,
        anchor,
        records,
    };
    let w = |e: std::io::Error| AuditError::io("export output", &e);
    serde_json::to_writer(&mut *out, &header).map_err(|e| AuditError::Io {
        path: "export output".into(),
        message: e.to_string(),
    })?;
    out.write_all(b"\n").map_err(w)?;
    for l in &lines {
        out.write_all(l).map_err(w)?;
    }
    out.flush().map_err(w)?;
    Ok(records)
}

/// Verifies an export file made by [`export`] against `public_key`, with the same checks as
/// [`verify`]. Locations name the export file and its line numbers.
pub fn verify_export(path: &Path, public_key: &VerifyingKey) -> Result<Report, AuditError> {
    verify_export_with(path, &VerifyOptions::public(public_key))
}

/// [`verify_export`] with the options of [`verify_with`].
pub fn verify_export_with(path: &Path, opts: &VerifyOptions<'_>) -> Result<Report, AuditError> {
    let file = std::fs::File::open(path).map_err(|e| AuditError::io(path, &e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| AuditError::io(path, &e))?;
    let header: ExportHeader = serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(&line))
        .map_err(|e| AuditError::Corrupt {
            path: path.to_owned(),
            message: format!("line 1 is not an export header: {e}"),
        })?;
    if header.airlock_audit_export != 1 {
        return Err(AuditError::Corrupt {
            path: path.to_owned(),
            message: format!("unsupported export version {}", header.airlock_audit_export),
        });
    }
    let mut c = Checker::new(opts, header.head.clone(), header.anchor.clone());
    let mut line_no = 1;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io(path, &e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let loc = Loc {
            file: name.clone(),
            line: line_no,
        };
        match line.strip_suffix(b"\n") {
            Some(l) => c.line(loc, l),
            None => c.error(
                IssueKind::PartialRecord,
                &loc,
                None,
                None,
                "partial record at the end of the export".into(),
            ),
        }
    }
    if c.report.records != header.records {
        c.issue(
            Severity::Error,
            IssueKind::Deleted,
            None,
            None,
            None,
            format!(
                "the export header announces {} records but {} follow",
                header.records, c.report.records
            ),
        );
    }
    Ok(c.finish(1))
}

/// Recreates a log directory from an export (into an empty or new `dir`): one segment with
/// every record, plus the head and anchor. The result verifies like the original.
pub fn import(export_path: &Path, dir: &Path) -> Result<u64, AuditError> {
    let data = std::fs::read(export_path).map_err(|e| AuditError::io(export_path, &e))?;
    let split = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| AuditError::Corrupt {
            path: export_path.to_owned(),
            message: "no export header line".into(),
        })?;
    let header: ExportHeader =
        serde_json::from_slice(&data[..split]).map_err(|e| AuditError::Corrupt {
            path: export_path.to_owned(),
            message: format!("line 1 is not an export header: {e}"),
        })?;
    let body = &data[split + 1..];
    std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, &e))?;
    if std::fs::read_dir(dir)
        .map_err(|e| AuditError::io(dir, &e))?
        .next()
        .is_some()
    {
        return Err(AuditError::Io {
            path: dir.to_owned(),
            message: "import needs an empty directory".into(),
        });
    }
    let first_seq = body
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice::<Record>(l).ok())
        .map_or(header.anchor.as_ref().map_or(0, |a| a.seq), |r| r.seq);
    write_atomic(&dir.join(segment_name(first_seq)), body)?;
    if let Some(h) = &header.head {
        let b = serde_json::to_vec(h).map_err(|e| AuditError::Io {
            path: dir.join(HEAD_FILE),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join(HEAD_FILE), &b)?;
    }
    if let Some(a) = &header.anchor {
        let b = serde_json::to_vec(a).map_err(|e| AuditError::Io {
            path: dir.join(ANCHOR_FILE),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join(ANCHOR_FILE), &b)?;
    }
    Ok(header.records)
}

/// Reads a file of heads written by `airlock audit export-heads`: one signed head per line
/// (blank lines ignored).
pub fn load_heads(path: &Path) -> Result<Vec<SignedHead>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditError::io(path, &e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AuditError::Corrupt {
                path: path.to_owned(),
                message: format!("line {}: not a signed head: {e}", i + 1),
            })
        })
        .collect()
}
