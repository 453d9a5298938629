//! The console's handlers: one per page, plus login, logout, decide and the live stream.

// A rejection is the `Response` a handler returns at once; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, Session};
use super::views::{self, Me};
use super::{Console, to_login};
use crate::approval::{ApprovalError, State as ReqState};
use crate::audit::{SessionQuery, format_ts};
use crate::policy::Request as PolicyRequest;
use crate::policy::cli::CommandArgs;

type Shared = State<Arc<Console>>;

/// Renders a template, or a plain 500 naming the failure.
fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering: {e}")).into_response(),
    }
}

/// A page with one message.
pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        &views::MessagePage {
            title: title.into(),
            text: text.into(),
            link: Some(("/".into(), "Back to the inbox".into())),
            refresh: None,
        },
    )
}

fn me(s: &Session) -> Me {
    Me {
        subject: s.principal.subject.clone(),
        groups: s.principal.groups.join(", "),
        csrf: s.csrf.clone(),
    }
}

/// The session, or the way to the login; a session whose groups are no longer among the
/// readers is refused ([`readable`]).
fn reviewer(c: &Console, headers: &HeaderMap, uri: &Uri) -> Result<Arc<Session>, Response> {
    let s = c
        .auth
        .session(headers)
        .ok_or_else(|| to_login(uri.path_and_query().map_or("/", |p| p.as_str())))?;
    readable(c, s)
}

/// Whether the session's groups are among the readers, checked against the configuration in
/// force now: a reload that drops a group (or the rule that made it an approver) refuses its
/// members' sessions from their next request on, with a 403 page. The session itself stays
/// (until it idles out or expires), so a reload that puts the group back restores access.
fn readable(c: &Console, s: Arc<Session>) -> Result<Arc<Session>, Response> {
    if c.ctx.config.load().is_reader(&s.principal.groups) {
        return Ok(s);
    }
    tracing::warn!(subject = %s.principal.subject, groups = ?s.principal.groups, "console: refused, the session's groups are not readers");
    Err(not_reader(&s.principal.groups))
}

/// The 403 page of someone whose groups are not among the readers.
fn not_reader(groups: &[String]) -> Response {
    page(
        StatusCode::FORBIDDEN,
        &views::MessagePage {
            title: "Not a reviewer".into(),
            text: auth::AuthError::NotReader(groups.to_vec()).to_string(),
            link: Some(("/login".into(), "Log in as someone else".into())),
            refresh: None,
        },
    )
}

/// For POSTs: the session of a reader, a matching CSRF token and the console's own origin, or a
/// refusal.
fn checked(c: &Console, headers: &HeaderMap, csrf: Option<&str>) -> Result<Arc<Session>, Response> {
    let s = posted(c, headers, csrf)?;
    readable(c, s)
}

/// The session, a matching CSRF token and the console's own origin, or a refusal (whoever the
/// session belongs to: logging out needs no reader).
fn posted(c: &Console, headers: &HeaderMap, csrf: Option<&str>) -> Result<Arc<Session>, Response> {
    let Some(s) = c.auth.session(headers) else {
        return Err(message(
            StatusCode::UNAUTHORIZED,
            "Not logged in",
            "Log in to decide requests.",
        ));
    };
    if !auth::same_origin(headers, &c.origin) || !auth::csrf_ok(&s, csrf) {
        tracing::warn!(subject = %s.principal.subject, "console: POST without a valid CSRF token refused");
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is stale or did not come from the console (missing or wrong CSRF token). Reload the page and try again.",
        ));
    }
    Ok(s)
}

/// `GET /`: pending requests, oldest first.
pub async fn inbox(State(c): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match c.svc.list(true).await {
        Ok(mut list) => {
            list.reverse();
            let rows = list.iter().map(views::InboxRow::from).collect();
            page(
                StatusCode::OK,
                &views::InboxPage {
                    nav: "inbox",
                    me: me(&s),
                    rows,
                },
            )
        }
        Err(e) => message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Approval store unavailable",
            &e.to_string(),
        ),
    }
}

/// `GET /events`: the live inbox stream, for as long as the session lasts (logout, its end, or
/// idling out: the stream itself does not count as use).
pub async fn events(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(s) = c.auth.session(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let s = match readable(&c, s) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (hub, svc, console, end) = (&c.hub, c.svc.clone(), Arc::clone(&c), s.expires_at);
    // The readers are asked again before each event: a reload that removes the reviewer's
    // group ends the stream too.
    super::events::stream(hub, svc, move || {
        auth::unix_now() < end
            && console.auth.is_open(&headers)
            && console.ctx.config.load().is_reader(&s.principal.groups)
    })
    .into_response()
}

/// `GET /requests/{id}`.
pub async fn request(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let notice = q.get("done").map(|d| match d.as_str() {
        "approve" => "Your approval is recorded.".to_owned(),
        "deny" => "Your denial is recorded.".to_owned(),
        other => format!("Recorded: {other}."),
    });
    request_page(&c, &s, &id, StatusCode::OK, notice, None).await
}

async fn request_page(
    c: &Console,
    s: &Session,
    id: &str,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    match c.svc.get(id).await {
        Ok(r) => page(
            status,
            &views::RequestPage {
                nav: "inbox",
                me: me(s),
                r: views::RequestView::new(&r, &s.principal),
                notice,
                error,
            },
        ),
        Err(ApprovalError::NotFound(_)) => message(
            StatusCode::NOT_FOUND,
            "No such request",
            &format!("There is no approval request {id}."),
        ),
        Err(e) => message(super::super::api::status_of(&e), "Error", &e.to_string()),
    }
}

/// The approve/deny form.
#[derive(Debug, Deserialize)]
pub struct DecideForm {
    csrf: Option<String>,
    action: String,
    #[serde(default)]
    reason: String,
}

/// `POST /requests/{id}/decide`.
pub async fn decide(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Response {
    let s = match checked(&c, &headers, form.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(verdict) = super::super::api::ruling(&form.action).filter(|r| {
        matches!(
            r,
            crate::approval::Ruling::Approve | crate::approval::Ruling::Deny
        )
    }) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Unknown action",
            "Approve or deny.",
        );
    };
    let reason = Some(form.reason.trim().to_owned()).filter(|r| !r.is_empty());
    match c.svc.decide(&id, &s.principal, verdict, reason).await {
        Ok(_) => Redirect::to(&format!("/requests/{id}?done={}", form.action)).into_response(),
        Err(e) => {
            let status = super::super::api::status_of(&e);
            request_page(&c, &s, &id, status, None, Some(e.to_string())).await
        }
    }
}

/// The outcomes the history filter offers (`""` is any).
const OUTCOMES: &[&str] = &[
    "",
    "approved",
    "denied",
    "expired",
    "revoked",
    "used",
    "withdrawn",
];

/// `GET /history`.
pub async fn history(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Query(f): Query<views::HistoryFilter>,
) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list = match c.svc.list(false).await {
        Ok(l) => l,
        Err(e) => {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Approval store unavailable",
                &e.to_string(),
            );
        }
    };
    let has = |hay: &str, needle: &str| {
        needle.is_empty() || hay.to_lowercase().contains(&needle.trim().to_lowercase())
    };
    let rows = list
        .iter()
        .filter(|r| r.state != ReqState::Pending)
        .filter(|r| f.target.is_empty() || r.target == f.target.trim())
        .filter(|r| {
            has(&r.subject, &f.requester)
                || r.requested_by
                    .as_deref()
                    .is_some_and(|b| has(b, &f.requester))
        })
        .filter(|r| f.reviewer.is_empty() || r.votes.iter().any(|v| has(&v.by, &f.reviewer)))
        .filter(|r| f.outcome.is_empty() || r.state.as_str() == f.outcome)
        .map(views::HistoryRow::from)
        .collect();
    page(
        StatusCode::OK,
        &views::HistoryPage {
            nav: "history",
            me: me(&s),
            f,
            outcomes: OUTCOMES,
            rows,
        },
    )
}

fn audit_dir(c: &Console) -> Option<PathBuf> {
    c.ctx.audit.dir().map(PathBuf::from)
}

/// `GET /sessions`.
pub async fn sessions(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Query(f): Query<views::SessionFilter>,
) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let opt = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let q = SessionQuery {
        identity: opt(&f.identity),
        target: opt(&f.target),
        text: opt(&f.q),
        limit: Some(500),
        ..Default::default()
    };
    let (rows, error) = match audit_dir(&c) {
        None => (
            Vec::new(),
            Some("Session recording is off on this instance.".to_owned()),
        ),
        Some(dir) => {
            match tokio::task::spawn_blocking(move || crate::audit::search_sessions(&dir, &q)).await
            {
                Ok(Ok(mut list)) => {
                    list.reverse();
                    (
                        list.into_iter()
                            .map(|s| views::SessionRow {
                                started: format_ts(s.started),
                                client: s.client.map_or_else(|| "–".into(), |a| a.to_string())
                                    + &s.comm.map(|c| format!(" ({c})")).unwrap_or_default(),
                                end: s.end_reason.map_or_else(
                                    || "open".into(),
                                    |r| format!("{r:?}").to_lowercase(),
                                ),
                                id: s.id,
                                subject: s.subject,
                                target: s.target,
                                protocol: s.protocol,
                                commands: s.commands,
                                denied: s.denied,
                                reviewed: s.reviewed,
                                masked: s.masked_values,
                            })
                            .collect(),
                        None,
                    )
                }
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        }
    };
    page(
        StatusCode::OK,
        &views::SessionsPage {
            nav: "sessions",
            me: me(&s),
            f,
            rows,
            error,
        },
    )
}

async fn load(c: &Console, id: &str) -> Result<(String, Vec<crate::audit::Record>), Response> {
    let Some(dir) = audit_dir(c) else {
        return Err(message(
            StatusCode::NOT_FOUND,
            "No recording",
            "Session recording is off on this instance.",
        ));
    };
    let id = id.to_owned();
    match tokio::task::spawn_blocking(move || crate::audit::load_session(&dir, &id)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(message(
            StatusCode::NOT_FOUND,
            "No such session",
            &e.to_string(),
        )),
        Err(e) => Err(message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &e.to_string(),
        )),
    }
}

/// `GET /sessions/{id}`: the transcript and the player.
pub async fn session(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (id, records) = match load(&c, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut t = super::transcript::Transcript::from_records(&records);
    // The approval store knows who decided each held command of this session (the log has the
    // proxy's session number; requests carry it with the instance that held them).
    let proxy_session = records.iter().find_map(|r| match &r.event {
        crate::audit::Event::SessionStart(s) => s.proxy_session,
        _ => None,
    });
    if let (Some(n), Ok(list)) = (proxy_session, c.svc.list(false).await) {
        let instance = c.svc.instance();
        for row in t
            .rows
            .iter_mut()
            .filter(|r| r.approval.is_empty() && r.action == "review")
        {
            if let Some(req) = list.iter().find(|q| {
                q.session == Some(n)
                    && q.instance == instance
                    && q.commands.first().is_some_and(|cmd| cmd.text == row.text)
            }) {
                let by: Vec<&str> = req.votes.iter().map(|v| v.by.as_str()).collect();
                row.approval = format!(
                    "request {} {} by {}",
                    req.id,
                    req.state.as_str(),
                    by.join(", ")
                );
            }
        }
    }
    let mut response = page(
        StatusCode::OK,
        &views::SessionPage {
            nav: "sessions",
            me: me(&s),
            id,
            facts: t.facts,
            commands: t.rows,
        },
    );
    // Set here, the common headers leave it be.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(super::CSP_PLAYER),
    );
    response
}

/// `GET /sessions/{id}/cast`: the session as an asciicast v2 recording, for the player.
pub async fn cast(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = reviewer(&c, &headers, &uri) {
        return r;
    }
    let (_, records) = match load(&c, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    (
        [(header::CONTENT_TYPE, "application/x-asciicast")],
        super::transcript::asciicast(&records),
    )
        .into_response()
}

/// `GET /audit`: verify the log now.
pub async fn audit(State(c): Shared, headers: HeaderMap, uri: Uri) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (report, error) = match (audit_dir(&c), c.ctx.audit.public_key()) {
        (Some(dir), Some(key)) => {
            match tokio::task::spawn_blocking(move || crate::audit::verify(&dir, &key)).await {
                Ok(Ok(r)) => (
                    Some(views::VerifyView {
                        ok: r.ok,
                        records: r.records,
                        files: r.files,
                        seqs: format!(
                            "{}..{}",
                            r.first_seq.map_or("-".into(), |s| s.to_string()),
                            r.last_seq.map_or("-".into(), |s| s.to_string())
                        ),
                        sessions: r.sessions,
                        open: r.open_sessions,
                        signed: match (r.signed_seq, r.signed_at) {
                            (Some(seq), Some(at)) => format!("seq {seq}, signed {}", format_ts(at)),
                            (Some(seq), None) => format!("seq {seq}"),
                            _ => "none yet".into(),
                        },
                        unsigned: r.unsigned_tail,
                        anchored: r.anchored_seq,
                        issues: r.issues.iter().map(ToString::to_string).collect(),
                    }),
                    None,
                ),
                Ok(Err(e)) => (None, Some(e.to_string())),
                Err(e) => (None, Some(e.to_string())),
            }
        }
        _ => (
            None,
            Some("Session recording is off on this instance.".to_owned()),
        ),
    };
    page(
        StatusCode::OK,
        &views::AuditPage {
            nav: "audit",
            me: me(&s),
            report,
            error,
        },
    )
}

/// The kinds of command the explain form judges.
const KINDS: &[&str] = &["sql", "exec", "shell", "http", "kube", "connect"];

/// `GET /policy`: the explain form, and the explanation when it was filled in.
pub async fn policy(
    State(c): Shared,
    headers: HeaderMap,
    uri: Uri,
    Query(mut f): Query<views::ExplainForm>,
) -> Response {
    let s = match reviewer(&c, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let config = c.ctx.config.load();
    let targets: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
    if f.kind.is_empty() {
        f.kind = "sql".into();
    }
    let (explanation, error) = if f.target.is_empty() {
        (None, None)
    } else {
        match explain(&c, &f) {
            Ok(x) => (Some(x), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
    page(
        StatusCode::OK,
        &views::PolicyPage {
            nav: "policy",
            me: me(&s),
            f,
            targets,
            kinds: KINDS,
            explanation,
            error,
        },
    )
}

fn explain(c: &Console, f: &views::ExplainForm) -> anyhow::Result<views::ExplainView> {
    let config = c.ctx.config.load();
    let target = config
        .target(f.target.trim())
        .ok_or_else(|| anyhow::anyhow!("no target named `{}`", f.target))?;
    let text = f.command.trim().to_owned();
    let two = |what: &str| -> anyhow::Result<Vec<String>> {
        let (a, b) = text
            .split_once(char::is_whitespace)
            .ok_or_else(|| anyhow::anyhow!("{what}: give two words, e.g. `GET /path`"))?;
        Ok(vec![a.to_owned(), b.trim().to_owned()])
    };
    let args = CommandArgs {
        sql: (f.kind == "sql").then(|| text.clone()),
        exec: (f.kind == "exec").then(|| text.clone()),
        shell: f.kind == "shell",
        http: if f.kind == "http" {
            Some(two("http")?)
        } else {
            None
        },
        kube: if f.kind == "kube" {
            Some(two("kube")?)
        } else {
            None
        },
        connect: f.kind == "connect",
        file: None,
    };
    if !KINDS.contains(&f.kind.as_str()) {
        anyhow::bail!("unknown kind `{}`", f.kind);
    }
    let (protocol, command) = args.command(target.protocol)?;
    let identity = crate::model::Identity {
        subject: f.identity.trim().to_owned(),
        groups: f
            .groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        workload: None,
        token: None,
    };
    let engine = c.ctx.engine.load();
    let e = engine.explain(&PolicyRequest {
        identity: &identity,
        target: &target.name,
        protocol,
        command: &command,
    });
    let join = |v: &[String]| v.join(", ");
    let mut facts: Vec<(&'static str, String)> = vec![
        (
            "Command",
            format!("{command} ({} on {})", e.command_kind, e.protocol),
        ),
        ("Identity", format!("{} [{}]", e.subject, join(&e.groups))),
        (
            "Classes",
            format!(
                "{} (riskiest {})",
                e.classes
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                e.class
            ),
        ),
        ("Kinds", e.kinds.join(", ")),
    ];
    for (k, v) in [
        ("Reads", &e.tables_read),
        ("Writes", &e.tables_written),
        ("Calls", &e.functions),
        ("Programs", &e.programs),
        ("Objects", &e.objects),
        ("Masking", &e.mask),
        ("Notes", &e.notes),
    ] {
        if !v.is_empty() {
            facts.push((k, join(v)));
        }
    }
    if let Some(r) = &e.review {
        facts.push((
            "Review",
            format!(
                "approvers {} quorum {} timeout {}s then {:?}, mode {:?}",
                join(&r.approvers),
                r.quorum,
                r.timeout_seconds,
                r.on_timeout,
                r.mode
            ),
        ));
    }
    for sh in &e.shadow {
        facts.push((
            "Shadow",
            format!("rule {} would {}", sh.rule, sh.action.as_str()),
        ));
    }
    Ok(views::ExplainView {
        action: e.action,
        rule: e.rule.clone(),
        reason: e.reason.clone(),
        facts,
        trace: e
            .trace
            .iter()
            .map(|t| {
                (
                    if t.shadow {
                        format!("{} (shadow)", t.rule)
                    } else {
                        t.rule.clone()
                    },
                    t.result.clone(),
                )
            })
            .collect(),
    })
}

/// `?next=` of the login.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginQuery {
    next: String,
}

/// `GET /login`: off to the issuer.
pub async fn login(State(c): Shared, Query(q): Query<LoginQuery>) -> Response {
    match c.auth.begin(&q.next).await {
        Ok((url, state)) => (
            [(header::SET_COOKIE, auth::login_binding_cookie(&state))],
            Redirect::to(&url),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "console login could not start");
            message(StatusCode::BAD_GATEWAY, "Login unavailable", &e.to_string())
        }
    }
}

/// The issuer's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback`.
pub async fn callback(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |text: String| {
        page(
            StatusCode::UNAUTHORIZED,
            &views::MessagePage {
                title: "Login failed".into(),
                text,
                link: Some(("/login".into(), "Try again".into())),
                refresh: None,
            },
        )
    };
    if let Some(e) = q.error {
        return refused(
            auth::AuthError::Refused(format!(
                "{e}{}",
                q.error_description
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ))
            .to_string(),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refused("The identity provider's answer has no code.".into());
    };
    let browser = auth::login_cookie(&headers);
    let is_reader = |groups: &[String]| c.ctx.config.load().is_reader(groups);
    match c
        .auth
        .finish(
            &state,
            browser.as_deref(),
            &code,
            &c.ctx.oidc.load(),
            is_reader,
        )
        .await
    {
        Ok((id, next)) => {
            // A page that moves on by itself: the navigation to `next` starts on this site,
            // so the SameSite=Strict cookie goes with it.
            let mut response = page(
                StatusCode::OK,
                &views::MessagePage {
                    title: "Logged in".into(),
                    text: "You are logged in.".into(),
                    link: Some((next.clone(), "Continue".into())),
                    refresh: Some(next),
                },
            );
            let h = response.headers_mut();
            for cookie in [
                auth::session_cookie(&id),
                auth::clear_cookie(auth::LOGIN_COOKIE),
            ] {
                if let Ok(v) = cookie.parse() {
                    h.append(header::SET_COOKIE, v);
                }
            }
            response
        }
        Err(auth::AuthError::NotReader(groups)) => {
            // The login cookie is spent either way.
            let mut response = not_reader(&groups);
            if let Ok(v) = auth::clear_cookie(auth::LOGIN_COOKIE).parse() {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "console login refused");
            refused(e.to_string())
        }
    }
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`. A session that already ended needs no token: the cookie is cleared.
pub async fn logout(State(c): Shared, headers: HeaderMap, Form(f): Form<LogoutForm>) -> Response {
    if c.auth.session(&headers).is_some() {
        if let Err(r) = posted(&c, &headers, f.csrf.as_deref()) {
            return r;
        }
        c.auth.logout(&headers);
    }
    let mut response = page(
        StatusCode::OK,
        &views::MessagePage {
            title: "Logged out".into(),
            text: "You are logged out.".into(),
            link: Some(("/login".into(), "Log in again".into())),
            refresh: None,
        },
    );
    if let Ok(v) = auth::clear_cookie(auth::SESSION_COOKIE).parse() {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}
