//! Upgrades (WebSocket, SPDY and others): after the target's 101, both sides' upgraded streams
//! are joined and their bytes counted for the exchange's record. The request itself was judged;
//! a terminal stream (Kubernetes exec and attach) is also read as it passes, by the
//! classifier's [`StreamDecoder`], and recorded as asciicast with its output and input masked.
//! Such a stream never goes on unrecorded: one whose framing cannot be read, or whose
//! recording fails or reaches its limit, is cut there.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::classify::{FramingError, StreamDecoder, StreamEvent};
use super::record::ExchangeRecord;
use crate::recording::MaskedCast;

/// Bytes read from either side before they are relayed.
const CHUNK: usize = 64 * 1024;

/// A terminal stream's recording: the decoder of its framing and the file it writes.
pub struct Recorded {
    /// Reads the stream's framing into terminal events.
    pub decoder: Box<dyn StreamDecoder>,
    /// Where the events go, masked; the stream is cut when it reaches its limit.
    pub cast: MaskedCast,
}

/// Why a recorded stream is cut.
#[derive(Debug, thiserror::Error)]
enum TapError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// What passes from here on could not be recorded (the file is full, or writing failed):
    /// the stream ends rather than go on unrecorded.
    #[error("the recording {0}; the stream was cut")]
    Recording(String),
}

/// What the recording of a tunnel ended with.
struct Tap {
    decoder: Box<dyn StreamDecoder>,
    /// `None` once writing it failed.
    cast: Option<MaskedCast>,
    exit: Option<Result<(), String>>,
    failed: Option<String>,
}

impl Tap {
    /// Records what `bytes` carry; an `Err` cuts the stream before they go on.
    fn feed(&mut self, from_client: bool, bytes: &[u8]) -> Result<(), TapError> {
        let Tap {
            decoder,
            cast,
            exit,
            failed,
        } = self;
        let mut on_event = |event: StreamEvent<'_>| {
            if let StreamEvent::Exit(e) = event {
                *exit = Some(e);
                return;
            }
            let Some(c) = cast.as_mut().filter(|c| !c.is_truncated()) else {
                return;
            };
            let written = match event {
                StreamEvent::Input(b) => c.input(b),
                StreamEvent::Output(b) => c.output(b),
                StreamEvent::Resize { cols, rows } => c.resize(cols, rows),
                StreamEvent::Exit(_) => Ok(()),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "terminal recording failed; the stream is cut");
                *failed = Some(format!("failed: {e}"));
                *cast = None;
            }
        };
        decoder.feed(from_client, bytes, &mut on_event)?;
        if let Some(why) = failed {
            return Err(TapError::Recording(why.clone()));
        }
        if let Some(c) = self.cast.as_ref().filter(|c| c.is_truncated()) {
            return Err(TapError::Recording(format!(
                "reached its limit of {} bytes",
                c.limit()
            )));
        }
        Ok(())
    }
}

/// Joins the client's and the target's upgraded streams until both sides end (or either
/// fails), recording a terminal stream when `recorded` is given.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut record: ExchangeRecord,
    recorded: Option<Recorded>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            record.set_error(format!("upgrade failed: {e}"));
            return;
        }
    };
    let tap = recorded.map(|r| {
        Mutex::new(Tap {
            decoder: r.decoder,
            cast: Some(r.cast),
            exit: None,
            failed: None,
        })
    });
    let (client_rd, client_wr) = tokio::io::split(TokioIo::new(client));
    let (up_rd, up_wr) = tokio::io::split(TokioIo::new(upstream));
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let joined = tokio::try_join!(
        pump(client_rd, up_wr, true, tap.as_ref(), &up),
        pump(up_rd, client_wr, false, tap.as_ref(), &down),
    );
    // Counted as they went, whether the tunnel ended cleanly or not.
    let (up, down) = (up.into_inner(), down.into_inner());
    record.request_bytes.fetch_add(up, Ordering::Relaxed);
    record.received(down);
    record.sent(down);
    let mut ended = false;
    if let Some(tap) = tap {
        let tap = tap.into_inner().unwrap_or_else(|p| p.into_inner());
        ended = tap.exit.is_some();
        if let Some(why) = tap.failed {
            record.notes.push(format!("recording {why}"));
        }
        if let Some(cast) = tap.cast {
            let (summary, counts) = cast.finish();
            record.add_counts(counts);
            match summary {
                Ok(s) => record.set_recording(s),
                Err(e) => record.notes.push(format!("recording not completed: {e}")),
            }
        }
        if let Some(Err(why)) = tap.exit {
            record.set_error(why);
        }
    }
    match joined {
        Ok(((), ())) => record.complete(),
        // A client that drops the connection once the program has ended (kubectl resets it
        // after the error channel's Status) ended nothing early.
        Err(_) if ended => record.complete(),
        Err(e) => record.set_error(format!("tunnel: {e}")),
    }
}

/// Relays one direction, each chunk read by the tap before it goes on.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    from_client: bool,
    tap: Option<&Mutex<Tap>>,
    total: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(tap) = tap {
            let mut tap = tap.lock().unwrap_or_else(|p| p.into_inner());
            // A stream the gateway cannot read is cut before the unread bytes go on: what it
            // carries must be recorded.
            tap.feed(from_client, &buf[..n])
                .map_err(std::io::Error::other)?;
        }
        to.write_all(&buf[..n]).await?;
        // A TLS writer may keep what it took until flushed: the last chunk of a stream would
        // wait there for a write that never comes.
        to.flush().await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}
