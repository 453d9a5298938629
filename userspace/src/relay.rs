//! Bidirectional byte relay with adaptive buffers, half-close and backpressure; the piece every
//! protocol handler falls back to once it has nothing left to inspect.
//!
//! - A direction holds no buffer until its first byte arrives, so idle sessions stay small.
//! - The buffer starts at [`INITIAL_BUFFER`] and grows (up to [`MAX_BUFFER`]) while reads keep
//!   filling it: bulk transfers get large reads, chatty protocols keep small ones.
//! - Nothing is read until the previous chunk is written: a slow reader slows the writer.
//! - EOF in one direction becomes a write shutdown (FIN) on the other; the other direction
//!   keeps flowing until it ends too.
//!
//! Two engines share those rules: [`relay`] copies through userspace buffers (protocol
//! handlers that must see the bytes), [`splice_relay`] moves pages socket → pipe → socket
//! with splice(2) and never copies them into the process (opaque TCP). See
//! docs/decisions/relay-engine.md for the measurements behind the choice.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

pub mod uring;

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
    both_ways(
        client,
        upstream,
        copy_one_way(client, upstream, &counters.client_to_upstream),
        copy_one_way(upstream, client, &counters.upstream_to_client),
    )
    .await
}

/// Runs the two directions to completion; on an error in either, shuts both sockets down so
/// the other direction ends too.
async fn both_ways(
    client: &impl AsRawFd,
    upstream: &impl AsRawFd,
    up: impl std::future::Future<Output = io::Result<u64>>,
    down: impl std::future::Future<Output = io::Result<u64>>,
) -> io::Result<RelayStats> {
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

/// Relays like [`relay`], but with splice(2) through a pipe per direction: the bytes never
/// enter userspace. The pipes are created on a direction's first readable event, so idle
/// sessions hold none.
pub async fn splice_relay(
    client: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
) -> io::Result<RelayStats> {
    both_ways(
        client,
        upstream,
        splice_one_way(client, upstream, &counters.client_to_upstream),
        splice_one_way(upstream, client, &counters.upstream_to_client),
    )
    .await
}

/// Pipes the splice engine has created (each is two fds while its session lives).
pub static PIPES_CREATED: AtomicU64 = AtomicU64::new(0);

/// Pipe capacity asked for (the kernel may grant less; splice adapts).
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// A pipe's two ends, closed on drop.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe (the epoll engine's splices).
    fn new() -> io::Result<Self> {
        Self::with_flags(libc::O_NONBLOCK)
    }

    /// A pipe with `flags` besides O_CLOEXEC (the io_uring engine's are blocking).
    fn with_flags(flags: libc::c_int) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid out array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), flags | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nobody else owns.
        let (read, write) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        // SAFETY: F_SETPIPE_SZ on our own pipe; failure (over pipe-max-size) leaves the default.
        let granted = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
        let capacity = if granted > 0 {
            granted as usize
        } else {
            64 * 1024
        };
        PIPES_CREATED.fetch_add(1, Ordering::Relaxed);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Peeks at most one byte without consuming it: 0 means EOF.
fn peek_one(sock: &TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
    // SAFETY: plain fds; null offsets are required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

async fn splice_one_way(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    use tokio::io::Interest;

    let mut pipe: Option<Pipe> = None;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let p = match &pipe {
            Some(p) => p,
            None => {
                // Readiness can be spurious: only a byte that is really there (or EOF) earns
                // this direction its pipe, so idle sessions hold two fds, not six.
                match from.try_io(Interest::READABLE, || peek_one(from)) {
                    Ok(0) => break,
                    Ok(_) => pipe.insert(Pipe::new()?),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        // The pipe is empty here: fill it from the socket.
        let filled = match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), p.write.as_raw_fd(), p.capacity)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Drain it into the other socket before reading more (backpressure).
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(p.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
        counter.fetch_add(filled as u64, Ordering::Relaxed);
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

fn shutdown(sock: &impl AsRawFd, how: libc::c_int) {
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

    /// A connected loopback pair (the io_uring engine's tests use it too).
    pub(super) async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn copy_relays_both_ways_with_half_close() {
        both_ways_with_half_close(false).await;
    }

    #[tokio::test]
    async fn splice_relays_both_ways_with_half_close() {
        let _serial = SPLICE_TESTS.lock().await;
        both_ways_with_half_close(true).await;
    }

    async fn both_ways_with_half_close(use_splice: bool) {
        check_both_ways_with_half_close(|proxy_client, proxy_upstream| {
            tokio::spawn(async move {
                let c = Counters::default();
                let r = if use_splice {
                    splice_relay(&proxy_client, &proxy_upstream, &c).await
                } else {
                    relay(&proxy_client, &proxy_upstream, &c).await
                };
                (r, c.client_to_upstream.load(Ordering::Relaxed))
            })
        })
        .await;
    }

    /// What a relay task returns in these tests: its result and the live byte count.
    pub(super) type RelayRun = tokio::task::JoinHandle<(io::Result<RelayStats>, u64)>;

    /// Relays between two loopback pairs through the relay `start` spawns on the proxy's two
    /// sockets: 3 MB from the client, its half-close forwarded, 4 bytes back; checks what
    /// arrived and the relay's counts (the io_uring engine's tests use it too).
    pub(super) async fn check_both_ways_with_half_close(
        start: impl FnOnce(TcpStream, TcpStream) -> RelayRun,
    ) {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut server) = pair().await;
        let relay = start(proxy_client, proxy_upstream);
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

    /// The splice tests count the relay's pipes, so they run one at a time.
    static SPLICE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn idle_splice_sessions_hold_no_pipes() {
        let _serial = SPLICE_TESTS.lock().await;
        let (client, proxy_client) = pair().await;
        let (proxy_upstream, server) = pair().await;
        let before = PIPES_CREATED.load(Ordering::Relaxed);
        let relay = tokio::spawn(async move {
            splice_relay(&proxy_client, &proxy_upstream, &Counters::default()).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            PIPES_CREATED.load(Ordering::Relaxed),
            before,
            "an idle session must not create pipes"
        );
        drop(client);
        drop(server);
        relay.await.unwrap().unwrap();
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
