//! What one line of the log holds, and the signed head and anchor files.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

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
}

/// The same shape as [`Record`], borrowed, for the writer (no clones on the hot path).
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
    SessionEnd(SessionEndRecord),
}

/// The recorder started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenEvent {
    /// airlock version that wrote the following records.
    pub version: String,
    /// The key that signs heads from here on (hex).
    pub public_key: String,
    /// A partial line left by a crash, removed at this start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn: Option<TornTail>,
    /// Records this start found after the last signed head (left by a crash): from here on the
    /// new heads vouch for them, so they are named on the chain.
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

impl From<&crate::identity::Workload> for WorkloadRecord {
    fn from(w: &crate::identity::Workload) -> Self {
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
    Approved,
    Denied,
    TimedOut,
    Escalated,
    /// An earlier approval (grant with a ttl) covered this command.
    Grant,
}

/// An approval attached to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub id: String,
    pub outcome: ApprovalOutcome,
    /// Who approved (or denied).
    pub approvers: Vec<String>,
}

/// A command and what policy made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRecord {
    /// Number of the command in its session, from 1.
    pub n: u64,
    pub text: String,
    /// Classification classes (read, write, ddl, …).
    pub classes: Vec<Cow<'static, str>>,
    /// Statement kind (select, insert, …), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'static, str>>,
    /// allow, deny or review.
    pub action: Cow<'static, str>,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// A review resolved for command `n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    pub n: u64,
    #[serde(flatten)]
    pub approval: Approval,
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
