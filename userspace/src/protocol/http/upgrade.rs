//! Upgrades (WebSocket and others): after the target's 101, both sides' upgraded streams are
//! joined and their bytes counted for the exchange's record. The tunnel's content is not
//! judged: the upgrade request itself was.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::record::ExchangeRecord;

/// Joins the client's and the target's upgraded streams until either side ends.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, mut record: ExchangeRecord) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            record.set_error(format!("upgrade failed: {e}"));
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            record
                .request_bytes
                .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
            record.received(down);
            record.sent(down);
            record.complete();
        }
        Err(e) => record.set_error(format!("tunnel: {e}")),
    }
}
