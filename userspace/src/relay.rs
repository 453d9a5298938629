//! Bidirectional byte relay with adaptive buffers, half-close and backpressure; the piece every
//! protocol handler falls back to once it has nothing left to inspect.
//!
//! - A direction holds no buffer until its first byte arrives, so idle sessions stay small.
//! - The buffer starts at [`INITIAL_BUFFER`] and grows (up to [`MAX_BUFFER`]) while reads keep
//!   filling it: bulk transfers get large reads, chatty protocols keep small ones.
//! - Nothing is read until the previous chunk is written: a slow reader slows the writer.
//! - EOF in one direction becomes a write shutdown (FIN) on the other; the other direction
//!   keeps flowing until it ends too.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

/// First buffer size of a direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer size of a direction.
pub const MAX_BUFFER: usize = 256 * 1024;
/// Consecutive full reads before the buffer grows.
const GROW_AFTER_FULL_READS: u32 = 4;

/// Bytes moved by a relay, readable while it runs (for metrics and session records).
#[derive(Debug, Default)]
pub struct Counters {
    pub client_to_upstream: AtomicU64,
    pub upstream_to_client: AtomicU64,
}

/// Totals of a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Relays between `client` and `upstream` until both directions have ended.
///
/// Returns the totals; an I/O error in either direction ends the relay with that error after
/// shutting both sockets down.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
) -> io::Result<RelayStats> {
    let up = copy_one_way(client, upstream, &counters.client_to_upstream);
    let down = copy_one_way(upstream, client, &counters.upstream_to_client);
    let result = tokio::try_join!(up, down);
    if result.is_err() {
        shutdown(client, libc::SHUT_RDWR);
        shutdown(upstream, libc::SHUT_RDWR);
    }
    let (c2u, u2c) = result?;
    Ok(RelayStats {
        client_to_upstream: c2u,
        upstream_to_client: u2c,
    })
}

/// A buffer that is allocated on first use and grows while reads fill it.
#[derive(Debug, Default)]
struct AdaptiveBuffer {
    buf: Vec<u8>,
    full_reads: u32,
}

impl AdaptiveBuffer {
    fn space(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; INITIAL_BUFFER];
        }
        &mut self.buf
    }

    fn record_read(&mut self, n: usize) {
        if n < self.buf.len() {
            self.full_reads = 0;
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= GROW_AFTER_FULL_READS && self.buf.len() < MAX_BUFFER {
            let new_len = (self.buf.len() * 4).min(MAX_BUFFER);
            self.buf.resize(new_len, 0);
            self.full_reads = 0;
        }
    }
}

async fn copy_one_way(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<u64> {
    let mut buf = AdaptiveBuffer::default();
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_read(buf.space()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        write_all(to, &buf.buf[..n]).await?;
        buf.record_read(n);
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    shutdown(to, libc::SHUT_WR);
    Ok(total)
}

/// Writes all of `data`, waiting for writability (backpressure) between partial writes.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown(sock: &TcpStream, how: libc::c_int) {
    // SAFETY: a valid socket fd owned by `sock`; shutdown(2) has no memory effects. ENOTCONN
    // after the peer already closed is expected and ignored.
    unsafe {
        libc::shutdown(sock.as_raw_fd(), how);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut server) = pair().await;
        let relay = tokio::spawn(async move {
            let c = Counters::default();
            let r = relay(&proxy_client, &proxy_upstream, &c).await;
            (r, c.client_to_upstream.load(Ordering::Relaxed))
        });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap(); // half-close
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // ends only on the forwarded FIN
        assert_eq!(got, payload);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        let (stats, live) = relay.await.unwrap();
        let stats = stats.unwrap();
        assert_eq!(stats.client_to_upstream, payload.len() as u64);
        assert_eq!(stats.upstream_to_client, 4);
        assert_eq!(live, payload.len() as u64);
    }

    #[test]
    fn buffer_grows_only_while_reads_fill_it() {
        let mut b = AdaptiveBuffer::default();
        assert_eq!(b.space().len(), INITIAL_BUFFER);
        for _ in 0..GROW_AFTER_FULL_READS {
            b.record_read(INITIAL_BUFFER);
        }
        assert_eq!(b.buf.len(), INITIAL_BUFFER * 4);
        b.record_read(10);
        for _ in 0..100 {
            let n = b.buf.len();
            b.record_read(n);
        }
        assert_eq!(b.buf.len(), MAX_BUFFER);
    }
}
