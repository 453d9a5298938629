//! Session recording and the tamper-evident audit log.
//!
//! Protocol handlers record through a [`Recorder`] (one per daemon) and a [`SessionRecorder`]
//! (one per session, from [`Recorder::admit_session`]). Appends go through a bounded queue to
//! one writer thread, so recording stays off the hot path: a slow disk makes senders wait
//! (backpressure), it never drops records. [`verify()`] checks a log directory, [`cli`] holds the
//! `airlock sessions | replay | audit …` commands.
//!
//! # On-disk layout (`audit.dir`, default `<state_dir>/audit`)
//!
//! ```text
//! 00000000000000000000.jsonl   segment: JSON lines, named by the seq of its first record
//! 00000000000000004711.jsonl   a new segment starts at each daemon start, past
//!                              `segment_max_bytes`, and when the UTC day changes
//! head.json                    signed head: {seq, hash of that record's line, ts, signature}
//!                              (replaced after every sync)
//! anchor.json                  signed retention anchor: {seq, prev} of the first kept record
//! ```
//!
//! # The chain
//!
//! Every line is one [`Record`]. `prev` is the SHA-256 of the previous line's bytes (without
//! its newline; all zeros for seq 0), `seq` counts up by one across segments, so a changed,
//! deleted, reordered or inserted line breaks the chain at a place [`verify()`] can name.
//! Records of a session also carry `sprev`, the hash of that session's previous record (zeros
//! for its start), so each session is a chain of its own inside the global one. The session's
//! end record carries `sprev` = the session's final hash and is itself a link of the global
//! chain: the global chain is the log of session heads.
//!
//! The recorder signs the global head (Ed25519) after every sync that covered new records
//! (every `batch_interval` while records are written; `head_interval` can space them out),
//! at segment rotation, on [`Recorder::flush`] and on [`Recorder::close`]. A full rewrite of
//! the chain with recomputed hashes therefore fails the head signature, and cutting records
//! the head covers is reported as truncation.
//!
//! # Record format and MACs
//!
//! The `open` record names the format of the records after it ([`FORMAT`]; absent means 1).
//! Format 2 ends every line with `"mac"`: the HMAC-SHA256 of the line without that member,
//! keyed with [`record_mac_key`], derived from the signing key. The MAC covers `prev`, so
//! only the holder of the key can extend the chain. Records after the signed head (at most a
//! sync's worth, left by a crash) are therefore still vouched for: a start adopts them only
//! when every one continues the chain and carries a valid MAC, and refuses the log otherwise
//! (it never signs over what it cannot authenticate; `recover`). `verify` checks them when it
//! has the signing key, and otherwise reports them as an unsigned tail (`--strict` fails).
//! Format 1 logs verify as before and read back with their commands as SQL (or the TCP
//! connection) they were. What the key cannot cure — the newest records cut and an older,
//! genuinely signed head put back — is caught by heads shipped off the host
//! (`airlock audit export-heads`, `verify --heads`; docs/decisions/audit-durability.md).
//!
//! # Retention
//!
//! Retention deletes whole old segments (by age of their last write, or to keep the total
//! under `max_bytes`; the active segment is never deleted). Before deleting, the writer signs
//! `anchor.json` with the seq and `prev` of the first record it keeps. Without an anchor the log
//! must start at seq 0; with one, it must start at or before the anchored seq, and that record
//! must carry the anchored `prev`. Deleting further segments by hand is therefore detected.
//!
//! # Durability and the torn-tail rule
//!
//! Appending is two-phase: a [`SessionRecorder`] method queues the record (waiting for queue
//! space) and returns an [`Ack`]; the record is *acknowledged* when [`Ack::durable`] resolves
//! `Ok`. The writer acknowledges only after the record's whole line, newline included, was
//! written (`write(2)` returned) and, with `fsync: always`, after the `fdatasync` that covers
//! it. One `fdatasync` covers every record the writer drained from the queue (group commit).
//! With `fsync: batch` (default) the acknowledgement follows the write and `fdatasync` runs
//! every `batch_interval`: a `kill -9` still loses nothing acknowledged (the data is in the
//! page cache), a power failure can lose up to one interval. `always` cost 84% of pgbench -S
//! throughput on the test machine (docs/decisions/audit-durability.md).
//!
//! Handlers queue a command's record before sending it upstream and await its `Ack` before
//! the answer goes back to the client, so the write overlaps the server round trip and no
//! client sees the effect of a command whose record could still be lost. `start` and `end`
//! wait for their own acknowledgement.
//!
//! With `fsync: batch`, a session whose writer lock is free chains its record into the
//! writer's buffer instead of queueing it. The buffer is written when a record in it is
//! awaited or when the batch sync comes due, so records nobody awaits (results) share the
//! write of the next command. The acknowledgement still follows that `write(2)`.
//!
//! A crash can leave a partial last line (no trailing newline). Since acknowledgement needs the
//! newline, such a line was never acknowledged. **Rule:** [`verify()`] tolerates a partial line
//! only as the final bytes of the newest segment, and reports it as a warning (`torn_tail`);
//! anywhere else it is an error. At its next start the recorder cuts the fragment off and
//! writes an `open` record that names the segment, offset, length and SHA-256 of what it cut,
//! so the removal itself is on the chain.
//!
//! # Full storage
//!
//! When a write fails (ENOSPC, EIO) the batch is rolled back (the file is cut back to its last
//! good length) and every waiting sender gets an error. [`Recorder::admit_session`] refuses new
//! sessions while the last write failed or free space is below `min_free_bytes`
//! (`on_full: refuse`, default: fail closed); with `on_full: allow` sessions run unrecorded and
//! a warning is logged.

pub mod cli;
mod coop;
mod keys;
mod query;
mod record;
mod recover;
mod time;
pub(crate) mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use keys::{
    generate_key, load_or_generate_signing_key, load_public_key, load_signing_key, public_key_path,
    record_mac_key,
};
pub use query::{SessionQuery, SessionSummary, load_session, read_records, search_sessions};
pub use record::{
    ApprovalEvent, ApprovalOutcome, BodyRecord, CallerRecord, ChainHash, CommandRecord, EndReason,
    Event, FORMAT, FactsRecord, GrantRecord, MaskCount, MaskTally, MaskingRecord, OpenEvent,
    Record, RecordingRecord, ResultRecord, ReviewRecord, SessionEndRecord, SessionStartRecord,
    TlsInfo, TornTail, VoteRecord, WorkloadRecord,
};
pub use record::{SignedAnchor, SignedHead, seal};
pub use time::{format_ts, parse_time};
pub use verify::{
    ExportHeader, Issue, IssueKind, Report, Severity, VerifyOptions, export, import, load_heads,
    verify, verify_export, verify_export_with, verify_with,
};
pub use writer::{
    Ack, CommandEvent, CommandResult, RECORDINGS_DIR, Recorder, SessionEnd, SessionRecorder,
    SessionStart, recorded_command,
};

/// Errors of the audit subsystem.
///
/// Cloneable because one failed group write answers every sender that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The disk is full (ENOSPC, quota) or below `min_free_bytes`: new sessions are refused
    /// (`on_full: refuse`) and appends fail.
    #[error("audit storage full: {0}")]
    StorageFull(String),
    /// Any other I/O failure on the log.
    #[error("audit log {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// A signing or public key could not be read, parsed or written.
    #[error("audit key {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// The log directory holds something the recorder cannot continue from.
    #[error("audit log {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The recorder was closed (daemon shutting down).
    #[error("audit recorder is closed")]
    Closed,
    /// A session id or prefix that matches no session, or several.
    #[error("{0}")]
    NotFound(String),
}

impl AuditError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: &std::io::Error) -> Self {
        let path = path.into();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                AuditError::StorageFull(format!("{}: {e}", path.display()))
            }
            _ => AuditError::Io {
                path,
                message: e.to_string(),
            },
        }
    }
}
