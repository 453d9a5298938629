//! What one line of the log holds, and the signed head and anchor files.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ring::hmac;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::model::{Class, ClassSet, Command, Dialect, Facts};

/// The record format this version writes (in the `open` record). 1: the first format (no
/// `format` field). 2: every line carries a `mac`; command records carry the protocol-neutral
/// command and its facts; reviews are `approval` records with votes.
pub const FORMAT: u32 = 2;

/// A SHA-256 value, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The predecessor of seq 0 and of a session's first record.
    pub const ZERO: ChainHash = ChainHash([0; 32]);

    /// The hash of one line of the log (its bytes without the newline).
    pub fn of_line(line: &[u8]) -> Self {
        ChainHash(Sha256::digest(line).into())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex_into(&self.0, &mut buf);
        // hex digits are ASCII, so this cannot fail.
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        from_hex(&s)
            .map(ChainHash)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Parses exactly `2 * N` hex digits.
pub(crate) fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the global chain, from 0, without gaps.
    pub seq: u64,
    /// When the event happened (microseconds since the Unix epoch, UTC).
    pub ts: u64,
    /// SHA-256 of the previous line.
    pub prev: ChainHash,
    /// The session the record belongs to (absent for log events such as `open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// SHA-256 of this session's previous record (zeros for its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprev: Option<ChainHash>,
    pub event: Event,
    /// HMAC-SHA256 of the SHA-256 of this line without its `mac` member, keyed with a key
    /// only the daemon holds (format 2; see [`seal`]). Always the line's last member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<ChainHash>,
}

/// The same shape as [`Record`] without its MAC, borrowed, for the writer (no clones on the hot path).
#[derive(Serialize)]
pub(crate) struct RecordRef<'a> {
    pub seq: u64,
    pub ts: u64,
    pub prev: &'a ChainHash,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sprev: Option<&'a ChainHash>,
    pub event: &'a Event,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The recorder started (daemon start), possibly after removing a torn tail.
    Open(OpenEvent),
    SessionStart(SessionStartRecord),
    Command(CommandRecord),
    /// The outcome of a review that held a command.
    Approval(ApprovalEvent),
    Result(ResultRecord),
    Masking(MaskingRecord),
    /// A terminal recording of command `n` (a shell or a command's output), stored beside the
    /// log and bound to the chain by its hash.
    Recording(RecordingRecord),
    SessionEnd(SessionEndRecord),
}

/// The recorder started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenEvent {
    /// Record format of the following records ([`FORMAT`]; absent in format 1).
    #[serde(default = "format_1")]
    pub format: u32,
    /// airlock version that wrote the following records.
    pub version: String,
    /// The key that signs heads from here on (hex).
    pub public_key: String,
    /// A partial line left by a crash, removed at this start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornTail>,
    /// Records this start found after the last signed head (left by a crash): from here on the
    /// new heads vouch for them, so they are named on the chain. From format 2 the start
    /// adopts them only once their MACs prove this daemon's key wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_before: Option<u64>,
}

/// A partial last line that a crash left and the next start removed. Never acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TornTail {
    pub segment: String,
    /// Byte offset in the segment where the fragment started (the file was cut back to it).
    pub offset: u64,
    pub bytes: u64,
    /// SHA-256 of the fragment.
    pub sha256: ChainHash,
}

/// TLS between client and proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Subject of the client certificate, when one was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
}

/// The calling process, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRecord {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    pub comm: String,
    pub netns_cookie: u64,
}

impl From<&crate::model::Workload> for WorkloadRecord {
    fn from(w: &crate::model::Workload) -> Self {
        WorkloadRecord {
            pid: w.pid,
            tgid: w.tgid,
            uid: w.uid,
            gid: w.gid,
            user: w.user.clone(),
            cgroup_id: w.cgroup_id,
            cgroup_path: w.cgroup_path.clone(),
            comm: w.comm.clone(),
            netns_cookie: w.netns_cookie,
        }
    }
}

/// A session began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStartRecord {
    /// The proxy's own session number (unique per daemon run), for log correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_session: Option<u64>,
    pub subject: String,
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRecord>,
    pub target: String,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
}

/// How a review ended, or that a standing grant matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Enough approvers approved; the command ran.
    Approved,
    Denied,
    /// Nobody decided in time (after escalation, when the rule escalates).
    TimedOut,
    /// Format 1 only: the review escalated (format 2 records the groups in `escalated_to`).
    Escalated,
    /// An earlier approval (a retry-mode grant or a plan, within its ttl) covered this command.
    Grant,
    /// An approver revoked the request while the command waited.
    Revoked,
    /// The client went away before a decision.
    Withdrawn,
    /// Retry mode: the command was refused with the request id, which now waits for review.
    Pending,
    /// The approval store failed; the command was refused.
    Unavailable,
}

impl ApprovalOutcome {
    /// Lower-case name, as in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalOutcome::Approved => "approved",
            ApprovalOutcome::Denied => "denied",
            ApprovalOutcome::TimedOut => "timed_out",
            ApprovalOutcome::Escalated => "escalated",
            ApprovalOutcome::Grant => "grant",
            ApprovalOutcome::Revoked => "revoked",
            ApprovalOutcome::Withdrawn => "withdrawn",
            ApprovalOutcome::Pending => "pending",
            ApprovalOutcome::Unavailable => "unavailable",
        }
    }
}

/// One reviewer's decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRecord {
    /// Who decided: the token subject, or `admin` for the local admin token.
    pub by: String,
    /// How they authenticated: `admin-token` or `oidc:<issuer>`.
    pub via: String,
    /// `approve`, `deny` or `revoke`.
    pub verdict: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (µs since the epoch).
    pub at: u64,
}

/// The standing approval a command used: a plan, or a retry-mode request approved earlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    /// `command` (an earlier retry-mode request) or `plan`.
    pub kind: Cow<'static, str>,
    /// Runs of this command the grant still allows after this one.
    pub uses_left: u32,
    /// End of the grant's validity (µs since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Who submitted the plan, and for what task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// A review of one command: the request (id, rule, approver groups), every vote with the
/// voter and reason, how it ended, and the grant it used. Written as an `approval` record
/// right after the command it released or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRecord {
    /// The approval request id (`airlock approve <id>`).
    pub id: String,
    pub outcome: ApprovalOutcome,
    /// The rule that asked for review.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// Groups whose members may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Approvals needed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quorum: u32,
    /// `hold` or `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Cow<'static, str>>,
    /// Groups asked once nobody decided in time (the review escalated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_to: Vec<String>,
    /// When the request was created, and decided (µs since the epoch).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub requested_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<VoteRecord>,
    /// The standing approval used, when the outcome is `grant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantRecord>,
    /// Why it ended (the last reason given, the timeout, the store's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Format 1 only: who decided (format 2 records carry `votes`).
    #[serde(rename = "approvers", default, skip_serializing_if = "Vec::is_empty")]
    pub decided_by: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn format_1() -> u32 {
    1
}

/// What classification found in a command, as recorded: the [`Facts`] without the parts only
/// the policy engine needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsRecord {
    /// The riskiest class over all parts.
    pub class: Class,
    /// Every part's class (the class included), least risky first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<Class>,
    /// Kinds in order (SQL statement kinds, `exec`, the HTTP method, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_read: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_written: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// Programs a command line runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// What a non-SQL command touches (HTTP `host/path`, Kubernetes resources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Why the command is `unknown` or escalated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The pre-parse limit the command exceeded (it was not parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl From<&Facts> for FactsRecord {
    fn from(f: &Facts) -> Self {
        FactsRecord {
            class: f.class,
            classes: f.classes().iter().collect(),
            kinds: f.kinds.iter().map(|k| Cow::Borrowed(*k)).collect(),
            tables_read: f.tables_read.clone(),
            tables_written: f.tables_written.clone(),
            functions: f.functions.clone(),
            programs: f.programs.clone(),
            objects: f.objects.clone(),
            notes: f.notes.clone(),
            limit: f.limit.clone(),
        }
    }
}

impl FactsRecord {
    /// Everything the command touches: tables read and written, programs, objects.
    pub fn touched(&self) -> impl Iterator<Item = &str> {
        self.tables_read
            .iter()
            .chain(&self.tables_written)
            .chain(&self.programs)
            .chain(&self.objects)
            .map(String::as_str)
    }
}

/// A command and what policy made of it.
///
/// Format 2 records the protocol-neutral [`Command`] and its [`FactsRecord`]; a format-1
/// record (`text`, `classes`, `kind`, written only by the PostgreSQL and TCP handlers) reads
/// back as the SQL or connect command it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CommandWire")]
pub struct CommandRecord {
    /// Number of the command in its session, from 1.
    pub n: u64,
    pub command: Command<'static>,
    pub facts: FactsRecord,
    /// allow, deny or review.
    pub action: Cow<'static, str>,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who sent this command, when not the session's caller: an HTTP or Kubernetes request
    /// authenticated by its own bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Box<CallerRecord>>,
}

/// The caller of one command, identified by a token it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRecord {
    pub subject: String,
    pub groups: Vec<String>,
    /// The token's issuer.
    pub issuer: String,
}

impl CommandRecord {
    /// The command's canonical one-line text (what reviewers saw and approvals hashed).
    pub fn text(&self) -> Cow<'_, str> {
        self.command.text()
    }
}

/// Both formats of a command record, as they appear on disk.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandWire {
    n: u64,
    #[serde(default)]
    command: Option<Command<'static>>,
    #[serde(default)]
    facts: Option<FactsRecord>,
    // Format 1.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    classes: Vec<Cow<'static, str>>,
    #[serde(default)]
    kind: Option<Cow<'static, str>>,
    action: Cow<'static, str>,
    rule: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caller: Option<Box<CallerRecord>>,
}

impl TryFrom<CommandWire> for CommandRecord {
    type Error = String;

    fn try_from(w: CommandWire) -> Result<Self, String> {
        let (command, facts) = match (w.command, w.facts, w.text) {
            (Some(c), Some(f), None) => (c, f),
            (None, None, Some(text)) => legacy_command(text, &w.classes, w.kind),
            _ => {
                return Err(
                    "a command record carries `command` and `facts` (or, in format 1, `text`)"
                        .into(),
                );
            }
        };
        Ok(CommandRecord {
            n: w.n,
            command,
            facts,
            action: w.action,
            rule: w.rule,
            reason: w.reason,
            caller: w.caller,
        })
    }
}

/// A format-1 command: the TCP handler's connection, or else a PostgreSQL statement (the only
/// two handlers that wrote format 1).
fn legacy_command(
    text: String,
    classes: &[Cow<'static, str>],
    kind: Option<Cow<'static, str>>,
) -> (Command<'static>, FactsRecord) {
    let classes: Vec<Class> = {
        let set: ClassSet = classes
            .iter()
            .map(|c| {
                Class::ALL
                    .into_iter()
                    .find(|k| k.as_str() == c)
                    .unwrap_or(Class::Unknown)
            })
            .collect();
        set.iter().collect()
    };
    let command = if kind.as_deref() == Some("connect") && text == "<tcp connection>" {
        Command::Connect
    } else {
        Command::Sql {
            dialect: Dialect::Postgres,
            text: Cow::Owned(text),
            params: None,
        }
    };
    let facts = FactsRecord {
        class: classes.iter().copied().max().unwrap_or_default(),
        classes,
        kinds: kind.into_iter().collect(),
        ..FactsRecord::default()
    };
    (command, facts)
}

/// A review of command `n` ended: [`ReviewRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    pub n: u64,
    #[serde(flatten)]
    pub review: ReviewRecord,
}

/// The answer to command `n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRecord {
    pub n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of the answer sent to the client.
    pub bytes: u64,
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The protocol's status of the answer (an HTTP status code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes of the request's body sent upstream (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    /// What the gateway changed about the exchange, never a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The request's body, masked, when the deciding rule has `record_bodies` (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<BodyRecord>,
    /// The answer's body, masked, when the deciding rule has `record_bodies` (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_body: Option<BodyRecord>,
}

/// A body of an exchange as recorded for a rule's `record_bodies`: its text after masking,
/// never before, up to a cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyRecord {
    /// The masked text (bytes that are not UTF-8 replaced).
    pub text: String,
    /// The body went on past `text`: the cap was reached, or the body was cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Bytes of the body before masking (after gzip decoding), as far as it was read.
    pub bytes: u64,
}

/// A terminal recording kept beside the log (asciicast v2), bound to the chain by its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingRecord {
    /// The command it records.
    pub n: u64,
    /// Path relative to the log directory (`recordings/<session>/<n>.cast`).
    pub file: String,
    /// `asciicast-v2`.
    pub format: String,
    pub sha256: ChainHash,
    pub bytes: u64,
    /// Output, input and resize events written.
    pub events: u64,
    /// The recording stopped at its size limit before the command ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// How many values one masking rule replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskCount {
    pub rule: String,
    pub values: u64,
}

/// What masking did to the answer of command `n`: rule names and counts, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingRecord {
    pub n: u64,
    pub rules: Vec<MaskCount>,
}

/// Counts of masked values per rule, built while masking an answer.
///
/// Deliberately holds only rule names and counts: there is no way to hand the audit log a
/// masked value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskTally {
    counts: Vec<MaskCount>,
}

impl MaskTally {
    /// Counts `values` more values masked by `rule`.
    pub fn add(&mut self, rule: &str, values: u64) {
        match self.counts.iter_mut().find(|c| c.rule == rule) {
            Some(c) => c.values += values,
            None => self.counts.push(MaskCount {
                rule: rule.to_owned(),
                values,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The counts so far.
    pub fn counts(&self) -> &[MaskCount] {
        &self.counts
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    ClientClosed,
    ServerClosed,
    /// The gateway ended it by policy (e.g. a denied login).
    Denied,
    /// Protocol or I/O error.
    Error,
    /// The daemon is shutting down.
    Shutdown,
    /// The audit log could not record (fail closed).
    AuditFailure,
    /// The handler dropped its recorder without ending the session (a bug or a panic).
    Dropped,
}

/// A session ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionEndRecord {
    pub reason: EndReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration_us: u64,
    pub commands: u64,
    /// How many records of this session precede this one (checked by verify).
    pub records: u64,
}

/// The signed head: the writer vouches that record `seq` has line hash `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: ChainHash,
    pub ts: u64,
    /// Hex of the signing key's public half (informational: verify uses the key it is given).
    pub public_key: String,
    /// Hex Ed25519 signature over [`SignedHead::message`].
    pub signature: String,
}

impl SignedHead {
    fn message(seq: u64, hash: &ChainHash, ts: u64) -> Vec<u8> {
        let mut m = b"airlock-audit-head-v1\0".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&hash.0);
        m.extend_from_slice(&ts.to_be_bytes());
        m
    }

    pub(crate) fn sign(key: &SigningKey, seq: u64, hash: ChainHash, ts: u64) -> Self {
        let sig = key.sign(&Self::message(seq, &hash, ts));
        SignedHead {
            seq,
            hash,
            ts,
            public_key: to_hex(key.verifying_key().as_bytes()),
            signature: to_hex(&sig.to_bytes()),
        }
    }

    /// Whether `key` signed this head.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        check_sig(
            key,
            &Self::message(self.seq, &self.hash, self.ts),
            &self.signature,
        )
    }
}

/// The signed retention anchor: the first kept record is `seq` and its `prev` is `prev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAnchor {
    pub seq: u64,
    pub prev: ChainHash,
    pub ts: u64,
    pub signature: String,
}

impl SignedAnchor {
    fn message(seq: u64, prev: &ChainHash, ts: u64) -> Vec<u8> {
        let mut m = b"airlock-audit-anchor-v1\0".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&prev.0);
        m.extend_from_slice(&ts.to_be_bytes());
        m
    }

    pub(crate) fn sign(key: &SigningKey, seq: u64, prev: ChainHash, ts: u64) -> Self {
        let sig = key.sign(&Self::message(seq, &prev, ts));
        SignedAnchor {
            seq,
            prev,
            ts,
            signature: to_hex(&sig.to_bytes()),
        }
    }

    /// Whether `key` signed this anchor.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        check_sig(
            key,
            &Self::message(self.seq, &self.prev, self.ts),
            &self.signature,
        )
    }
}

fn check_sig(key: &VerifyingKey, message: &[u8], sig_hex: &str) -> bool {
    from_hex::<64>(sig_hex)
        .map(|b| Signature::from_bytes(&b))
        .is_some_and(|sig| key.verify(message, &sig).is_ok())
}

/// What [`seal`] appends to a serialized record in place of its closing brace:
/// `,"mac":"<64 hex>"}`.
const MAC_MEMBER: &[u8] = b",\"mac\":\"";
const MAC_TAIL: usize = MAC_MEMBER.len() + 64 + 2;

/// Seals the record serialized in `buf[start..]` (a JSON object without a MAC): appends its
/// `mac` member and returns the line's chain hash. The MAC is the HMAC-SHA256, under `key`, of
/// the SHA-256 of the record without the member; it authenticates the whole line, its `prev`
/// link included, so nobody without the key can extend the chain. One SHA-256 pass over the
/// line serves both: the state before the closing brace yields the MAC's digest and, continued
/// over the member, the chain hash, so the MAC costs a few blocks rather than a second pass.
pub fn seal(key: &hmac::Key, buf: &mut Vec<u8>, start: usize) -> ChainHash {
    let brace = buf.len() - 1;
    let mut line = Sha256::new();
    line.update(&buf[start..brace]);
    let mut record = line.clone();
    record.update(b"}");
    let tag = hmac::sign(key, &record.finalize());
    buf.truncate(brace);
    let member = buf.len();
    buf.extend_from_slice(MAC_MEMBER);
    let at = buf.len();
    buf.resize(at + 64, 0);
    hex_into(tag.as_ref(), &mut buf[at..]);
    buf.extend_from_slice(b"\"}");
    line.update(&buf[member..]);
    ChainHash(line.finalize().into())
}

/// What a line's MAC says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacCheck {
    /// The line has no `mac` member (format 1, or removed).
    Missing,
    /// `key` wrote this line.
    Valid,
    /// Not made with `key`: changed, or written by someone without it.
    Invalid,
}

/// Checks the `mac` member at the end of `line` against `key`.
pub(crate) fn check_mac(key: &hmac::Key, line: &[u8]) -> MacCheck {
    let Some(member) = line.len().checked_sub(MAC_TAIL) else {
        return MacCheck::Missing;
    };
    let (body, tail) = line.split_at(member);
    let Some(hex) = tail
        .strip_prefix(MAC_MEMBER)
        .and_then(|t| t.strip_suffix(b"\"}"))
    else {
        return MacCheck::Missing;
    };
    let Some(tag) = std::str::from_utf8(hex).ok().and_then(from_hex::<32>) else {
        return MacCheck::Invalid;
    };
    let mut record = Sha256::new();
    record.update(body);
    record.update(b"}");
    match hmac::verify(key, &record.finalize(), &tag) {
        Ok(()) => MacCheck::Valid,
        Err(_) => MacCheck::Invalid,
    }
}
