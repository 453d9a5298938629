//! Graceful shutdown: one drain signal, handed to every listener and every session.
//!
//! The daemon owns a [`Drain`]; each accept loop and each session holds a [`Watch`] cloned from
//! it (as ztunnel hands a drain watcher to every connection). Draining moves through phases:
//!
//! 1. [`Phase::Draining`]: accept loops stop (and drop their watch); sessions run on.
//! 2. [`Phase::Deadline`], once the grace period is over: each session ends at its next clean
//!    point with its protocol's own error (PostgreSQL: FATAL 57P01 `admin_shutdown`; tcp:
//!    close), records its end and drops its watch.
//!
//! [`Drain::run`] returns when every watch is gone, or when the sessions that ignored the
//! deadline still hold theirs after a last bounded wait; the daemon then drops what is left
//! (their recorders log the end as `dropped`) before it closes the audit log.
//!
//! Waiting rides on the channel itself: a watch is a [`tokio::sync::watch::Receiver`], so
//! "every session ended" is the sender seeing its last receiver dropped. A counter beside it
//! tells how many there are (a watch waiting on a phase briefly holds a second receiver).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// Where a drain stands. Ordered: a later phase implies the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new connections; open sessions finish on their own.
    Draining,
    /// The grace period is over: sessions end now.
    Deadline,
}

/// The daemon's side of the drain signal.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<Phase>,
    live: Arc<AtomicUsize>,
}

/// A listener's or a session's side of the drain signal. Holding one keeps [`Drain::run`]
/// waiting; drop it when the listener has stopped or the session has recorded its end.
#[derive(Debug)]
pub struct Watch {
    rx: watch::Receiver<Phase>,
    live: Arc<AtomicUsize>,
}

impl Clone for Watch {
    fn clone(&self) -> Self {
        self.live.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.rx.clone(),
            live: Arc::clone(&self.live),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every session ended within the grace period.
    Finished,
    /// The grace period ran out; `ended` sessions were ended by the deadline.
    Deadline { ended: usize },
    /// Some sessions still held their watch after the deadline's last wait.
    Abandoned { remaining: usize },
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain in the `Running` phase.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Phase::Running);
        Drain {
            tx,
            live: Arc::default(),
        }
    }

    /// A new watch on this drain.
    pub fn watch(&self) -> Watch {
        self.live.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            live: Arc::clone(&self.live),
        }
    }

    /// Watches still held: listeners not yet stopped plus sessions not yet ended.
    pub fn open(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Stops accepting (phase `Draining`) without waiting; [`run`](Self::run) continues from
    /// there. A hand-over to a new daemon starts draining this way.
    pub fn start(&self) {
        self.tx.send_if_modified(|p| {
            let advance = *p < Phase::Draining;
            if advance {
                *p = Phase::Draining;
            }
            advance
        });
    }

    /// Drains: stops accepting, waits up to `grace` for every session to end, then signals
    /// the deadline and waits up to `last_wait` for the sessions to end with their protocol's
    /// error.
    pub async fn run(&self, grace: Duration, last_wait: Duration) -> Outcome {
        self.start();
        if tokio::time::timeout(grace, self.tx.closed()).await.is_ok() {
            return Outcome::Finished;
        }
        let open = self.open();
        self.tx.send_replace(Phase::Deadline);
        match tokio::time::timeout(last_wait, self.tx.closed()).await {
            Ok(()) => Outcome::Deadline { ended: open },
            Err(_) => Outcome::Abandoned {
                remaining: self.open(),
            },
        }
    }
}

impl Watch {
    /// A watch that never drains (tests, benchmarks, tools without a daemon).
    pub fn never() -> Self {
        static NEVER: OnceLock<Drain> = OnceLock::new();
        NEVER.get_or_init(Drain::new).watch()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Resolves once draining has started: stop accepting. Also resolves if the daemon's
    /// [`Drain`] is gone.
    pub async fn draining(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves once the grace period is over: end the session now. Also resolves if the
    /// daemon's [`Drain`] is gone.
    pub async fn deadline(&self) {
        self.reached(Phase::Deadline).await;
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone: nobody will drain us in order any more.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishes_when_every_watch_is_dropped_within_the_grace() {
        let drain = Drain::new();
        let listener = drain.watch();
        let session = drain.watch();
        let listener_task = tokio::spawn(async move {
            listener.draining().await;
        });
        let session_task = tokio::spawn(async move {
            session.draining().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(session);
        });
        let outcome = drain
            .run(Duration::from_secs(5), Duration::from_secs(1))
            .await;
        assert_eq!(outcome, Outcome::Finished);
        listener_task.await.unwrap();
        session_task.await.unwrap();
        assert_eq!(drain.open(), 0);
    }

    #[tokio::test]
    async fn the_deadline_ends_sessions_that_outlive_the_grace() {
        let drain = Drain::new();
        let session = drain.watch();
        let task = tokio::spawn(async move {
            session.deadline().await;
            assert_eq!(session.phase(), Phase::Deadline);
        });
        let outcome = drain
            .run(Duration::from_millis(50), Duration::from_secs(5))
            .await;
        assert_eq!(outcome, Outcome::Deadline { ended: 1 });
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_session_ignoring_the_deadline_is_reported() {
        let drain = Drain::new();
        let stuck = drain.watch();
        let outcome = drain
            .run(Duration::from_millis(20), Duration::from_millis(20))
            .await;
        assert_eq!(outcome, Outcome::Abandoned { remaining: 1 });
        drop(stuck);
        assert_eq!(drain.open(), 0);
    }

    #[tokio::test]
    async fn never_does_not_resolve() {
        let w = Watch::never();
        let r = tokio::time::timeout(Duration::from_millis(20), w.draining()).await;
        assert!(r.is_err());
        assert_eq!(w.phase(), Phase::Running);
    }
}
