//! PostgreSQL front end and back end.
//!
//! To the client airlock is a PostgreSQL server: it answers the startup (declining or
//! terminating TLS, negotiating the protocol version down to 3.0), authenticates the client
//! through the gate (a pluggable [`Authenticator`]), and hands out cancel keys of its own. To the server
//! it is a client logging in with the target's credentials (SCRAM-SHA-256, MD5 or cleartext,
//! over TLS when configured). Then [`session::run`] relays the session, asking policy about
//! every Query, Parse and Execute before the server sees it — the gate decides, this module
//! only frames and acts.
//!
//! Modules: [`codec`] (framing), [`startup`] (startup packets), [`backend_auth`] (login to the
//! server), [`tls`], [`cancel`] (key registry), [`session`] (the loop), [`results`] and
//! [`origin`] (answers, masking, result records).

pub mod backend_auth;
pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod credentials;
pub mod dry_run;
pub mod messages;
pub mod origin;
pub mod params;
pub mod results;
pub mod roles;
pub mod rows;
pub mod session;
pub mod startup;
pub mod tls;
pub mod types;

#[cfg(test)]
mod rows_pg_tests;
#[cfg(test)]
mod rows_tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use self::backend_auth::BackendError;
use self::cancel::{CancelRegistry, CancelTarget};
use self::codec::HEADER_LEN;
use self::startup::{Startup, StartupPacket};
use self::tls::MaybeTls;
use super::Session;
use crate::audit::{EndReason, SessionStart, TlsInfo};
use crate::config::{PostgresTarget, TargetConfig};
use crate::gate::{self, AuthError, Authenticator, Decider, Gate, PolicyAuthenticator, Presented};
use crate::metrics::DenyReason;
use crate::model::Protocol;
use crate::relay::uring::UringStream;
use crate::runtime::Context;

/// Pluggable parts of the PostgreSQL handler (tests and benchmarks substitute their own).
#[derive(Debug, Clone)]
pub struct Hooks {
    /// `None`: the policy engine in `ctx.engine`.
    pub decider: Option<Arc<dyn Decider>>,
    pub authenticator: Arc<dyn Authenticator>,
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
        let (name, value) = setting.split_once('=').unwrap_or((setting, ""));
        let name = name.replace('-', "_");
        if !FORWARDED_PARAMS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "airlock: setting \"{name}\" in options is not allowed through the gateway; set it with SQL"
            ));
        }
        check_setting(&name, value)?;
    }
    Ok(())
}

/// A setting given at startup (or in `options`) is held to the rules its `SET` is judged by.
fn check_setting(name: &str, value: &str) -> Result<(), String> {
    check_search_path(name, value)?;
    check_client_encoding(name, value)
}

/// A `client_encoding` in which the server would lex commands otherwise than the gateway
/// (`SET client_encoding` to it is `admin`) is refused at startup.
fn check_client_encoding(name: &str, value: &str) -> Result<(), String> {
    if !name.eq_ignore_ascii_case("client_encoding") {
        return Ok(());
    }
    match crate::policy::sql::classify::client_encoding_risk(value) {
        None => Ok(()),
        Some(why) => Err(format!(
            "airlock: {why}; that encoding is not allowed through the gateway (use UTF8)"
        )),
    }
}

/// A `search_path` given at startup is held to the rules `SET search_path` is judged by: a
/// path that could shadow functions policy allows is refused (with SQL it would be `admin`),
/// and so is one listing `pg_catalog` after another schema, which would let a function there
/// stand in for a built-in that masking's lineage trusts.
fn check_search_path(name: &str, value: &str) -> Result<(), String> {
    if !name.eq_ignore_ascii_case("search_path") {
        return Ok(());
    }
    if crate::policy::sql::lineage::shadows_builtins(value) {
        return Err(
            "airlock: a search_path listing pg_catalog after another schema is not allowed through the gateway"
                .into(),
        );
    }
    let schemas = crate::policy::sql::classify::split_search_path(value);
    match crate::policy::sql::classify::search_path_risk(&schemas) {
        None => Ok(()),
        Some(why) => Err(format!(
            "airlock: {why}; a search path that could shadow functions is not allowed at startup"
        )),
    }
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
        drain,
        started,
    } = session;
    let _ = client.set_nodelay(true);
    let client_addr = client.peer_addr().ok();
    let metrics = ctx.metrics.target(&target.name, Protocol::Postgres);
    let _active = metrics.session_started();
    let client = MaybeTls::Plain(client);

    // A client that never finishes its startup must not hold a session forever (PostgreSQL's
    // authentication_timeout is a minute too).
    let (mut client, startup) = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        negotiate(id, &target, client, started),
    )
    .await
    {
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
    let mut presented = Presented {
        workload: workload.as_ref(),
        user: startup.get("user"),
        secret: None,
    };
    let secret = if auth.wants_secret(ctx, &presented) {
        codec::put_authentication(&mut out, 3);
        client.write_all(&out).await?;
        client.flush().await?;
        out.clear();
        match read_password(&mut client).await? {
            Ok(secret) => Some(secret),
            Err(len) => {
                ctx.metrics.denied_connection(DenyReason::InvalidToken);
                tracing::info!(session = id, target = %target.name, len, "client authentication failed: password message too long");
                return Err(fatal(
                    &mut client,
                    "28000",
                    &format!(
                        "airlock: invalid token: the password message is {len} bytes, over the {} a PostgreSQL login may carry",
                        codec::MAX_AUTH_MESSAGE_LEN
                    ),
                )
                .await);
            }
        }
    } else {
        None
    };
    presented.secret = secret.as_deref();
    let authenticated = auth.authenticate(ctx, presented).await;
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
    // Fail closed: no session the audit log cannot record.
    let start = SessionStart {
        proxy_session: Some(id),
        identity: &identity,
        workload: workload.as_ref(),
        target: &target.name,
        protocol: Protocol::Postgres,
        client: client_addr,
        original_dst: workload.as_ref().and_then(|w| w.original_dst),
        tls,
    };
    let recorder = match gate::session::open(ctx, start).await {
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

    let params = match backend_params(&startup, pg) {
        Ok(p) => p,
        Err(message) => {
            gate::session::close(recorder, EndReason::Denied, Some(&message), 0, 0).await;
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
            gate::session::close(recorder, EndReason::Error, Some(&message), 0, 0).await;
            return Err(fatal(&mut client, e.sqlstate(), &message).await);
        }
    };

    let mut backend = backend;
    // Least privilege: the session starts in the target's base role, before the client
    // sends anything.
    let roles = roles::Roles::new(&pg.roles, pg.run_as.as_deref());
    if let Some(role) = roles.as_ref().and_then(roles::Roles::base) {
        let switched = tokio::time::timeout(
            BACKEND_TIMEOUT,
            roles::set_at_login(&mut backend.stream, &mut backend.buffer, role),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match switched {
            Ok(status) => backend.status = status,
            Err(e) => {
                let message = format!(
                    "airlock: target \"{}\": the gateway could not switch to role \"{role}\": {e}",
                    target.name
                );
                tracing::warn!(session = id, target = %target.name, role, error = %e, "role switch at login failed");
                gate::session::close(recorder, EndReason::Error, Some(&message), 0, 0).await;
                return Err(fatal(&mut client, "42501", &message).await);
            }
        }
    }

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
    let database = params
        .iter()
        .find(|(k, _)| *k == "database")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let judge = Gate {
        ctx,
        decider: hooks.decider.as_deref(),
        identity: &identity,
        target: &target.name,
        protocol: Protocol::Postgres,
        session: id,
        metrics: &metrics,
        masker: &masker,
        recording: audit.enabled(),
        preview: Some(Arc::new(params::Reviewer::new(
            (*masker).clone(),
            Some(dry_run::Upstream {
                pg: pg.clone(),
                addr: upstream,
                database: database.clone(),
            }),
        ))),
    };
    let statement_limit = ctx.engine.load().limits().max_bytes;
    let env = || session::Env {
        audit: &audit,
        masker: masker.clone(),
        metrics: &ctx.metrics,
        buffers: ctx.buffers.clone(),
        statement_limit,
        side: Some(origin::SideConn::new(
            pg.clone(),
            upstream,
            database.clone(),
        )),
        views: Some(origin::SideConn::new(
            pg.clone(),
            upstream,
            database.clone(),
        )),
        drain: &drain,
        roles: roles.clone(),
    };
    let shared = session::Shared::new(backend.status);
    let server = backend.stream;
    let buffer = backend.buffer;
    // The io_uring engine runs the same session loop with its sockets driven by the ring
    // (plain TCP both ways; TLS sessions stay on epoll).
    let uring = ctx.uring.get().cloned();
    let exit = match (client, server, uring) {
        (MaybeTls::Plain(c), MaybeTls::Plain(s), Some(ring)) => {
            let streams =
                UringStream::new(c, ring.clone()).and_then(|c| Ok((c, UringStream::new(s, ring)?)));
            match streams {
                Ok((c, s)) => {
                    let (cr, mut cw) = c.split();
                    let (sr, sw) = s.split();
                    relay(id, &judge, &shared, env(), cr, &mut cw, sr, sw, buffer).await
                }
                Err(e) => Err(e.into()),
            }
        }
        (MaybeTls::Plain(mut c), MaybeTls::Plain(mut s), None) => {
            let (cr, mut cw) = c.split();
            let (sr, sw) = s.split();
            relay(id, &judge, &shared, env(), cr, &mut cw, sr, sw, buffer).await
        }
        (c, s, _) => {
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
        Ok(session::Exit::Shutdown) => (EndReason::Shutdown, None),
        Err(e) => (e.end_reason(), Some(e.to_string())),
    };
    gate::session::close(
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

/// The startup phase: SSLRequest (TLS terminated when configured, else declined) and
/// GSSENCRequest (declined) come before the StartupMessage; a CancelRequest comes instead.
/// `None` when the client closed or sent a cancel.
async fn negotiate(
    id: u64,
    target: &TargetConfig,
    mut client: MaybeTls,
    accepted: Instant,
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
                handle_cancel(id, &target.name, pid, &secret, accepted).await;
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
    J: gate::Judge,
{
    match session::run(id, judge, shared, env, cr, cw, sr, sw, buffer).await {
        Ok(session::Exit::Shutdown) => {
            // What PostgreSQL itself sends on a fast shutdown.
            fatal(
                cw,
                "57P01",
                "terminating connection due to administrator command",
            )
            .await;
            Ok(session::Exit::Shutdown)
        }
        Ok(exit) => Ok(exit),
        Err(e @ session::SessionError::Io(_)) => Err(e.into()),
        Err(e) => Err(fatal(cw, e.sqlstate(), &format!("airlock: {e}")).await),
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
            check_setting(&lower, v)?;
            params.push((k.as_str(), v.as_str()));
        } else {
            return Err(format!(
                "airlock: startup parameter \"{k}\" is not allowed through the gateway; set it with SQL"
            ));
        }
    }
    Ok(params)
}

/// Reads a PasswordMessage ('p') during client authentication: up to the server's own cap for
/// an authentication message (65535 bytes), so a token up to the verifier's limit arrives
/// whole and one past it gets the verifier's clear error. `Ok(Err(len))`: longer than the cap
/// (the body is not read).
async fn read_password<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Result<Vec<u8>, usize>, ServeError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = codec::peek_header(&head)?.ok_or(codec::FrameError::Malformed { what: "password" })?;
    if h.tag != b'p' {
        return Err(codec::FrameError::Malformed { what: "password" }.into());
    }
    if h.total > HEADER_LEN + codec::MAX_AUTH_MESSAGE_LEN {
        return Ok(Err(h.total - HEADER_LEN));
    }
    let mut body = vec![0u8; h.total - HEADER_LEN];
    r.read_exact(&mut body).await?;
    if body.last() == Some(&0) {
        body.pop();
    }
    Ok(Ok(body))
}

/// A CancelRequest arrived: forward it with the server's real key if the key is one we minted
/// for a session of this target. Nothing is ever answered, as with PostgreSQL.
async fn handle_cancel(id: u64, target: &str, pid: i32, secret: &[u8], accepted: Instant) {
    match CancelRegistry::global().lookup(pid, secret) {
        Some(t) if t.target == target => match cancel::send_cancel(&t).await {
            Ok(()) => tracing::info!(
                session = id,
                %target,
                since_accept_us = accepted.elapsed().as_micros() as u64,
                "cancel request forwarded"
            ),
            Err(e) => tracing::warn!(session = id, %target, error = %e, "cancel request failed"),
        },
        _ => tracing::info!(session = id, %target, "cancel request with an unknown key ignored"),
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
            roles: Vec::new(),
            run_as: None,
            rotate_every: None,
            cleartext_password: false,
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
            "-c statement_timeout=5s --search-path=public -csearch_path=public,pg_temp".into(),
        ));
        assert_eq!(backend_params(&fine, &cfg).unwrap().len(), 4);
        for bad in [
            "-D /tmp",
            "-c role=x",
            "--session_authorization=x",
            "-c",
            "-c search_path=public,pg_catalog",
            "--search-path=x,\\ pg_catalog",
            "-c search_path=evil,pg_catalog",
            "--search-path=public,pg_catalog",
        ] {
            assert!(check_options(bad).is_err(), "{bad}");
        }
        let mut bad = s.clone();
        bad.params
            .push(("search_path".into(), "\"$user\", public, pg_catalog".into()));
        assert!(
            backend_params(&bad, &cfg)
                .unwrap_err()
                .contains("pg_catalog")
        );
        let mut shadow = s.clone();
        shadow
            .params
            .push(("search_path".into(), "\"Evil\", public".into()));
        assert!(backend_params(&shadow, &cfg).unwrap_err().contains("Evil"));
        let mut repl = s;
        repl.params.push(("replication".into(), "database".into()));
        assert!(backend_params(&repl, &cfg).is_err());
    }
}
