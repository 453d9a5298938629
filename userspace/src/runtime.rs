//! What the daemon hands every listener, protocol handler and the API: the configuration and
//! everything derived from it (swapped whole on reload), metrics, the audit log and the approval
//! service. It sits below the protocols and the gate, so none of them imports the daemon.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::approval::Approvals;
use crate::audit::Recorder;
use crate::config::Config;
use crate::identity::oidc::OidcVerifier;
use crate::mask::Masker;
use crate::metrics::Metrics;
use crate::policy::Engine;

/// State shared by every session. What the configuration decides is swapped atomically on
/// reload; a session loads each piece once per command.
pub struct Context {
    pub config: ArcSwap<Config>,
    pub engine: ArcSwap<Engine>,
    /// Masking rules compiled from the config, with the gateway's hash key.
    pub masker: ArcSwap<Masker>,
    /// Trusted OIDC issuers from the config's identities.
    pub oidc: ArcSwap<OidcVerifier>,
    pub metrics: Arc<Metrics>,
    /// The session log (disabled in unit tests and benchmarks that say so).
    pub audit: Recorder,
    /// The approval workflow (set once at start; unset means reviews are refused).
    pub approvals: std::sync::OnceLock<Arc<Approvals>>,
    /// Bytes all sessions may buffer for messages they have not received whole.
    pub buffers: Arc<Budget>,
    /// The io_uring driver, when the daemon runs that engine (set once at start; unset means
    /// epoll).
    pub uring: std::sync::OnceLock<Arc<crate::relay::uring::Driver>>,
    mask_key: Vec<u8>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("targets", &self.config.load().targets.len())
            .field("audit", &self.audit.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for a validated configuration, with the audit log off and a random masking
    /// key (tests, benchmarks). The daemon uses [`Context::with_parts`].
    pub fn new(config: Config, engine: Engine) -> anyhow::Result<Self> {
        let key = crate::secrets::random(32).context("no randomness for the masking key")?;
        Self::with_parts(
            config,
            engine,
            Recorder::disabled(),
            Arc::new(Metrics::new()),
            key,
        )
    }

    /// A context with an open audit log, shared metrics and the persistent masking key.
    pub fn with_parts(
        config: Config,
        engine: Engine,
        audit: Recorder,
        metrics: Arc<Metrics>,
        mask_key: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let masker = Masker::new(&config.masking, &mask_key).context("masking rules")?;
        let oidc = OidcVerifier::new(&config.identities).context("OIDC identities")?;
        Ok(Context {
            config: ArcSwap::from_pointee(config),
            engine: ArcSwap::from_pointee(engine),
            masker: ArcSwap::from_pointee(masker),
            oidc: ArcSwap::from_pointee(oidc),
            metrics,
            audit,
            approvals: std::sync::OnceLock::new(),
            buffers: Arc::new(Budget::new(DEFAULT_BUFFER_BUDGET)),
            uring: std::sync::OnceLock::new(),
            mask_key,
            next_session: AtomicU64::new(1),
        })
    }

    /// Swaps in a new configuration whose engine is already built; everything derived from
    /// the config is rebuilt first, so a failure leaves the old state whole.
    pub fn replace(&self, config: Config, engine: Engine) -> anyhow::Result<()> {
        let masker = Masker::new(&config.masking, &self.mask_key).context("masking rules")?;
        let oidc = OidcVerifier::new(&config.identities).context("OIDC identities")?;
        self.masker.store(Arc::new(masker));
        self.oidc.store(Arc::new(oidc));
        self.engine.store(Arc::new(engine));
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// A fresh session id, unique for this daemon run.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// The default [`Context::buffers`] budget: 256 MiB across every session.
pub const DEFAULT_BUFFER_BUDGET: usize = 256 << 20;

/// A daemon-wide budget for the bytes sessions buffer for messages they have not received
/// whole yet, so that many clients each declaring a large message cannot together exhaust the
/// gateway's memory. Sessions take a [`Lease`] for a message before reserving room for it and
/// drop it once the message is handled.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes leased now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget's size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Leases `bytes`, or `None` when that would exceed the budget.
    pub fn lease(self: &Arc<Self>, bytes: usize) -> Option<Lease> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes).filter(|n| *n <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Lease {
                        budget: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Lease {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The masking hash key (`<state_dir>/mask.key`, 32 bytes, created on first start). It must
/// survive restarts so masked values keep joining.
pub fn load_mask_key(state_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = state_dir.join("mask.key");
    let key = crate::secrets::read_or_create(&path, || crate::secrets::random(32))
        .with_context(|| format!("reading {}", path.display()))?;
    if key.len() < 32 {
        anyhow::bail!("{}: key shorter than 32 bytes", path.display());
    }
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn budget_leases_and_returns() {
        let b = Arc::new(Budget::new(100));
        let a = b.lease(60).unwrap();
        assert!(b.lease(41).is_none());
        let c = b.lease(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert_eq!(c.bytes(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.lease(usize::MAX).is_none());
    }
}
