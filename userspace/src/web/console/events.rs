//! The live inbox: one hub per console listens to the approval store's change notifications
//! (which also carry decisions made on other instances sharing the store), reads each changed
//! request once, renders its row, and sends the changes in batches at most every [`GATHER`],
//! each encoded once as server-sent-event text. Every connected reviewer's `GET /events`
//! stream writes that shared batch as it is: per reviewer, one wake-up and one write per
//! batch, whatever the rate of changes. A reviewer who falls behind gets a fresh `reset`
//! instead of a backlog, so memory per reviewer stays bounded; so does every reviewer when
//! the hub itself falls behind the store.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::views::{InboxRow, InboxRows, RowTemplate};
use crate::approval::{Approvals, StoreEvent};

/// Batches a slow reviewer may fall behind by before it gets a reset instead.
const HUB_CAPACITY: usize = 64;

/// Batches go out at most this often: each costs every reviewer a wake-up and a write, and a
/// busy inbox changes many times a second. A change after a quiet spell goes out at once; in a
/// busy one it shows within this time.
const GATHER: Duration = Duration::from_millis(500);

/// A batch this large goes out before its time is up (memory stays bounded in a burst).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How often an idle stream sends a comment, so proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Appends one server-sent event (`event:` and one `data:` line per line of `data`).
fn encode_event(out: &mut BytesMut, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// The fan-out point of inbox changes: batches of encoded `upsert` (`{id, html}`: a pending
/// request appeared or changed, with its rendered row) and `remove` (`{id}`: a request is no
/// longer pending) events.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Bytes>,
}

impl Hub {
    /// Starts the hub's task over `svc`'s store notifications.
    pub fn start(svc: Arc<Approvals>) -> Self {
        let changes = svc.store().subscribe();
        Self::start_with(svc, changes)
    }

    /// [`Hub::start`] over the notifications `changes` delivers.
    fn start_with(svc: Arc<Approvals>, mut changes: broadcast::Receiver<StoreEvent>) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        let hub = Hub { tx: tx.clone() };
        let weak = Arc::downgrade(&svc);
        drop(svc);
        tokio::spawn(async move {
            let mut batch = BytesMut::new();
            // When the batch being gathered goes out (`None`: nothing gathered).
            let mut due: Option<Instant> = None;
            let now = Instant::now();
            let mut last_sent = now.checked_sub(GATHER).unwrap_or(now);
            loop {
                let change = match due {
                    // A batch that is due goes out before more changes are taken in.
                    Some(at) => tokio::select! {
                        biased;
                        () = tokio::time::sleep_until(at) => {
                            due = None;
                            last_sent = Instant::now();
                            // No reviewer connected is fine.
                            let _ = tx.send(batch.split().freeze());
                            continue;
                        }
                        c = changes.recv() => c,
                    },
                    None => changes.recv().await,
                };
                let id = match change {
                    Ok(StoreEvent::Changed(id)) => id,
                    Ok(StoreEvent::Down(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Changes were missed: every reviewer gets the whole inbox again, in
                        // place of whatever was gathered (the reset supersedes it).
                        tracing::debug!(missed = n, "console hub lagged behind the store");
                        let Some(svc) = weak.upgrade() else { return };
                        batch.clear();
                        batch.extend_from_slice(&reset(&svc).await);
                        due = Some(Instant::now());
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(svc) = weak.upgrade() else { return };
                if !encode_change(&svc, &id, &mut batch).await {
                    continue;
                }
                if batch.len() >= MAX_BATCH_BYTES {
                    // Due now: the next turn sends it.
                    due = Some(Instant::now());
                } else if due.is_none() {
                    // The first change after a quiet spell goes out at once; in a busy spell
                    // changes wait for the next batch.
                    due = Some(Instant::now().max(last_sent + GATHER));
                }
            }
        });
        hub
    }

    /// A new reviewer's receiver (subscribe before reading the snapshot, so nothing falls
    /// between the two).
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.tx.subscribe()
    }

    /// Reviewers connected now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Reads request `id` and appends its event to `batch`; `false` when there is nothing to send
/// (the store read or the rendering failed: logged).
async fn encode_change(svc: &Approvals, id: &str, batch: &mut BytesMut) -> bool {
    let pending = match svc.store().get(id).await {
        Ok(Some(mut req)) => {
            req.tick(crate::approval::now_ms());
            req.is_pending().then_some(req)
        }
        Ok(None) => None,
        Err(error) => {
            tracing::debug!(%error, request = %id, "console hub: store read failed");
            return false;
        }
    };
    let Some(req) = pending else {
        let data = serde_json::json!({ "id": id }).to_string();
        encode_event(batch, "remove", &data);
        return true;
    };
    match (RowTemplate {
        row: &InboxRow::from(&req),
    })
    .render()
    {
        Ok(html) => {
            let html = html.replace('\r', "&#13;");
            let data = serde_json::json!({ "id": id, "html": html }).to_string();
            encode_event(batch, "upsert", &data);
            true
        }
        Err(error) => {
            tracing::warn!(%error, "rendering an inbox row");
            false
        }
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

async fn reset(svc: &Approvals) -> Bytes {
    let mut out = BytesMut::new();
    match snapshot(svc).await {
        Ok(html) => encode_event(&mut out, "reset", &html),
        Err(e) => encode_event(&mut out, "failed", &e.replace('\r', " ")),
    }
    out.freeze()
}

/// What a reviewer's stream writes next; `None` ends it (the hub is gone).
async fn next_write(rx: &mut broadcast::Receiver<Bytes>, svc: &Approvals) -> Option<Bytes> {
    match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
        Err(_) => Some(Bytes::from_static(b":\n\n")),
        Ok(Ok(batch)) => Some(batch),
        Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
            // Start over from the store rather than queue a backlog.
            *rx = rx.resubscribe();
            Some(reset(svc).await)
        }
        Ok(Err(broadcast::error::RecvError::Closed)) => None,
    }
}

/// The SSE stream of one reviewer: `reset` (the rows as HTML), then the hub's batches of
/// `upsert` and `remove` events. `alive` is asked before each write: once the reviewer's
/// session has ended (logout, expiry) the stream ends instead of sending more.
pub fn stream<F>(hub: &Hub, svc: Arc<Approvals>, alive: F) -> Response
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let rx = hub.subscribe();
    let s = futures_util::stream::unfold(
        (rx, svc, alive, true),
        |(mut rx, svc, alive, first)| async move {
            let bytes = if first {
                reset(&svc).await
            } else {
                next_write(&mut rx, &svc).await?
            };
            if !alive() {
                return None;
            }
            Some((Ok::<_, Infallible>(bytes), (rx, svc, alive, false)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(s),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::approval::scratch::service;

    /// A hub that falls behind the store's notifications sends every reviewer a `reset`
    /// (the whole inbox), not a stream that silently misses changes.
    #[tokio::test]
    async fn a_hub_that_missed_changes_sends_a_reset() {
        let scratch = service("hub-lag");
        let svc = &scratch.0;
        let (tx, changes) = broadcast::channel(2);
        for i in 0..5 {
            tx.send(StoreEvent::Changed(format!("r{i}"))).unwrap();
        }
        let hub = Hub::start_with(Arc::clone(svc), changes);
        let mut rx = hub.subscribe();
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&batch);
        assert!(text.starts_with("event: reset\n"), "{text}");
        assert!(text.contains("0 pending"), "{text}");
        drop(tx);
    }

    #[test]
    fn an_event_has_a_data_line_per_line_and_ends_with_a_blank_line() {
        let mut out = BytesMut::new();
        encode_event(&mut out, "reset", "<tr>\n<td>a</td>\n</tr>");
        encode_event(&mut out, "remove", r#"{"id":"r1"}"#);
        assert_eq!(
            &out[..],
            b"event: reset\ndata: <tr>\ndata: <td>a</td>\ndata: </tr>\n\n\
              event: remove\ndata: {\"id\":\"r1\"}\n\n"
        );
    }
}
