//! PostgreSQL front end and back end.
//!
//! To the client airlock is a PostgreSQL server: it answers the startup (declining or
//! terminating TLS, negotiating the protocol version down to 3.0), authenticates the client
//! with a pluggable [`ClientAuthenticator`], and hands out cancel keys of its own. To the server
//! it is a client logging in with the target's credentials (SCRAM-SHA-256, MD5 or cleartext,
//! over TLS when configured). Then [`session::run`] relays the session, asking policy about
//! every Query, Parse and Execute before the server sees it.
//!
//! Modules: [`codec`] (framing), [`startup`] (startup packets), [`frontend_auth`] (client
//! identity), [`backend_auth`] (login to the server), [`tls`], [`cancel`] (key registry),
//! [`session`] (the loop).

pub mod backend_auth;
pub mod cancel;
pub mod codec;
pub mod frontend_auth;
pub mod origin;
pub mod results;
pub mod session;
pub mod startup;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use frontend_auth::{
    AuthError, AuthFuture, ClientAuthenticator, PolicyAuthenticator, WorkloadAuthenticator,
};

use self::backend_auth::BackendError;
use self::cancel::{CancelRegistry, CancelTarget};
use self::codec::HEADER_LEN;
use self::session::{Judge, Judged};
use self::startup::{Startup, StartupPacket};
use self::tls::MaybeTls;
use super::Session;
use crate::audit::{EndReason, SessionEnd, SessionStart, TlsInfo};
use crate::config::{PostgresTarget, Protocol, TargetConfig};
use crate::identity::Identity;
use crate::metrics::{Action, DenyReason, TargetMetrics};
use crate::policy::classify::Class;
use crate::policy::{Decision, Request};
use crate::proxy::Context;

/// Decides one command. The daemon uses the policy engine in [`Context`]; tests and benchmarks
/// may substitute their own (allow-all, deny-by-marker) through [`Hooks`].
pub trait Decider: Send + Sync + std::fmt::Debug {
    fn decide(&self, req: &Request<'_>) -> Decision;
}

/// Pluggable parts of the PostgreSQL handler.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// `None`: the policy engine in `ctx.engine`.
    pub decider: Option<Arc<dyn Decider>>,
    pub authenticator: Arc<dyn ClientAuthenticator>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            decider: None,
            authenticator: Arc::new(PolicyAuthenticator),
        }
    }
}

/// Startup parameters (and `options` settings) passed on to the server. Anything else (`role`,
/// `session_authorization`, `default_transaction_read_only`, …) would change the session behind
/// policy's back, so it is refused; `replication` is refused unless off.
const FORWARDED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "bytea_output",
    "lc_messages",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Checks the `options` startup parameter (command-line switches for the server, as set by
/// PGOPTIONS): only `-c name=value` / `--name=value` settings of [`FORWARDED_PARAMS`] pass.
fn check_options(options: &str) -> Result<(), String> {
    // Words are separated by unescaped whitespace; a backslash escapes the next character.
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().map(String::as_str).unwrap_or("")
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s
        } else {
            return Err(format!(
                "airlock: server option \"{w}\" is not allowed through the gateway"
            ));
        };
        let name = setting.split('=').next().unwrap_or("").replace('-', "_");
        if !FORWARDED_PARAMS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "airlock: setting \"{name}\" in options is not allowed through the gateway; set it with SQL"
            ));
        }
    }
    Ok(())
}

/// Serves one PostgreSQL client session with the policy engine and workload identity.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    serve_with(session, ctx, &Hooks::default()).await;
}

/// Serves one PostgreSQL client session with the given hooks.
pub async fn serve_with(session: Session, ctx: Arc<Context>, hooks: &Hooks) {
    let id = session.id;
    let target = session.target.name.clone();
    match serve_inner(session, &ctx, hooks).await {
        Ok(exit) => tracing::debug!(session = id, %target, ?exit, "postgres session ended"),
        Err(e) => tracing::info!(session = id, %target, error = %e, "postgres session failed"),
    }
}

/// Errors that end a session before or during relay.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error(transparent)]
    Frame(#[from] codec::FrameError),
    #[error("{0}")]
    /// Already reported to the client.
    Reported(String),
    #[error("timed out in {0}")]
    Timeout(&'static str),
}

impl ServeError {
    /// How the session ends in the audit log.
    fn end_reason(&self) -> EndReason {
        match self {
            ServeError::Session(session::SessionError::Audit(_)) => EndReason::AuditFailure,
            _ => EndReason::Error,
        }
    }
}

/// How long a client may take from connecting to sending its StartupMessage.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the gateway's own connection and login to the server may take.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a FATAL error and ends the session with it.
async fn fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) -> ServeError {
    let out = results::error_message(code, message);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
    ServeError::Reported(message.to_string())
}

async fn serve_inner(
    session: Session,
    ctx: &Context,
    hooks: &Hooks,
) -> Result<session::Exit, ServeError> {
    let Session {
        id,
        client,
        target,
        workload,
        upstream,
        ..
    } = session;
    let _ = client.set_nodelay(true);
    let client_addr = client.peer_addr().ok();
    let metrics = ctx.metrics.target(&target.name, Protocol::Postgres);
    let _active = metrics.session_started();
    let client = MaybeTls::Plain(client);

    // A client that never finishes its startup must not hold a session forever (PostgreSQL's
    // authentication_timeout is a minute too).
    let (mut client, startup) =
        match tokio::time::timeout(STARTUP_TIMEOUT, negotiate(id, &target, client)).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return Ok(session::Exit::ClientClosed),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ServeError::Timeout("client startup")),
        };

    let Some(pg) = target.postgres.as_ref() else {
        return Err(fatal(
            &mut client,
            "08004",
            &format!(
                "airlock: target {} has no postgres credentials configured",
                target.name
            ),
        )
        .await);
    };

    let mut out = BytesMut::with_capacity(1024);
    if startup.needs_negotiation() {
        startup.put_negotiation(&mut out);
    }

    // Who is calling.
    let auth = &hooks.authenticator;
    let secret = if auth.wants_secret(ctx, &startup, workload.as_ref()) {
        codec::put_authentication(&mut out, 3);
        client.write_all(&out).await?;
        client.flush().await?;
        out.clear();
        Some(read_password(&mut client).await?)
    } else {
        None
    };
    let authenticated = auth
        .authenticate(ctx, &startup, secret.as_deref(), workload.as_ref())
        .await;
    drop(secret);
    let identity = match authenticated {
        Ok(i) => i,
        Err(e) => {
            let kind = match &e {
                AuthError::InvalidToken(t) => {
                    ctx.metrics.denied_connection(DenyReason::InvalidToken);
                    t.kind()
                }
                AuthError::Rejected(_) => {
                    ctx.metrics.denied_connection(DenyReason::Unauthenticated);
                    "rejected"
                }
            };
            tracing::info!(session = id, target = %target.name, reason = %kind, error = %e, "client authentication failed");
            return Err(fatal(&mut client, "28000", &format!("airlock: {e}")).await);
        }
    };

    // Fail closed: no session the audit log cannot record.
    let mut recorder = match ctx.audit.admit_session() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(session = id, target = %target.name, error = %e, "session refused: audit log");
            return Err(fatal(
                &mut client,
                "53100",
                &format!("airlock: the audit log cannot record this session: {e}"),
            )
            .await);
        }
    };
    let tls = match &client {
        MaybeTls::Server(t) => {
            let (_, conn) = t.get_ref();
            Some(TlsInfo {
                version: conn
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("tls")
                    .to_string(),
                cipher: conn
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .map(str::to_string),
                server_name: conn.server_name().map(str::to_string),
                client_subject: None,
            })
        }
        _ => None,
    };
    if let Err(e) = recorder
        .start(SessionStart {
            proxy_session: Some(id),
            identity: &identity,
            workload: workload.as_ref(),
            target: &target.name,
            protocol: Protocol::Postgres,
            client: client_addr,
            original_dst: workload.as_ref().and_then(|w| w.original_dst),
            tls,
        })
        .await
    {
        tracing::warn!(session = id, target = %target.name, error = %e, "session refused: audit log");
        return Err(fatal(
            &mut client,
            "53100",
            &format!("airlock: the audit log cannot record this session: {e}"),
        )
        .await);
    }

    let params = match backend_params(&startup, pg) {
        Ok(p) => p,
        Err(message) => {
            end_session(recorder, EndReason::Denied, Some(&message), 0, 0).await;
            return Err(fatal(&mut client, "42501", &message).await);
        }
    };
    let login = tokio::time::timeout(
        BACKEND_TIMEOUT,
        backend_auth::connect(pg, upstream, &params),
    );
    let backend = match login
        .await
        .unwrap_or(Err(BackendError::Timeout(BACKEND_TIMEOUT)))
    {
        Ok(b) => b,
        Err(e) => {
            let message = backend_failure(&target.name, pg, &e);
            tracing::warn!(
                session = id,
                target = %target.name,
                user = %pg.user,
                upstream = %upstream,
                sqlstate = e.sqlstate(),
                error = %e,
                "backend login failed"
            );
            end_session(recorder, EndReason::Error, Some(&message), 0, 0).await;
            return Err(fatal(&mut client, e.sqlstate(), &message).await);
        }
    };

    // Cancel keys: the client gets one we minted.
    let registration = backend.key.as_ref().and_then(|(pid, secret)| {
        CancelRegistry::global().register(CancelTarget {
            target: target.name.clone(),
            upstream,
            pid: *pid,
            secret: secret.clone(),
        })
    });
    codec::put_authentication(&mut out, 0);
    out.extend_from_slice(&backend.forward);
    if let Some(r) = &registration {
        codec::put_backend_key_data(&mut out, r.pid, i32::from_be_bytes(r.secret));
    }
    codec::put_ready_for_query(&mut out, backend.status);
    client.write_all(&out).await?;
    client.flush().await?;
    tracing::info!(
        session = id,
        target = %target.name,
        subject = %identity.subject,
        token = identity.token.is_some(),
        database = params.iter().find(|(k, _)| *k == "database").map(|(_, v)| *v).unwrap_or(""),
        "postgres session started"
    );

    let audit = results::AuditSink::new(recorder);
    let masker = ctx.masker.load_full();
    let judge = PolicyJudge {
        decider: hooks.decider.as_deref(),
        ctx,
        identity: &identity,
        target: &target.name,
        session: id,
        metrics: &metrics,
        masker: &masker,
        recording: audit.enabled(),
    };
    let database = params
        .iter()
        .find(|(k, _)| *k == "database")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let env = || session::Env {
        audit: &audit,
        masker: masker.clone(),
        metrics: &ctx.metrics,
        side: Some(origin::SideConn::new(
            pg.clone(),
            upstream,
            database.clone(),
        )),
    };
    let shared = session::Shared::new(backend.status);
    let server = backend.stream;
    let buffer = backend.buffer;
    let exit = match (client, server) {
        (MaybeTls::Plain(mut c), MaybeTls::Plain(mut s)) => {
            let (cr, mut cw) = c.split();
            let (sr, sw) = s.split();
            relay(id, &judge, &shared, env(), cr, &mut cw, sr, sw, buffer).await
        }
        (c, s) => {
            let (cr, mut cw) = tokio::io::split(c);
            let (sr, sw) = tokio::io::split(s);
            relay(id, &judge, &shared, env(), cr, &mut cw, sr, sw, buffer).await
        }
    };
    drop(registration);
    let (reason, detail) = match &exit {
        Ok(session::Exit::Terminate | session::Exit::ClientClosed) => {
            (EndReason::ClientClosed, None)
        }
        Ok(session::Exit::ServerClosed) => (EndReason::ServerClosed, None),
        Err(e) => (e.end_reason(), Some(e.to_string())),
    };
    end_session(
        audit.into_inner(),
        reason,
        detail.as_deref(),
        shared
            .bytes_from_client
            .load(std::sync::atomic::Ordering::Relaxed),
        shared
            .bytes_to_client
            .load(std::sync::atomic::Ordering::Relaxed),
    )
    .await;
    exit
}

/// Records the session's end (a failure is logged: the session is over either way).
async fn end_session(
    recorder: crate::audit::SessionRecorder,
    reason: EndReason,
    detail: Option<&str>,
    bytes_from_client: u64,
    bytes_to_client: u64,
) {
    if let Err(e) = recorder
        .end(SessionEnd {
            reason,
            detail: detail.map(str::to_owned),
            bytes_from_client,
            bytes_to_client,
        })
        .await
    {
        tracing::warn!(error = %e, "audit: session end not recorded");
    }
}

/// The startup phase: SSLRequest (TLS terminated when configured, else declined) and
/// GSSENCRequest (declined) come before the StartupMessage; a CancelRequest comes instead.
/// `None` when the client closed or sent a cancel.
async fn negotiate(
    id: u64,
    target: &TargetConfig,
    mut client: MaybeTls,
) -> Result<Option<(MaybeTls, Startup)>, ServeError> {
    // Startup phase: TLS and GSS requests come before the StartupMessage, a cancel instead.
    loop {
        let packet = match startup::read_packet(&mut client).await {
            Ok(p) => p,
            Err(e @ startup::StartupError::Version { .. }) => {
                return Err(fatal(&mut client, "0A000", &format!("airlock: {e}")).await);
            }
            Err(e) => return Err(e.into()),
        };
        match packet {
            None => return Ok(None),
            Some(StartupPacket::SslRequest) => {
                let cfg = target.postgres.as_ref().and_then(|p| p.client_tls.as_ref());
                match (cfg, client) {
                    (Some(cfg), MaybeTls::Plain(mut tcp)) => {
                        let acceptor = match tls::acceptor(cfg) {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::error!(session = id, target = %target.name, error = %e, "client TLS unavailable");
                                tcp.write_all(b"N").await?;
                                client = MaybeTls::Plain(tcp);
                                continue;
                            }
                        };
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await?;
                        client = MaybeTls::Server(Box::new(tls));
                    }
                    (_, mut other) => {
                        other.write_all(b"N").await?;
                        client = other;
                    }
                }
            }
            Some(StartupPacket::GssEncRequest) => client.write_all(b"N").await?,
            Some(StartupPacket::Cancel { pid, secret }) => {
                handle_cancel(id, &target.name, pid, &secret).await;
                return Ok(None);
            }
            Some(StartupPacket::Startup(s)) => return Ok(Some((client, s))),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay<CR, CW, SR, SW, J>(
    id: u64,
    judge: &J,
    shared: &session::Shared,
    env: session::Env<'_>,
    cr: CR,
    cw: &mut CW,
    sr: SR,
    sw: SW,
    buffer: BytesMut,
) -> Result<session::Exit, ServeError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
    J: Judge,
{
    match session::run(id, judge, shared, env, cr, cw, sr, sw, buffer).await {
        Ok(exit) => Ok(exit),
        Err(e @ session::SessionError::Io(_)) => Err(e.into()),
        Err(e) => Err(fatal(cw, "08P01", &format!("airlock: {e}")).await),
    }
}

/// The client's message when the gateway's own login failed.
fn backend_failure(target: &str, pg: &PostgresTarget, e: &BackendError) -> String {
    if e.is_auth() {
        format!(
            "airlock could not authenticate to target {target} as user {}: {e}",
            pg.user
        )
    } else {
        format!("airlock could not connect to target {target}: {e}")
    }
}

/// The StartupMessage for the server: the gateway's user, the database (configured, else the
/// client's), and the allowed client parameters.
fn backend_params<'a>(
    startup: &'a Startup,
    pg: &'a PostgresTarget,
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let database = pg
        .database
        .as_deref()
        .or_else(|| startup.get("database"))
        .or_else(|| startup.get("user"))
        .unwrap_or(&pg.user);
    let mut params = vec![("user", pg.user.as_str()), ("database", database)];
    for (k, v) in &startup.params {
        let lower = k.to_ascii_lowercase();
        if lower == "user" || lower == "database" {
            continue;
        }
        if lower == "replication" {
            if matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0"
            ) {
                continue;
            }
            return Err(
                "airlock: replication connections are not allowed through the gateway".into(),
            );
        }
        if lower == "options" {
            check_options(v)?;
            params.push((k.as_str(), v.as_str()));
        } else if FORWARDED_PARAMS.contains(&lower.as_str()) {
            params.push((k.as_str(), v.as_str()));
        } else {
            return Err(format!(
                "airlock: startup parameter \"{k}\" is not allowed through the gateway; set it with SQL"
            ));
        }
    }
    Ok(params)
}

/// Reads a PasswordMessage ('p') during client authentication.
async fn read_password<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ServeError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = codec::peek_header(&head)?.ok_or(codec::FrameError::Malformed { what: "password" })?;
    if h.tag != b'p' || h.total > codec::MAX_STARTUP_LEN {
        return Err(codec::FrameError::Malformed { what: "password" }.into());
    }
    let mut body = vec![0u8; h.total - HEADER_LEN];
    r.read_exact(&mut body).await?;
    if body.last() == Some(&0) {
        body.pop();
    }
    Ok(body)
}

/// A CancelRequest arrived: forward it with the server's real key if the key is one we minted
/// for a session of this target. Nothing is ever answered, as with PostgreSQL.
async fn handle_cancel(id: u64, target: &str, pid: i32, secret: &[u8]) {
    match CancelRegistry::global().lookup(pid, secret) {
        Some(t) if t.target == target => match cancel::send_cancel(&t).await {
            Ok(()) => tracing::info!(session = id, %target, "cancel request forwarded"),
            Err(e) => tracing::warn!(session = id, %target, error = %e, "cancel request failed"),
        },
        _ => tracing::info!(session = id, %target, "cancel request with an unknown key ignored"),
    }
}

/// Binds policy to this session's identity and target.
#[derive(Debug)]
struct PolicyJudge<'a> {
    decider: Option<&'a dyn Decider>,
    ctx: &'a Context,
    identity: &'a Identity,
    target: &'a str,
    session: u64,
    metrics: &'a TargetMetrics,
    masker: &'a crate::mask::Masker,
    /// Whether decisions go to the audit log.
    recording: bool,
}

impl Judge for PolicyJudge<'_> {
    fn judge(&self, command: &str) -> Judged {
        let req = Request {
            identity: self.identity,
            target: self.target,
            protocol: Protocol::Postgres,
            command,
        };
        let started = std::time::Instant::now();
        let engine = self.ctx.engine.load();
        let (decision, classification) = match self.decider {
            Some(d) => (d.decide(&req), engine.classify(Protocol::Postgres, command)),
            None => {
                let v = engine.evaluate(&req);
                (v.decision, v.classification)
            }
        };
        self.ctx.metrics.policy_eval(started.elapsed());
        self.metrics.command(Action::of(&decision));
        tracing::debug!(
            session = self.session,
            action = decision.action(),
            rule = decision.rule(),
            "decision"
        );
        let ddl = classification.classes().contains(Class::Ddl);
        let record = self.recording.then(|| (decision.clone(), classification));
        let mut verdict = if let Decision::Review { .. } = decision {
            session::review(
                self.ctx.approvals.get(),
                crate::approval::ReviewRequest {
                    identity: self.identity.clone(),
                    target: self.target.to_owned(),
                    session: self.session,
                    command: command.to_owned(),
                    decision,
                },
            )
        } else {
            session::verdict(decision)
        };
        // A group in a rule's except_groups sees raw values.
        if let session::Verdict::Allow { mask, .. } = &mut verdict
            && !mask.is_empty()
        {
            *mask = self.masker.applicable(mask, &self.identity.groups);
        }
        Judged {
            verdict,
            record,
            ddl,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pg() -> PostgresTarget {
        PostgresTarget {
            user: "gw".into(),
            password: None,
            password_env: None,
            password_file: None,
            database: None,
            tls: Default::default(),
            client_tls: None,
        }
    }

    #[test]
    fn params_replace_user_and_refuse_settings() {
        let s = Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("application_name".into(), "psql".into()),
            ],
            protocol_options: vec![],
        };
        let cfg = pg();
        let p = backend_params(&s, &cfg).unwrap();
        assert_eq!(
            p,
            vec![
                ("user", "gw"),
                ("database", "alice"),
                ("application_name", "psql")
            ]
        );
        let mut bad = s.clone();
        bad.params.push(("options".into(), "-c role=admin".into()));
        assert!(backend_params(&bad, &cfg).unwrap_err().contains("role"));
        let mut bad = s.clone();
        bad.params.push(("role".into(), "admin".into()));
        assert!(backend_params(&bad, &cfg).unwrap_err().contains("role"));
        let mut fine = s.clone();
        fine.params.push((
            "options".into(),
            "-c statement_timeout=5s --search-path=a\\ b -csearch_path=x".into(),
        ));
        assert_eq!(backend_params(&fine, &cfg).unwrap().len(), 4);
        for bad in ["-D /tmp", "-c role=x", "--session_authorization=x", "-c"] {
            assert!(check_options(bad).is_err(), "{bad}");
        }
        let mut repl = s;
        repl.params.push(("replication".into(), "database".into()));
        assert!(backend_params(&repl, &cfg).is_err());
    }
}
