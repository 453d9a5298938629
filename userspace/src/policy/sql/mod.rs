//! The `sql` part of policy: what a SQL command string does (classification that fails
//! closed), with a cache keyed on the statement's shape.

pub mod cache;
pub mod classify;
pub mod lineage;
pub mod mysql;
pub mod normalize;

pub use cache::{CacheStats, ClassCache};
pub use classify::{Limits, classify};
