//! A bounded cache of classification results keyed by statement text.
//!
//! Sharded by the text's hash; each shard keeps two generations (a "hot" map new entries go
//! to and a "cold" map from the previous generation). When the hot map fills up, the cold one
//! is dropped and the hot one becomes cold; a hit in the cold map moves the entry back. That is
//! an LRU approximation with O(1) operations and no linked lists, and it bounds each shard at
//! two generations. Critical sections are a hash-map lookup and an `Arc` clone; classification
//! itself runs outside the lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::classify::{Classification, Dialect};

const SHARDS: usize = 16;

/// Texts longer than this are classified every time rather than kept (bounds the cache's
/// memory at about `capacity × MAX_KEY_BYTES`).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

type Map = HashMap<(Dialect, Box<str>), Arc<Classification>>;

#[derive(Default)]
struct Shard {
    hot: Map,
    cold: Map,
}

/// Cache statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// The classification cache. Shared between engine generations (a reload keeps it: the
/// classification of a text does not depend on the rules).
pub struct ClassCache {
    shards: Box<[Mutex<Shard>]>,
    per_generation: usize,
    hasher: RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ClassCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassCache")
            .field("capacity", &(self.per_generation * SHARDS * 2))
            .finish()
    }
}

impl ClassCache {
    /// A cache holding at most about `capacity` entries (rounded up to the shard count).
    pub fn new(capacity: usize) -> Self {
        let per_generation = capacity.div_ceil(2 * SHARDS).max(1);
        ClassCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_generation,
            hasher: RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.per_generation * SHARDS * 2
    }

    fn shard(&self, text: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(text) as usize) % SHARDS;
        // A poisoned lock only means another thread panicked mid-insert; the maps are still
        // valid maps, and a wrong entry is impossible (values are immutable once built).
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the cached classification of `text`, computing it with `f` on a miss.
    pub fn get_or_insert_with(
        &self,
        dialect: Dialect,
        text: &str,
        f: impl FnOnce() -> Classification,
    ) -> Arc<Classification> {
        if text.len() > MAX_KEY_BYTES {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(f());
        }
        // Probe with the borrowed text; an owned key is built only on a miss.
        if let Some(hit) = self.lookup(dialect, text) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(f());
        let key: (Dialect, Box<str>) = (dialect, text.into());
        let mut shard = self.shard(text);
        if shard.hot.len() >= self.per_generation {
            shard.cold = std::mem::take(&mut shard.hot);
        }
        shard.hot.insert(key, Arc::clone(&value));
        value
    }

    fn lookup(&self, dialect: Dialect, text: &str) -> Option<Arc<Classification>> {
        let mut shard = self.shard(text);
        let probe = Probe(dialect, text);
        if let Some(v) = shard.hot.get(&probe as &dyn KeyView) {
            return Some(Arc::clone(v));
        }
        let (k, v) = shard.cold.remove_entry(&probe as &dyn KeyView)?;
        if shard.hot.len() >= self.per_generation {
            shard.cold = std::mem::take(&mut shard.hot);
        }
        shard.hot.insert(k, Arc::clone(&v));
        Some(v)
    }

    /// Hits, misses and current entries.
    pub fn stats(&self) -> CacheStats {
        let entries = self
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.hot.len() + s.cold.len()
            })
            .sum();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }
}

/// Lets a `(Dialect, Box<str>)` map be probed with a borrowed `(Dialect, &str)` without
/// allocating a key on every lookup.
trait KeyView {
    fn key(&self) -> (Dialect, &str);
}

impl KeyView for (Dialect, Box<str>) {
    fn key(&self) -> (Dialect, &str) {
        (self.0, &self.1)
    }
}

struct Probe<'a>(Dialect, &'a str);

impl KeyView for Probe<'_> {
    fn key(&self) -> (Dialect, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for (Dialect, Box<str>) {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn KeyView + '_ {}

impl std::hash::Hash for dyn KeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly like the tuple `(Dialect, Box<str>)` does.
        let (d, s) = self.key();
        d.hash(state);
        s.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::{Class, Limits, classify};

    #[test]
    fn hit_after_miss_and_same_arc() {
        let cache = ClassCache::new(64);
        let l = Limits::default();
        let a = cache.get_or_insert_with(Dialect::Postgres, "SELECT 1", || {
            classify("SELECT 1", Dialect::Postgres, &l)
        });
        let b = cache.get_or_insert_with(Dialect::Postgres, "SELECT 1", || panic!("must be a hit"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.class, Class::Read);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    }

    #[test]
    fn dialect_is_part_of_the_key() {
        let cache = ClassCache::new(64);
        let mut calls = 0;
        for d in [Dialect::Postgres, Dialect::Mysql] {
            cache.get_or_insert_with(d, "SELECT 1", || {
                calls += 1;
                Classification::default()
            });
        }
        assert_eq!(calls, 2);
    }

    #[test]
    fn bounded_and_keeps_recent_entries() {
        let cache = ClassCache::new(64);
        for i in 0..10_000 {
            let text = format!("SELECT {i}");
            cache.get_or_insert_with(Dialect::Postgres, &text, Classification::default);
            // Touch a hot statement often: it must survive the churn.
            cache.get_or_insert_with(Dialect::Postgres, "SELECT hot", Classification::default);
        }
        let s = cache.stats();
        assert!(s.entries <= cache.capacity(), "{s:?}");
        let before = cache.stats().misses;
        cache.get_or_insert_with(Dialect::Postgres, "SELECT hot", || panic!("evicted"));
        assert_eq!(cache.stats().misses, before);
    }

    #[test]
    fn long_texts_are_not_kept() {
        let cache = ClassCache::new(64);
        let text = "x".repeat(MAX_KEY_BYTES + 1);
        cache.get_or_insert_with(Dialect::Postgres, &text, Classification::default);
        assert_eq!(cache.stats().entries, 0);
    }
}
