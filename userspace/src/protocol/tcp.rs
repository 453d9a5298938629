//! The `tcp` protocol: an opaque relay with per-session accounting.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::Session;
use crate::proxy::Context;
use crate::relay::{self, Counters};

/// `AIRLOCK_TCP_RELAY=copy` selects the userspace copy engine (benchmarks compare both).
fn relay_by_copy() -> bool {
    static COPY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COPY.get_or_init(|| std::env::var("AIRLOCK_TCP_RELAY").is_ok_and(|v| v == "copy"))
}

/// Relays one TCP session to its upstream and logs what crossed.
pub async fn serve(session: Session, _ctx: Arc<Context>) {
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
    let upstream_conn = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(session = id, target = %target.name, %upstream, %error, "upstream connect failed");
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
    match result {
        Ok(stats) => tracing::info!(
            session = id,
            target = %target.name,
            %upstream,
            pid,
            uid,
            comm,
            bytes_up = stats.client_to_upstream,
            bytes_down = stats.upstream_to_client,
            duration_ms,
            "tcp session closed"
        ),
        Err(error) => tracing::info!(
            session = id,
            target = %target.name,
            %upstream,
            pid,
            uid,
            comm,
            bytes_up = counters.client_to_upstream.load(std::sync::atomic::Ordering::Relaxed),
            bytes_down = counters.upstream_to_client.load(std::sync::atomic::Ordering::Relaxed),
            duration_ms,
            %error,
            "tcp session ended with error"
        ),
    }
}
