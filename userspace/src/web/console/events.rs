//! The live inbox: one hub per console listens to the approval store's change notifications
//! (which also carry decisions made on other instances sharing the store), reads each changed
//! request once, renders its row and encodes the event's data once, and fans the result out
//! to every connected reviewer's `GET /events` stream (server-sent events): a reviewer's
//! stream only copies the encoded text into its connection, the changes of 100 ms in one
//! write. A reviewer who falls behind gets a fresh `reset` instead of a backlog, so memory per
//! reviewer stays bounded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;

use super::views::{InboxRow, InboxRows, RowTemplate};
use crate::approval::{Approvals, StoreEvent};

/// Events a slow reviewer may fall behind by before it gets a reset instead.
const HUB_CAPACITY: usize = 256;

/// What the hub tells every reviewer: the event's name and its data, already encoded.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// `upsert` (a pending request appeared or changed: `{id, html}` with its rendered row)
    /// or `remove` (a request is no longer pending: `{id}`).
    pub name: &'static str,
    /// The event's JSON data, shared by every reviewer's stream.
    pub data: Arc<str>,
}

impl HubEvent {
    fn upsert(id: &str, html: &str) -> Self {
        let data = serde_json::json!({ "id": id, "html": html }).to_string();
        HubEvent {
            name: "upsert",
            data: data.into(),
        }
    }

    fn remove(id: &str) -> Self {
        let data = serde_json::json!({ "id": id }).to_string();
        HubEvent {
            name: "remove",
            data: data.into(),
        }
    }
}

/// The fan-out point of inbox changes.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<HubEvent>,
}

impl Hub {
    /// Starts the hub's task over `svc`'s store notifications.
    pub fn start(svc: Arc<Approvals>) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        let hub = Hub { tx: tx.clone() };
        let mut changes = svc.store().subscribe();
        let weak = Arc::downgrade(&svc);
        drop(svc);
        tokio::spawn(async move {
            loop {
                let id = match changes.recv().await {
                    Ok(StoreEvent::Changed(id)) => id,
                    Ok(StoreEvent::Down(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "console hub lagged behind the store");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(svc) = weak.upgrade() else { return };
                let event = match svc.store().get(&id).await {
                    Ok(Some(mut req)) => {
                        req.tick(crate::approval::now_ms());
                        if req.is_pending() {
                            match (RowTemplate {
                                row: &InboxRow::from(&req),
                            })
                            .render()
                            {
                                Ok(html) => HubEvent::upsert(&id, &html.replace('\r', "&#13;")),
                                Err(error) => {
                                    tracing::warn!(%error, "rendering an inbox row");
                                    continue;
                                }
                            }
                        } else {
                            HubEvent::remove(&id)
                        }
                    }
                    Ok(None) => HubEvent::remove(&id),
                    Err(error) => {
                        tracing::debug!(%error, request = %id, "console hub: store read failed");
                        continue;
                    }
                };
                // No reviewer connected is fine.
                let _ = tx.send(event);
            }
        });
        hub
    }

    /// A new reviewer's receiver (subscribe before reading the snapshot, so nothing falls
    /// between the two).
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.tx.subscribe()
    }

    /// Reviewers connected now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// The rows of every pending request, oldest first, rendered. Never empty: a browser drops an
/// event whose data is empty, and an empty inbox must still replace the rows a tab shows.
pub async fn snapshot(svc: &Approvals) -> Result<String, String> {
    let mut list = svc.list(true).await.map_err(|e| e.to_string())?;
    list.reverse();
    let rows: Vec<InboxRow> = list.iter().map(InboxRow::from).collect();
    InboxRows { rows: &rows }
        .render()
        // SSE data lines end at a carriage return: keep it as a character reference.
        .map(|html| {
            format!(
                "<!-- {} pending -->{}",
                rows.len(),
                html.replace('\r', "&#13;")
            )
        })
        .map_err(|e| e.to_string())
}

async fn reset(svc: &Approvals) -> Event {
    match snapshot(svc).await {
        Ok(html) => Event::default().event("reset").data(html),
        Err(e) => Event::default().event("failed").data(e.replace('\r', " ")),
    }
}

enum Step {
    /// Send the full list first (and again after falling behind).
    Reset,
    Next,
}

/// How long a reviewer's stream gathers changes before it writes them: each write to each
/// reviewer costs a send and a wake-up, a busy inbox changes many times a second, and a
/// change still shows well within a second.
const GATHER: Duration = Duration::from_millis(100);

/// The next event of a reviewer's stream, with the changes that arrived within [`GATHER`] of
/// it queued behind it (written together). `None`: the hub is gone.
async fn next_batch(
    rx: &mut broadcast::Receiver<HubEvent>,
    svc: &Approvals,
    queued: &mut VecDeque<Event>,
) -> Option<Event> {
    let encode = |HubEvent { name, data }: HubEvent| Event::default().event(name).data(&*data);
    let first = match rx.recv().await {
        Ok(event) => encode(event),
        Err(broadcast::error::RecvError::Lagged(_)) => {
            // Start over from the store rather than queue a backlog.
            *rx = rx.resubscribe();
            return Some(reset(svc).await);
        }
        Err(broadcast::error::RecvError::Closed) => return None,
    };
    tokio::time::sleep(GATHER).await;
    loop {
        match rx.try_recv() {
            Ok(event) => queued.push_back(encode(event)),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                queued.clear();
                *rx = rx.resubscribe();
                return Some(reset(svc).await);
            }
            // Closed: the next receive ends the stream.
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                return Some(first);
            }
        }
    }
}

/// The SSE stream of one reviewer: `reset` (the rows as HTML), then `upsert` (`{id, html}`)
/// and `remove` (`{id}`), gathered over [`GATHER`] into one write. `alive` is asked before
/// each write: once the reviewer's session has ended (logout, expiry) the stream ends instead
/// of sending more.
pub fn stream<F>(
    hub: &Hub,
    svc: Arc<Approvals>,
    alive: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<F>>
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let rx = hub.subscribe();
    let alive = Arc::new(alive);
    let s = futures_util::stream::unfold(
        (rx, svc, alive, Step::Reset, VecDeque::new()),
        |(mut rx, svc, alive, step, mut queued)| async move {
            // The rest of a batch goes out right behind its first event, in the same write.
            if let Some(event) = queued.pop_front() {
                return Some((Ok(event), (rx, svc, alive, Step::Next, queued)));
            }
            let event = match step {
                Step::Reset => reset(&svc).await,
                Step::Next => next_batch(&mut rx, &svc, &mut queued).await?,
            };
            if !alive() {
                return None;
            }
            Some((Ok(event), (rx, svc, alive, Step::Next, queued)))
        },
    );
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
