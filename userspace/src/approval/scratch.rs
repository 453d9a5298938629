//! An approval service for unit tests: SQLite in a temporary directory, removed on drop.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use super::sqlite::SqliteStore;
use super::{Approvals, Notifier};
use crate::metrics::Metrics;

/// An approval service over a SQLite store in a temporary directory (removed on drop).
pub struct Service(pub Arc<Approvals>, PathBuf);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A fresh service; `tag` names its directory (unique per test in one process).
pub fn service(tag: &str) -> Service {
    let dir = std::env::temp_dir().join(format!("airlock-approvals-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir.join("approvals.db")).unwrap();
    let svc = Approvals::with_store(
        Arc::new(store),
        Notifier::new(&[]).unwrap(),
        Arc::new(Metrics::new()),
        "test".into(),
        "t".repeat(40),
    );
    Service(svc, dir)
}
