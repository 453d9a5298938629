//! The `tcp` protocol: the connection itself is the command. The gate decides it once, before
//! the first byte is relayed: allowed connections are relayed opaquely with per-session
//! accounting, denied ones are closed, and held ones wait for approval (just-in-time access to
//! any TCP service) with nothing read from the client until then. Every connection is recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Session;
use crate::audit::{CommandEvent, EndReason, SessionStart};
use crate::drain::Watch;
use crate::gate::{
    self, Authenticator, Gate, Judge, LogNotice, PolicyAuthenticator, Presented, Verdict,
};
use crate::metrics::DenyReason;
use crate::model::{Command, Protocol};
use crate::relay::{self, Counters};
use crate::runtime::Context;

/// `AIRLOCK_TCP_RELAY=copy` selects the userspace copy engine (benchmarks compare both).
fn relay_by_copy() -> bool {
    static COPY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COPY.get_or_init(|| std::env::var("AIRLOCK_TCP_RELAY").is_ok_and(|v| v == "copy"))
}

/// Judges, relays and records one TCP session.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    let Session {
        id,
        client,
        target,
        workload,
        upstream,
        started,
        drain,
    } = session;
    let metrics = ctx.metrics.target(&target.name, Protocol::Tcp);
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
    // Fail closed: a session the audit log cannot record does not start.
    let mut recorder = match gate::session::open(&ctx, start).await {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(session = id, target = %target.name, %error, "audit log refused the session");
            ctx.metrics.denied_connection(DenyReason::Internal);
            return;
        }
    };
    let masker = ctx.masker.load_full();
    let gate = Gate {
        ctx: &ctx,
        decider: None,
        identity: &identity,
        target: &target.name,
        protocol: Protocol::Tcp,
        session: id,
        metrics: &metrics,
        masker: &masker,
        recording: recorder.is_recording(),
        preview: None,
    };
    let judged = gate.judge(&Command::Connect);
    // A held connection's review is recorded with it, also when the client leaves (withdrawn).
    let (verdict, review) = match judged.verdict {
        Verdict::Hold(hold) => {
            let trail = hold.trail();
            let wait = hold.start(Arc::new(LogNotice { session: id }));
            let verdict = wait_while_connected(&client, &drain, wait).await;
            (verdict, trail.take())
        }
        v => (Ok(v), None),
    };
    let recorded = match &judged.record {
        Some(decision) => Some(
            recorder
                .command(CommandEvent {
                    command: &Command::Connect,
                    facts: &judged.facts,
                    decision,
                    approval: review.as_ref().map(gate::session::review_record),
                    caller: None,
                })
                .await,
        ),
        None => None,
    };
    let durable = async {
        match recorded {
            Some(Ok((_, ack))) => ack.durable().await.map(|_| ()),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    };
    // An allowed connection's upstream is dialled while the log makes its record durable:
    // the two waits overlap (connect latency). Nothing is relayed, not even the client's
    // first byte, before the record is durable; a log that fails closes both sides.
    let (acked, dialled) = if matches!(verdict, Ok(Verdict::Allow { .. })) {
        // The dial first: it sends the SYN and yields, then the log's write runs.
        let (dialled, acked) = tokio::join!(crate::intercept::sockets::connect(upstream), durable);
        (acked, Some(dialled))
    } else {
        (durable.await, None)
    };
    if let Err(error) = acked {
        tracing::error!(session = id, %error, "audit log failed; connection closed");
        gate::session::close(
            recorder,
            EndReason::AuditFailure,
            Some(&error.to_string()),
            0,
            0,
        )
        .await;
        return;
    }
    let verdict = match verdict {
        Ok(v) => v,
        Err(Withdrawn { reason, why }) => {
            // The wait was dropped, and the request withdrawn with it (recorded above).
            tracing::info!(session = id, target = %target.name, why, "held connection ended before a decision");
            gate::session::close(recorder, reason, Some(why), 0, 0).await;
            return;
        }
    };
    if let Verdict::Deny { message } = &verdict {
        tracing::info!(session = id, target = %target.name, %message, "connection denied");
        ctx.metrics.denied_connection(DenyReason::Policy);
        gate::session::close(recorder, EndReason::Denied, Some(message), 0, 0).await;
        return;
    }
    let Some(dialled) = dialled else {
        // Fail closed: a hold resolves to allow or deny, never to another hold.
        tracing::error!(session = id, target = %target.name, "a held connection did not resolve; closed");
        gate::session::close(
            recorder,
            EndReason::Denied,
            Some("approval did not resolve"),
            0,
            0,
        )
        .await;
        return;
    };
    let upstream_conn = match dialled {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(session = id, target = %target.name, %upstream, %error, "upstream connect failed");
            ctx.metrics.denied_connection(DenyReason::Upstream);
            let detail = format!("upstream {upstream}: {error}");
            gate::session::close(recorder, EndReason::Error, Some(&detail), 0, 0).await;
            return;
        }
    };
    let _ = upstream_conn.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let counters = Counters::default();
    // Opaque bytes: the ring's splice operations when the daemon runs io_uring; otherwise
    // splice(2) kernel-side unless told to copy (for comparison benchmarks).
    let ring = ctx.uring.get();
    let relay = async {
        if let Some(ring) = ring {
            relay::uring::splice_relay(ring, client, upstream_conn, &counters).await
        } else if relay_by_copy() {
            relay::relay(&client, &upstream_conn, &counters).await
        } else {
            relay::splice_relay(&client, &upstream_conn, &counters).await
        }
    };
    // The daemon's grace period is over: an opaque stream has no error to send, so close.
    let (result, shutdown) = tokio::select! {
        r = relay => (r.map(drop), false),
        () = drain.deadline() => (Ok(()), true),
    };
    let (up, down) = (
        counters.client_to_upstream.load(Ordering::Relaxed),
        counters.upstream_to_client.load(Ordering::Relaxed),
    );
    let (reason, detail) = match (&result, shutdown) {
        (_, true) => (EndReason::Shutdown, None),
        (Ok(()), false) => (EndReason::ClientClosed, None),
        (Err(e), false) => (EndReason::Error, Some(e.to_string())),
    };
    gate::session::close(recorder, reason, detail.as_deref(), up, down).await;
    let (pid, uid, comm) = workload
        .as_ref()
        .map(|w| (w.tgid, w.uid, w.comm.as_str()))
        .unwrap_or((0, 0, ""));
    tracing::info!(
        session = id,
        target = %target.name,
        %upstream,
        pid,
        uid,
        comm,
        bytes_up = up,
        bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        error = result.as_ref().err().map(tracing::field::display),
        "tcp session closed"
    );
}

/// Why a held connection ended before its verdict (its request is withdrawn).
struct Withdrawn {
    reason: EndReason,
    why: &'static str,
}

/// The client hung up.
const LEFT: Withdrawn = Withdrawn {
    reason: EndReason::ClientClosed,
    why: "client left before approval",
};

/// The daemon's grace period ran out.
const SHUTDOWN: Withdrawn = Withdrawn {
    reason: EndReason::Shutdown,
    why: "gateway shut down before approval",
};

/// Waits for a held connection's verdict. Nothing is read from the client (its first bytes
/// must reach the target only after approval), but a client that hangs up withdraws the
/// request, and so does the daemon's shutdown deadline (dropping `wait` withdraws it).
async fn wait_while_connected(
    client: &TcpStream,
    drain: &Watch,
    wait: gate::HeldFuture,
) -> Result<Verdict, Withdrawn> {
    tokio::pin!(wait);
    let mut watching = true;
    loop {
        tokio::select! {
            v = &mut wait => return Ok(v),
            () = drain.deadline() => return Err(SHUTDOWN),
            ready = client.readable(), if watching => {
                if ready.is_err() {
                    return Err(LEFT);
                }
                match client.try_io(Interest::READABLE, || peek_one(client)) {
                    // End of stream: the client closed.
                    Ok(0) => return Err(LEFT),
                    // It already sent something: that waits in the socket until approval;
                    // stop polling a socket that stays readable.
                    Ok(_) => watching = false,
                    // A stale readiness: try_io cleared it, wait again.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(LEFT),
                }
            }
        }
    }
}

/// Peeks at one byte without blocking or consuming it: `Ok(0)` at end of stream.
fn peek_one(client: &TcpStream) -> std::io::Result<usize> {
    let mut probe = [0u8; 1];
    // SAFETY: recv on a valid socket fd into a one-byte buffer we own; MSG_PEEK leaves the
    // byte in the socket, MSG_DONTWAIT never blocks the runtime thread.
    let n = unsafe {
        libc::recv(
            client.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
