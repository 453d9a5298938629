//! Bodies on both legs: the request body read up to the judged bound before anything goes
//! upstream, and the answer body masked as it streams (gzip decoded first), counting bytes for
//! the exchange's record.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use super::record::ExchangeRecord;
use crate::audit::BodyRecord;
use crate::mask::{JsonMasker, MaskCounts, MaskError, Masker, TextMasker};

/// Errors a body stream ends with (the connection is then cut: nothing more of it is sent).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on both legs.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Compressed bytes decoded per step, so a small compressed frame cannot expand into an
/// unbounded buffer (deflate expands at most ~1032:1: about 8 MiB per step).
const GUNZIP_STEP: usize = 8 * 1024;

/// Masked text of a body recorded for a rule's `record_bodies` stops at this many bytes.
pub const RECORDED_BODY_MAX: usize = 64 * 1024;

/// Bytes masked per step while capturing, so that a body far over the cap is not masked whole
/// once the cap is reached.
const CAPTURE_STEP: usize = 16 * 1024;

/// A body on its way to the audit log (a rule's `record_bodies`): its bytes go through a
/// masker of its own, never the client's (whose rules a caller's `except_groups` may have
/// reduced), and only the masked output is kept, up to a cap. Once the cap is reached the
/// masker is dropped and the rest is only counted, so memory stays bounded.
pub struct Capture {
    /// `None` once the cap is reached or masking failed.
    masker: Option<Transform>,
    out: BytesMut,
    cap: usize,
    /// Bytes fed, before masking.
    bytes: u64,
    truncated: bool,
    failed: Option<String>,
}

impl Capture {
    /// A capture through `masker` (never [`Transform::Pass`]: an unmasked body is not
    /// recorded) keeping up to `cap` bytes of masked text.
    pub fn new(masker: Transform, cap: usize) -> Self {
        Capture {
            masker: Some(masker),
            out: BytesMut::new(),
            cap,
            bytes: 0,
            truncated: false,
            failed: None,
        }
    }

    /// Masks the next bytes of the body into the record, until the cap.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        for step in chunk.chunks(CAPTURE_STEP) {
            let Some(masker) = self.masker.as_mut() else {
                return;
            };
            if let Err(e) = masker.feed(step, &mut self.out) {
                self.fail(e);
                return;
            }
            self.cap_output();
        }
    }

    /// The body ended whole: the masker releases what it held back.
    pub fn finish(mut self) -> Result<BodyRecord, String> {
        if let Some(mut masker) = self.masker.take()
            && let Err(e) = masker.finish(&mut self.out)
        {
            self.fail(e);
        }
        self.cap_output();
        self.record()
    }

    /// The body was cut short (or not read to its end): what the masker released so far,
    /// marked truncated. What it held back (perhaps part of a value a detector would have
    /// matched whole) is not recorded.
    pub fn cut(mut self) -> Result<BodyRecord, String> {
        self.masker = None;
        self.truncated = true;
        self.record()
    }

    fn fail(&mut self, e: MaskError) {
        self.masker = None;
        self.failed = Some(format!("its masking failed: {e}"));
    }

    fn cap_output(&mut self) {
        if self.out.len() > self.cap {
            self.out.truncate(self.cap);
            self.truncated = true;
            self.masker = None;
        }
    }

    fn record(self) -> Result<BodyRecord, String> {
        // Fail closed: output of a masker that failed is not recorded, though what it released
        // was masked.
        if let Some(why) = self.failed {
            return Err(why);
        }
        Ok(BodyRecord {
            text: String::from_utf8_lossy(&self.out).into_owned(),
            truncated: self.truncated,
            bytes: self.bytes,
        })
    }
}

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A request body as read before judging.
#[derive(Debug)]
pub enum RequestBody {
    /// The request has no body.
    Empty,
    /// Read whole, within the bound.
    Judged(Bytes),
    /// Over the bound: the bytes read so far and the rest, not read yet.
    OverLimit { prefix: Bytes, rest: Incoming },
}

/// Reads `body` until its end or until more than `limit` bytes arrived. Trailers of a
/// request are dropped (nothing upstream needs them, and policy does not judge them).
pub async fn read_bounded(mut body: Incoming, limit: u64) -> Result<RequestBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(RequestBody::OverLimit {
                    prefix: buf.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(if buf.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Judged(buf.freeze())
    })
}

impl RequestBody {
    /// The body to send upstream; `sent` counts its bytes as they go.
    pub fn into_upstream(self, sent: Arc<AtomicU64>) -> ProxyBody {
        match self {
            RequestBody::Empty => empty(),
            RequestBody::Judged(b) => {
                sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                full(b)
            }
            RequestBody::OverLimit { prefix, rest } => Chained {
                prefix: Some(prefix),
                rest,
                sent,
            }
            .boxed(),
        }
    }
}

/// The prefix read before judging, then the rest of the client's body.
struct Chained {
    prefix: Option<Bytes>,
    rest: Incoming,
    sent: Arc<AtomicU64>,
}

impl Body for Chained {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            self.sent.fetch_add(p.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let frame = ready!(Pin::new(&mut self.rest).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            self.sent.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// What happens to an answer's bytes.
pub enum Transform {
    /// Forwarded as they are.
    Pass,
    Json(Box<JsonMasker>),
    /// One JSON document per line (a Kubernetes watch).
    JsonLines(Box<JsonLines>),
    Text(Box<TextMasker>),
}

/// Masks a stream of JSON documents separated by newlines, each as a document of its own.
/// A JSON string holds no raw newline, so a newline outside a document's value ends it; a
/// document cut by one is an error (nothing more is sent). Memory stays that of one
/// [`JsonMasker`].
pub struct JsonLines {
    masker: std::sync::Arc<Masker>,
    rules: Vec<String>,
    current: Option<JsonMasker>,
    counts: MaskCounts,
}

impl JsonLines {
    /// Checks the rules once (an error: masking cannot apply them).
    pub fn new(masker: std::sync::Arc<Masker>, rules: &[String]) -> Result<Self, MaskError> {
        masker.json(rules)?;
        Ok(JsonLines {
            masker,
            rules: rules.to_vec(),
            current: None,
            counts: MaskCounts::default(),
        })
    }

    fn end_document(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        if let Some(mut m) = self.current.take() {
            m.finish(out)?;
            self.counts.merge(&m.take_counts());
        }
        Ok(())
    }

    fn feed(&mut self, mut chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        while !chunk.is_empty() {
            let (part, newline) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], Some(i)),
                None => (chunk, None),
            };
            if !part.is_empty() {
                if self.current.is_none() {
                    self.current = Some(self.masker.json(&self.rules)?);
                }
                if let Some(m) = self.current.as_mut() {
                    m.feed(part, out)?;
                }
            }
            match newline {
                Some(i) => {
                    self.end_document(out)?;
                    out.extend_from_slice(b"\n");
                    chunk = &chunk[i + 1..];
                }
                None => break,
            }
        }
        Ok(())
    }
}

impl Transform {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        match self {
            Transform::Pass => out.extend_from_slice(chunk),
            Transform::Json(m) => m.feed(chunk, out)?,
            Transform::JsonLines(m) => m.feed(chunk, out)?,
            Transform::Text(m) => m.feed(chunk, out),
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        match self {
            Transform::Pass => {}
            Transform::Json(m) => m.finish(out)?,
            Transform::JsonLines(m) => m.end_document(out)?,
            Transform::Text(m) => m.finish(out),
        }
        Ok(())
    }

    fn take_counts(&mut self) -> MaskCounts {
        match self {
            Transform::Pass => MaskCounts::default(),
            Transform::Json(m) => m.take_counts(),
            Transform::JsonLines(m) => std::mem::take(&mut m.counts),
            Transform::Text(m) => m.take_counts(),
        }
    }
}

/// The answer on its way to the client: decoded, masked, counted; the exchange is recorded
/// when it ends or the client goes away.
pub struct AnswerBody {
    inner: Incoming,
    /// The upstream's first frame (or its end, `Some(None)`), read before the answer's head
    /// goes out ([`prefetched`](Self::prefetched)).
    first: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
    transform: Transform,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    /// Compressed bytes not decoded yet.
    pending: Bytes,
    out: BytesMut,
    done: bool,
    record: ExchangeRecord,
}

impl AnswerBody {
    pub fn new(
        inner: Incoming,
        transform: Transform,
        gunzip: bool,
        record: ExchangeRecord,
    ) -> Self {
        Self {
            inner,
            first: None,
            transform,
            gunzip: gunzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            pending: Bytes::new(),
            out: BytesMut::new(),
            done: false,
            record,
        }
    }

    /// Runs `input` (decoded bytes) through the transform; the output waits in `out`.
    fn transform(&mut self, input: &[u8]) -> Result<(), BoxError> {
        self.record.capture(input);
        self.transform.feed(input, &mut self.out)?;
        Ok(())
    }

    /// Decodes the next step of `pending`.
    fn gunzip_step(&mut self) -> Result<(), BoxError> {
        let n = self.pending.len().min(GUNZIP_STEP);
        let step = self.pending.split_to(n);
        let decoded = match self.gunzip.as_mut() {
            Some(d) => {
                d.write_all(&step)?;
                std::mem::take(d.get_mut())
            }
            None => return Ok(()),
        };
        self.transform(&decoded)
    }

    /// Waits up to `wait` for the upstream's first frame, so that the answer's head and its
    /// first bytes leave in one write (and a small answer, whole, with its end). hyper's
    /// client reads a body only once it is asked for, so without this the head goes out
    /// alone while the body is fetched. A stream that sends nothing within `wait` (an event
    /// stream, a watch) gets its head then, as before.
    pub async fn prefetched(mut self, wait: std::time::Duration) -> Self {
        if !self.inner.is_end_stream()
            && let Ok(first) = tokio::time::timeout(wait, self.inner.frame()).await
        {
            self.first = Some(first);
        }
        self
    }

    /// The upstream body ended: flushes the decoder and the masker, counts, completes the
    /// record.
    fn end(&mut self) -> Result<(), BoxError> {
        self.finish()?;
        self.done = true;
        self.record.add_counts(self.transform.take_counts());
        self.record.complete();
        Ok(())
    }

    /// Whether the upstream has nothing more to send: its end can go out with the last bytes.
    fn upstream_ended(&self) -> bool {
        self.first.is_none() && self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        if let Some(mut d) = self.gunzip.take() {
            d.try_finish()?;
            let rest = std::mem::take(d.get_mut());
            self.transform(&rest)?;
        }
        self.transform.finish(&mut self.out)?;
        Ok(())
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.record.set_error(e.to_string());
        self.record.add_counts(self.transform.take_counts());
        Poll::Ready(Some(Err(e)))
    }

    fn emit(&mut self) -> Option<Frame<Bytes>> {
        if self.out.is_empty() {
            return None;
        }
        let data = self.out.split().freeze();
        self.record.sent(data.len() as u64);
        Some(Frame::data(data))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                if let Err(e) = this.gunzip_step() {
                    return this.fail(e);
                }
                if let Some(f) = this.emit() {
                    return Poll::Ready(Some(Ok(f)));
                }
                continue;
            }
            let polled = match this.first.take() {
                Some(first) => first,
                None => ready!(Pin::new(&mut this.inner).poll_frame(cx)),
            };
            match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.record.received(data.len() as u64);
                        if this.gunzip.is_some() {
                            this.pending = data;
                            continue;
                        }
                        if let Transform::Pass = this.transform {
                            this.record.capture(&data);
                            this.record.sent(data.len() as u64);
                            // The last bytes: hyper writes them with the body's end.
                            if this.upstream_ended()
                                && let Err(e) = this.end()
                            {
                                return this.fail(e);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if let Err(e) = this.transform(&data) {
                            return this.fail(e);
                        }
                        if this.upstream_ended()
                            && let Err(e) = this.end()
                        {
                            return this.fail(e);
                        }
                        if let Some(f) = this.emit() {
                            return Poll::Ready(Some(Ok(f)));
                        }
                    }
                    // Trailers pass unchanged unless the body is masked: then they are
                    // values nobody reads, and are dropped.
                    Err(frame) => {
                        if let Transform::Pass = this.transform {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                },
                Some(Err(e)) => return this.fail(e.into()),
                None => {
                    if let Err(e) = this.end() {
                        return this.fail(e);
                    }
                    if let Some(f) = this.emit() {
                        return Poll::Ready(Some(Ok(f)));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.transform, &self.gunzip) {
            (Transform::Pass, None) => {
                let mut hint = self.inner.size_hint();
                // A prefetched frame is still owed to the client.
                if let Some(Some(Ok(frame))) = &self.first
                    && let Some(data) = frame.data_ref()
                {
                    let n = data.len() as u64;
                    if let Some(upper) = hint.upper() {
                        hint.set_upper(upper.saturating_add(n));
                    }
                    hint.set_lower(hint.lower().saturating_add(n));
                }
                hint
            }
            _ => SizeHint::default(),
        }
    }
}

/// An answer the gateway writes itself (a denial, an error) still carries its record, so the
/// exchange is recorded once its bytes went out.
pub struct OwnAnswer {
    body: Option<Bytes>,
    record: Option<ExchangeRecord>,
}

impl OwnAnswer {
    pub fn new(body: Bytes, record: ExchangeRecord) -> Self {
        Self {
            body: Some(body),
            record: Some(record),
        }
    }
}

impl Body for OwnAnswer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.body.take() {
            Some(b) => {
                if let Some(r) = self.record.as_mut() {
                    r.sent(b.len() as u64);
                    r.complete();
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => {
                // Written: record now rather than when hyper drops the body.
                self.record.take();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.body.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::tests::{KEY, rule};

    #[test]
    fn json_lines_masks_each_watch_event_across_chunk_boundaries() {
        let mut spec = rule(
            "secrets",
            &[],
            &[],
            crate::config::policy::MaskStyle::Redact,
        );
        spec.json_paths = vec!["$.object.data.*".into()];
        let masker = std::sync::Arc::new(Masker::new(&[spec], KEY).expect("masker"));
        let mut lines = JsonLines::new(masker, &["secrets".into()]).expect("rules");
        let stream = b"{\"type\":\"ADDED\",\"object\":{\"data\":{\"k\":\"c2VjcmV0\"}}}\n\
                       {\"type\":\"MODIFIED\",\"object\":{\"data\":{\"k\":\"b3RoZXI=\"}}}\n";
        let mut out = BytesMut::new();
        // Cut mid-document and at the newline.
        for part in [&stream[..20], &stream[20..56], &stream[56..]] {
            lines.feed(part, &mut out).expect("feed");
        }
        lines.end_document(&mut out).expect("end");
        let text = String::from_utf8(out.to_vec()).expect("utf-8");
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON document per line"))
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(events[0]["object"]["data"]["k"], "[REDACTED]");
        assert_eq!(events[1]["type"], "MODIFIED");
        assert_eq!(events[1]["object"]["data"]["k"], "[REDACTED]");
        assert!(!text.contains("c2VjcmV0") && !text.contains("b3RoZXI="));
    }

    fn pii() -> Masker {
        use crate::config::policy::{Detector, MaskStyle};
        let spec = rule(
            "pii",
            &[],
            &[Detector::Email, Detector::Card],
            MaskStyle::Redact,
        );
        Masker::new(&[spec], KEY).expect("masker")
    }

    fn text_capture(cap: usize) -> Capture {
        let masker = pii().text(&["pii".into()]).expect("rules");
        Capture::new(Transform::Text(Box::new(masker)), cap)
    }

    #[test]
    fn a_captured_body_is_masked_whole() {
        let mut c = text_capture(RECORDED_BODY_MAX);
        let body = b"contact carol@example.com, card 4111111111111111\n";
        // Cut inside the email and the card number.
        for part in body.chunks(7) {
            c.feed(part);
        }
        let rec = c.finish().expect("recorded");
        assert_eq!(rec.text, "contact [REDACTED], card [REDACTED]\n");
        assert!(!rec.truncated);
        assert_eq!(rec.bytes, body.len() as u64);
    }

    #[test]
    fn a_capture_stops_at_its_cap_and_counts_the_rest() {
        let line = b"user carol@example.com paid with 4111111111111111 today\n";
        let mut c = text_capture(RECORDED_BODY_MAX);
        let mut total = 0u64;
        // About 1 MiB in frames of whole lines; the cap may cut a value anywhere.
        let frame = line.repeat(140);
        for _ in 0..128 {
            c.feed(&frame);
            total += frame.len() as u64;
            assert!(
                c.out.len() <= RECORDED_BODY_MAX,
                "output stays within the cap"
            );
        }
        assert!(c.masker.is_none(), "the masker is dropped at the cap");
        let rec = c.finish().expect("recorded");
        assert!(rec.truncated);
        assert_eq!(rec.text.len(), RECORDED_BODY_MAX);
        assert_eq!(rec.bytes, total, "every byte counted");
        assert!(rec.text.contains("[REDACTED]"));
        assert!(!rec.text.contains("carol@") && !rec.text.contains("41111111"));
    }

    #[test]
    fn a_cut_body_records_only_what_masking_released() {
        // A body cut short ends inside an email: the masker still holds it; nothing of it is
        // recorded.
        let mut c = text_capture(RECORDED_BODY_MAX);
        c.feed(b"first line\nsecond contact carol@exam");
        let rec = c.cut().expect("recorded");
        assert!(rec.truncated);
        assert!(!rec.text.contains("carol"), "{}", rec.text);
        assert_eq!(rec.bytes, 36);

        // A small cap reached with bytes held back: truncated at the cap, masked.
        let mut c = text_capture(16);
        c.feed(&b"carol@example.com ".repeat(2000));
        let rec = c.finish().expect("recorded");
        assert!(rec.truncated);
        assert_eq!(rec.text, "[REDACTED] [REDA");
    }

    #[test]
    fn a_json_capture_masks_and_fails_closed() {
        let masker = pii().json(&["pii".into()]).expect("rules");
        let mut c = Capture::new(Transform::Json(Box::new(masker)), RECORDED_BODY_MAX);
        c.feed(br#"{"email":"carol@example.com","#);
        c.feed(br#""n":1}"#);
        let rec = c.finish().expect("recorded");
        assert_eq!(rec.text, r#"{"email":"[REDACTED]","n":1}"#);

        // A document masking fails on (here: it ends inside a value) is not recorded at all.
        let masker = pii().json(&["pii".into()]).expect("rules");
        let mut c = Capture::new(Transform::Json(Box::new(masker)), RECORDED_BODY_MAX);
        c.feed(br#"{"email":"carol@example.com","n":[1,"#);
        assert!(c.finish().is_err());
    }
}
