//! The operations endpoint (`daemon.metrics`): `GET /metrics` (OpenMetrics text), `GET /healthz`
//! (200 whenever the daemon answers) and `GET /readyz` (200 once every listener accepts, 503
//! before that and while draining). `HEAD` works on each; nothing else does.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{CONTENT_TYPE, Metrics};

/// The router of the operations endpoint.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response()
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> Response {
    if metrics.health.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

async fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::metrics::tests::parse;
    use crate::model::{Action, Protocol};

    async fn start(m: Arc<Metrics>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(crate::web::serve_listener(listener, router(m), None));
        (addr, server)
    }

    #[tokio::test]
    async fn scrape_over_http_shows_every_metric() {
        let m = Arc::new(Metrics::new());
        let db = m.target("demo-db", Protocol::Postgres);
        db.command(Action::Allow);
        db.approval_resolved(
            crate::metrics::ApprovalOutcome::Approved,
            Duration::from_secs(7),
        );
        let (addr, server) = start(m.clone()).await;
        // A real HTTP client, as Prometheus would scrape.
        let resp = openidconnect::reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
        let body = resp.text().await.unwrap();
        assert!(body.ends_with("# EOF\n"));
        let v = parse(&body);
        assert_eq!(
            v[r#"airlock_commands_total{target="demo-db",protocol="postgres",action="allow"}"#],
            1.0
        );
        assert_eq!(v["airlock_approval_decision_latency_seconds_sum"], 7.0);

        // The wire as a bare client sees it: unknown paths, other methods, HEAD.
        for (request, expect) in [
            (
                "GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                "HTTP/1.1 404",
            ),
            (
                "POST /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 405",
            ),
            (
                "HEAD /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                "HTTP/1.1 200",
            ),
            ("NONSENSE\r\n\r\n", "HTTP/1.1 400"),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with(expect), "{request:?} → {resp}");
            if request.starts_with("HEAD") {
                assert!(resp.ends_with("\r\n\r\n"), "HEAD has no body: {resp}");
            }
        }
        server.abort();
    }

    #[tokio::test]
    async fn health_and_readiness_over_http() {
        let m = Arc::new(Metrics::new());
        let (addr, server) = start(m.clone()).await;
        let status = |path: &'static str| async move {
            openidconnect::reqwest::get(format!("http://{addr}{path}"))
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(status("/healthz").await, 200);
        assert_eq!(
            status("/readyz").await,
            503,
            "not ready before the listeners are up"
        );
        m.health.set_ready(true);
        assert_eq!(status("/readyz").await, 200);
        m.health.set_ready(false);
        assert_eq!(status("/readyz").await, 503, "draining or handing over");
        assert_eq!(status("/healthz").await, 200);
        server.abort();
    }
}
