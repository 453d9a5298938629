//! The recorder: sessions hand records to one writer thread through a bounded queue; the
//! writer chains, writes, syncs, signs heads, rotates segments and applies retention.
//!
//! With `fsync: batch` a session whose earlier records are all written appends inline
//! instead: it takes the writer's lock if it is free (never waits for it) and chains the
//! record into the writer's buffer. The buffer goes to the file with one `write(2)` when a
//! record in it is awaited ([`Ack::durable`]: a command before its answer), or at the next
//! batch sync, whichever comes first; so a statement's result record and the next command
//! record (and other sessions' records) share a write. Nothing wakes the writer thread and
//! back (about 16 µs of proxy CPU per record on 2 cores, docs/decisions/audit-durability.md).
//! Everything that can wait on the disk (`fdatasync`, rotation with its directory sync,
//! signing, retention) stays on the writer and syncer threads; a session that finds the lock
//! taken, a rotation due, or its own records still queued, queues.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::coop::{self, LogLock};
use super::keys::load_or_generate_signing_key;
use super::keys::record_mac_key;
use super::record::{
    ApprovalEvent, BodyRecord, CallerRecord, ChainHash, CommandRecord, EndReason, Event, FORMAT,
    FactsRecord, MaskTally, MaskingRecord, OpenEvent, Record, RecordRef, RecordingRecord,
    ResultRecord, ReviewRecord, SessionEndRecord, SessionStartRecord, SignedAnchor, SignedHead,
    TlsInfo, WorkloadRecord, seal, to_hex,
};
use super::time::now_us;
use crate::config::audit::{AuditConfig, FsyncPolicy, OnFull, RetentionConfig};
use crate::model::{Command, Decision, Facts, HttpBody, HttpRequest, Identity, Protocol, Workload};

pub(crate) const HEAD_FILE: &str = "head.json";
pub(crate) const ANCHOR_FILE: &str = "anchor.json";
/// Subdirectory of the log directory that holds terminal recordings, one directory per
/// session.
pub const RECORDINGS_DIR: &str = "recordings";
/// Most records one group write takes from the queue.
const MAX_BATCH: usize = 1024;
/// How often retention looks at the segments when nothing else triggers it.
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// After a failed write, new sessions are refused this long before one is let through to
/// probe whether the log can take records again.
const FAILURE_HOLDOFF_US: u64 = 1_000_000;
const DAY_US: u64 = 86_400_000_000;

/// File name of the segment whose first record is `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.jsonl")
}

/// The first seq of a segment file name, or `None` for other files.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files of `dir`, oldest first. Only regular files: a link named like a segment is
/// never followed (the writer runs as root; the reader would read what it points at), so to
/// `verify` the segment is missing.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name)
            && entry.file_type()?.is_file()
        {
            segs.push((seq, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically (temp file, rename). With `durable` the file and the
/// directory are synced, so the new content survives a power loss; without, a process crash
/// still leaves the old file or the new one, whole, and no sync waits on the disk.
fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), AuditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A name of this process and call: two daemons sharing the log (an upgrade) each
    // replace head.json, and neither must rename the other's half-written file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let r = (|| {
        // Whatever sits at the temporary name (a crash's leftover, or a link planted to make
        // root overwrite its target) goes first; the new file is created, never followed.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable { sync_dir(dir) } else { Ok(()) }
    })();
    r.map_err(|e| AuditError::io(path, &e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How long a measurement of the free space stands. Admitting a session checks it; a
/// statvfs per connection showed in connect latency, and a write that finds the disk full
/// fails closed by itself (`failed_at`).
const FREE_SPACE_TTL_US: u64 = 100_000;

impl Shared {
    /// Bytes free under the log, measured at most every [`FREE_SPACE_TTL_US`].
    fn free_bytes(&self) -> std::io::Result<u64> {
        let now = now_us();
        let at = self.free_at.load(Ordering::Acquire);
        if at != 0 && now.saturating_sub(at) < FREE_SPACE_TTL_US {
            return Ok(self.free.load(Ordering::Relaxed));
        }
        let free = free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        self.free_at.store(now, Ordering::Release);
        Ok(free)
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to writable memory of
    // the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The first record of a segment, if it has a complete one.
pub(crate) fn first_record(path: &Path) -> std::io::Result<Option<(Record, ChainHash)>> {
    let mut line = Vec::new();
    std::io::BufReader::new(File::open(path)?).read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Record>(&line)
        .ok()
        .map(|r| (r, ChainHash::of_line(&line))))
}

// Nearly every message is an Append; boxing it would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Append(Append),
    /// Sync and sign the head now; answers the signed seq.
    Flush(oneshot::Sender<Result<u64, AuditError>>),
    /// Like flush, then the writer stops.
    Close(oneshot::Sender<Result<u64, AuditError>>),
    /// Like flush, then start (`true`) or stop sharing the log with another process
    /// ([`coop`](super::coop)).
    Share(bool, oneshot::Sender<Result<u64, AuditError>>),
}

struct Append {
    /// Internal session number; 0 for records outside sessions.
    sid: u64,
    session: Arc<str>,
    ts: u64,
    event: Event,
    ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    /// The session's count of queued records, decremented once this one is written.
    queued: Option<Arc<AtomicU64>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    public: VerifyingKey,
    on_full: OnFull,
    min_free: u64,
    /// The last measurement of the free space, and when it was taken (µs since the epoch, 0:
    /// never): admission checks it for every session, a statvfs at most every
    /// [`FREE_SPACE_TTL_US`].
    free: AtomicU64,
    free_at: AtomicU64,
    /// When the last write failed (µs since the epoch), 0 when the last write succeeded.
    failed_at: AtomicU64,
    closed: AtomicBool,
    /// Another process writes this log too (an upgrade hand-over): no inline appends.
    coop: AtomicBool,
    run_id: u32,
    next_session: AtomicU64,
    /// Records not written because `on_full: allow` let a session run unrecorded.
    unrecorded: AtomicU64,
    /// Wakes the writer thread to arm its batch-sync timer after inline appends. A `Notify`
    /// keeps the wake-up even when the writer is not waiting yet, and needs no queue space.
    kick: tokio::sync::Notify,
    /// Appends that went through the queue (tests check that both paths ran).
    #[cfg(test)]
    queued_appends: AtomicU64,
}

/// The daemon's audit recorder. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct Recorder {
    /// The queue, the shared state, and the writer for inline appends (`fsync: batch`).
    inner: Option<(mpsc::Sender<Msg>, Arc<Shared>, Option<SharedWriter>)>,
}

type SharedWriter = Arc<Mutex<Writer>>;

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some((_, shared, _)) => f
                .debug_struct("Recorder")
                .field("dir", &shared.dir)
                .finish(),
            None => f.write_str("Recorder(disabled)"),
        }
    }
}

impl Recorder {
    /// Opens (or creates) the log, loads or generates the signing key, recovers from a crash
    /// (cuts a torn tail, see the module docs), writes an `open` record and a signed head, and
    /// starts the writer thread. Needs no async runtime. With `enabled: false` nothing is
    /// opened and sessions run unrecorded.
    pub fn open(config: &AuditConfig, state_dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(config, state_dir, false)
    }

    /// As [`open`](Self::open) for a daemon taking over from one that still records the
    /// sessions it drains: the log is shared with it ([`coop`](super::coop)) until
    /// [`unshare`](Self::unshare).
    pub fn open_shared(config: &AuditConfig, state_dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(config, state_dir, true)
    }

    fn open_with(config: &AuditConfig, state_dir: &Path, share: bool) -> Result<Self, AuditError> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let dir = config.dir(state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| AuditError::io(&dir, &e))?;
        let key_path = config.signing_key(state_dir);
        if !key_path.exists() && dir.join(HEAD_FILE).exists() {
            // A fresh key would re-sign a log some other key vouched for: make that explicit.
            return Err(AuditError::Key {
                path: key_path,
                message: format!(
                    "missing, but the log in {} was signed with an existing key: restore the key file, or create a new one with `airlock audit keygen`",
                    dir.display()
                ),
            });
        }
        let key = load_or_generate_signing_key(&key_path)?;
        let public = key.verifying_key();
        let lock = share.then(|| LogLock::open(&dir)).transpose()?;
        let mut writer = Writer::recover(dir.clone(), &key, config, lock)?;
        let mut run = [0u8; 4];
        run.copy_from_slice(&writer.prev.0[..4]);
        let shared = Arc::new(Shared {
            dir,
            public,
            on_full: config.on_full,
            min_free: config.min_free_bytes,
            free: AtomicU64::new(0),
            free_at: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            coop: AtomicBool::new(share),
            // The open record's hash differs per start, so ids never repeat across runs.
            run_id: u32::from_be_bytes(run),
            next_session: AtomicU64::new(1),
            unrecorded: AtomicU64::new(0),
            kick: tokio::sync::Notify::new(),
            #[cfg(test)]
            queued_appends: AtomicU64::new(0),
        });
        let now = Instant::now();
        let syncer = Syncer {
            dir: shared.dir.clone(),
            key,
            head_interval: config.head_interval,
            retention: config.retention.clone(),
            shared: shared.clone(),
            pending: None,
            latest: writer.seq.checked_sub(1).map(|s| (s, writer.prev)),
            signed: writer.seq.saturating_sub(1),
            current: writer.seg_path.clone(),
            last_head: now,
            last_retention: now,
        };
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        writer.syncer = Some(sync_tx);
        std::thread::Builder::new()
            .name("audit-syncer".into())
            .spawn(move || syncer.run(sync_rx))
            .map_err(|e| AuditError::io(&shared.dir, &e))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let writer = Arc::new(Mutex::new(writer));
        // Inline appends acknowledge on write(2): only where that is the promise.
        let inline = (config.fsync == FsyncPolicy::Batch).then(|| writer.clone());
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || Writer::run(&writer, rx, &writer_shared))
            .map_err(|e| AuditError::io(&shared.dir, &e))?;
        Ok(Recorder {
            inner: Some((tx, shared, inline)),
        })
    }

    /// A recorder that records nothing (`enabled: false`): every session runs unrecorded.
    pub fn disabled() -> Self {
        Recorder { inner: None }
    }

    /// Whether records are being written.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The log directory (`None` when disabled).
    pub fn dir(&self) -> Option<&Path> {
        self.inner.as_ref().map(|(_, s, _)| s.dir.as_path())
    }

    /// The key that verifies this log's heads (`None` when disabled).
    pub fn public_key(&self) -> Option<VerifyingKey> {
        self.inner.as_ref().map(|(_, s, _)| s.public)
    }

    /// Sessions admitted unrecorded plus records lost, both under `on_full: allow`.
    pub fn unrecorded(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |(_, s, _)| s.unrecorded.load(Ordering::Relaxed))
    }

    /// Admits a new session, or refuses it when the log cannot take records (disk full, below
    /// `min_free_bytes`, the last write failed) and `on_full` is `refuse` (the default).
    /// Call [`SessionRecorder::start`] next.
    pub fn admit_session(&self) -> Result<SessionRecorder, AuditError> {
        let Some((tx, shared, writer)) = &self.inner else {
            return Ok(SessionRecorder::unrecorded(None));
        };
        if shared.closed.load(Ordering::Acquire) || tx.is_closed() {
            return Err(AuditError::Closed);
        }
        let failed_at = shared.failed_at.load(Ordering::Acquire);
        let problem = if failed_at != 0 && now_us().saturating_sub(failed_at) < FAILURE_HOLDOFF_US {
            Some("the last write to the audit log failed".to_owned())
        } else {
            match shared.free_bytes() {
                Ok(free) if free < shared.min_free => Some(format!(
                    "{free} bytes free under {}, less than min_free_bytes {}",
                    shared.dir.display(),
                    shared.min_free
                )),
                Ok(_) => None,
                Err(e) => Some(format!("cannot stat {}: {e}", shared.dir.display())),
            }
        };
        if let Some(problem) = problem {
            return match shared.on_full {
                OnFull::Refuse => {
                    tracing::warn!(%problem, "audit log full: refusing session");
                    Err(AuditError::StorageFull(problem))
                }
                OnFull::Allow => {
                    tracing::warn!(%problem, "audit log full: session runs UNRECORDED (on_full: allow)");
                    Ok(SessionRecorder::unrecorded(Some(shared.clone())))
                }
            };
        }
        let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
        Ok(SessionRecorder {
            inner: Some(Inner {
                tx: tx.clone(),
                shared: shared.clone(),
                sid,
                writer: writer.clone(),
                queued: Arc::new(AtomicU64::new(0)),
            }),
            id: Arc::from(format!("{:08x}-{sid:06}", shared.run_id)),
            started: Instant::now(),
            commands: 0,
            ended: false,
        })
    }

    /// Appends of this recorder's sessions that went through the queue.
    #[cfg(test)]
    pub(crate) fn queued_appends(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |(_, s, _)| s.queued_appends.load(Ordering::Relaxed))
    }

    /// Holds the writer's lock for `d` on another thread, as a long group write would: appends
    /// meanwhile queue.
    #[cfg(test)]
    pub(crate) fn stall_writer(&self, d: Duration) -> std::thread::JoinHandle<()> {
        let writer = self.inner.as_ref().and_then(|(_, _, w)| w.clone());
        std::thread::spawn(move || {
            let _held = writer.as_ref().map(|w| w.lock());
            std::thread::sleep(d);
        })
    }

    /// Syncs everything written so far and signs the head now. Returns the signed seq.
    pub async fn flush(&self) -> Result<u64, AuditError> {
        self.control(Msg::Flush).await
    }

    /// Starts sharing the log with a daemon taking over from this one ([`coop`](super::coop)):
    /// what is buffered is written and the head signed first. Returns the signed seq.
    pub async fn share(&self) -> Result<u64, AuditError> {
        self.control(|tx| Msg::Share(true, tx)).await
    }

    /// Stops sharing the log: the other process has exited.
    pub async fn unshare(&self) -> Result<u64, AuditError> {
        self.control(|tx| Msg::Share(false, tx)).await
    }

    /// Flushes, signs the head and stops the writer; later appends fail with `Closed`.
    pub async fn close(&self) -> Result<u64, AuditError> {
        let r = self.control(Msg::Close).await;
        if let Some((_, shared, _)) = &self.inner {
            shared.closed.store(true, Ordering::Release);
        }
        r
    }

    async fn control(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<u64, AuditError>>) -> Msg,
    ) -> Result<u64, AuditError> {
        let Some((tx, _, _)) = &self.inner else {
            return Ok(0);
        };
        let (ack, rx) = oneshot::channel();
        tx.send(make(ack)).await.map_err(|_| AuditError::Closed)?;
        rx.await.unwrap_or(Err(AuditError::Closed))
    }
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    sid: u64,
    /// The writer, for inline appends (`fsync: batch` only).
    writer: Option<SharedWriter>,
    /// This session's records in the queue: while any are, appends queue behind them.
    queued: Arc<AtomicU64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("sid", &self.sid).finish()
    }
}

/// Takes a record that never reached the queue off its session's count.
struct Unqueue<'a>(&'a AtomicU64);

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Inner::try_inline`] did.
// The event goes back only to be queued at once; boxing it would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Inline {
    /// Chained into `writer`'s buffer as `seq`; written with `batch`.
    Buffered {
        seq: u64,
        batch: Arc<Batch>,
        writer: SharedWriter,
    },
    /// Could not be encoded.
    Failed(AuditError),
    /// Not appended: queue it.
    Queue(Event),
}

/// The outcome of one buffer write, shared by the acknowledgements of every record in it.
/// Set, under the writer's lock, by the write that takes the buffer.
#[derive(Debug, Default)]
struct Batch(std::sync::OnceLock<Result<(), AuditError>>);

impl Inner {
    /// Appends `event` now if the writer is free and nothing of this session is queued;
    /// otherwise hands the event back to be queued.
    fn try_inline(&self, session: &str, ts: u64, event: Event) -> Inline {
        let Some(writer) = &self.writer else {
            return Inline::Queue(event);
        };
        if self.queued.load(Ordering::Acquire) != 0 || self.shared.closed.load(Ordering::Acquire) {
            return Inline::Queue(event);
        }
        let Ok(mut w) = writer.try_lock() else {
            return Inline::Queue(event);
        };
        // Close (or sharing the log) may have started between the check above and the lock.
        if self.shared.closed.load(Ordering::Acquire)
            || w.coop.is_some()
            || w.seg_len + w.buf.len() as u64 >= w.segment_max
            || ts / DAY_US != w.seg_day
        {
            // Rotation syncs a directory: the writer thread's job.
            return Inline::Queue(event);
        }
        let r = match w.encode(self.sid, session, ts, event) {
            Ok(seq) => Inline::Buffered {
                seq,
                batch: w.batch.clone(),
                writer: writer.clone(),
            },
            Err(e) => Inline::Failed(e),
        };
        // The writer thread may be asleep with no timer: wake it to arm one, so the buffer
        // reaches the file (and the disk) within the batch interval even if nobody awaits it.
        if !w.buf.is_empty() && !w.sync_armed && !w.kicked {
            w.kicked = true;
            self.shared.kick.notify_one();
        }
        r
    }
}

/// The command as the log keeps it: owned, and an HTTP request without its headers or body
/// bytes (credentials and values travel there; the body's length and hash stay).
pub fn recorded_command(c: &Command<'_>) -> Command<'static> {
    match c {
        Command::Http(h) => Command::Http(HttpRequest {
            method: Cow::Owned(h.method.to_string()),
            host: Cow::Owned(h.host.to_string()),
            path: Cow::Owned(h.path.to_string()),
            query: h.query.as_ref().map(|q| Cow::Owned(q.to_string())),
            headers: Vec::new(),
            body: h.body.as_ref().map(|b| match b {
                HttpBody::Judged { len, sha256, .. } => HttpBody::Judged {
                    bytes: Cow::Borrowed(&[]),
                    len: *len,
                    sha256: sha256.clone(),
                },
                HttpBody::OverLimit { limit } => HttpBody::OverLimit { limit: *limit },
            }),
        }),
        other => other.clone().into_owned(),
    }
}

/// What the handler knows when a session starts.
#[derive(Debug, Clone)]
pub struct SessionStart<'a> {
    /// The proxy's session number (unique per daemon run), for log correlation.
    pub proxy_session: Option<u64>,
    pub identity: &'a Identity,
    /// The caller's workload; defaults to `identity.workload`.
    pub workload: Option<&'a Workload>,
    pub target: &'a str,
    pub protocol: Protocol,
    /// Client address; defaults to the workload's `peer`.
    pub client: Option<SocketAddr>,
    /// Where the client meant to connect; defaults to the workload's `original_dst`.
    pub original_dst: Option<SocketAddr>,
    pub tls: Option<TlsInfo>,
}

/// One command, as policy judged it.
#[derive(Debug, Clone)]
pub struct CommandEvent<'a> {
    /// The protocol-neutral command (recorded without HTTP headers: credentials travel there).
    pub command: &'a Command<'a>,
    /// What classification found in it.
    pub facts: &'a Facts,
    pub decision: &'a Decision,
    /// The review that released or refused it: recorded as an `approval` record right after
    /// the command.
    pub approval: Option<ReviewRecord>,
    /// Who sent it, when a token it carried identified a caller other than the session's.
    pub caller: Option<&'a Identity>,
}

/// The answer to a command.
#[derive(Debug, Clone, Default)]
pub struct CommandResult {
    pub rows: Option<u64>,
    /// Bytes of the answer sent to the client.
    pub bytes: u64,
    pub duration: Duration,
    pub error: Option<String>,
    /// The protocol's status of the answer (an HTTP status code).
    pub status: Option<u16>,
    /// Bytes of the request's body sent upstream (HTTP).
    pub request_bytes: Option<u64>,
    /// What the gateway changed about the exchange (`client credential authorization
    /// stripped`), never a value.
    pub notes: Vec<String>,
    /// The request's body, already masked (a rule's `record_bodies`).
    pub request_body: Option<BodyRecord>,
    /// The answer's body, already masked (a rule's `record_bodies`).
    pub answer_body: Option<BodyRecord>,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    pub reason: EndReason,
    pub detail: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// Records one session. Every append resolves once the record is acknowledged (see the
/// module docs); an `Err` means it was not recorded, and the handler should end the session
/// (fail closed). Dropping it without [`SessionRecorder::end`] records an end with reason
/// `dropped`.
#[derive(Debug)]
pub struct SessionRecorder {
    /// `None`: the session runs unrecorded (recording disabled, or `on_full: allow`).
    inner: Option<Inner>,
    id: Arc<str>,
    started: Instant,
    commands: u64,
    ended: bool,
}

impl SessionRecorder {
    fn unrecorded(shared: Option<Arc<Shared>>) -> Self {
        if let Some(s) = &shared {
            s.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        SessionRecorder {
            inner: None,
            id: Arc::from("unrecorded"),
            started: Instant::now(),
            commands: 0,
            ended: false,
        }
    }

    /// The session id in the log (what `airlock replay` takes).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this session is being recorded.
    pub fn is_recording(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues a record (waiting for queue space: backpressure, never loss).
    async fn enqueue(&mut self, event: Event) -> Result<Ack, AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(Ack::done());
        };
        let ts = now_us();
        let event = match inner.try_inline(&self.id, ts, event) {
            Inline::Buffered { seq, batch, writer } => {
                return Ok(Ack {
                    state: AckState::Buffered { batch, seq, writer },
                    shared: Some(inner.shared.clone()),
                });
            }
            Inline::Failed(e) => {
                return Ok(Ack {
                    state: AckState::Settled(Err(e)),
                    shared: Some(inner.shared.clone()),
                });
            }
            Inline::Queue(event) => event,
        };
        let (ack, rx) = oneshot::channel();
        #[cfg(test)]
        inner.shared.queued_appends.fetch_add(1, Ordering::Relaxed);
        inner.queued.fetch_add(1, Ordering::AcqRel);
        // If this future is dropped before the send completes, the record never reaches the
        // queue: take it off the session's count again.
        let unqueue = Unqueue(&inner.queued);
        let msg = Msg::Append(Append {
            sid: inner.sid,
            session: self.id.clone(),
            ts,
            event,
            ack: Some(ack),
            queued: Some(inner.queued.clone()),
        });
        let pending = Ack {
            state: AckState::Queued(rx),
            shared: Some(inner.shared.clone()),
        };
        match inner.tx.send(msg).await {
            Ok(()) => {
                // The writer decrements it once the record is written.
                std::mem::forget(unqueue);
                Ok(pending)
            }
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Records the session's start. Call once, first. It is not waited for: the session's
    /// first command, awaited before it goes upstream, writes it too (records of a session
    /// reach the file in order), and otherwise the batch sync does. An `Err` is a record that
    /// could not be taken (queue closed, unencodable): refuse the session.
    pub async fn start(&mut self, s: SessionStart<'_>) -> Result<(), AuditError> {
        let workload = s.workload.or(s.identity.workload.as_ref());
        let rec = SessionStartRecord {
            proxy_session: s.proxy_session,
            subject: s.identity.subject.clone(),
            groups: s.identity.groups.clone(),
            workload: workload.map(WorkloadRecord::from),
            target: s.target.to_owned(),
            protocol: s.protocol.as_str().to_owned(),
            client: s.client.or(workload.and_then(|w| w.peer)),
            original_dst: s.original_dst.or(workload.and_then(|w| w.original_dst)),
            tls: s.tls,
        };
        let ack = self.enqueue(Event::SessionStart(rec)).await?;
        ack.settled().await
    }

    /// Queues a command and its decision; returns its number in the session (for
    /// [`result`](Self::result), [`masking`](Self::masking), [`approval`](Self::approval)) and
    /// the [`Ack`]. Queue it before the command goes upstream, and await
    /// [`Ack::durable`] before the answer goes back to the client (or before forwarding, for
    /// strict write-ahead): the write then overlaps the server's round trip, and no client
    /// ever sees the effect of a command whose record could still be lost.
    pub async fn command(&mut self, c: CommandEvent<'_>) -> Result<(u64, Ack), AuditError> {
        self.commands += 1;
        let n = self.commands;
        if self.inner.is_none() {
            // Unrecorded: build nothing.
            return Ok((n, Ack::done()));
        }
        let reason = match c.decision {
            Decision::Deny { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let rec = CommandRecord {
            n,
            command: recorded_command(c.command),
            facts: FactsRecord::from(c.facts),
            action: Cow::Borrowed(c.decision.action().as_str()),
            rule: c.decision.rule().to_owned(),
            reason,
            caller: c.caller.and_then(|i| {
                i.token.as_ref().map(|t| {
                    Box::new(CallerRecord {
                        subject: i.subject.clone(),
                        groups: i.groups.clone(),
                        issuer: t.issuer.clone(),
                    })
                })
            }),
        };
        let ack = self.enqueue(Event::Command(rec)).await?;
        match c.approval {
            // Acknowledged in order: the review's acknowledgement covers the command's too.
            Some(review) => Ok((n, self.approval(n, review).await?)),
            None => Ok((n, ack)),
        }
    }

    /// Queues the review of command `n`: the request, its votes, how it ended, the grant it
    /// used. [`command`](Self::command) does this when given the review.
    pub async fn approval(&mut self, n: u64, review: ReviewRecord) -> Result<Ack, AuditError> {
        self.enqueue(Event::Approval(ApprovalEvent { n, review }))
            .await
    }

    /// Queues the answer to command `n`.
    pub async fn result(&mut self, n: u64, r: CommandResult) -> Result<Ack, AuditError> {
        let rec = ResultRecord {
            n,
            rows: r.rows,
            bytes: r.bytes,
            duration_us: u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
            error: r.error,
            status: r.status,
            request_bytes: r.request_bytes,
            notes: r.notes,
            request_body: r.request_body,
            answer_body: r.answer_body,
        };
        self.enqueue(Event::Result(rec)).await
    }

    /// Queues the record of a terminal recording of command `n` (its file already complete).
    pub async fn recording(&mut self, rec: RecordingRecord) -> Result<Ack, AuditError> {
        self.enqueue(Event::Recording(rec)).await
    }

    /// Where this session's terminal recordings go (`<log dir>/recordings/<session>`), when it
    /// is recorded.
    pub fn recordings_dir(&self) -> Option<PathBuf> {
        self.inner
            .as_ref()
            .map(|i| i.shared.dir.join(RECORDINGS_DIR).join(&*self.id))
    }

    /// Queues what masking did to the answer of command `n`: rule names and counts only.
    /// Nothing is written for an empty tally.
    pub async fn masking(&mut self, n: u64, tally: &MaskTally) -> Result<Ack, AuditError> {
        if tally.is_empty() {
            return Ok(Ack::done());
        }
        let rec = MaskingRecord {
            n,
            rules: tally.counts().to_vec(),
        };
        self.enqueue(Event::Masking(rec)).await
    }

    fn end_event(&self, e: SessionEnd) -> Event {
        Event::SessionEnd(SessionEndRecord {
            reason: e.reason,
            detail: e.detail,
            bytes_from_client: e.bytes_from_client,
            bytes_to_client: e.bytes_to_client,
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            commands: self.commands,
            records: 0, // the writer fills in the count it chained
        })
    }

    /// Records the session's end; its final hash joins the global chain with this record.
    /// Not waited for: nothing of the session is left to protect, so the record goes to the
    /// file with the next awaited record of any session, or at the batch sync (a connection
    /// that only opens and closes costs one write, not three).
    pub async fn end(mut self, e: SessionEnd) -> Result<(), AuditError> {
        self.ended = true;
        let event = self.end_event(e);
        self.enqueue(event).await?.settled().await
    }
}

impl Drop for SessionRecorder {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(inner) = &self.inner else {
            return;
        };
        let event = self.end_event(SessionEnd {
            reason: EndReason::Dropped,
            detail: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
        });
        let msg = Msg::Append(Append {
            sid: inner.sid,
            session: self.id.clone(),
            ts: now_us(),
            event,
            ack: None,
            queued: None,
        });
        match inner.tx.try_send(msg) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // The queue is full: hand the end record to a task that waits for room.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let tx = inner.tx.clone();
                    rt.spawn(async move {
                        let _ = tx.send(msg).await;
                    });
                } else {
                    tracing::warn!(session = %self.id, "audit queue full: end record of a dropped session lost");
                }
            }
        }
    }
}

/// A record handed to the recorder. [`Ack::durable`] resolves once it is acknowledged:
/// written, and with `fsync: always` synced (see the module docs). Dropping it does not cancel
/// the record; it only gives up waiting (and hearing about a failed write).
#[derive(Debug)]
#[must_use = "await `durable()` before anything that must not happen unrecorded, or drop it explicitly"]
pub struct Ack {
    state: AckState,
    shared: Option<Arc<Shared>>,
}

enum AckState {
    /// Nothing to wait for (unrecorded session, empty tally).
    Done,
    /// In the queue: the writer thread answers.
    Queued(oneshot::Receiver<Result<u64, AuditError>>),
    /// In the writer's buffer as `seq`: written with `batch`, by whoever needs it first.
    Buffered {
        batch: Arc<Batch>,
        seq: u64,
        writer: SharedWriter,
    },
    /// Known already (a record that could not be encoded).
    Settled(Result<u64, AuditError>),
}

impl std::fmt::Debug for AckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckState::Done => f.write_str("Done"),
            AckState::Queued(_) => f.write_str("Queued"),
            AckState::Buffered { seq, batch, .. } => f
                .debug_struct("Buffered")
                .field("seq", seq)
                .field("written", &batch.0.get())
                .finish(),
            AckState::Settled(r) => f.debug_tuple("Settled").field(r).finish(),
        }
    }
}

/// After this many tries at a contended writer lock, an awaited write waits for it on the
/// blocking pool.
const LOCK_SPINS: u32 = 32;

impl Ack {
    fn done() -> Self {
        Ack {
            state: AckState::Done,
            shared: None,
        }
    }

    /// Whether the record waits in the writer's buffer (not written, not queued).
    #[cfg(test)]
    pub(crate) fn is_buffered(&self) -> bool {
        matches!(&self.state, AckState::Buffered { batch, .. } if batch.0.get().is_none())
    }

    /// Whether the record is written already: nothing to wait for.
    pub fn is_written(&self) -> bool {
        match &self.state {
            AckState::Done => true,
            AckState::Queued(_) => false,
            AckState::Buffered { batch, .. } => matches!(batch.0.get(), Some(Ok(()))),
            AckState::Settled(r) => r.is_ok(),
        }
    }

    /// Lets the record go without waiting for its write; returns an outcome known already
    /// (a record that could not be encoded), as [`durable`](Self::durable) would.
    async fn settled(self) -> Result<(), AuditError> {
        match self.state {
            AckState::Settled(_) => self.durable().await.map(drop),
            AckState::Done | AckState::Queued(_) | AckState::Buffered { .. } => Ok(()),
        }
    }

    /// Waits for the acknowledgement; returns the record's seq (0 when unrecorded). A record
    /// still in the writer's buffer is written now (with everything buffered before it). An
    /// `Err` means the record is not in the log: end the session (fail closed). With
    /// `on_full: allow` a lost record is counted and logged instead.
    pub async fn durable(self) -> Result<u64, AuditError> {
        let r = match self.state {
            AckState::Done => return Ok(0),
            AckState::Queued(rx) => rx.await.unwrap_or(Err(AuditError::Closed)),
            AckState::Settled(r) => r,
            AckState::Buffered { batch, seq, writer } => {
                write_buffered(&batch, &writer, self.shared.as_ref())
                    .await
                    .map(|()| seq)
            }
        };
        match (r, &self.shared) {
            (Err(e), Some(shared))
                if shared.on_full == OnFull::Allow && !matches!(e, AuditError::Closed) =>
            {
                shared.unrecorded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit record lost (on_full: allow)");
                Ok(0)
            }
            (r, _) => r,
        }
    }
}

/// Writes the writer's buffer if `batch` is still in it; returns how `batch`'s write went.
/// Never blocks a runtime thread on the lock: another session may be writing the same buffer
/// right now, so a contended lock is retried after yielding, and a lock held for longer (the
/// writer thread draining the queue or rotating a segment) is waited for on the blocking pool.
async fn write_buffered(
    batch: &Arc<Batch>,
    writer: &SharedWriter,
    shared: Option<&Arc<Shared>>,
) -> Result<(), AuditError> {
    for _ in 0..LOCK_SPINS {
        if let Some(r) = batch.0.get() {
            return r.clone();
        }
        match writer.try_lock() {
            Ok(mut w) => return w.write_batch_of(batch, shared.map(Arc::as_ref)),
            Err(std::sync::TryLockError::Poisoned(_)) => return Err(AuditError::Closed),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        tokio::task::yield_now().await;
    }
    let (batch, writer, shared) = (batch.clone(), writer.clone(), shared.cloned());
    tokio::task::spawn_blocking(move || match writer.lock() {
        Ok(mut w) => w.write_batch_of(&batch, shared.as_deref()),
        Err(_) => Err(AuditError::Closed),
    })
    .await
    .unwrap_or(Err(AuditError::Closed))
}

#[derive(Debug, Clone, Copy)]
struct SessState {
    last: ChainHash,
    records: u64,
}

/// A sender waiting for durability, with the result of encoding its record.
type PendingAck = (
    oneshot::Sender<Result<u64, AuditError>>,
    Result<u64, AuditError>,
);

/// A group of written records for the syncer: sync `file`, then answer the senders.
struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    /// The last record written when the job was made: the head to sign once synced.
    head: Option<(u64, ChainHash)>,
    /// Senders waiting for durability (`fsync: always`), with their encode results.
    acks: Vec<PendingAck>,
    /// Flush / close requests: answered with the signed seq.
    controls: Vec<oneshot::Sender<Result<u64, AuditError>>>,
    /// Sign the head right after this sync (flush, close, rotation, shutdown).
    sign_now: bool,
    /// `file` is complete (rotation): apply retention after signing.
    rotated: bool,
    /// The writer stops after this job.
    last: bool,
}

/// The writer's state; lives on its own thread. `fdatasync`, head signing and retention run
/// on a second thread (the syncer), so the writer keeps chaining and writing the next group
/// while the previous one is being synced.
struct Writer {
    dir: PathBuf,
    /// Authenticates every line (format 2): derived from the signing key.
    mac: ring::hmac::Key,
    policy: FsyncPolicy,
    batch_interval: Duration,
    segment_max: u64,
    file: Arc<File>,
    seg_path: PathBuf,
    seg_len: u64,
    seg_day: u64,
    /// Next seq to write and the hash of the last line written.
    seq: u64,
    prev: ChainHash,
    sessions: HashMap<u64, SessState>,
    /// Encoded lines not yet written, and how to undo them: the chain position before the
    /// first of them and the session states they replaced.
    buf: Vec<u8>,
    saved: (u64, ChainHash),
    undo: Vec<(u64, Option<SessState>)>,
    /// The acknowledgements of the lines in `buf` wait on this.
    batch: Arc<Batch>,
    /// Sessions that had records in a failed write: their later records are refused
    /// (`on_full: refuse`; with `allow` they go on recording what can be written).
    lost: HashSet<u64>,
    refuse_after_loss: bool,
    /// Records were written since the last job handed to the syncer.
    unsynced: bool,
    /// The writer thread's sleep ends in time for the batch sync (it saw `unsynced`).
    sync_armed: bool,
    /// The writer thread was kicked and has not yet re-armed.
    kicked: bool,
    last_job: Instant,
    syncer: Option<std::sync::mpsc::Sender<SyncJob>>,
    /// Set while another process writes this log too: every group write holds this lock and
    /// follows the chain's tip first.
    coop: Option<LogLock>,
    /// Whether the other writer of a shared log writes MACs, so the tip it leaves must carry
    /// a valid one (false only behind a format-1 predecessor; `recover::Found::peer_macs`).
    peer_macs: bool,
}

/// The syncer's state; see [`Writer`].
struct Syncer {
    dir: PathBuf,
    key: SigningKey,
    head_interval: Duration,
    retention: RetentionConfig,
    shared: Arc<Shared>,
    /// Synced but not yet signed.
    pending: Option<(u64, ChainHash)>,
    /// The last record known synced, signed or not.
    latest: Option<(u64, ChainHash)>,
    signed: u64,
    current: PathBuf,
    last_head: Instant,
    last_retention: Instant,
}

impl Writer {
    /// Finds where the chain ends, cuts a torn tail off, opens a segment and writes the
    /// `open` record and a signed head.
    fn recover(
        dir: PathBuf,
        key: &SigningKey,
        config: &AuditConfig,
        coop: Option<LogLock>,
    ) -> Result<Self, AuditError> {
        let mac = record_mac_key(key);
        // A predecessor still writing: read the tip and start our segment under its lock.
        let held = coop.as_ref().map(LogLock::hold).transpose()?;
        // Read-only until it is clear the log can be continued.
        let found = super::recover::scan(&dir, &key.verifying_key(), &mac, held.is_some())?;
        let torn = match found.torn {
            Some((path, torn)) => {
                tracing::warn!(segment = %torn.segment, offset = torn.offset, bytes = torn.bytes, "audit log: removing a torn last record left by a crash (never acknowledged)");
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| AuditError::io(&path, &e))?;
                f.set_len(torn.offset)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| AuditError::io(&path, &e))?;
                Some(torn)
            }
            None => None,
        };
        let (seq, prev) = found.next;
        let reusable = found.empty_newest;
        // With a predecessor still writing, records past the head are its own, signed soon.
        let unsigned_before = (found.adopted > 0 && held.is_none()).then_some(found.adopted);
        if let Some(n) = unsigned_before {
            tracing::warn!(
                records = n,
                "audit log: records after the last signed head (crash), authenticated by their MACs; signing them now"
            );
        }
        let seg_path = dir.join(segment_name(seq));
        let file = match reusable {
            Some(p) if p == seg_path => OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&seg_path),
            other => {
                if let Some(p) = other {
                    // An empty newest segment with a name the chain no longer fits.
                    let _ = std::fs::remove_file(p);
                }
                OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&seg_path)
            }
        }
        .and_then(|f| sync_dir(&dir).map(|()| f))
        .map_err(|e| AuditError::io(&seg_path, &e))?;
        let mut w = Writer {
            dir,
            mac,
            policy: config.fsync,
            batch_interval: config.batch_interval,
            segment_max: config.segment_max_bytes.max(1),
            file: Arc::new(file),
            seg_path,
            seg_len: 0,
            seg_day: now_us() / DAY_US,
            seq,
            prev,
            sessions: HashMap::new(),
            buf: Vec::with_capacity(64 << 10),
            saved: (seq, prev),
            undo: Vec::new(),
            batch: Arc::default(),
            lost: HashSet::new(),
            refuse_after_loss: config.on_full == OnFull::Refuse,
            unsynced: false,
            sync_armed: false,
            kicked: false,
            last_job: Instant::now(),
            syncer: None,
            coop: None,
            peer_macs: found.peer_macs,
        };
        let open = Event::Open(OpenEvent {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            public_key: to_hex(key.verifying_key().as_bytes()),
            torn,
            unsigned_before,
        });
        w.encode(0, "", now_us(), open)?;
        w.write_batch()?;
        w.file
            .sync_data()
            .map_err(|e| AuditError::io(&w.seg_path, &e))?;
        w.unsynced = false;
        sign_head(&w.dir, key, w.seq - 1, w.prev, true)?;
        if config.retention.is_set() && held.is_none() {
            // A log retention cannot vouch for keeps its segments and the daemon starts;
            // `verify` names what is wrong with it.
            if let Err(e) =
                apply_retention(&w.dir, key, &config.retention, &w.seg_path, (w.seq, w.prev))
            {
                tracing::error!(error = %e, "audit retention failed");
            }
        }
        drop(held);
        w.coop = coop;
        Ok(w)
    }

    fn run(writer: &SharedWriter, mut rx: mpsc::Receiver<Msg>, shared: &Shared) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "audit writer cannot start");
                shared.failed_at.store(now_us(), Ordering::Release);
                return;
            }
        };
        // A panic while the lock was held may have left the chain half-advanced: stop
        // writing (sessions then fail closed) rather than write on from it.
        let lock = || match writer.lock() {
            Ok(w) => Some(w),
            Err(_) => {
                tracing::error!("audit writer state poisoned by a panic; recording stops");
                shared.closed.store(true, Ordering::Release);
                None
            }
        };
        rt.block_on(async {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            loop {
                let Some(deadline) = lock().map(|mut w| w.next_deadline()) else {
                    return;
                };
                let msg = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    // Inline appends left records unsynced: take the new deadline.
                    () = shared.kick.notified() => continue,
                    () = tokio::time::sleep(deadline) => {
                        let Some(mut w) = lock() else { return };
                        w.tick(shared);
                        continue;
                    }
                };
                batch.push(msg);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let Some(mut w) = lock() else { return };
                let close = w.process(&mut batch, shared);
                if close {
                    shared.closed.store(true, Ordering::Release);
                    return;
                }
                w.tick(shared);
            }
            // Every sender is gone: leave a synced, signed log behind.
            if let Some(mut w) = lock() {
                if let Err(e) = w.flush(shared) {
                    tracing::error!(error = %e, "audit write failed at shutdown; records rejected");
                }
                w.send_job(Vec::new(), Vec::new(), true, false, true);
            }
        });
    }

    /// How long the writer thread may sleep; from here on it is armed for the batch sync if
    /// anything is buffered or unsynced.
    fn next_deadline(&mut self) -> Duration {
        let pending = self.has_pending();
        self.sync_armed = pending;
        self.kicked = false;
        let d = if pending {
            self.batch_interval.saturating_sub(self.last_job.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        d.max(Duration::from_millis(1))
    }

    /// Records are buffered (not yet written) or written but not yet handed to the syncer.
    fn has_pending(&self) -> bool {
        self.unsynced || !self.buf.is_empty()
    }

    /// Timed work: the batch-mode write and sync of what nobody awaited, and rotation.
    fn tick(&mut self, shared: &Shared) {
        if self.has_pending() && self.last_job.elapsed() >= self.batch_interval {
            if let Err(e) = self.flush(shared) {
                tracing::error!(error = %e, "audit write failed; records rejected");
            }
            self.send_job(Vec::new(), Vec::new(), false, false, false);
        }
        if self.seg_len >= self.segment_max
            && self.coop.is_none()
            && let Err(e) = self.rotate(shared)
        {
            tracing::error!(error = %e, "audit segment rotation failed");
        }
    }

    /// Hands what was written so far to the syncer. The buffer must be empty (written or
    /// rolled back): the head it signs is the chain's end.
    fn send_job(
        &mut self,
        acks: Vec<PendingAck>,
        controls: Vec<oneshot::Sender<Result<u64, AuditError>>>,
        sign_now: bool,
        rotated: bool,
        last: bool,
    ) {
        debug_assert!(self.buf.is_empty(), "sync job with unwritten records");
        let job = SyncJob {
            file: self.file.clone(),
            path: self.seg_path.clone(),
            head: self.seq.checked_sub(1).map(|s| (s, self.prev)),
            acks,
            controls,
            sign_now,
            rotated,
            last,
        };
        self.unsynced = false;
        self.last_job = Instant::now();
        let Some(tx) = &self.syncer else { return };
        if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
            tracing::error!("audit syncer is gone; records cannot be acknowledged");
            for (ack, _) in job.acks {
                let _ = ack.send(Err(AuditError::Closed));
            }
            for c in job.controls {
                let _ = c.send(Err(AuditError::Closed));
            }
        }
    }

    /// Chains and writes one drained group (after whatever inline appends buffered), then
    /// answers its senders (with `fsync: always` through the syncer, after the sync). Returns
    /// whether a `Close` was among them.
    fn process(&mut self, batch: &mut Vec<Msg>, shared: &Shared) -> bool {
        if (self.seg_len > 0 || !self.buf.is_empty())
            && now_us() / DAY_US != self.seg_day
            && self.coop.is_none()
            && let Err(e) = self.rotate(shared)
        {
            tracing::error!(error = %e, "audit segment rotation failed");
        }
        // Sharing the log (coop): chain from where the other process left it, under the lock.
        let held = match self.coop_follow() {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "audit: cannot follow the shared log; records rejected");
                shared.failed_at.store(now_us(), Ordering::Release);
                reject(batch, &e);
                return false;
            }
        };
        let mut acks = Vec::with_capacity(batch.len());
        let mut controls = Vec::new();
        let mut close = false;
        let mut queued = Vec::new();
        let mut share = None;
        for msg in batch.drain(..) {
            match msg {
                Msg::Append(a) => {
                    let r = self.encode(a.sid, &a.session, a.ts, a.event);
                    if let Some(ack) = a.ack {
                        acks.push((ack, r));
                    }
                    queued.extend(a.queued);
                }
                Msg::Flush(tx) => controls.push(tx),
                Msg::Close(tx) => {
                    controls.push(tx);
                    close = true;
                }
                Msg::Share(on, tx) => share = Some((on, tx)),
            }
        }
        let written = !self.buf.is_empty();
        let committed = self.flush(shared);
        drop(held);
        if let Some((on, tx)) = share {
            self.coop_switch(on, tx, &mut controls);
        }
        shared.coop.store(self.coop.is_some(), Ordering::Release);
        // Still under the lock: a session's next inline append comes after these lines.
        for q in queued {
            q.fetch_sub(1, Ordering::AcqRel);
        }
        if let Err(e) = committed {
            tracing::error!(error = %e, records = acks.len(), "audit write failed; records rejected");
            for (ack, _) in acks {
                let _ = ack.send(Err(e.clone()));
            }
            for c in controls {
                let _ = c.send(Err(e.clone()));
            }
            return close;
        }
        let sign_now = !controls.is_empty();
        match self.policy {
            FsyncPolicy::Always => {
                if written || sign_now {
                    self.send_job(acks, controls, sign_now, false, close);
                }
            }
            FsyncPolicy::Batch => {
                for (ack, r) in acks {
                    let _ = ack.send(r);
                }
                if sign_now {
                    self.send_job(Vec::new(), controls, true, false, close);
                }
            }
        }
        close
    }

    /// Writes the buffer if `batch`'s lines are still in it; returns how `batch`'s write went.
    fn write_batch_of(
        &mut self,
        batch: &Arc<Batch>,
        shared: Option<&Shared>,
    ) -> Result<(), AuditError> {
        if Arc::ptr_eq(&self.batch, batch)
            && let Some(shared) = shared
            && let Err(e) = self.flush(shared)
        {
            tracing::error!(error = %e, "audit write failed; records rejected");
        }
        // Set by the write that took the buffer, this one or an earlier one.
        batch.0.get().cloned().unwrap_or(Err(AuditError::Closed))
    }

    /// Writes the buffer and settles its batch. On failure the chain goes back to where it
    /// was before the buffer's first line, as if none of it had been encoded, and every
    /// acknowledgement waiting on the batch gets the error.
    fn flush(&mut self, shared: &Shared) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let r = self.write_batch();
        match &r {
            Ok(()) => shared.failed_at.store(0, Ordering::Release),
            Err(_) => {
                (self.seq, self.prev) = self.saved;
                for (sid, old) in self.undo.drain(..).rev() {
                    match old {
                        Some(s) => self.sessions.insert(sid, s),
                        None => self.sessions.remove(&sid),
                    };
                    if self.refuse_after_loss {
                        self.lost.insert(sid);
                    }
                }
                // Those that ended or never started within the lost lines send nothing more.
                let sessions = &self.sessions;
                self.lost.retain(|sid| sessions.contains_key(sid));
                shared.failed_at.store(now_us(), Ordering::Release);
            }
        }
        self.undo.clear();
        let _ = batch.0.set(r.clone());
        r
    }

    /// Serializes one record into the group buffer and advances the chain.
    fn encode(
        &mut self,
        sid: u64,
        session: &str,
        ts: u64,
        mut event: Event,
    ) -> Result<u64, AuditError> {
        if !self.lost.is_empty() && self.lost.contains(&sid) {
            // Its chain has a gap the session was not told about (a record nobody awaited,
            // such as a result, went down with a failed write): refuse the rest, so its next
            // awaited record fails and the session ends. Its end is the last refusal.
            if matches!(event, Event::SessionEnd(_)) {
                self.lost.remove(&sid);
            }
            return Err(AuditError::Io {
                path: self.seg_path.clone(),
                message: "an earlier record of this session was lost in a failed write".into(),
            });
        }
        if self.buf.is_empty() {
            self.saved = (self.seq, self.prev);
            self.undo.clear();
        }
        let seq = self.seq;
        let state = self.sessions.get(&sid).copied();
        let sprev = match (sid, &event) {
            (0, _) => None,
            (_, Event::SessionStart(_)) => Some(ChainHash::ZERO),
            _ => state.map(|s| s.last),
        };
        if let Event::SessionEnd(e) = &mut event {
            e.records = state.map_or(0, |s| s.records);
        }
        let start = self.buf.len();
        let rec = RecordRef {
            seq,
            ts,
            prev: &self.prev,
            session: (sid != 0).then_some(session),
            sprev: sprev.as_ref(),
            event: &event,
        };
        if let Err(e) = serde_json::to_writer(&mut self.buf, &rec) {
            self.buf.truncate(start);
            return Err(AuditError::Io {
                path: self.seg_path.clone(),
                message: format!("cannot encode record: {e}"),
            });
        }
        let hash = seal(&self.mac, &mut self.buf, start);
        self.buf.push(b'\n');
        self.prev = hash;
        self.seq += 1;
        if sid != 0 {
            if matches!(event, Event::SessionEnd(_)) {
                self.sessions.remove(&sid);
            } else {
                let records = match (&event, state) {
                    (Event::SessionStart(_), _) | (_, None) => 1,
                    (_, Some(s)) => s.records + 1,
                };
                self.sessions.insert(
                    sid,
                    SessState {
                        last: hash,
                        records,
                    },
                );
            }
            self.undo.push((sid, state));
        }
        Ok(seq)
    }

    /// Writes the group buffer. On failure the segment is cut back to its last good length so
    /// no partial group stays behind.
    fn write_batch(&mut self) -> Result<(), AuditError> {
        let before = self.seg_len;
        let r = (&*self.file).write_all(&self.buf);
        let len = self.buf.len() as u64;
        self.buf.clear();
        match r {
            Ok(()) => {
                self.seg_len += len;
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                if let Err(e2) = self.file.set_len(before) {
                    tracing::error!(error = %e2, "audit: cannot cut back a failed write");
                }
                Err(AuditError::io(&self.seg_path, &e))
            }
        }
    }

    /// Closes the segment (the syncer syncs and signs its end and applies retention) and
    /// starts the next one.
    fn rotate(&mut self, shared: &Shared) -> Result<(), AuditError> {
        // Buffered lines belong at the end of this segment.
        self.flush(shared)?;
        if self.seg_len == 0 {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| sync_dir(&self.dir).map(|()| f))
            .map_err(|e| AuditError::io(&path, &e))?;
        self.send_job(Vec::new(), Vec::new(), true, true, false);
        tracing::debug!(segment = %path.display(), "audit segment started");
        self.file = Arc::new(file);
        self.seg_path = path;
        self.seg_len = 0;
        self.seg_day = now_us() / DAY_US;
        Ok(())
    }
}

// Sharing the log with another daemon during an upgrade's hand-over ([`coop`](super::coop)).
// Kept apart from the writer's own paths: outside a hand-over none of it runs.
impl Writer {
    /// While sharing: takes the cross-process lock and follows the chain's tip before a group
    /// write (the lock is held until the returned guard drops). `None` when not sharing.
    fn coop_follow(&mut self) -> Result<Option<coop::Held>, AuditError> {
        let Some(lock) = &self.coop else {
            return Ok(None);
        };
        let held = lock.hold()?;
        self.follow()?;
        Ok(Some(held))
    }

    /// Starts (`on`) or stops sharing, after a group's write: inline appends are shut out by
    /// the writer lock the caller holds, so everything buffered so far went out under the old
    /// mode. `tx` is answered with the group's other controls, or at once on failure.
    fn coop_switch(
        &mut self,
        on: bool,
        tx: oneshot::Sender<Result<u64, AuditError>>,
        controls: &mut Vec<oneshot::Sender<Result<u64, AuditError>>>,
    ) {
        if !on {
            self.coop = None;
        } else if self.coop.is_none() {
            // The successor of a hand-over is this version or newer: it writes MACs.
            self.peer_macs = true;
            match LogLock::open(&self.dir) {
                Ok(lock) => self.coop = Some(lock),
                Err(e) => {
                    // The other process must not write beside us unlocked: it is told no.
                    tracing::error!(error = %e, "audit: cannot share the log");
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        controls.push(tx);
    }

    /// Under the shared log's lock: moves to the newest segment and the chain's last record,
    /// wherever the other process left them.
    fn follow(&mut self) -> Result<(), AuditError> {
        let segs = list_segments(&self.dir).map_err(|e| AuditError::io(&self.dir, &e))?;
        // The log only grows: a newest segment older than ours, a segment shorter than last
        // seen or a tip before our seq means records were cut. Continuing from there would
        // sign over the cut; the group fails instead.
        let cut = |path: &Path, what: String| AuditError::Corrupt {
            path: path.to_owned(),
            message: format!("{what} while the log was shared: records were removed; not writing"),
        };
        if segs
            .last()
            .is_none_or(|(_, newest)| *newest < self.seg_path)
        {
            return Err(cut(
                &self.seg_path,
                "the segment being written is gone".into(),
            ));
        }
        if let Some((_, newest)) = segs.last()
            && *newest != self.seg_path
        {
            debug_assert!(self.buf.is_empty(), "lines buffered for another segment");
            let file = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(newest)
                .map_err(|e| AuditError::io(newest, &e))?;
            self.file = Arc::new(file);
            self.seg_path = newest.clone();
            self.seg_len = 0;
        }
        let len = self
            .file
            .metadata()
            .map_err(|e| AuditError::io(&self.seg_path, &e))?
            .len();
        if len < self.seg_len {
            return Err(cut(
                &self.seg_path,
                format!("the segment shrank from {} to {len} bytes", self.seg_len),
            ));
        }
        if len != self.seg_len {
            let mac = self.peer_macs.then_some(&self.mac);
            if let Some((seq, prev)) = coop::tail(&self.seg_path, len, mac)? {
                if seq < self.seq {
                    return Err(cut(
                        &self.seg_path,
                        format!("the tip went back to seq {seq}"),
                    ));
                }
                (self.seq, self.prev) = (seq, prev);
            }
            self.seg_len = len;
        }
        Ok(())
    }
}

/// Answers every message of a group that could not be written with `e`.
fn reject(batch: &mut Vec<Msg>, e: &AuditError) {
    for msg in batch.drain(..) {
        match msg {
            Msg::Append(a) => {
                if let Some(ack) = a.ack {
                    let _ = ack.send(Err(e.clone()));
                }
                if let Some(q) = a.queued {
                    q.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Msg::Flush(tx) | Msg::Close(tx) | Msg::Share(_, tx) => {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

impl Syncer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<SyncJob>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let mut wait = RETENTION_CHECK.saturating_sub(self.last_retention.elapsed());
            if self.pending.is_some() {
                wait = wait.min(self.head_interval.saturating_sub(self.last_head.elapsed()));
            }
            let first = match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.timers();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if self.handle(jobs) {
                return;
            }
            self.timers();
        }
        if let Err(e) = self.sign(true) {
            tracing::error!(error = %e, "audit head signing failed");
        }
    }

    /// Syncs, signs when due, answers; returns whether the writer stopped.
    fn handle(&mut self, jobs: Vec<SyncJob>) -> bool {
        // One fdatasync per file: a drain spans two files only across a rotation.
        let mut result = Ok(());
        let mut synced: Option<&Arc<File>> = None;
        for job in &jobs {
            if synced.is_some_and(|f| Arc::ptr_eq(f, &job.file)) {
                continue;
            }
            if let Err(e) = job.file.sync_data() {
                result = Err(AuditError::io(&job.path, &e));
            }
            synced = Some(&job.file);
        }
        let sign_now = jobs.iter().any(|j| j.sign_now);
        let rotated = jobs.iter().any(|j| j.rotated);
        let last = jobs.iter().any(|j| j.last);
        match &result {
            Ok(()) => {
                if let Some(h) = jobs.iter().rev().find_map(|j| j.head) {
                    self.pending = Some(h);
                    self.latest = Some(h);
                }
                if let Some(j) = jobs.last() {
                    self.current = j.path.clone();
                }
            }
            Err(e) => {
                self.shared.failed_at.store(now_us(), Ordering::Release);
                tracing::error!(error = %e, "audit fdatasync failed; records not acknowledged");
            }
        }
        // Records are acknowledged once synced; the head that covers them follows, so a
        // sender never waits for the head file's write.
        let mut controls = Vec::new();
        for job in jobs {
            for (ack, r) in job.acks {
                let _ = ack.send(match &result {
                    Ok(()) => r,
                    Err(e) => Err(e.clone()),
                });
            }
            controls.extend(job.controls);
        }
        // The head follows every sync (at most every `head_interval`): what a crash leaves
        // unsigned is at most what was written since.
        let head = if result.is_ok() && (sign_now || self.last_head.elapsed() >= self.head_interval)
        {
            self.sign(sign_now)
        } else {
            Ok(self.signed)
        };
        if let Err(e) = &head {
            tracing::error!(error = %e, "audit head signing failed");
        }
        for c in controls {
            let _ = c.send(result.clone().and(head.clone()));
        }
        if rotated {
            self.retention();
        }
        last
    }

    fn timers(&mut self) {
        if self.pending.is_some()
            && self.last_head.elapsed() >= self.head_interval
            && let Err(e) = self.sign(false)
        {
            tracing::error!(error = %e, "audit head signing failed");
        }
        if self.last_retention.elapsed() >= RETENTION_CHECK {
            self.retention();
        }
    }

    /// Signs the last synced record as the head. Returns the signed seq. `durable` (flush,
    /// close, rotation): synced to the disk. The head after each sync is not: a sync of its
    /// own per batch cost `fsync: always` most of its throughput (the next group's sync
    /// waited for it), and a power loss then leaves an older head, still genuine, or an
    /// unreadable one, after which the next start authenticates the records by their MACs
    /// (docs/decisions/audit-durability.md).
    fn sign(&mut self, durable: bool) -> Result<u64, AuditError> {
        self.last_head = Instant::now();
        let Some((seq, hash)) = self.pending.take() else {
            return Ok(self.signed);
        };
        let sign = || sign_head(&self.dir, &self.key, seq, hash, durable);
        let signed = if self.shared.coop.load(Ordering::Acquire) {
            coop::sign_unless_newer(&self.dir, seq, sign)
        } else {
            sign()
        };
        if let Err(e) = signed {
            self.pending = Some((seq, hash));
            return Err(e);
        }
        self.signed = seq;
        Ok(seq)
    }

    fn retention(&mut self) {
        self.last_retention = Instant::now();
        if !self.retention.is_set() || self.shared.coop.load(Ordering::Acquire) {
            return;
        }
        let Some((seq, hash)) = self.latest else {
            return;
        };
        if let Err(e) = apply_retention(
            &self.dir,
            &self.key,
            &self.retention,
            &self.current,
            (seq + 1, hash),
        ) {
            tracing::error!(error = %e, "audit retention failed");
        }
    }
}

/// Signs `(seq, hash)` as the head (`head.json`, atomically).
fn sign_head(
    dir: &Path,
    key: &SigningKey,
    seq: u64,
    hash: ChainHash,
    durable: bool,
) -> Result<(), AuditError> {
    let head = SignedHead::sign(key, seq, hash, now_us());
    let path = dir.join(HEAD_FILE);
    let bytes = serde_json::to_vec(&head).map_err(|e| AuditError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    replace_file(&path, &bytes, durable)
}

/// Deletes whole old segments past `max_age` / `max_bytes`, after signing an anchor for the
/// first record kept. Never deletes `current` or anything after it. `next` is the seq and prev
/// of the next record to be written (the anchor when every older segment goes).
///
/// Nothing an intruder can set without the key decides what goes: files named past `current`
/// are not part of the chain and count for nothing, sizes are the blocks a file holds (a
/// sparse file is not large), a segment's age is the `ts` of its last record (not a settable
/// mtime), and the segments to delete must be the chain, linked
/// from the anchor (or seq 0) to the first record kept; otherwise nothing is deleted.
pub(super) fn apply_retention(
    dir: &Path,
    key: &SigningKey,
    retention: &RetentionConfig,
    current: &Path,
    next: (u64, ChainHash),
) -> Result<(), AuditError> {
    let io = |p: &Path, e: std::io::Error| AuditError::io(p, &e);
    let mut segs = Vec::new();
    for (_, path) in list_segments(dir).map_err(|e| io(dir, e))? {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        let is_current = path == current;
        // A sparse file's holes hold nothing: counted by the blocks it has.
        let held = meta.len().min(meta.blocks().saturating_mul(512));
        segs.push((path, meta.len(), held));
        if is_current {
            break;
        }
    }
    if segs.last().is_none_or(|(p, _, _)| p != current) {
        return Ok(());
    }
    let now = now_us();
    let mut remaining: u64 = segs.iter().map(|s| s.2).sum();
    let mut cut = 0;
    for (path, len, held) in &segs[..segs.len() - 1] {
        let too_big = retention.max_bytes.is_some_and(|m| remaining > m);
        let too_old = match retention.max_age {
            // When the segment's last record was written (checked below with the chain).
            Some(age) if !too_big => coop::last_line(path, *len)
                .ok()
                .flatten()
                .and_then(|line| serde_json::from_slice::<super::recover::Link>(&line).ok())
                .is_some_and(|r| Duration::from_micros(now.saturating_sub(r.ts)) > age),
            _ => false,
        };
        if !(too_big || too_old) {
            break;
        }
        remaining -= held;
        cut += 1;
    }
    if cut == 0 {
        return Ok(());
    }
    let keep = &segs[cut].0;
    let (seq, prev) = match first_record(keep).map_err(|e| io(keep, e))? {
        Some((rec, _)) => (rec.seq, rec.prev),
        None if keep == current => next,
        None => {
            return Err(AuditError::Corrupt {
                path: keep.clone(),
                message: "segment has no complete first record; not deleting older ones".into(),
            });
        }
    };
    let anchor = super::recover::read_signed::<SignedAnchor>(&dir.join(ANCHOR_FILE))?;
    if anchor
        .as_ref()
        .is_some_and(|a| !a.verify(&key.verifying_key()))
    {
        return Err(AuditError::Corrupt {
            path: dir.join(ANCHOR_FILE),
            message: "retention anchor is not signed by this key; not deleting".into(),
        });
    }
    check_chain(&segs[..cut], anchor.as_ref(), (seq, prev))?;
    let anchor = SignedAnchor::sign(key, seq, prev, now);
    let bytes = serde_json::to_vec(&anchor).map_err(|e| AuditError::Io {
        path: dir.join(ANCHOR_FILE),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(ANCHOR_FILE), &bytes)?;
    for (path, _, _) in &segs[..cut] {
        std::fs::remove_file(path).map_err(|e| io(path, e))?;
    }
    sync_dir(dir).map_err(|e| io(dir, e))?;
    tracing::info!(
        deleted = cut,
        first_seq = seq,
        "audit retention deleted old segments"
    );
    Ok(())
}

/// Checks that `segs` (oldest first, about to be deleted) are the chain: consecutive seqs, each
/// `prev` the hash of the line before, starting where the anchor (or seq 0) says and ending
/// right before `kept` (the seq and prev of the first record kept). Reads a line at a time.
fn check_chain(
    segs: &[(PathBuf, u64, u64)],
    anchor: Option<&SignedAnchor>,
    kept: (u64, ChainHash),
) -> Result<(), AuditError> {
    let mut last: Option<(u64, ChainHash)> = None;
    let mut line = Vec::new();
    for (path, _, _) in segs {
        let corrupt = |message: String| AuditError::Corrupt {
            path: path.clone(),
            message: format!("{message}; retention deletes nothing"),
        };
        let mut reader =
            std::io::BufReader::new(File::open(path).map_err(|e| AuditError::io(path, &e))?);
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AuditError::io(path, &e))?
                == 0
            {
                break;
            }
            if line.pop() != Some(b'\n') {
                return Err(corrupt("a partial record".into()));
            }
            let rec: super::recover::Link = serde_json::from_slice(&line)
                .map_err(|e| corrupt(format!("an unreadable record: {e}")))?;
            let linked = match last {
                Some((seq, hash)) => rec.seq == seq + 1 && rec.prev == hash,
                None => match anchor {
                    Some(a) => rec.seq <= a.seq,
                    None => rec.seq == 0 && rec.prev == ChainHash::ZERO,
                },
            };
            // Records before the anchor's are bound by it once the chain reaches it.
            if let Some(a) = anchor
                && rec.seq == a.seq
                && rec.prev != a.prev
            {
                return Err(corrupt(format!("seq {} does not meet the anchor", rec.seq)));
            }
            if !linked {
                return Err(corrupt(format!(
                    "seq {} does not continue the chain",
                    rec.seq
                )));
            }
            last = Some((rec.seq, ChainHash::of_line(&line)));
        }
    }
    match last {
        Some((seq, hash)) if seq + 1 == kept.0 && hash == kept.1 => Ok(()),
        _ => Err(AuditError::Corrupt {
            path: segs.last().map(|s| s.0.clone()).unwrap_or_default(),
            message: "the segments to delete do not end where the kept log begins; retention deletes nothing".into(),
        }),
    }
}
