//! The `http` protocol: every request decided before the target sees it, answers masked as
//! they stream, the gateway's credential injected. Built on hyper 1 and hyper-util
//! (docs/decisions/http-engine.md).
//!
//! One intercepted client connection is one session. [`serve`] authenticates the caller,
//! terminates TLS when the client opened it ([`tls`]: the operator's certificate or one minted
//! by airlock's CA), opens the session's audit record and serves HTTP/1.1 and HTTP/2 (prior
//! knowledge or ALPN) with limits on heads, streams and resets. Each request then runs the
//! fixed phase pipeline of [`exchange`]:
//!
//! 1. **head**: smuggling and malformed requests refused; host, path ([`target`]: one
//!    canonical form, judged and forwarded), query, headers;
//! 2. **body**: read up to the target's bound ([`body`]); over it, judged `unknown`;
//! 3. **classify**: the request as a [`Command`](crate::model::Command), through a pluggable
//!    [`Classify`] (the Kubernetes handler brings its own);
//! 4. **judge**: the gate decides; a review holds the request (the client waits) or, in retry
//!    mode, answers 503 with the request id;
//! 5. **record** the command, then **upstream** ([`forward`]): client credentials stripped,
//!    the gateway's injected, sent once;
//! 6. **answer**: upgrades tunnelled and counted ([`upgrade`]); bodies masked (JSON by path
//!    and detectors, other text by detectors, gzip decoded first; what masking cannot read is
//!    refused or passed by the target's setting), streamed;
//! 7. **record** the result ([`record`]) when the answer has gone out or the client left.

pub mod body;
pub mod classify;
pub mod exchange;
pub mod forward;
pub mod record;
pub mod target;
pub mod tls;
pub mod upgrade;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use classify::{Classify, Head, HttpClassifier};

use self::record::SessionAudit;
use super::Session;
use crate::audit::{EndReason, SessionStart, TlsInfo};
use crate::config::TargetConfig;
use crate::config::http::HttpTarget;
use crate::gate::{self, Authenticator, PolicyAuthenticator, Presented};
use crate::mask::Masker;
use crate::metrics::{DenyReason, TargetMetrics};
use crate::model::Identity;
use crate::runtime::Context;

/// Largest request head (request line and headers, HTTP/1.1) or header list (HTTP/2).
/// Larger heads get a 431 (HTTP/1.1) or a stream reset (HTTP/2).
pub const MAX_HEAD: usize = 64 * 1024;
/// Concurrent HTTP/2 streams per client connection.
pub const MAX_STREAMS: u32 = 100;
/// How long a client may take to send a request head, and to open TLS.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading a request body for judging may take.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// One client connection's state, shared by its exchanges.
pub struct Conn {
    pub ctx: Arc<Context>,
    pub id: u64,
    pub target: Arc<TargetConfig>,
    pub http: HttpTarget,
    pub identity: Identity,
    pub metrics: TargetMetrics,
    pub masker: Arc<Masker>,
    pub audit: Arc<SessionAudit>,
    pub upstream: forward::Upstream,
    pub classifier: Arc<dyn Classify>,
    /// The client's credential headers on this target.
    pub credential_headers: Vec<http::HeaderName>,
    /// The last bearer token a request of this connection was identified by.
    pub token_caller: std::sync::Mutex<Option<TokenCaller>>,
    /// Dropped with the last exchange: the session waits for it before it closes.
    _inflight: tokio::sync::mpsc::Sender<()>,
}

/// A bearer token a connection verified, its caller, and the policy it was verified under.
pub struct TokenCaller {
    /// The token as the request carried it.
    pub token: String,
    /// Who it names.
    pub identity: Arc<Identity>,
    /// The verifier that accepted it.
    pub verifier: Arc<crate::identity::oidc::OidcVerifier>,
    /// The policy that made the identity (its groups).
    pub engine: Arc<crate::policy::Engine>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("target", &self.target.name)
            .finish_non_exhaustive()
    }
}

/// Serves one intercepted HTTP client connection with the `http` classifier.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    serve_with(session, ctx, Arc::new(HttpClassifier)).await;
}

/// Serves one client connection, classifying its requests with `classifier` (the Kubernetes
/// handler passes its own).
pub async fn serve_with(session: Session, ctx: Arc<Context>, classifier: Arc<dyn Classify>) {
    let Session {
        id,
        client,
        target,
        workload,
        upstream,
        ..
    } = session;
    let protocol = classifier.protocol();
    let metrics = ctx.metrics.target(&target.name, protocol);
    let _active = metrics.session_started();
    let presented = Presented {
        workload: workload.as_ref(),
        ..Presented::default()
    };
    let identity = match PolicyAuthenticator.authenticate(&ctx, presented).await {
        Ok(i) => i,
        Err(error) => {
            tracing::warn!(session = id, target = %target.name, %error, "caller not identified; connection closed");
            ctx.metrics.denied_connection(DenyReason::Unauthenticated);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let cfg = target.http.clone().unwrap_or_default();
    let is_tls = match tokio::time::timeout(HEAD_TIMEOUT, opens_tls(&client)).await {
        Ok(Ok(t)) => t,
        Ok(Err(error)) => {
            tracing::debug!(session = id, %error, "client closed before its first byte");
            return;
        }
        Err(_) => {
            tracing::info!(session = id, target = %target.name, "client sent nothing; connection closed");
            return;
        }
    };
    let start = Start {
        ctx,
        id,
        target,
        cfg,
        identity,
        metrics,
        classifier,
        workload,
        upstream,
    };
    if !is_tls {
        // Plain HTTP to a port the target serves with TLS: the upstream leg is TLS all the
        // same, so the credential never crosses the network in clear.
        let upstream_tls = match start.cfg.tls.clone() {
            Some(t) if t.serves_tls_on(start.upstream.port()) => {
                let Some(tls) = start.target_tls(&t) else {
                    return;
                };
                let Some(name) = t.server_name.clone().or_else(|| t.default_name.clone()) else {
                    tracing::warn!(session = id, target = %start.target.name, "plain HTTP to a TLS port, and no name to verify the target's certificate against (set http.tls.server_name); connection closed");
                    start.ctx.metrics.denied_connection(DenyReason::Policy);
                    return;
                };
                Some((tls.client.clone(), name))
            }
            _ => None,
        };
        start.run(client, None, upstream_tls).await;
        return;
    }
    let Some(tls_cfg) = start.cfg.tls.clone() else {
        tracing::warn!(session = id, target = %start.target.name, "client opened TLS, but the target has no http.tls block; connection closed");
        start.ctx.metrics.denied_connection(DenyReason::Policy);
        return;
    };
    let Some(tls) = start.target_tls(&tls_cfg) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
    let stream = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            tracing::info!(session = id, target = %start.target.name, %error, "TLS handshake with the client failed");
            return;
        }
        Err(_) => {
            tracing::info!(session = id, target = %start.target.name, "TLS handshake timed out");
            return;
        }
    };
    let (info, sni) = {
        let (_, conn) = stream.get_ref();
        let sni = conn.server_name().map(str::to_owned);
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("tls")
                .to_owned(),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .map(str::to_owned),
            server_name: sni.clone(),
            client_subject: None,
        };
        (info, sni)
    };
    // A name the target does not answer to is another site's: its certificate was minted
    // for nothing that gets used, and the session ends here.
    if let Some(name) = &sni
        && !start.cfg.answers_to(
            name.trim_end_matches('.').to_ascii_lowercase().as_str(),
            &start.target.addresses,
        )
    {
        tracing::warn!(session = id, target = %start.target.name, sni = %name, "TLS for a name the target does not answer to (http.names); connection closed");
        start.ctx.metrics.denied_connection(DenyReason::Policy);
        return;
    }
    let server_name = tls_cfg
        .server_name
        .clone()
        .or(sni)
        .or_else(|| tls_cfg.default_name.clone());
    let Some(server_name) = server_name else {
        tracing::warn!(session = id, target = %start.target.name, "no name to verify the target's certificate against (the client sent no SNI; set http.tls.server_name)");
        return;
    };
    start
        .run(stream, Some(info), Some((tls.client.clone(), server_name)))
        .await;
}

/// Whether the client's first byte opens a TLS handshake (a TLS record of type 22).
async fn opens_tls(client: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    loop {
        client.readable().await?;
        match client.peek(&mut first).await {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => return Ok(first[0] == 0x16),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What a session knows before it serves HTTP.
struct Start {
    ctx: Arc<Context>,
    id: u64,
    target: Arc<TargetConfig>,
    cfg: HttpTarget,
    identity: Identity,
    metrics: TargetMetrics,
    classifier: Arc<dyn Classify>,
    workload: Option<crate::model::Workload>,
    upstream: std::net::SocketAddr,
}

impl Start {
    /// The target's TLS (certificates towards the client, the verified leg upstream); `None`,
    /// logged and counted, when it cannot be set up.
    fn target_tls(&self, cfg: &crate::config::http::HttpTls) -> Option<Arc<tls::TargetTls>> {
        let state_dir = self.ctx.config.load().daemon.state_dir.clone();
        match tls::for_target(&self.target.name, cfg, &state_dir) {
            Ok(t) => Some(t),
            Err(error) => {
                tracing::error!(session = self.id, target = %self.target.name, %error, "TLS for the target unavailable; connection closed");
                self.ctx.metrics.denied_connection(DenyReason::Internal);
                None
            }
        }
    }

    /// Opens the session record and serves HTTP on `io` until the client leaves.
    async fn run<IO>(
        self,
        io: IO,
        tls: Option<TlsInfo>,
        upstream_tls: Option<(rustls::ClientConfig, String)>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Start {
            ctx,
            id,
            target,
            cfg,
            identity,
            metrics,
            classifier,
            workload,
            upstream,
        } = self;
        let start = SessionStart {
            proxy_session: Some(id),
            identity: &identity,
            workload: workload.as_ref(),
            target: &target.name,
            protocol: classifier.protocol(),
            client: workload.as_ref().and_then(|w| w.peer),
            original_dst: workload.as_ref().and_then(|w| w.original_dst),
            tls,
        };
        // Fail closed: a session the audit log cannot record does not start.
        let recorder = match gate::session::open(&ctx, start).await {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(session = id, target = %target.name, %error, "audit log refused the session");
                ctx.metrics.denied_connection(DenyReason::Internal);
                return;
            }
        };
        let pool = match forward::Upstream::new(
            upstream,
            upstream_tls.map(|(config, name)| (config, Some(name))),
        ) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(session = id, target = %target.name, %error, "upstream pool unavailable");
                gate::session::close(recorder, EndReason::Error, Some(&error.to_string()), 0, 0)
                    .await;
                return;
            }
        };
        let audit = Arc::new(SessionAudit::new(recorder));
        let (inflight, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        let conn = Arc::new(Conn {
            masker: ctx.masker.load_full(),
            credential_headers: forward::credential_headers(&cfg),
            token_caller: std::sync::Mutex::new(None),
            ctx: Arc::clone(&ctx),
            id,
            target: Arc::clone(&target),
            http: cfg,
            identity,
            metrics,
            audit: Arc::clone(&audit),
            upstream: pool,
            classifier,
            _inflight: inflight,
        });
        tracing::info!(
            session = id,
            target = %target.name,
            subject = %conn.identity.subject,
            "http session started"
        );
        let service = {
            let conn = Arc::clone(&conn);
            service_fn(move |req| {
                let conn = Arc::clone(&conn);
                async move { Ok::<_, Infallible>(exchange::handle(conn, req).await) }
            })
        };
        drop(conn);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .max_concurrent_streams(MAX_STREAMS)
            .max_pending_accept_reset_streams(Some(32))
            .max_local_error_reset_streams(Some(64));
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await;
        // Exchanges still streaming (an upgraded tunnel, a result being written) hold the
        // connection state; the session ends after the last of them.
        let _ = all_done.recv().await;
        let (reason, detail) = match &served {
            Ok(()) => (EndReason::ClientClosed, None),
            Err(e) => (EndReason::Error, Some(e.to_string())),
        };
        if let Some(recorder) = audit.take().await {
            gate::session::close(
                recorder,
                reason,
                detail.as_deref(),
                audit
                    .bytes_from_client
                    .load(std::sync::atomic::Ordering::Relaxed),
                audit
                    .bytes_to_client
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .await;
        }
        tracing::debug!(session = id, target = %target.name, error = detail.as_deref(), "http session closed");
    }
}
