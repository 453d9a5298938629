//! Everything the daemon serves over HTTP to people and tools, on one server stack (axum on
//! hyper 1, HTTP/1.1; docs/decisions/web-server.md):
//!
//! - [`ops`]: `GET /metrics` (Prometheus), `/healthz`, `/readyz` on `daemon.metrics`;
//! - [`api`]: the JSON REST API for approvals with its OpenAPI document on `daemon.api`;
//! - [`console`]: the reviewer console (server-rendered pages, OIDC login, live inbox) on
//!   `daemon.console.listen`, with the REST API beside it.
//!
//! Each listener is a marked socket (nobody else may bind the port while the daemon is down)
//! that an upgrade hands to the new daemon like the proxy listeners, stops accepting when the
//! daemon drains, and is bounded in connections, with a timeout on reading a request head.

pub mod api;
pub mod console;
pub mod ops;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::ClientTls;
use crate::drain::{Drain, Watch};
use crate::handover::Sockets;
use crate::runtime::Context;

/// Connections served at once per listener; further ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a complete request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to finish the TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting a listener.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: TLS: {source}")]
    Tls {
        what: &'static str,
        #[source]
        source: crate::protocol::postgres::tls::TlsError,
    },
    #[error("console: {0}")]
    Console(String),
}

/// Where a listener gets its TLS certificate (re-read when the files change).
#[derive(Debug, Clone)]
pub struct TlsFiles(pub ClientTls);

impl TlsFiles {
    fn acceptor(&self) -> Result<TlsAcceptor, crate::protocol::postgres::tls::TlsError> {
        crate::protocol::postgres::tls::acceptor(&self.0)
    }
}

/// Starts every configured HTTP listener of the daemon (metrics, API, console) as tasks.
/// Binding errors are returned at once; later failures are logged.
///
/// The sockets come from `sockets`, so a daemon taking over inherits them with the proxy
/// listeners; each accept loop holds a watch on `drain` and stops accepting when it starts
/// (connections already open are served on until the process exits).
pub async fn start(ctx: &Arc<Context>, sockets: &Sockets, drain: &Drain) -> Result<(), WebError> {
    let config = ctx.config.load_full();
    if let Some(addr) = config.daemon.metrics {
        let listener = bind(sockets, "metrics endpoint", addr)?;
        spawn(
            listener,
            ops::router(ctx.metrics.clone()),
            None,
            drain.watch(),
        );
    }
    if let Some(addr) = config.daemon.api {
        let listener = bind(sockets, "approvals API", addr)?;
        spawn(listener, api::router(ctx.clone()), None, drain.watch());
    }
    if let Some(cfg) = &config.daemon.console {
        let tls = cfg.tls.clone().map(TlsFiles);
        if let Some(t) = &tls {
            t.acceptor().map_err(|source| WebError::Tls {
                what: "console",
                source,
            })?;
        }
        let app = console::router(ctx.clone(), cfg)
            .await
            .map_err(|e| WebError::Console(format!("{e:#}")))?;
        let listener = bind(sockets, "console", cfg.listen)?;
        spawn(listener, app, tls, drain.watch());
    }
    Ok(())
}

/// Serves on `listener` until the drain starts; dropping the listener then closes this
/// process's copy of the socket (a successor holds its own).
fn spawn(listener: TcpListener, app: Router, tls: Option<TlsFiles>, drain: Watch) {
    tokio::spawn(async move {
        tokio::select! {
            () = serve_listener(listener, app, tls) => {}
            () = drain.draining() => {}
        }
    });
}

/// A marked listening socket (nobody else may bind this port, even while the daemon is
/// down), or the one inherited from the daemon this one took over from.
fn bind(sockets: &Sockets, what: &'static str, addr: SocketAddr) -> Result<TcpListener, WebError> {
    let listener = sockets
        .bind(addr)
        .map_err(|source| WebError::Bind { what, addr, source })?;
    tracing::info!(%addr, what, "HTTP listener up");
    Ok(listener)
}

/// Serves `app` on `listener` (TLS when `tls` is set) until the task is dropped.
pub async fn serve_listener(listener: TcpListener, app: Router, tls: Option<TlsFiles>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "HTTP listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, app, tls).await {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn connection(
    stream: TcpStream,
    app: Router,
    tls: Option<TlsFiles>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(64 * 1024);
    match tls {
        None => {
            http.serve_connection(TokioIo::new(stream), service).await?;
        }
        Some(files) => {
            let acceptor = files.acceptor()?;
            let stream = tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream)).await??;
            http.serve_connection(TokioIo::new(stream), service).await?;
        }
    }
    Ok(())
}

/// A JSON error body, `{"error": message}`, the form every JSON endpoint answers errors in.
pub(crate) fn json_error(
    status: axum::http::StatusCode,
    message: impl std::fmt::Display,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}
