//! Interception records and events: the caller's workload identity as the kernel saw it.

use std::net::SocketAddr;

use airlock_common::{ConnInfo, event_kind};
use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::bpf::{Interceptor, addr_from_words};
use crate::config::TargetConfig;
use crate::model::Workload;

/// Why a record cannot be admitted by the listener that accepted its connection.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("the record was made for target #{record}, the listener serves #{listener}")]
    Target { record: u32, listener: usize },
    #[error("the record was made for proxy port {record}, the listener is on {listener}")]
    ProxyPort { record: u16, listener: u16 },
    #[error("original destination {0} is not one of the target's addresses and ports")]
    Destination(SocketAddr),
    /// An upstream socket of the daemon went unmarked (never expected): admitting it would
    /// loop the daemon into itself.
    #[error("the daemon's own connection was intercepted")]
    OwnConnection,
}

/// This process's id, read once (getpid is a system call, and this runs per connection).
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Checks that a record belongs to the listener that accepted its connection: target
/// `target_index` of the current configuration, listening at `local`.
pub fn check_record(
    info: &ConnInfo,
    target_index: usize,
    target: &TargetConfig,
    local: SocketAddr,
) -> Result<(), Mismatch> {
    if info.tgid == own_pid() {
        return Err(Mismatch::OwnConnection);
    }
    if info.target_id as usize != target_index {
        return Err(Mismatch::Target {
            record: info.target_id,
            listener: target_index,
        });
    }
    if info.proxy_port != local.port() {
        return Err(Mismatch::ProxyPort {
            record: info.proxy_port,
            listener: local.port(),
        });
    }
    let dst = original_dst(info);
    if !target.ports.contains(&dst.port()) || !target.addresses.iter().any(|c| c.contains(dst.ip()))
    {
        return Err(Mismatch::Destination(dst));
    }
    Ok(())
}

/// What a ring-buffer event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Redirected,
    /// A connect to a protected target that could not be routed to the proxy was refused.
    Refused,
    BindRefused,
    Unknown(u32),
}

/// One event from the kernel programs.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub info: ConnInfo,
}

/// The original destination recorded at connect time.
pub fn original_dst(info: &ConnInfo) -> SocketAddr {
    SocketAddr::new(addr_from_words(info.orig_addr), info.orig_port)
}

/// Builds the caller's workload from an interception record.
pub fn workload_from(info: &ConnInfo, peer: Option<SocketAddr>) -> Workload {
    let comm_len = info
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(info.comm.len());
    Workload {
        pid: info.pid,
        tgid: info.tgid,
        uid: info.uid,
        gid: info.gid,
        cgroup_id: info.cgroup_id,
        cgroup_path: None,
        user: None,
        comm: String::from_utf8_lossy(&info.comm[..comm_len]).into_owned(),
        netns_cookie: info.netns_cookie,
        original_dst: Some(original_dst(info)),
        peer,
    }
}

/// How often routine events (redirects, which do not wake the daemon) are drained.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Hands every record in the ring to `on_event`.
fn drain(ring: &mut RingBuf<MapData>, on_event: &impl Fn(Event)) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<ConnInfo>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole ConnInfo (checked length); read unaligned because
        // ring buffer records are only 8-byte aligned by convention.
        let info: ConnInfo = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnInfo>()) };
        let kind = match info.kind {
            event_kind::REDIRECTED => EventKind::Redirected,
            event_kind::REFUSED => EventKind::Refused,
            event_kind::BIND_REFUSED => EventKind::BindRefused,
            other => EventKind::Unknown(other),
        };
        on_event(Event { kind, info });
    }
}

/// Reads the events ring buffer and the kernel programs' logs until the daemon stops,
/// handing each event to `on_event`.
pub fn spawn_readers(
    interceptor: &mut Interceptor,
    on_event: impl Fn(Event) + Send + 'static,
) -> std::io::Result<()> {
    if let Some(ring) = interceptor.take_events() {
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring.
        let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        tokio::spawn(async move {
            // The kernel wakes us only for refusals and a filling ring; redirects are drained
            // on this tick.
            let mut tick = tokio::time::interval(DRAIN_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let mut guard = tokio::select! {
                    ready = fd.readable_mut() => match ready {
                        Ok(guard) => guard,
                        Err(error) => {
                            tracing::error!(%error, "interception events ring buffer failed");
                            return;
                        }
                    },
                    _ = tick.tick() => {
                        drain(fd.get_mut(), &on_event);
                        continue;
                    }
                };
                drain(guard.get_inner_mut(), &on_event);
                guard.clear_ready();
            }
        });
    }
    if let Some(logger) = interceptor.take_logger() {
        // SAFETY: the logger owns its fd for as long as the AsyncFd owns the logger.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    Ok(())
}
