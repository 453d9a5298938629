//! The embedded store: one SQLite file (WAL), one connection behind a mutex, operations on
//! the blocking pool. Requests are JSON documents with the columns lookups need beside them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::ApprovalError;
use super::model::{ApprovalRequest, State, Transition};
use super::store::{Change, Store, StoreEvent, StoreFuture};

/// Approval requests in a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    events: broadcast::Sender<StoreEvent>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    subject TEXT NOT NULL,
    target TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_requests_grant ON approval_requests (subject, target, state);
CREATE INDEX IF NOT EXISTS approval_requests_state ON approval_requests (state, created_ms);
";

fn db(e: rusqlite::Error) -> ApprovalError {
    ApprovalError::Store(format!("sqlite: {e}"))
}

fn decode(body: &str) -> Result<ApprovalRequest, ApprovalError> {
    serde_json::from_str(body).map_err(|e| ApprovalError::Store(format!("corrupt request: {e}")))
}

fn encode(req: &ApprovalRequest) -> Result<String, ApprovalError> {
    serde_json::to_string(req).map_err(|e| ApprovalError::Store(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating when absent) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, ApprovalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ApprovalError::Store(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        // Checkpoints (and their fsync) run on a thread of their own, never inside a decision's
        // transaction.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let (events, _) = broadcast::channel(1024);
        let conn = Arc::new(Mutex::new(conn));
        spawn_checkpointer(path, Arc::downgrade(&conn))?;
        Ok(Self { conn, events })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, ApprovalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, ApprovalError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| ApprovalError::Store("sqlite connection poisoned".into()))?;
            f(&mut c)
        })
        .await
        .map_err(|e| ApprovalError::Store(e.to_string()))?
    }
}

/// Passive WAL checkpoints once a second from a second connection (they never block writers),
/// until the store is dropped.
fn spawn_checkpointer(
    path: &Path,
    alive: std::sync::Weak<Mutex<Connection>>,
) -> Result<(), ApprovalError> {
    let conn = Connection::open(path).map_err(db)?;
    std::thread::Builder::new()
        .name("airlock-sqlite-checkpoint".into())
        .spawn(move || {
            while alive.strong_count() > 0 {
                std::thread::sleep(std::time::Duration::from_secs(1));
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "approval store checkpoint failed");
                }
            }
        })
        .map_err(|e| ApprovalError::Store(format!("checkpoint thread: {e}")))?;
    Ok(())
}

fn query_list(
    c: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<ApprovalRequest>, ApprovalError> {
    let mut stmt = c.prepare_cached(sql).map_err(db)?;
    let rows = stmt.query_map(p, |r| r.get::<_, String>(0)).map_err(db)?;
    let mut out = Vec::new();
    for body in rows {
        out.push(decode(&body.map_err(db)?)?);
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn insert<'a>(&'a self, req: &'a ApprovalRequest) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let body = encode(req)?;
            let (id, state, subject, target, created) = (
                req.id.clone(),
                req.state.as_str(),
                req.subject.clone(),
                req.target.clone(),
                req.created_ms as i64,
            );
            self.with(move |c| {
                c.execute(
                    "INSERT INTO approval_requests (id, state, subject, target, created_ms, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, state, subject, target, created, body],
                )
                .map_err(db)?;
                Ok(())
            })
            .await?;
            let _ = self.events.send(StoreEvent::Changed(req.id.clone()));
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApprovalRequest>> {
        let id = id.to_owned();
        Box::pin(self.with(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM approval_requests WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            body.as_deref().map(decode).transpose()
        }))
    }

    fn list(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        Box::pin(self.with(move |c| {
            if pending_only {
                query_list(
                    c,
                    "SELECT body FROM approval_requests WHERE state = 'pending' \
                     ORDER BY created_ms DESC LIMIT ?1",
                    &[&limit],
                )
            } else {
                query_list(
                    c,
                    "SELECT body FROM approval_requests ORDER BY created_ms DESC LIMIT ?1",
                    &[&limit],
                )
            }
        }))
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        change: Change<'a>,
    ) -> StoreFuture<'a, (ApprovalRequest, Option<Transition>)> {
        Box::pin(async move {
            // The change runs under the connection lock, on this task: it is pure and quick.
            let result = {
                let mut c = self
                    .conn
                    .lock()
                    .map_err(|_| ApprovalError::Store("sqlite connection poisoned".into()))?;
                let tx = c.transaction().map_err(db)?;
                let body: Option<String> = tx
                    .query_row(
                        "SELECT body FROM approval_requests WHERE id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db)?;
                let Some(body) = body else {
                    return Err(ApprovalError::NotFound(id.to_owned()));
                };
                let mut req = decode(&body)?;
                let t = change(&mut req)?;
                if t.is_some() {
                    tx.execute(
                        "UPDATE approval_requests SET state = ?2, body = ?3 WHERE id = ?1",
                        params![id, req.state.as_str(), encode(&req)?],
                    )
                    .map_err(db)?;
                    tx.commit().map_err(db)?;
                }
                (req, t)
            };
            if result.1.is_some() {
                let _ = self.events.send(StoreEvent::Changed(id.to_owned()));
            }
            Ok(result)
        })
    }

    fn grants<'a>(
        &'a self,
        subject: &'a str,
        target: &'a str,
    ) -> StoreFuture<'a, Vec<ApprovalRequest>> {
        let (subject, target) = (subject.to_owned(), target.to_owned());
        Box::pin(self.with(move |c| {
            query_list(
                c,
                "SELECT body FROM approval_requests WHERE subject = ?1 AND target = ?2 \
                 AND state = 'approved' ORDER BY created_ms",
                &[&subject, &target],
            )
        }))
    }

    fn count_pending(&self) -> StoreFuture<'_, i64> {
        Box::pin(self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM approval_requests WHERE state = ?1",
                [State::Pending.as_str()],
                |r| r.get(0),
            )
            .map_err(db)
        }))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn is_up(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::approval::model::{Principal, Ruling};

    fn who(s: &str) -> Principal {
        Principal {
            subject: s.into(),
            groups: vec!["dba".into()],
            admin: false,
            via: "oidc:x".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_votes_all_count_and_changes_are_announced() {
        let dir = std::env::temp_dir().join(format!("airlock-sqlite-{}", std::process::id()));
        let store = Arc::new(SqliteStore::open(&dir.join("a.db")).unwrap());
        let mut events = store.subscribe();
        let mut req = crate::approval::model::tests::sample();
        req.escalate_to.clear();
        req.deadline_ms = u64::MAX;
        store.insert(&req).await.unwrap();
        assert_eq!(
            events.recv().await.unwrap(),
            StoreEvent::Changed("r1".into())
        );
        let mut tasks = Vec::new();
        for name in ["alice", "bob"] {
            let s = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                s.update(
                    "r1",
                    Box::new(move |r| r.decide(&who(name), Ruling::Approve, None, 10).map(Some)),
                )
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = store.get("r1").await.unwrap().unwrap();
        assert_eq!(r.state, State::Approved);
        assert_eq!(r.votes.len(), 2);
        assert_eq!(store.grants("unix:agent", "db").await.unwrap().len(), 1);
        assert_eq!(store.count_pending().await.unwrap(), 0);
        assert!(matches!(
            store.update("nope", Box::new(|_| Ok(None))).await,
            Err(ApprovalError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
