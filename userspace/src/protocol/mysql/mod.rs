//! MySQL and MariaDB front end and back end.
//!
//! To the client airlock is a MySQL server: it greets with the server's version and
//! capabilities (less compression, LOAD DATA LOCAL and everything else that would hide a
//! command or a column definition from it), a connection id of its own and a fresh scramble;
//! it terminates TLS when configured and identifies the caller through the gate (the kernel's
//! view, or an OIDC token sent as the password over TLS). To the server it is a client logging
//! in with the target's credentials. Then [`session::run`] judges every command before the
//! server sees it and relays the answers, masked — the gate decides, this module frames and
//! acts.
//!
//! Modules: [`codec`] (framing), [`wire`] (handshake-phase reads), [`handshake`] (the client's
//! login), [`backend_auth`] (the gateway's login), [`tls`], [`cancel`] (connection ids and
//! KILL), [`params`] (execute parameters for reviewers), [`session`] (the command loop),
//! [`results`] (answers, masking, result records), [`roles`] (the database role each command
//! runs as), [`views`] (which relation names are views, for masking).

pub mod backend_auth;
pub mod cancel;
pub mod codec;
pub mod credentials;
pub mod handshake;
pub mod params;
pub mod results;
pub mod roles;
pub mod session;
pub mod tls;
pub mod views;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use self::backend_auth::{BackendError, LoginRequest};
use self::cancel::Registry;
use self::codec::errno;
use self::handshake::HandshakeError;
use self::tls::MaybeTls;
use super::Session;
use crate::audit::{EndReason, SessionStart};
use crate::gate::{self, AuthError, Authenticator, Decider, Gate, PolicyAuthenticator, Presented};
use crate::metrics::DenyReason;
use crate::model::Protocol;
use crate::runtime::Context;

/// Pluggable parts of the MySQL handler (tests and benchmarks substitute their own).
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

/// How long a client may take from connecting to finishing its login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the gateway's own connection and login to the server may take.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors that end a session before or during the command loop.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("{0}")]
    /// Already reported to the client.
    Reported(String),
    #[error("timed out in {0}")]
    Timeout(&'static str),
}

/// Serves one MySQL client session with the policy engine and workload identity.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    serve_with(session, ctx, &Hooks::default()).await;
}

/// Serves one MySQL client session with the given hooks.
pub async fn serve_with(session: Session, ctx: Arc<Context>, hooks: &Hooks) {
    let id = session.id;
    let target = session.target.name.clone();
    match serve_inner(session, &ctx, hooks).await {
        Ok(exit) => tracing::debug!(session = id, %target, ?exit, "mysql session ended"),
        Err(e) => tracing::info!(session = id, %target, error = %e, "mysql session failed"),
    }
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
    let metrics = ctx.metrics.target(&target.name, Protocol::Mysql);
    let _active = metrics.session_started();
    let mut client = MaybeTls::Plain(client);
    let Some(cfg) = target.mysql.as_ref() else {
        let m = format!("airlock: target {} has no mysql settings", target.name);
        handshake::refuse(&mut client, &mut 0, errno::CONN_HOST_ERROR, "08004", &m).await;
        return Err(ServeError::Reported(m));
    };

    // The server speaks first: its greeting is what ours is made of.
    let greeted = match tokio::time::timeout(BACKEND_TIMEOUT, backend_auth::connect(upstream))
        .await
        .unwrap_or(Err(BackendError::Timeout(BACKEND_TIMEOUT)))
    {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(session = id, target = %target.name, %upstream, error = %e, "upstream connect failed");
            ctx.metrics.denied_connection(DenyReason::Upstream);
            let m = format!("airlock could not connect to target {}: {e}", target.name);
            handshake::refuse(&mut client, &mut 0, errno::CONN_HOST_ERROR, "08001", &m).await;
            return Err(ServeError::Reported(m));
        }
    };
    let Some(registration) = Registry::global().register(&target.name, "") else {
        return Err(ServeError::Reported(
            "connection id registry unavailable".into(),
        ));
    };

    let auth = &hooks.authenticator;
    let wants_secret = auth.wants_secret(
        ctx,
        &Presented {
            workload: workload.as_ref(),
            ..Presented::default()
        },
    );
    let (mut client, mut login) = match tokio::time::timeout(
        LOGIN_TIMEOUT,
        handshake::accept(client, &greeted.hello, registration.id, cfg, wants_secret),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ServeError::Timeout("client login")),
    };
    let secret = login.secret.take();
    let presented = Presented {
        workload: workload.as_ref(),
        user: Some(&login.user),
        secret: secret.as_deref(),
    };
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
            let m = format!("airlock: {e}");
            handshake::refuse(
                &mut client,
                &mut login.seq,
                errno::ACCESS_DENIED,
                "28000",
                &m,
            )
            .await;
            return Err(ServeError::Reported(m));
        }
    };

    // Fail closed: no session the audit log cannot record.
    let start = SessionStart {
        proxy_session: Some(id),
        identity: &identity,
        workload: workload.as_ref(),
        target: &target.name,
        protocol: Protocol::Mysql,
        client: client_addr,
        original_dst: workload.as_ref().and_then(|w| w.original_dst),
        tls: tls::client_info(&client),
    };
    let mut recorder = match gate::session::open(ctx, start).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(session = id, target = %target.name, error = %e, "session refused: audit log");
            let m = format!("airlock: the audit log cannot record this session: {e}");
            handshake::refuse(
                &mut client,
                &mut login.seq,
                errno::OUT_OF_RESOURCES,
                "HY000",
                &m,
            )
            .await;
            return Err(ServeError::Reported(m));
        }
    };

    let request = LoginRequest {
        capabilities: login.capabilities,
        collation: login.collation,
        max_packet: login.max_packet,
        database: login.database.clone(),
        attributes: login.attributes.take(),
        // With roles the login user holds no rights, not even on the database.
        no_database: !cfg.roles.is_empty() || cfg.run_as.is_some(),
    };
    let backend = match tokio::time::timeout(
        BACKEND_TIMEOUT,
        backend_auth::login(greeted, cfg, &request),
    )
    .await
    .unwrap_or(Err(BackendError::Timeout(BACKEND_TIMEOUT)))
    {
        Ok(b) => b,
        Err(e) => {
            let m = if e.is_auth() {
                format!(
                    "airlock could not authenticate to target {} as user {}: {e}",
                    target.name, cfg.user
                )
            } else {
                format!("airlock could not connect to target {}: {e}", target.name)
            };
            tracing::warn!(session = id, target = %target.name, user = %cfg.user, %upstream, error = %e, "backend login failed");
            let (code, state) = e.client_code();
            gate::session::close(recorder, EndReason::Error, Some(&m), 0, 0).await;
            handshake::refuse(&mut client, &mut login.seq, code, state, &m).await;
            return Err(ServeError::Reported(m));
        }
    };
    // Least privilege: the session is in the target's base role before the client's login
    // even completes.
    let mut backend = backend;
    let roles = roles::Roles::new(&cfg.roles, cfg.run_as.as_deref());
    if let Some(r) = &roles {
        let sql = r.login_sql();
        let database = login.database.clone().or_else(|| cfg.database.clone());
        let switched = {
            let mut buf = bytes::BytesMut::new();
            let (mut rd, mut wr) = tokio::io::split(&mut backend.stream);
            tokio::time::timeout(BACKEND_TIMEOUT, async {
                roles::exchange(&mut rd, &mut wr, &mut buf, &sql).await?;
                // The database the login left out, now that a role may use it.
                if let Some(db) = &database {
                    roles::use_database(&mut rd, &mut wr, &mut buf, db).await?;
                }
                Ok::<_, roles::SwitchError>(())
            })
            .await
        };
        let error = match switched {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {BACKEND_TIMEOUT:?}")),
        };
        if let Some(e) = error {
            let m = format!(
                "airlock: target \"{}\": the gateway could not switch to its base role (`{sql}`) and database: {e}",
                target.name
            );
            tracing::warn!(session = id, target = %target.name, %sql, error = %e, "role switch at login failed");
            gate::session::close(recorder, EndReason::Error, Some(&m), 0, 0).await;
            handshake::refuse(
                &mut client,
                &mut login.seq,
                errno::SPECIFIC_ACCESS_DENIED,
                "42000",
                &m,
            )
            .await;
            return Err(ServeError::Reported(m));
        }
    }
    // The server thread of the connection that logged in (a login retried during a password
    // rotation is on a new connection).
    Registry::global().bind(registration.id, backend.hello.thread_id, &identity.subject);
    if let Err(e) = handshake::finish(&mut client, &mut login, &backend.ok).await {
        gate::session::close(
            recorder,
            EndReason::ClientClosed,
            Some(&e.to_string()),
            0,
            0,
        )
        .await;
        return Err(ServeError::Reported(e.to_string()));
    }
    tracing::info!(
        session = id,
        target = %target.name,
        subject = %identity.subject,
        token = identity.token.is_some(),
        method = %backend.method,
        connection_id = registration.id,
        database = login.database.as_deref().unwrap_or(""),
        tls = matches!(client, MaybeTls::Server(_)),
        "mysql session started"
    );

    let masker = ctx.masker.load_full();
    let judge = Gate {
        ctx,
        decider: hooks.decider.as_deref(),
        identity: &identity,
        target: &target.name,
        protocol: Protocol::Mysql,
        session: id,
        metrics: &metrics,
        masker: &masker,
        recording: recorder.is_recording(),
        // Bound values are not yet shown to MySQL reviewers (PostgreSQL's are).
        preview: None,
    };
    let deprecate_eof = login
        .capabilities
        .contains(mysql_common::constants::CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let mut relay = results::Relay::new(Arc::new((*masker).clone()), &ctx.metrics, deprecate_eof);
    relay.status = codec::ok_status(&backend.ok).unwrap_or(backend.hello.status);
    let mut env = session::Env {
        id,
        judge: &judge,
        target: &target.name,
        subject: &identity.subject,
        recorder: &mut recorder,
        relay,
        fast_auth: login.fast_auth,
        bytes_in: 0,
        bytes_out: 0,
        roles,
    };
    let server = backend.stream;
    let exit = match (client, server) {
        (MaybeTls::Plain(mut c), MaybeTls::Plain(mut s)) => {
            let (cr, mut cw) = c.split();
            let (sr, mut sw) = s.split();
            session::run(&mut env, cr, &mut cw, sr, &mut sw).await
        }
        (c, s) => {
            let (cr, mut cw) = tokio::io::split(c);
            let (sr, mut sw) = tokio::io::split(s);
            session::run(&mut env, cr, &mut cw, sr, &mut sw).await
        }
    };
    let (bytes_in, bytes_out) = (env.bytes_in, env.bytes_out);
    drop(env);
    drop(registration);
    let (reason, detail) = match &exit {
        Ok(session::Exit::Quit | session::Exit::ClientClosed) => (EndReason::ClientClosed, None),
        Ok(session::Exit::ServerClosed) => (EndReason::ServerClosed, None),
        Err(session::SessionError::Audit(e)) => (EndReason::AuditFailure, Some(e.to_string())),
        Err(e) => (EndReason::Error, Some(e.to_string())),
    };
    gate::session::close(recorder, reason, detail.as_deref(), bytes_in, bytes_out).await;
    Ok(exit?)
}
