//! Every exchange recorded: the command record (method, URL, body hash, decision) goes to the
//! session's audit log before the request goes upstream; the result (status, sizes, masked
//! counts, what the gateway changed) when the answer has gone out or the client went away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::path::{Path, PathBuf};

use crate::audit::{
    AuditError, BodyRecord, ChainHash, CommandEvent, CommandResult, MaskTally, RECORDINGS_DIR,
    RecordingRecord, SessionRecorder,
};
use crate::mask::MaskCounts;
use crate::recording::Summary;

use super::Conn;
use super::body::Capture;

/// A session's audit record, shared by the exchanges of one client connection (HTTP/2 runs
/// them concurrently). Result records are written after their answers; the session waits for
/// them before it closes.
#[derive(Debug)]
pub struct SessionAudit {
    rec: tokio::sync::Mutex<Option<SessionRecorder>>,
    recording: bool,
    /// `<log dir>/recordings/<session>` when the session is recorded (terminal streams).
    recordings: Option<PathBuf>,
    /// The audit session id (`recordings/<it>/…` in recording records).
    audit_id: String,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl SessionAudit {
    pub fn new(rec: SessionRecorder) -> Self {
        Self {
            recording: rec.is_recording(),
            recordings: rec.recordings_dir(),
            audit_id: rec.id().to_owned(),
            rec: tokio::sync::Mutex::new(Some(rec)),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        }
    }

    /// Whether records are written at all.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Where the session's terminal recordings go (`None`: the session is not recorded).
    pub fn recordings_dir(&self) -> Option<&Path> {
        self.recordings.as_deref()
    }

    /// Records a command; awaits its acknowledgement (an `Err`: refuse the request).
    /// `approval` is set when a review released it.
    pub async fn command(
        &self,
        event: CommandEvent<'_>,
    ) -> Result<(u64, crate::audit::Ack), AuditError> {
        let mut rec = self.rec.lock().await;
        match rec.as_mut() {
            Some(r) => r.command(event).await,
            None => Err(AuditError::Closed),
        }
    }

    async fn result(
        &self,
        n: u64,
        result: CommandResult,
        tally: &MaskTally,
        recording: Option<Summary>,
    ) {
        let mut rec = self.rec.lock().await;
        let Some(r) = rec.as_mut() else { return };
        let mut written = match r.result(n, result).await {
            Ok(ack) => {
                drop(ack);
                r.masking(n, tally).await.map(drop)
            }
            Err(e) => Err(e),
        };
        if let (Ok(()), Some(s)) = (&written, recording) {
            let record = RecordingRecord {
                n,
                file: format!("{RECORDINGS_DIR}/{}/{n}.cast", self.audit_id),
                format: "asciicast-v2".into(),
                sha256: ChainHash(s.sha256),
                bytes: s.bytes,
                events: s.events,
                truncated: s.truncated,
            };
            written = match r.recording(record).await {
                Ok(ack) => ack.durable().await.map(drop),
                Err(e) => Err(e),
            };
        }
        if let Err(error) = written {
            tracing::warn!(%error, "audit: result of an http exchange not recorded");
        }
    }

    /// The recorder, to end the session (once every exchange is recorded).
    pub async fn take(&self) -> Option<SessionRecorder> {
        self.rec.lock().await.take()
    }
}

/// What one exchange did, written when it is dropped (its answer ended, failed, or the client
/// went away).
pub struct ExchangeRecord {
    conn: Arc<Conn>,
    /// The command's number in the session (`None`: not recorded).
    n: Option<u64>,
    /// `METHOD URL`, for the log line.
    pub line: String,
    pub status: u16,
    started: Instant,
    received: u64,
    sent: u64,
    pub request_bytes: Arc<AtomicU64>,
    counts: MaskCounts,
    pub notes: Vec<String>,
    error: Option<String>,
    complete: bool,
    /// The request's body, masked (a rule's `record_bodies`).
    pub request_body: Option<BodyRecord>,
    /// The answer's body being captured (a rule's `record_bodies`).
    answer_capture: Option<Capture>,
    answer_body: Option<BodyRecord>,
    /// The terminal recording of an upgraded stream.
    recording: Option<Summary>,
}

impl ExchangeRecord {
    pub fn new(conn: Arc<Conn>, line: String, started: Instant) -> Self {
        Self {
            conn,
            n: None,
            line,
            status: 0,
            started,
            received: 0,
            sent: 0,
            request_bytes: Arc::default(),
            counts: MaskCounts::default(),
            notes: Vec::new(),
            error: None,
            complete: false,
            request_body: None,
            answer_capture: None,
            answer_body: None,
            recording: None,
        }
    }

    /// The command's number in the session's record.
    pub fn set_command(&mut self, n: u64) {
        self.n = Some(n);
    }

    /// The command's number in the session's record (`None`: not recorded).
    pub fn command(&self) -> Option<u64> {
        self.n
    }

    /// The exchange's terminal stream was recorded to this file.
    pub fn set_recording(&mut self, summary: Summary) {
        self.recording = Some(summary);
    }

    /// The connection this exchange belongs to.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub fn received(&mut self, bytes: u64) {
        self.received += bytes;
    }

    pub fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
    }

    pub fn add_counts(&mut self, counts: MaskCounts) {
        self.counts.merge(&counts);
    }

    pub fn set_error(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    /// Records the answer's body through `capture` as it streams (an `Err` says why it is not
    /// recorded, in a note).
    pub fn capture_answer(&mut self, capture: Result<Capture, String>) {
        self.answer_capture = capture.map_err(|why| self.not_recorded(&why)).ok();
    }

    /// The answer's next decoded bytes, for its capture.
    pub fn capture(&mut self, bytes: &[u8]) {
        if let Some(c) = self.answer_capture.as_mut() {
            c.feed(bytes);
        }
    }

    /// A captured body, or a note saying why it is not recorded.
    fn recorded(&mut self, body: Result<BodyRecord, String>) -> Option<BodyRecord> {
        body.map_err(|why| self.not_recorded(&why)).ok()
    }

    fn not_recorded(&mut self, why: &str) {
        self.notes.push(format!("answer body not recorded: {why}"));
    }

    /// The whole answer went out: its capture, if any, is complete.
    pub fn complete(&mut self) {
        self.complete = true;
        if let Some(c) = self.answer_capture.take() {
            self.answer_body = self.recorded(c.finish());
        }
    }
}

impl Drop for ExchangeRecord {
    fn drop(&mut self) {
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let audit = &self.conn.audit;
        audit
            .bytes_from_client
            .fetch_add(request_bytes, Ordering::Relaxed);
        audit
            .bytes_to_client
            .fetch_add(self.sent, Ordering::Relaxed);
        if !self.complete && self.error.is_none() {
            self.error = Some("the client went away before the answer ended".into());
        }
        let masker = &self.conn.masker;
        let mut tally = MaskTally::default();
        for (rule, n) in self.counts.iter() {
            let name = masker.rule_name(rule);
            self.conn.ctx.metrics.masked(name, u64::from(n));
            tally.add(name, u64::from(n));
        }
        // An exchange that failed is logged; the others at debug only: the audit log has
        // every exchange, and an info line per request would put a synchronous write to the
        // daemon's log on the hot path (PostgreSQL and MySQL log no line per statement).
        if let Some(error) = self.error.as_deref() {
            tracing::info!(
                session = self.conn.id,
                target = %self.conn.target.name,
                request = %self.line,
                status = self.status,
                %error,
                "http exchange failed"
            );
        }
        tracing::debug!(
            session = self.conn.id,
            target = %self.conn.target.name,
            request = %self.line,
            status = self.status,
            request_bytes,
            upstream_bytes = self.received,
            client_bytes = self.sent,
            masked = self.counts.total(),
            error = self.error.as_deref(),
            "http exchange"
        );
        let Some(n) = self.n else { return };
        // An answer that did not end (an error, the client left): what was captured of it.
        if let Some(c) = self.answer_capture.take() {
            self.answer_body = self.recorded(c.cut());
        }
        let result = CommandResult {
            rows: None,
            bytes: self.sent,
            duration: self.started.elapsed(),
            error: self.error.take(),
            status: Some(self.status),
            request_bytes: Some(request_bytes),
            notes: std::mem::take(&mut self.notes),
            request_body: self.request_body.take(),
            answer_body: self.answer_body.take(),
        };
        let conn = Arc::clone(&self.conn);
        let recording = self.recording.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                conn.audit.result(n, result, &tally, recording).await;
            });
        }
    }
}
