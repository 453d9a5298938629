//! How long a session may trust what it looked up in the server's catalog (which relations
//! are views, what a view reads, a table column's name). A session caches its lookups, but
//! another session can redefine a view or rename a column meanwhile. So every statement
//! through the gateway that may change the catalog, in any session, counts: a cache from before
//! the count starts over ([`catalog_changed`], called before such a statement is sent and
//! again after its answer). A change made outside the gateway is seen after [`LOOKUP_TTL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a session trusts a lookup: a view redefined outside the gateway is judged by its
/// new definition after this at the latest.
pub const LOOKUP_TTL: Duration = Duration::from_secs(10);

/// Statements through the gateway that may have changed the catalog, in any session.
static CATALOG_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A statement that may create, change or drop relations is on its way to a server, or was
/// just answered: every session's catalog lookups start over.
pub fn catalog_changed() {
    CATALOG_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// The age of one session's catalog cache.
#[derive(Debug, Default, Clone)]
pub struct Freshness {
    /// [`CATALOG_EPOCH`] when the cache last started over.
    epoch: u64,
    /// When the oldest lookup still cached was made.
    since: Option<Instant>,
}

impl Freshness {
    /// Something was looked up (the first lookup since the cache started over dates it).
    pub fn loaded(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// The cache started over.
    pub fn reset(&mut self) {
        self.since = None;
    }

    /// Whether what was cached may be stale: a catalog change went through the gateway since
    /// the cache started over, or its oldest lookup is [`LOOKUP_TTL`] old. When so, the caller
    /// starts the cache over, and this counts from now.
    pub fn expired(&mut self) -> bool {
        let epoch = CATALOG_EPOCH.load(Ordering::Acquire);
        if epoch != self.epoch || self.since.is_some_and(|t| t.elapsed() >= LOOKUP_TTL) {
            self.epoch = epoch;
            self.since = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_through_the_gateway_expires_every_cache() {
        let mut f = Freshness::default();
        f.expired();
        f.loaded();
        assert!(f.since.is_some());
        let mut other = f.clone();
        catalog_changed();
        assert!(f.expired());
        assert!(other.expired());
    }
}
