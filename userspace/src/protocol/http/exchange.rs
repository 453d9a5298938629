//! One request through the phase pipeline: head → body → classify → judge (and hold) →
//! record → upstream → answer → record. Each phase is a function over the request and its
//! [`ExchangeRecord`]; nothing reaches the target before the judge phase allowed it, and what
//! was judged is exactly what is sent.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::body::{self, AnswerBody, Capture, OwnAnswer, ProxyBody, RequestBody, Transform};
use super::classify::{Head, Terminal};
use super::record::ExchangeRecord;
use super::{BODY_TIMEOUT, Conn, TokenCaller, forward, upgrade};
use crate::approval::ReviewTrail;
use crate::audit::{BodyRecord, CommandEvent};
use crate::config::http::BinaryAnswers;
use crate::gate::{self, Authenticator as _, Gate, Judge, Notice, Verdict};
use crate::metrics::DenyReason;
use crate::model::{
    Command, Decision, Facts, HttpBody, Identity, ReviewMode, ascii_compatible_charset,
    content_type_charset,
};
use crate::recording::{Header, MaskedCast};

/// Response header naming the approval request that released a held request.
pub const APPROVAL_HEADER: &str = "x-airlock-approval";
/// Response header naming a pending approval request (retry mode).
pub const REQUEST_HEADER: &str = "x-airlock-request";
/// Seconds a client in retry mode is told to wait before asking again.
const RETRY_AFTER_SECS: u32 = 10;
/// How long an answer's head waits for its first bytes, to leave with them in one write.
const FIRST_FRAME_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A held request's notices go to the daemon's log: the client has no channel before its
/// answer (the answer carries the approval id in [`APPROVAL_HEADER`]).
struct HttpNotice {
    session: u64,
    request: String,
}

impl Notice for HttpNotice {
    fn notice(&self, text: &str) {
        tracing::info!(session = self.session, request = %self.request, "{text}");
    }
}

/// A held request's record if its exchange is dropped while held (the client reset the
/// stream or left): the command, as judged, with its review withdrawn. Written by a task of
/// its own, which keeps the session open (it holds the connection state) until it is.
struct Withdrawal {
    trail: ReviewTrail,
    record: Option<Withdrawn>,
}

/// What a withdrawn request's command record says.
struct Withdrawn {
    conn: Arc<Conn>,
    command: Command<'static>,
    facts: Arc<Facts>,
    decision: Decision,
    caller: Option<Arc<Identity>>,
}

impl Withdrawal {
    fn new(
        conn: &Arc<Conn>,
        trail: ReviewTrail,
        command: &Command<'_>,
        facts: &Arc<Facts>,
        decision: Option<&Decision>,
        caller: Option<&Arc<Identity>>,
    ) -> Self {
        let record = decision
            .filter(|_| conn.audit.recording())
            .map(|d| Withdrawn {
                conn: Arc::clone(conn),
                command: crate::audit::recorded_command(command),
                facts: Arc::clone(facts),
                decision: d.clone(),
                caller: caller.cloned(),
            });
        Withdrawal { trail, record }
    }

    /// The hold resolved: how its review ended; nothing is left to record on drop.
    fn resolved(mut self) -> Option<crate::approval::Review> {
        self.record = None;
        self.trail.take()
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        let Some(Withdrawn {
            conn,
            command,
            facts,
            decision,
            caller,
        }) = self.record.take()
        else {
            return;
        };
        // The request was marked withdrawn on the trail when it was made.
        let review = self.trail.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let event = CommandEvent {
                command: &command,
                facts: &facts,
                decision: &decision,
                approval: review.as_ref().map(gate::session::review_record),
                caller: caller.as_deref(),
            };
            if let Err(error) = conn.audit.command(event).await {
                tracing::error!(session = conn.id, %error, "audit: a withdrawn request was not recorded");
            }
        });
    }
}

/// Runs one exchange; every outcome is an answer for the client.
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // The URI without any userinfo (`http://user:pass@host/`): the line goes to the log.
    let line = match req.uri().authority().filter(|a| a.as_str().contains('@')) {
        Some(a) => format!(
            "{} {}",
            req.method(),
            req.uri().to_string().replacen(
                a.as_str(),
                a.as_str().rsplit('@').next().unwrap_or(""),
                1
            )
        ),
        None => format!("{} {}", req.method(), req.uri()),
    };
    let mut record = ExchangeRecord::new(Arc::clone(&conn), line, started);

    // Phase 1: the head. Refuse what could be read two ways before anything else.
    if let Some(why) = ambiguous(&req) {
        tracing::warn!(session = conn.id, target = %conn.target.name, request = %record.line, why, "request refused");
        record.notes.push(format!("refused: {why}"));
        let mut r = json_answer(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "message": why}),
            record,
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let upgrade_requested = is_upgrade(req.headers());
    let mut req = req;
    let client_upgrade = upgrade_requested.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let Some(host) = request_host(&parts) else {
        return bad_request(record, "the request names no host");
    };
    // Only names the target answers to: behind a shared front end another name is another
    // site, which would receive the gateway's credential.
    if !conn.http.answers_to(&host, &conn.target.addresses) {
        tracing::warn!(session = conn.id, target = %conn.target.name, %host, "request for a name the target does not answer to");
        return json_answer(
            StatusCode::MISDIRECTED_REQUEST,
            &serde_json::json!({"error": "misdirected", "message": format!("airlock: target {} does not answer to {host} (http.names)", conn.target.name)}),
            record,
        );
    }
    let path = match super::target::canonical(parts.uri.path(), parts.uri.query()) {
        Ok(p) => p.into_owned(),
        Err(why) => return bad_request(record, why),
    };
    // Judged and forwarded in one form, as the path is.
    let query = match parts.uri.query().map(super::target::canonical_query) {
        Some(Ok(q)) => Some(q.into_owned()),
        Some(Err(why)) => return bad_request(record, why),
        None => None,
    };

    // Phase 2: the body, up to the bound, before judging.
    let limit = conn.http.max_body();
    let read = match tokio::time::timeout(BODY_TIMEOUT, body::read_bounded(incoming, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return bad_request(record, &format!("request body: {e}")),
        Err(_) => {
            return json_answer(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({"error": "timeout", "message": "the request body did not arrive in time"}),
                record,
            );
        }
    };

    if overrides_method(query.as_deref(), &read) {
        return bad_request(
            record,
            "a `_method` parameter (the target could run another method than the one judged)",
        );
    }

    // Phase 3: classify.
    let judged_body = match &read {
        RequestBody::Empty => None,
        RequestBody::Judged(b) => Some(HttpBody::judged(&b[..])),
        RequestBody::OverLimit { .. } => Some(HttpBody::OverLimit { limit }),
    };
    let head = Head {
        method: &parts.method,
        host: &host,
        path: &path,
        query: query.as_deref(),
        headers: &parts.headers,
    };
    // The caller: the connection's, or the one a bearer token of this request names.
    let caller = match token_caller(&conn, &parts.headers).await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(session = conn.id, target = %conn.target.name, request = %record.line, why, "request refused: token");
            conn.ctx
                .metrics
                .denied_connection(DenyReason::Unauthenticated);
            return json_answer(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthenticated", "message": format!("airlock: {why}")}),
                record,
            );
        }
    };
    let identity: &Identity = caller.as_deref().unwrap_or(&conn.identity);
    let command = match conn.classifier.command(&head, judged_body) {
        Ok(c) => c,
        Err(message) => return bad_request(record, &message),
    };
    let treatment = conn.classifier.treatment(&head, &command);
    let text = command.text().into_owned();

    // Phase 4: judge, and hold.
    let judged = Gate {
        ctx: &conn.ctx,
        decider: None,
        identity,
        target: &conn.target.name,
        protocol: conn.classifier.protocol(),
        session: conn.id,
        metrics: &conn.metrics,
        masker: &conn.masker,
        // The decision names the rule in a denial's body.
        recording: true,
        preview: None,
    }
    .judge(&command);
    let decision = judged.record.clone();
    let (verdict, review) = match judged.verdict {
        Verdict::Hold(hold) => {
            let notice = Arc::new(HttpNotice {
                session: conn.id,
                request: text.clone(),
            });
            // Dropping this future (the client reset the stream or left) withdraws the request;
            // the guard then records the command with its withdrawn review.
            let withdrawal = Withdrawal::new(
                &conn,
                hold.trail(),
                &command,
                &judged.facts,
                decision.as_ref(),
                caller.as_ref(),
            );
            let verdict = hold.start(notice).await;
            (verdict, withdrawal.resolved())
        }
        v => (v, None),
    };
    let rule = decision
        .as_ref()
        .map_or("default", Decision::rule)
        .to_owned();
    let recorded_decision = match (&verdict, &decision) {
        (Verdict::Deny { message }, Some(Decision::Review { .. })) => Decision::Deny {
            rule: rule.clone(),
            reason: message.clone(),
        },
        (_, Some(d)) => d.clone(),
        (_, None) => Decision::Deny {
            rule: rule.clone(),
            reason: "no decision".into(),
        },
    };

    // Phase 5: record the command, and the review that released or refused it, before
    // anything goes upstream.
    let event = CommandEvent {
        command: &command,
        facts: &judged.facts,
        decision: &recorded_decision,
        approval: review.as_ref().map(gate::session::review_record),
        caller: caller.as_deref(),
    };
    let ack = if conn.audit.recording() {
        match conn.audit.command(event).await {
            Ok((n, ack)) => {
                record.set_command(n);
                Some(ack)
            }
            Err(error) => {
                tracing::error!(session = conn.id, %error, "audit log failed; request refused");
                return json_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"error": "audit", "message": "the audit log cannot record this request; it was not sent"}),
                    record,
                );
            }
        }
    } else {
        None
    };

    drop(command);

    // The bodies go to the audit record only when the deciding rule asks, masked first.
    let record_bodies = judged.record_bodies.filter(|_| ack.is_some());
    if let Some(rules) = &record_bodies {
        match request_body_record(&conn, &parts.headers, &read, rules) {
            Ok(body) => record.request_body = body,
            Err(why) => record
                .notes
                .push(format!("request body not recorded: {why}")),
        }
    }

    let (mask, approval) = match verdict {
        Verdict::Allow { mask, approval, .. } => (mask, approval),
        Verdict::Deny { message } => {
            return denial(&conn, record, &rule, &message, decision.as_ref());
        }
        // A hold resolves to allow or deny; anything else is refused.
        Verdict::Hold(_) => {
            return denial(
                &conn,
                record,
                &rule,
                "internal error: unresolved hold",
                None,
            );
        }
    };

    // Phase 6: upstream, with the gateway's credentials.
    let stripped = forward::strip_credentials(&mut parts.headers, &conn.credential_headers);
    for name in &stripped {
        record
            .notes
            .push(format!("client credential {name} stripped"));
    }
    if let Some(cred) = &conn.http.credential {
        match forward::credential(cred) {
            Ok((name, value)) => {
                parts.headers.insert(name, value);
            }
            Err(error) => {
                tracing::error!(session = conn.id, target = %conn.target.name, %error, "gateway credential unavailable");
                return json_answer(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": "credential", "message": error.to_string()}),
                    record,
                );
            }
        }
    }
    let client_version = parts.version;
    let head_only = parts.method == Method::HEAD;
    let port = request_port(&parts);
    forward::strip_hop_by_hop(&mut parts.headers, upgrade_requested);
    if upgrade_requested && let Some(terminal) = &treatment.terminal {
        narrow_websocket_offer(&mut parts.headers, terminal.websocket_protocols);
    }
    // The URI carries the name: Host on HTTP/1.1, `:authority` on HTTP/2 (never both).
    parts.headers.remove(header::HOST);
    if !mask.is_empty() {
        // An upgraded stream is tunnelled as it is; only a terminal (exec, attach) is read,
        // and recorded masked, and a named tunnel (port-forward) is what its rule allowed.
        // Anything else under masking would pass unmasked.
        if upgrade_requested && treatment.terminal.is_none() && !treatment.tunnel {
            record
                .notes
                .push("refused: an upgrade where masking applies".into());
            return json_answer(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "unmaskable", "message": "airlock: masking applies to this request, and an upgraded connection (WebSocket, …) is not masked"}),
                record,
            );
        }
        // Ask for an answer masking can read; gzip is decoded if the target sends it anyway.
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        // Whole answers only: pieces masked one by one could be put together unmasked.
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
        // A Table embeds each row's object (metadata at least, whose annotations hold what
        // `kubectl apply` last applied: a Secret's data) where no path written for the
        // objects reaches: under path rules the plain list is asked for instead.
        let whole_objects =
            conn.masker.has_json_paths(&mask) && !query.as_deref().is_some_and(embeds_no_object);
        if treatment.negotiate_json && negotiate_json(&mut parts.headers, whole_objects) {
            record
                .notes
                .push("Accept narrowed to JSON for masking".into());
        }
    }
    // The path as judged, not as sent: the target reads what the rules read.
    let path_query = match &query {
        Some(q) => Cow::Owned(format!("{path}?{q}")),
        None => Cow::Borrowed(path.as_str()),
    };
    parts.uri = match conn.upstream.uri(&host, port, &path_query) {
        Ok(u) => u,
        Err(e) => return bad_request(record, &e.to_string()),
    };
    parts.version = Version::HTTP_11;
    let up_body = read.into_upstream(Arc::clone(&record.request_bytes));
    let sent = conn.upstream.send(Request::from_parts(parts, up_body));
    // The command's record is written while the target works; no answer leaves before it is.
    let (resp, acked) = match ack {
        Some(ack) => {
            let (r, a) = tokio::join!(sent, ack.durable());
            (r, a.map(drop))
        }
        None => (sent.await, Ok(())),
    };
    if let Err(error) = acked {
        tracing::error!(session = conn.id, %error, "audit log failed; answer withheld");
        return json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "audit", "message": "the audit log failed; the answer was withheld"}),
            record,
        );
    }
    let mut resp = match resp {
        Ok(r) => r,
        Err(error) => {
            tracing::warn!(session = conn.id, target = %conn.target.name, error = %error, "upstream request failed");
            return json_answer(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({"error": "upstream", "message": format!("the target did not answer: {error}")}),
                record,
            );
        }
    };
    record.status = resp.status().as_u16();

    // Phase 7: the answer.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return json_answer(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({"error": "upstream", "message": "the target switched protocols unasked"}),
                record,
            );
        };
        let terminal = treatment.terminal.as_ref();
        let recorded = match terminal_recording(&conn, terminal, &text, &resp, &record) {
            Ok(r) => r,
            Err(why) => {
                tracing::error!(session = conn.id, target = %conn.target.name, request = %record.line, why, "upgrade refused");
                return json_answer(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": "recording", "message": why}),
                    record,
                );
            }
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (rparts, _) = resp.into_parts();
        record.notes.push(
            if recorded.is_some() {
                "upgraded: terminal stream recorded"
            } else {
                "upgraded: tunnel bytes counted"
            }
            .into(),
        );
        tokio::spawn(upgrade::tunnel(
            client_upgrade,
            upstream_upgrade,
            record,
            recorded,
        ));
        let mut answer = Response::from_parts(rparts, body::empty());
        answer.headers_mut().remove(header::CONTENT_LENGTH);
        return answer;
    }
    let (mut rparts, rbody) = resp.into_parts();
    forward::strip_hop_by_hop(&mut rparts.headers, false);
    rparts.version = client_version;
    if !mask.is_empty() {
        mask_headers(&conn, &mask, &mut rparts.headers, &mut record);
    }
    if let Some(id) = &approval
        && let Ok(v) = HeaderValue::from_str(id)
    {
        rparts.headers.insert(APPROVAL_HEADER, v);
    }
    let has_body = !head_only && !rbody.is_end_stream();
    // Captures the answer for the audit record; `decoded`: the client's masking decodes gzip.
    let capture = |record: &mut ExchangeRecord, headers: &HeaderMap, decoded: bool| {
        let Some(rules) = record_bodies.as_deref().filter(|_| has_body) else {
            return;
        };
        record.capture_answer(answer_capture(
            &conn,
            headers,
            rules,
            treatment.json_lines,
            decoded,
        ));
    };
    if mask.is_empty() || !has_body {
        capture(&mut record, &rparts.headers, false);
        let answer = AnswerBody::new(rbody, Transform::Pass, false, record)
            .prefetched(FIRST_FRAME_WAIT)
            .await;
        return Response::from_parts(rparts, answer.boxed());
    }
    // A part of a document is refused whatever `binary` says: pieces masked apart could be
    // put together unmasked.
    if rparts.status == StatusCode::PARTIAL_CONTENT
        || rparts.headers.contains_key(header::CONTENT_RANGE)
    {
        return unmaskable(
            record,
            "it is a part of a document (206, Content-Range), masked only whole",
        );
    }
    // Refused whatever `binary` says: passing it would skip the path rules, not just the
    // detectors.
    if let Some(why) = another_form(&conn, rparts.status, &rparts.headers, &mask) {
        return unmaskable(record, &why);
    }
    let plan = match answer_plan(&conn, &rparts.headers, &mask, treatment.json_lines) {
        Ok(p) => p,
        Err(why) => {
            if conn.http.binary == BinaryAnswers::Pass {
                record.notes.push(format!("answer passed unmasked: {why}"));
                capture(&mut record, &rparts.headers, false);
                let answer = AnswerBody::new(rbody, Transform::Pass, false, record)
                    .prefetched(FIRST_FRAME_WAIT)
                    .await;
                return Response::from_parts(rparts, answer.boxed());
            }
            return unmaskable(record, &why);
        }
    };
    capture(&mut record, &rparts.headers, plan.gunzip);
    // The length changes with masking: hyper chunks HTTP/1.1 and frames HTTP/2 instead.
    rparts.headers.remove(header::CONTENT_LENGTH);
    rparts.headers.remove(header::ACCEPT_RANGES);
    if plan.gunzip {
        rparts.headers.remove(header::CONTENT_ENCODING);
        record.notes.push("gzip answer decoded for masking".into());
    }
    let answer = AnswerBody::new(rbody, plan.transform, plan.gunzip, record)
        .prefetched(FIRST_FRAME_WAIT)
        .await;
    Response::from_parts(rparts, answer.boxed())
}

/// Answer headers that carry no values of the data (framing, caching, types), and the
/// caller's own cookies.
const STRUCTURAL_HEADERS: &[header::HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::DATE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::SERVER,
    header::ACCEPT_RANGES,
    // The caller's own session with the app, which it must hold to go on.
    header::SET_COOKIE,
];

/// Answer headers through the detectors of the masking rules (`Location:
/// /welcome?email=alice@example.com`, `X-User: …`): a value with a match is replaced by its
/// masked text, also when the match is only seen percent-decoded (`alice%40example.com`).
fn mask_headers(
    conn: &Conn,
    mask: &[String],
    headers: &mut HeaderMap,
    record: &mut ExchangeRecord,
) {
    if conn.masker.text(mask).map_or(true, |t| t.is_passthrough()) {
        return;
    }
    let mut masked = 0;
    for (name, value) in headers.iter_mut() {
        let raw = value.as_bytes();
        // Counts and times (`X-RateLimit-Reset: 1733600000`) are not data; a card number
        // (13 digits and more) is.
        let count = raw.len() <= 10 && raw.iter().all(u8::is_ascii_digit);
        if STRUCTURAL_HEADERS.contains(name) || count {
            continue;
        }
        let decoded: Cow<'_, [u8]> = if raw.contains(&b'%') {
            percent_encoding::percent_decode(raw).into()
        } else {
            Cow::Borrowed(raw)
        };
        let Some(text) = conn.masker.detect_in(mask, &decoded) else {
            continue;
        };
        *value = HeaderValue::from_bytes(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]"));
        masked += 1;
    }
    if masked > 0 {
        record
            .notes
            .push(format!("{masked} answer header(s) masked by the detectors"));
    }
}

/// The answer to an answer masking cannot read (`why`), refused: a 502.
fn unmaskable(mut record: ExchangeRecord, why: &str) -> Response<ProxyBody> {
    record.status = StatusCode::BAD_GATEWAY.as_u16();
    record.notes.push(format!("answer refused: {why}"));
    json_answer(
        StatusCode::BAD_GATEWAY,
        &serde_json::json!({"error": "unmaskable", "message": format!("masking applies to this answer, and {why}")}),
        record,
    )
}

/// How an answer under masking rules is read.
struct AnswerPlan {
    transform: Transform,
    gunzip: bool,
}

/// Why a successful answer is the document in another structured form than JSON, where the
/// rules mask JSON paths: an app answering `Accept: application/xml`, `?format=csv`, an HTML
/// view or JSONP would pass the paths unmasked. Plain text, and error pages (not 2xx), go
/// through the detectors as before.
fn another_form(
    conn: &Conn,
    status: StatusCode,
    headers: &HeaderMap,
    mask: &[String],
) -> Option<String> {
    if !status.is_success() || !conn.masker.has_json_paths(mask) {
        return None;
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let structured = ctype.contains("xml")
        || ctype.contains("yaml")
        || ctype.contains("javascript")
        || matches!(ctype.as_str(), "text/html" | "text/csv" | "application/csv");
    structured.then(|| {
        format!(
            "its masking rules mask JSON paths, and it is {ctype}, another form of the document"
        )
    })
}

/// Picks the masker by content type and decodes gzip; an `Err` says why masking cannot read
/// the answer.
fn answer_plan(
    conn: &Conn,
    headers: &HeaderMap,
    mask: &[String],
    json_lines: bool,
) -> Result<AnswerPlan, String> {
    let gunzip = gzip_coded(headers)?;
    let transform = body_masker(conn, headers, mask, json_lines)?;
    Ok(AnswerPlan { transform, gunzip })
}

/// Whether a body is gzip-coded (`Ok(false)`: not coded); an `Err` names a coding the gateway
/// does not decode.
fn gzip_coded(headers: &HeaderMap) -> Result<bool, String> {
    // A client joins repeated headers into one list (`identity, gzip`): read whole, or not at
    // all.
    for name in [header::CONTENT_ENCODING, header::CONTENT_TYPE] {
        if headers.get_all(&name).iter().count() > 1 {
            return Err(format!("it carries more than one {name} header"));
        }
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(other) => Err(format!("its content encoding `{other}` is not decoded")),
    }
}

/// A masker for a body by its content type (JSON, JSON lines, text) under `rules`; an `Err`
/// says why there is none.
fn body_masker(
    conn: &Conn,
    headers: &HeaderMap,
    rules: &[String],
    json_lines: bool,
) -> Result<Transform, String> {
    let full = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctype = full
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if let Some(charset) = content_type_charset(full)
        && !ascii_compatible_charset(&charset)
    {
        return Err(format!(
            "its charset ({charset}) is not one the maskers read (ASCII-compatible sets only)"
        ));
    }
    let masker_error = |e: crate::mask::MaskError| format!("its masking rules failed: {e}");
    // JSON under any of its names is read as JSON, so that path rules apply; text that is
    // JSON without saying so gets the detectors only.
    let json = ctype == "application/json"
        || ctype.ends_with("+json")
        || matches!(
            ctype.as_str(),
            "text/json" | "text/x-json" | "application/x-json"
        );
    let lines = matches!(
        ctype.as_str(),
        "application/x-ndjson"
            | "application/jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines"
    );
    Ok(if (json && json_lines) || lines {
        Transform::JsonLines(Box::new(
            body::JsonLines::new(Arc::clone(&conn.masker), rules).map_err(masker_error)?,
        ))
    } else if json {
        Transform::Json(Box::new(conn.masker.json(rules).map_err(masker_error)?))
    } else if is_text(&ctype) {
        Transform::Text(Box::new(conn.masker.text(rules).map_err(masker_error)?))
    } else {
        let shown = if ctype.is_empty() { "none" } else { &ctype };
        return Err(format!("its content type ({shown}) is not text"));
    })
}

/// The request's body for the audit record (a rule's `record_bodies`), masked with `rules`;
/// an `Err` says why it is not recorded.
fn request_body_record(
    conn: &Conn,
    headers: &HeaderMap,
    read: &RequestBody,
    rules: &[String],
) -> Result<Option<BodyRecord>, String> {
    let (bytes, whole) = match read {
        RequestBody::Empty => return Ok(None),
        RequestBody::Judged(b) => (b, true),
        RequestBody::OverLimit { prefix, .. } => (prefix, false),
    };
    if gzip_coded(headers)? {
        return Err("it is gzip-coded".into());
    }
    let mut capture = Capture::new(
        body_masker(conn, headers, rules, false)?,
        body::RECORDED_BODY_MAX,
    );
    capture.feed(bytes);
    // Over the bound, only the prefix read before judging is recorded.
    if whole {
        capture.finish()
    } else {
        capture.cut()
    }
    .map(Some)
}

/// The answer's capture for the audit record (a rule's `record_bodies`), masked with `rules`;
/// `decoded`: the answer's gzip is decoded for the client's masking. An `Err` says why it is
/// not recorded.
fn answer_capture(
    conn: &Conn,
    headers: &HeaderMap,
    rules: &[String],
    json_lines: bool,
    decoded: bool,
) -> Result<Capture, String> {
    if gzip_coded(headers)? && !decoded {
        return Err("it is gzip-coded and passed through undecoded".into());
    }
    let masker = body_masker(conn, headers, rules, json_lines)?;
    Ok(Capture::new(masker, body::RECORDED_BODY_MAX))
}

/// Narrows `Accept` to its JSON media ranges (`application/json;as=Table;…` kept), or to
/// `application/json` when it names none; returns whether it changed. With `whole_objects`
/// (a Table asked to embed each row's object, `includeObject=Object`), ranges asking for
/// another form (`as=Table`) are dropped too: the embedded objects sit where no masking path
/// written for the objects reaches (`$.rows[*].object`), and the plain list is what the
/// paths describe.
fn negotiate_json(headers: &mut HeaderMap, whole_objects: bool) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return false;
    };
    let original = accept.to_str().unwrap_or("");
    let json: Vec<&str> = original
        .split(',')
        .map(str::trim)
        .filter(|range| {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
                && !(whole_objects
                    && params.any(|p| p.trim().to_ascii_lowercase().starts_with("as=")))
        })
        .collect();
    let narrowed = if json.is_empty() {
        "application/json".to_owned()
    } else {
        json.join(",")
    };
    if narrowed == original {
        return false;
    }
    match HeaderValue::from_str(&narrowed) {
        Ok(v) => {
            headers.insert(header::ACCEPT, v);
            true
        }
        Err(_) => false,
    }
}

fn is_text(ctype: &str) -> bool {
    ctype.starts_with("text/")
        || ctype.ends_with("+xml")
        || matches!(
            ctype,
            "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/yaml"
                | "application/csv"
        )
}

/// Why a request could be read two ways (request smuggling), if it could. hyper itself refuses
/// duplicate or conflicting lengths and unknown transfer codings.
fn ambiguous(req: &Request<Incoming>) -> Option<&'static str> {
    let h = req.headers();
    if req.version() <= Version::HTTP_11 {
        if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
            return Some("both Content-Length and Transfer-Encoding");
        }
        if h.get_all(header::HOST).iter().count() > 1 {
            return Some("more than one Host header");
        }
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Some("more than one Content-Length");
    }
    // Frameworks that honour these run another method than the one judged (a POST rule would
    // let a DELETE through).
    if METHOD_OVERRIDES.iter().any(|name| h.contains_key(*name)) {
        return Some(
            "a method override header (the target could run another method than the one judged)",
        );
    }
    // IIS, Symfony and Zend route these instead of the request's own path.
    if PATH_OVERRIDES.iter().any(|name| h.contains_key(*name)) {
        return Some(
            "a path override header (the target could serve another path than the one judged)",
        );
    }
    None
}

/// Whether a request carries a `_method` parameter, with which Rails, Laravel, Symfony and
/// Spring replace the request method: in the query, or in the body the gateway read.
fn overrides_method(query: Option<&str>, read: &RequestBody) -> bool {
    let in_query = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k.eq_ignore_ascii_case(METHOD_PARAM))
    });
    let body = match read {
        RequestBody::Judged(b) => &b[..],
        RequestBody::OverLimit { prefix, .. } => &prefix[..],
        RequestBody::Empty => return in_query,
    };
    // Whatever the body says it is (see `names_method`).
    in_query || names_method(body)
}

/// The parameter frameworks read a replacement method from.
const METHOD_PARAM: &str = "_method";

/// Whether `body` names a `_method` parameter however the framework reads it: a form key
/// (decoded, so `%5Fmethod` too; Rack reads an untyped body as a form), a top-level JSON key
/// (Laravel; JSON escapes decoded), or a multipart part's name, quoted or not.
fn names_method(body: &[u8]) -> bool {
    if form_urlencoded::parse(body).any(|(k, _)| k.trim().eq_ignore_ascii_case(METHOD_PARAM)) {
        return true;
    }
    if body.trim_ascii_start().starts_with(b"{")
        && let Ok(doc) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        && doc.keys().any(|k| k.eq_ignore_ascii_case(METHOD_PARAM))
    {
        return true;
    }
    let lower = body.to_ascii_lowercase();
    [&b"name=_method"[..], b"name=\"_method\"", b"name='_method'"]
        .iter()
        .any(|needle| {
            memchr::memmem::find_iter(&lower, needle).any(|at| {
                lower
                    .get(at + needle.len())
                    .is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
            })
        })
}

/// Headers with which IIS, Symfony and Zend replace the request's path.
const PATH_OVERRIDES: &[&str] = &["x-original-url", "x-rewrite-url"];

/// Headers with which Express, Rails, Laravel, Spring and others replace the request method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The host a request is for, without the port, lower-case: the URI's authority (absolute
/// form, HTTP/2 `:authority`), else the Host header.
fn request_host(parts: &http::request::Parts) -> Option<String> {
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => parts
            .headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<http::uri::Authority>()
            .ok()?,
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // `admin.internal.` is `admin.internal` to DNS and to nginx: judge the name, not the dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty() && !host.ends_with('.')).then(|| host.to_ascii_lowercase())
}

/// The port the client named in its authority or Host header, if any.
fn request_port(parts: &http::request::Parts) -> Option<u16> {
    match parts.uri.authority() {
        Some(a) => a.port_u16(),
        None => parts
            .headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<http::uri::Authority>()
            .ok()?
            .port_u16(),
    }
}

/// The caller a request's own bearer token names, where policy can use one (an OIDC issuer is
/// trusted and some rule requires a token or matches claims; see
/// [`PolicyAuthenticator`](crate::gate::PolicyAuthenticator)). `None`: the connection's caller
/// (no token, or tokens are not used). A token that fails verification is an `Err`: the
/// request is refused, never judged as the workload (fail closed). The connection keeps the
/// last token it verified until that token expires.
async fn token_caller(conn: &Conn, headers: &HeaderMap) -> Result<Option<Arc<Identity>>, String> {
    let authenticator = gate::PolicyAuthenticator;
    if !authenticator.wants_secret(&conn.ctx, &gate::Presented::default()) {
        return Ok(None);
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("the Authorization header is not a bearer token")?;
    // The policy the identity was made under: a reload (another issuer, other groups) makes
    // the token be verified again.
    let verifier = conn.ctx.oidc.load_full();
    let engine = conn.ctx.engine.load_full();
    let now = std::time::SystemTime::now();
    if let Ok(cached) = conn.token_caller.lock()
        && let Some(c) = cached.as_ref()
        && c.token == token
        && Arc::ptr_eq(&c.verifier, &verifier)
        && Arc::ptr_eq(&c.engine, &engine)
        && c.identity
            .token
            .as_ref()
            .is_some_and(|t| t.expires_at > now)
    {
        return Ok(Some(Arc::clone(&c.identity)));
    }
    // Verified without the lock held: another request of the connection need not wait for a
    // key fetch.
    let presented = gate::Presented {
        workload: conn.identity.workload.as_ref(),
        user: None,
        secret: Some(token.as_bytes()),
    };
    let identity = Arc::new(
        authenticator
            .authenticate(&conn.ctx, presented)
            .await
            .map_err(|e| format!("the bearer token was not accepted: {e}"))?,
    );
    if let Ok(mut cached) = conn.token_caller.lock() {
        *cached = Some(TokenCaller {
            token: token.to_owned(),
            identity: Arc::clone(&identity),
            verifier,
            engine,
        });
    }
    Ok(Some(identity))
}

/// The recording of a terminal stream the target switched to, when the session is recorded:
/// its decoder and file, titled with the target and the command's text. An `Err` refuses the upgrade (fail closed: a stream that must be
/// recorded is never relayed unrecorded).
fn terminal_recording(
    conn: &Conn,
    terminal: Option<&Terminal>,
    command: &str,
    answer: &Response<Incoming>,
    record: &ExchangeRecord,
) -> Result<Option<upgrade::Recorded>, String> {
    let (Some(_), Some(n), Some(dir)) = (terminal, record.command(), conn.audit.recordings_dir())
    else {
        return Ok(None);
    };
    let Some(decoder) = conn.classifier.stream_decoder(answer.headers()) else {
        let to = answer
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return Err(format!(
            "the target switched to {to}, a stream the gateway cannot record; refused"
        ));
    };
    let title = format!("{}: {command}", conn.target.name);
    let header = Header::new(80, 24, Some(title), None);
    let path = dir.join(format!("{n}.cast"));
    let limit = conn.ctx.config.load().daemon.audit.recording_max_bytes;
    match MaskedCast::create(&path, &header, limit, &conn.masker) {
        Ok(cast) => Ok(Some(upgrade::Recorded { decoder, cast })),
        Err(e) => Err(format!(
            "the session recording could not be created ({e}); the stream was not opened"
        )),
    }
}

/// A terminal stream's WebSocket offer cut down to what its decoder reads: the subprotocols
/// in `readable` (the client's order kept) and no extensions (compression would hide the
/// frames). The target then switches to one the gateway records, or refuses.
fn narrow_websocket_offer(headers: &mut HeaderMap, readable: &[&str]) {
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| readable.contains(p))
        .map(str::to_owned)
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !offered.is_empty()
        && let Ok(v) = HeaderValue::from_str(&offered.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
}

/// Whether the client asks to switch protocols. An offer of h2c is not one: its HTTP/2 would
/// be tunnelled unjudged, so the request is served as the HTTP/1.1 request it also is (as
/// nginx does) and its `Upgrade` dropped.
fn is_upgrade(h: &HeaderMap) -> bool {
    let h2c = h.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
        })
    });
    !h2c && h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// An answer the gateway writes, with a JSON body.
fn json_answer(
    status: StatusCode,
    body: &serde_json::Value,
    mut record: ExchangeRecord,
) -> Response<ProxyBody> {
    record.status = status.as_u16();
    let body = record.conn().classifier.error_body(status, body.clone());
    let bytes = Bytes::from(body.to_string());
    let mut r = Response::new(OwnAnswer::new(bytes, record).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(record: ExchangeRecord, message: &str) -> Response<ProxyBody> {
    json_answer(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": "bad_request", "message": message}),
        record,
    )
}

/// The answer to a refused request: 403 naming the rule; in retry mode, a 503 with the
/// pending request's id and `Retry-After`.
fn denial(
    conn: &Conn,
    record: ExchangeRecord,
    rule: &str,
    message: &str,
    decision: Option<&Decision>,
) -> Response<ProxyBody> {
    tracing::info!(session = conn.id, target = %conn.target.name, request = %record.line, %rule, "request denied");
    let retry = matches!(
        decision,
        Some(Decision::Review {
            mode: ReviewMode::Retry,
            ..
        })
    );
    let pending = retry.then(|| pending_request(message)).flatten();
    if let Some(id) = pending {
        let mut r = json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "approval_pending", "rule": rule, "request": id, "message": message}),
            record,
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert(REQUEST_HEADER, v);
        }
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return r;
    }
    json_answer(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": "denied", "rule": rule, "message": message}),
        record,
    )
}

/// Whether a Kubernetes Table is asked to embed no object in its rows (`includeObject=None`,
/// first value as the API server reads it; by default it embeds each object's metadata).
fn embeds_no_object(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "includeObject")
        .is_some_and(|(_, v)| v == "None")
}

/// The request id in a retry-mode refusal ("… request <id> is pending …").
fn pending_request(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("request ")?;
    let (id, after) = rest.split_once(' ')?;
    after
        .starts_with("is pending")
        .then(|| id.to_owned())
        .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_is_narrowed_to_its_json_ranges() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.kubernetes.protobuf,application/json;as=Table;v=v1;g=meta.k8s.io,application/yaml",
            ),
        );
        assert!(negotiate_json(&mut h, false));
        assert_eq!(
            h[header::ACCEPT],
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/yaml"));
        assert!(negotiate_json(&mut h, false));
        assert_eq!(h[header::ACCEPT], "application/json");
        assert!(!negotiate_json(&mut h, false), "already JSON: unchanged");
        // Table rows with whole objects: only the plain form is asked for.
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(negotiate_json(&mut h, true));
        assert_eq!(h[header::ACCEPT], "application/json");
        assert!(!embeds_no_object("includeObject=Object&limit=500"));
        assert!(!embeds_no_object("includeObject=Metadata"));
        assert!(!embeds_no_object("limit=500"));
        assert!(embeds_no_object("includeObject=None&includeObject=Object"));
    }

    #[test]
    fn a_method_parameter_is_found_in_any_body() {
        for body in [
            &b"_method=DELETE"[..],
            b"%5Fmethod=DELETE",
            b"{\"_method\": \"DELETE\"}",
            b"{\"\\u005fmethod\": \"DELETE\"}",
            b"--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE",
            b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE",
            b"a=1&_METHOD=delete",
        ] {
            assert!(names_method(body), "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &b"{\"payment_method\": \"card\"}"[..],
            b"{\"code\": \"self._method()\", \"n\": {\"_method\": 1}}",
            b"_methods=1",
            b"x",
        ] {
            assert!(!names_method(body), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_trailing_dot_names_the_same_host() {
        let parts = |host: &str| {
            Request::builder()
                .uri("/x")
                .header(header::HOST, host)
                .body(())
                .map(|r| r.into_parts().0)
        };
        let host = |h: &str| parts(h).ok().and_then(|p| request_host(&p));
        assert_eq!(host("Admin.Internal.").as_deref(), Some("admin.internal"));
        assert_eq!(
            host("admin.internal.:8080").as_deref(),
            Some("admin.internal")
        );
        assert_eq!(host("admin.internal..").as_deref(), None);
    }

    #[test]
    fn retry_message_names_the_request() {
        let m = "airlock: rule \"r\" needs approval: request 0a1b2c is pending (approvers: dba). Once approved (airlock approve 0a1b2c), run the same command again.";
        assert_eq!(pending_request(m).as_deref(), Some("0a1b2c"));
        assert_eq!(pending_request("airlock: request 0a1b2c was denied"), None);
    }

    #[test]
    fn text_types() {
        assert!(is_text("text/html"));
        assert!(is_text("application/atom+xml"));
        assert!(!is_text("application/octet-stream"));
        assert!(!is_text("image/png"));
    }
}
