//! The `tcp` protocol: an opaque relay with per-session accounting.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::Session;
use crate::audit::{EndReason, SessionEnd, SessionStart};
use crate::config::Protocol;
use crate::identity::Identity;
use crate::metrics::DenyReason;
use crate::proxy::Context;
use crate::relay::{self, Counters};

/// `AIRLOCK_TCP_RELAY=copy` selects the userspace copy engine (benchmarks compare both).
fn relay_by_copy() -> bool {
    static COPY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COPY.get_or_init(|| std::env::var("AIRLOCK_TCP_RELAY").is_ok_and(|v| v == "copy"))
}

/// Relays one TCP session to its upstream and logs what crossed.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    let Session {
        id,
        client,
        target,
        workload,
        upstream,
        started,
    } = session;
    let (pid, uid, comm) = workload
        .as_ref()
        .map(|w| (w.tgid, w.uid, w.comm.as_str()))
        .unwrap_or((0, 0, ""));
    let _active = ctx.metrics.session_started(&target.name, Protocol::Tcp);
    // Fail closed: a session the audit log cannot record does not start.
    let mut recorder = match ctx.audit.admit_session() {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(session = id, target = %target.name, %error, "audit log refused the session");
            ctx.metrics.denied_connection(DenyReason::Internal);
            return;
        }
    };
    let identity = Identity {
        subject: workload
            .as_ref()
            .map(|w| {
                w.user
                    .as_ref()
                    .map_or_else(|| format!("unix:{}", w.uid), |u| format!("unix:{u}"))
            })
            .unwrap_or_else(|| "unintercepted".into()),
        groups: Vec::new(),
        workload: workload.clone(),
        token: None,
    };
    let start = SessionStart {
        proxy_session: Some(id),
        identity: &identity,
        workload: workload.as_ref(),
        target: &target.name,
        protocol: Protocol::Tcp,
        client: workload.as_ref().and_then(|w| w.peer),
        original_dst: workload.as_ref().and_then(|w| w.original_dst),
        tls: None,
    };
    if let Err(error) = recorder.start(start).await {
        tracing::error!(session = id, %error, "audit log failed; session refused");
        return;
    }
    let upstream_conn = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(session = id, target = %target.name, %upstream, %error, "upstream connect failed");
            ctx.metrics.denied_connection(DenyReason::Upstream);
            let _ = recorder
                .end(SessionEnd {
                    reason: EndReason::Error,
                    detail: Some(format!("upstream {upstream}: {error}")),
                    bytes_from_client: 0,
                    bytes_to_client: 0,
                })
                .await;
            return;
        }
    };
    let _ = upstream_conn.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let counters = Counters::default();
    // Opaque bytes: splice them kernel-side unless told to copy (for comparison benchmarks).
    let result = if relay_by_copy() {
        relay::relay(&client, &upstream_conn, &counters).await
    } else {
        relay::splice_relay(&client, &upstream_conn, &counters).await
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let (up, down) = (
        counters
            .client_to_upstream
            .load(std::sync::atomic::Ordering::Relaxed),
        counters
            .upstream_to_client
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let end = SessionEnd {
        reason: if result.is_ok() {
            EndReason::ClientClosed
        } else {
            EndReason::Error
        },
        detail: result.as_ref().err().map(ToString::to_string),
        bytes_from_client: up,
        bytes_to_client: down,
    };
    if let Err(error) = recorder.end(end).await {
        tracing::error!(session = id, %error, "audit log failed to record the session end");
    }
    tracing::info!(
        session = id,
        target = %target.name,
        %upstream,
        pid,
        uid,
        comm,
        bytes_up = up,
        bytes_down = down,
        duration_ms,
        error = result.as_ref().err().map(tracing::field::display),
        "tcp session closed"
    );
}
