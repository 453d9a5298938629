//! The fleet store: one PostgreSQL database shared by every instance. Changes are made in a
//! transaction with `SELECT … FOR UPDATE`, and announced with `pg_notify` in the same
//! transaction; each instance keeps a second connection LISTENing, so an approval given
//! through one instance releases a command held on another as soon as the commit lands.
//!
//! When either connection fails, watchers hear [`StoreEvent::Down`] (held commands are
//! refused) and the store reconnects in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, broadcast};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::ApprovalError;
use super::model::{ApprovalRequest, State, Transition};
use super::store::{Change, Store, StoreEvent, StoreFuture};

/// The NOTIFY channel.
const CHANNEL: &str = "airlock_approvals";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS airlock_approval_requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    subject TEXT NOT NULL,
    target TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS airlock_approval_requests_grant
    ON airlock_approval_requests (subject, target, state);
CREATE INDEX IF NOT EXISTS airlock_approval_requests_state
    ON airlock_approval_requests (state, created_ms);
";

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Approval requests in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    url: Arc<str>,
    client: Arc<Mutex<Option<Client>>>,
    events: broadcast::Sender<StoreEvent>,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> ApprovalError {
    ApprovalError::Store(format!("postgres: {e}"))
}

fn decode(body: &str) -> Result<ApprovalRequest, ApprovalError> {
    serde_json::from_str(body).map_err(|e| ApprovalError::Store(format!("corrupt request: {e}")))
}

fn encode(req: &ApprovalRequest) -> Result<String, ApprovalError> {
    serde_json::to_string(req).map_err(|e| ApprovalError::Store(e.to_string()))
}

async fn connect(
    url: &str,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    ApprovalError,
> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls)).await {
        Ok(r) => r.map_err(db),
        Err(_) => Err(ApprovalError::Store("postgres: connect timed out".into())),
    }
}

impl PostgresStore {
    /// Connects, creates the schema when absent, and starts listening for changes.
    pub async fn open(url: &str) -> Result<Self, ApprovalError> {
        let (events, _) = broadcast::channel(1024);
        let store = Self {
            url: Arc::from(url),
            client: Arc::new(Mutex::new(None)),
            events,
            up: Arc::new(AtomicBool::new(false)),
        };
        {
            let mut guard = store.client.lock().await;
            let client = store.reconnect(&mut guard).await?;
            client.batch_execute(SCHEMA).await.map_err(db)?;
        }
        store.start_listener().await?;
        Ok(store)
    }

    /// A working query connection, connecting when there is none.
    async fn reconnect<'g>(
        &self,
        guard: &'g mut Option<Client>,
    ) -> Result<&'g mut Client, ApprovalError> {
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let (client, conn) = connect(&self.url).await?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::warn!(%error, "approval store connection ended");
                }
            });
            *guard = Some(client);
        }
        guard
            .as_mut()
            .ok_or_else(|| ApprovalError::Store("postgres: no connection".into()))
    }

    /// The query connection (connecting when there is none); a failure marks the store down.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, ApprovalError> {
        let mut guard = self.client.lock().await;
        if let Err(e) = self.reconnect(&mut guard).await {
            self.mark_down(&e.to_string());
            return Err(e);
        }
        Ok(guard)
    }

    /// After an operation: a failure on a closed connection marks the store down and drops
    /// the connection, so the next call reconnects.
    fn check<T>(
        &self,
        guard: &mut Option<Client>,
        r: Result<T, ApprovalError>,
    ) -> Result<T, ApprovalError> {
        if let Err(ApprovalError::Store(msg)) = &r
            && guard.as_ref().is_none_or(Client::is_closed)
        {
            *guard = None;
            self.mark_down(msg);
        }
        r
    }

    /// Runs `op` on the query connection (connecting when there is none), then [`check`]s
    /// the outcome.
    ///
    /// [`check`]: Self::check
    async fn with_client<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, ApprovalError>,
    ) -> Result<T, ApprovalError> {
        let mut guard = self.conn().await?;
        let r = match guard.as_mut() {
            Some(c) => op(c).await,
            None => Err(ApprovalError::Store("postgres: no connection".into())),
        };
        self.check(&mut guard, r)
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(error = why, "approval store unavailable");
        }
        let _ = self.events.send(StoreEvent::Down(why.to_owned()));
    }

    /// Opens the LISTEN connection and relays its notifications; when it fails, marks the
    /// store down and keeps trying to come back.
    fn start_listener(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApprovalError>> + Send>>
    {
        let me = self.clone();
        Box::pin(async move { me.listen().await })
    }

    async fn listen(&self) -> Result<(), ApprovalError> {
        let (client, mut conn) = connect(&self.url).await?;
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<String>();
        let events = self.events.clone();
        tokio::spawn(async move {
            let why = loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let _ = events.send(StoreEvent::Changed(n.payload().to_owned()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection closed".to_owned(),
                }
            };
            let _ = end_tx.send(why);
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db)?;
        self.up.store(true, Ordering::Release);
        let me = self.clone();
        tokio::spawn(async move {
            let why = end_rx.await.unwrap_or_else(|_| "listener ended".to_owned());
            drop(client);
            me.mark_down(&format!("postgres: notification connection lost: {why}"));
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if me.start_listener().await.is_ok() {
                    tracing::info!("approval store reachable again");
                    return;
                }
            }
        });
        Ok(())
    }
}

fn notify_sql() -> String {
    format!("SELECT pg_notify('{CHANNEL}', $1)")
}

fn rows_to_requests(rows: &[tokio_postgres::Row]) -> Result<Vec<ApprovalRequest>, ApprovalError> {
    rows.iter().map(|r| decode(r.get::<_, &str>(0))).collect()
}

impl Store for PostgresStore {
    fn insert<'a>(&'a self, req: &'a ApprovalRequest) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let body = encode(req)?;
            self.with_client(async |c| {
                let tx = c.transaction().await.map_err(db)?;
                tx.execute(
                    "INSERT INTO airlock_approval_requests \
                     (id, state, subject, target, created_ms, body) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &req.id,
                        &req.state.as_str(),
                        &req.subject,
                        &req.target,
                        &(req.created_ms as i64),
                        &body,
                    ],
                )
                .await
                .map_err(db)?;
                tx.execute(&notify_sql(), &[&req.id]).await.map_err(db)?;
                tx.commit().await.map_err(db)
            })
            .await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApprovalRequest>> {
        Box::pin(async move {
            self.with_client(async |c| {
                let row = c
                    .query_opt(
                        "SELECT body FROM airlock_approval_requests WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(db)?;
                row.map(|r| decode(r.get::<_, &str>(0))).transpose()
            })
            .await
        })
    }

    fn list(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRequest>> {
        Box::pin(async move {
            self.with_client(async |c| {
                let limit = i64::from(limit);
                let rows = if pending_only {
                    c.query(
                        "SELECT body FROM airlock_approval_requests WHERE state = 'pending' \
                         ORDER BY created_ms DESC LIMIT $1",
                        &[&limit],
                    )
                    .await
                } else {
                    c.query(
                        "SELECT body FROM airlock_approval_requests ORDER BY created_ms DESC LIMIT $1",
                        &[&limit],
                    )
                    .await
                }
                .map_err(db)?;
                rows_to_requests(&rows)
            })
            .await
        })
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        change: Change<'a>,
    ) -> StoreFuture<'a, (ApprovalRequest, Option<Transition>)> {
        Box::pin(async move {
            self.with_client(async |c| {
                let tx = c.transaction().await.map_err(db)?;
                let row = tx
                    .query_opt(
                        "SELECT body FROM airlock_approval_requests WHERE id = $1 FOR UPDATE",
                        &[&id],
                    )
                    .await
                    .map_err(db)?;
                let Some(row) = row else {
                    return Err(ApprovalError::NotFound(id.to_owned()));
                };
                let mut req = decode(row.get::<_, &str>(0))?;
                let t = change(&mut req)?;
                if t.is_some() {
                    tx.execute(
                        "UPDATE airlock_approval_requests SET state = $2, body = $3 WHERE id = $1",
                        &[&id, &req.state.as_str(), &encode(&req)?],
                    )
                    .await
                    .map_err(db)?;
                    tx.execute(&notify_sql(), &[&id]).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                }
                Ok((req, t))
            })
            .await
        })
    }

    fn grants<'a>(
        &'a self,
        subject: &'a str,
        target: &'a str,
    ) -> StoreFuture<'a, Vec<ApprovalRequest>> {
        Box::pin(async move {
            self.with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT body FROM airlock_approval_requests WHERE subject = $1 \
                         AND target = $2 AND state = 'approved' ORDER BY created_ms",
                        &[&subject, &target],
                    )
                    .await
                    .map_err(db)?;
                rows_to_requests(&rows)
            })
            .await
        })
    }

    fn count_pending(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            self.with_client(async |c| {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM airlock_approval_requests WHERE state = $1",
                        &[&State::Pending.as_str()],
                    )
                    .await
                    .map_err(db)?;
                Ok(row.get::<_, i64>(0))
            })
            .await
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}
