//! A bounded cache of classification results keyed by statement text, or by its shape.
//!
//! A PostgreSQL statement the normaliser accepts is looked up by its shape (literals replaced
//! by placeholders, see [`super::normalize`]), so `… WHERE aid = 1` and `… WHERE aid = 2` share
//! one entry. A shape entry is only made when the parser saw exactly the normaliser's literals,
//! at the same places and with the same values, as literal values, and the classification did
//! not look at any of them; otherwise the statement is cached under its exact text, as is
//! everything the normaliser does not accept. Keys are compared in full, never by hash alone,
//! and shape and exact keys live in separate key spaces.
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

use super::classify::{Limits, classify_with_literals};
use super::normalize::normalize;
use crate::model::{Dialect, Facts};

const SHARDS: usize = 16;

/// Texts longer than this are classified every time rather than kept (bounds the cache's
/// memory at about `capacity × MAX_KEY_BYTES`).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// Whether a key is a statement's exact text or its literal-normalised shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyKind {
    Exact,
    Shape,
}

type Key = (Dialect, KeyKind, Box<str>);
type Map = HashMap<Key, Arc<Facts>>;

thread_local! {
    /// The shape of the statement being looked up, reused across calls on this thread.
    static SHAPE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

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

    /// Returns the classification of `text` as [`classify`](super::classify::classify) would
    /// give it, from the cache when the text or its shape is there.
    pub fn classify(&self, dialect: Dialect, text: &str, limits: &Limits) -> Arc<Facts> {
        if text.len() > MAX_KEY_BYTES {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(classify_with_literals(text, dialect, limits, false).0);
        }
        SHAPE.with(|shape| match shape.try_borrow_mut() {
            Ok(mut shape) => self.classify_with(dialect, text, limits, &mut shape),
            // Not reentrant in practice; a fresh buffer keeps it correct if it ever is.
            Err(_) => self.classify_with(dialect, text, limits, &mut String::new()),
        })
    }

    fn classify_with(
        &self,
        dialect: Dialect,
        text: &str,
        limits: &Limits,
        shape: &mut String,
    ) -> Arc<Facts> {
        // Only PostgreSQL's lexical rules are implemented (MySQL has `#` comments, backslash
        // escapes and double-quoted strings). The length check keeps the pre-parse size limit
        // exact: every text sharing a shape entry is under it.
        let shaped = dialect == Dialect::Postgres
            && text.len() <= limits.max_bytes
            && normalize(text, shape, None).is_some_and(|n| n > 0);
        if shaped && let Some(hit) = self.lookup(dialect, KeyKind::Shape, shape) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        if let Some(hit) = self.lookup(dialect, KeyKind::Exact, text) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (class, parsed) = classify_with_literals(text, dialect, limits, shaped);
        let value = Arc::new(class);
        let shareable = shaped
            && parsed.is_some_and(|mut parsed| {
                let mut seen = Vec::new();
                let mut scratch = String::new();
                normalize(text, &mut scratch, Some(&mut seen));
                parsed.sort_unstable();
                seen.sort_unstable();
                parsed == seen
            });
        let key: Key = if shareable {
            (dialect, KeyKind::Shape, shape.as_str().into())
        } else {
            (dialect, KeyKind::Exact, text.into())
        };
        self.insert(key, Arc::clone(&value));
        value
    }

    /// Returns the cached classification of `text` (exact text only), computing it with `f`
    /// on a miss.
    pub fn get_or_insert_with(
        &self,
        dialect: Dialect,
        text: &str,
        f: impl FnOnce() -> Facts,
    ) -> Arc<Facts> {
        if text.len() > MAX_KEY_BYTES {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(f());
        }
        // Probe with the borrowed text; an owned key is built only on a miss.
        if let Some(hit) = self.lookup(dialect, KeyKind::Exact, text) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(f());
        self.insert((dialect, KeyKind::Exact, text.into()), Arc::clone(&value));
        value
    }

    fn insert(&self, key: Key, value: Arc<Facts>) {
        let mut shard = self.shard(&key.2);
        if shard.hot.len() >= self.per_generation {
            shard.cold = std::mem::take(&mut shard.hot);
        }
        shard.hot.insert(key, value);
    }

    fn lookup(&self, dialect: Dialect, kind: KeyKind, text: &str) -> Option<Arc<Facts>> {
        let mut shard = self.shard(text);
        let probe = Probe(dialect, kind, text);
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

/// Lets a `(Dialect, KeyKind, Box<str>)` map be probed with a borrowed `(Dialect, KeyKind,
/// &str)` without allocating a key on every lookup.
trait KeyView {
    fn key(&self) -> (Dialect, KeyKind, &str);
}

impl KeyView for Key {
    fn key(&self) -> (Dialect, KeyKind, &str) {
        (self.0, self.1, &self.2)
    }
}

struct Probe<'a>(Dialect, KeyKind, &'a str);

impl KeyView for Probe<'_> {
    fn key(&self) -> (Dialect, KeyKind, &str) {
        (self.0, self.1, self.2)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for Key {
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
        // Must hash exactly like the tuple `(Dialect, KeyKind, Box<str>)` does.
        let (d, k, s) = self.key();
        d.hash(state);
        k.hash(state);
        s.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Class;
    use crate::policy::sql::classify::{Limits, classify};

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
                Facts::default()
            });
        }
        assert_eq!(calls, 2);
    }

    #[test]
    fn bounded_and_keeps_recent_entries() {
        let cache = ClassCache::new(64);
        for i in 0..10_000 {
            let text = format!("SELECT {i}");
            cache.get_or_insert_with(Dialect::Postgres, &text, Facts::default);
            // Touch a hot statement often: it must survive the churn.
            cache.get_or_insert_with(Dialect::Postgres, "SELECT hot", Facts::default);
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
        cache.get_or_insert_with(Dialect::Postgres, &text, Facts::default);
        assert_eq!(cache.stats().entries, 0);
    }

    fn fresh(cache: &ClassCache, sql: &str) -> Arc<Facts> {
        cache.classify(Dialect::Postgres, sql, &Limits::default())
    }

    /// Classifies `first` (filling the cache), then `second`, and returns whether `second`
    /// was a hit; either way its cached classification must equal a fresh one.
    fn second_hits(first: &str, second: &str) -> bool {
        let cache = ClassCache::new(64);
        let l = Limits::default();
        fresh(&cache, first);
        let before = cache.stats().hits;
        let got = fresh(&cache, second);
        assert_eq!(*got, classify(second, Dialect::Postgres, &l), "{second}");
        cache.stats().hits > before
    }

    #[test]
    fn statements_differing_only_in_literals_share_an_entry() {
        let cache = ClassCache::new(64);
        let l = Limits::default();
        let mut first = None;
        for aid in [1, 48213, 99999, 7] {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            let got = fresh(&cache, &sql);
            assert_eq!(*got, classify(&sql, Dialect::Postgres, &l));
            let first = first.get_or_insert_with(|| Arc::clone(&got));
            assert!(Arc::ptr_eq(first, &got));
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (3, 1, 1));
        assert!(second_hits(
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;",
            "UPDATE pgbench_accounts SET abalance = abalance + -99 WHERE aid = 88;"
        ));
        assert!(second_hits(
            "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
            "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (9, 8, 7, -6, CURRENT_TIMESTAMP);"
        ));
        assert!(second_hits(
            "SELECT * FROM users WHERE name = 'bob' AND score > 1.5",
            "SELECT * FROM users WHERE name = 'it''s; DROP TABLE users' AND score > 2.25"
        ));
    }

    #[test]
    fn different_structure_never_hits() {
        for (a, b) in [
            ("SELECT 1", "SELECT 1; DROP TABLE x"),
            ("SELECT 'a'", "SELECT 'a' ; DROP TABLE x; --'"),
            ("SELECT 1 FROM t1", "SELECT 1 FROM t2"),
            ("SELECT \"x 1\" FROM t", "SELECT \"x 2\" FROM t"),
            ("SELECT $1 FROM t", "SELECT $2 FROM t"),
            ("SELECT 1::int", "SELECT 1::text"),
            ("SELECT 1", "SELECT '1'"),
            ("SELECT 1", "SELECT 1.0"),
        ] {
            assert!(!second_hits(a, b), "{b} must not share {a}'s entry");
        }
    }

    #[test]
    fn literal_dependent_classifications_are_not_shared() {
        let l = Limits::default();
        // The setting name decides session vs admin.
        assert!(!second_hits(
            "SELECT set_config('search_path', 'public', false)",
            "SELECT set_config('role', 'postgres', false)"
        ));
        assert_eq!(
            classify(
                "SELECT set_config('role', 'postgres', false)",
                Dialect::Postgres,
                &l
            )
            .class,
            Class::Admin
        );
        // Option values decide whether EXPLAIN runs the statement.
        assert!(!second_hits(
            "EXPLAIN (ANALYZE 0) DELETE FROM t WHERE id = 1",
            "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1"
        ));
        assert!(!second_hits(
            "EXPLAIN (ANALYZE 'off') DELETE FROM t",
            "EXPLAIN (ANALYZE 'on') DELETE FROM t"
        ));
        // sqlparser takes a string where a name goes as that name: never shared.
        assert!(!second_hits(
            "SELECT * FROM 'public_t'",
            "SELECT * FROM 'secret'"
        ));
        assert!(!second_hits("SET 'search_path' = 'x'", "SET 'role' = 'x'"));
        // A search path's value decides whether built-ins can be shadowed.
        assert!(!second_hits(
            "SET search_path TO 'public'",
            "SET search_path TO 'public, pg_catalog'"
        ));
        assert!(!second_hits("DROP TABLE a, 'b'", "DROP TABLE a, 'secret'"));
        // The parser does not keep a varchar length as a literal value.
        assert!(!second_hits(
            "CREATE TABLE t (a varchar(10))",
            "CREATE TABLE t (a varchar(20))"
        ));
    }

    #[test]
    fn unshaped_texts_still_cache_by_exact_text() {
        let cache = ClassCache::new(64);
        for _ in 0..2 {
            fresh(&cache, "SELECT $$x$$");
            cache.classify(Dialect::Mysql, "SELECT 1", &Limits::default());
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (2, 2));
        // MySQL is never shaped (its strings and comments lex differently).
        cache.classify(Dialect::Mysql, "SELECT 2", &Limits::default());
        assert_eq!(cache.stats().misses, 3);
    }

    #[test]
    fn shape_and_exact_keys_do_not_collide() {
        // A text containing a placeholder byte is cached by exact text; it must not answer
        // for the statement whose shape it spells.
        let cache = ClassCache::new(64);
        let forged = format!("SELECT {}", crate::policy::sql::normalize::INTEGER);
        let f = fresh(&cache, &forged);
        assert_eq!(f.class, Class::Unknown);
        let real = fresh(&cache, "SELECT 1");
        assert_eq!(real.class, Class::Read);
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn size_limit_is_exact_for_shared_shapes() {
        let cache = ClassCache::new(64);
        let l = Limits {
            max_bytes: 40,
            ..Limits::default()
        };
        let short = "SELECT a FROM t WHERE b = 'x'";
        let long = "SELECT a FROM t WHERE b = 'xxxxxxxxxxxxxxxxxxxxxx'";
        assert_eq!(
            cache.classify(Dialect::Postgres, short, &l).class,
            Class::Read
        );
        let got = cache.classify(Dialect::Postgres, long, &l);
        assert_eq!(got.kinds, ["too_long"]);
    }
}
