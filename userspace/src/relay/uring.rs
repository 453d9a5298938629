//! The io_uring engine: the same session loops, with their socket I/O submitted to one ring
//! instead of made as readiness-driven syscalls (docs/decisions/io-uring.md).
//!
//! - One [`Driver`] per daemon owns the ring. Its completion queue's fd sits in tokio's epoll
//!   set, so the rest of the daemon (timers, the gate, approvals, the audit log) runs on tokio
//!   unchanged; only the sockets of a session move to the ring.
//! - Submissions are batched across sessions: an operation is queued in the ring's shared
//!   memory, and one `io_uring_enter` per scheduler pass submits every session's queued work.
//! - [`UringStream`] implements tokio's `AsyncRead`/`AsyncWrite`, so protocol handlers keep
//!   their framing loops and only the stream type differs. A write returns once its send is
//!   queued; the next write or a flush waits for it.
//! - [`splice_relay`] moves opaque bytes socket → pipe → socket with `IORING_OP_SPLICE`.
//!
//! Memory the kernel may still write (a receive buffer, a pipe) and the fds an operation names
//! belong to the operation until its completion arrives, even when the future or stream that
//! started it is dropped: a dropped operation is cancelled and its memory is parked in the
//! driver until the kernel is done with it.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use io_uring::{IoUring, opcode, squeue, types};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::{Counters, RelayStats};

/// Submission queue entries; a full queue is submitted before more is queued.
const RING_ENTRIES: u32 = 1024;
/// Completion queue entries. The kernel keeps what overflows (IORING_FEAT_NODROP), so this
/// bounds nothing but the common case's memory.
const COMPLETION_ENTRIES: u32 = 8192;
/// Receive buffer of a stream's read half (allocated on its first read).
const READ_BUFFER: usize = 16 * 1024;
/// Largest send a write half makes of one write.
const WRITE_BUFFER: usize = 64 * 1024;
/// user_data of cancellations, whose own completions carry nothing.
const CANCEL: u64 = u64::MAX;
/// How long a dropped stream's last send may wait for a peer that reads nothing.
const ORPHAN_SEND_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Operations the ring has completed, process-wide (tests check with it that sessions really
/// ran on the ring).
pub static COMPLETIONS: AtomicU64 = AtomicU64::new(0);

/// Where one operation stands.
enum Slot {
    Free,
    /// Submitted (or queued); the waker of whoever polls it.
    Waiting(Option<Waker>),
    Done(i32),
    /// Its owner left: what the kernel may still use, kept until the completion arrives.
    Orphaned(#[allow(dead_code)] Box<dyn Any + Send>),
}

struct State {
    ring: IoUring,
    slots: Vec<Slot>,
    /// Generation of each slot, so a late cancel cannot hit the slot's next operation.
    generations: Vec<u32>,
    free: Vec<u32>,
    /// A flush is queued with the flusher task.
    flush_queued: bool,
}

impl Drop for State {
    fn drop(&mut self) {
        // The ring's teardown cancels what is in flight asynchronously: memory the kernel may
        // still write is leaked rather than freed under it (only at daemon exit).
        for slot in self.slots.drain(..) {
            if let Slot::Orphaned(keep) = slot {
                std::mem::forget(keep);
            }
        }
    }
}

/// An operation's handle: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    fn user_data(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

/// The ring's fd, registered with tokio for completion readiness (the ring owns the fd).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One io_uring shared by every session of the daemon that runs on this engine.
pub struct Driver {
    // Deregistered from epoll before the ring (and its fd) goes.
    ready: AsyncFd<RingFd>,
    state: Mutex<State>,
    flush: Notify,
    /// Submit at once instead of once per scheduler pass (the benchmark's A/B).
    immediate: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("fd", &self.ready.get_ref().0)
            .field("immediate", &self.immediate)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Sets up the ring and the tasks that submit and reap for it. Fails where io_uring is not
    /// allowed (old kernels, `kernel.io_uring_disabled`, containers' seccomp profiles): the
    /// caller falls back to epoll.
    pub fn start() -> io::Result<Arc<Driver>> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_ENTRIES)
            .build(RING_ENTRIES)?;
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::other(
                "this kernel's io_uring drops completions on overflow (before 5.5)",
            ));
        }
        // SAFETY: the ring's fd stays open while the AsyncFd lives: both are the driver's,
        // and `ready` is dropped first.
        let ready = unsafe {
            AsyncFd::register_with_interest(RingFd(ring.as_raw_fd()), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let immediate = std::env::var("AIRLOCK_URING_SUBMIT").is_ok_and(|v| v == "immediate");
        let driver = Arc::new(Driver {
            ready,
            state: Mutex::new(State {
                ring,
                slots: Vec::new(),
                generations: Vec::new(),
                free: Vec::new(),
                flush_queued: false,
            }),
            flush: Notify::new(),
            immediate,
        });
        tokio::spawn(reap_forever(driver.clone()));
        tokio::spawn(flush_forever(driver.clone()));
        Ok(driver)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the slots consistent (every update is one
        // assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one operation and returns its key.
    ///
    /// # Safety
    /// Whatever memory and fds `entry` names must stay valid until [`Driver::poll_op`]
    /// returns its result, or be handed to [`Driver::abandon`].
    unsafe fn start_op(&self, entry: squeue::Entry) -> io::Result<Key> {
        let mut wake = Vec::new();
        let key = {
            let mut st = self.lock();
            let key = match st.free.pop() {
                Some(index) => {
                    st.slots[index as usize] = Slot::Waiting(None);
                    Key {
                        index,
                        generation: st.generations[index as usize],
                    }
                }
                None => {
                    let index = u32::try_from(st.slots.len())
                        .map_err(|_| io::Error::other("io_uring: too many operations"))?;
                    st.slots.push(Slot::Waiting(None));
                    st.generations.push(0);
                    Key {
                        index,
                        generation: 0,
                    }
                }
            };
            let entry = entry.user_data(key.user_data());
            // SAFETY: the caller keeps the entry's memory valid until completion.
            if let Err(e) = unsafe { push(&mut st, &entry, &mut wake) } {
                release(&mut st, key.index);
                return Err(e);
            }
            // Once queued, the operation is the kernel's: an error here must not reach the
            // caller (who would free its buffer), so a failed submit is left to the flusher.
            let submitted = self.immediate && submit(&mut st, &mut wake).is_ok();
            if !submitted && !st.flush_queued {
                st.flush_queued = true;
                self.flush.notify_one();
            }
            key
        };
        wake.into_iter().for_each(Waker::wake);
        Ok(key)
    }

    /// The operation's result once it has completed (the slot is then free again).
    fn poll_op(&self, key: Key, cx: &mut Context<'_>) -> Poll<i32> {
        let mut wake = Vec::new();
        let polled = {
            let mut st = self.lock();
            if let Slot::Waiting(_) = st.slots[key.index as usize] {
                // Completions the kernel has posted are in shared memory: no syscall.
                reap(&mut st, &mut wake);
            }
            let slot = &mut st.slots[key.index as usize];
            match slot {
                Slot::Done(res) => {
                    let res = *res;
                    release(&mut st, key.index);
                    Poll::Ready(res)
                }
                Slot::Waiting(waker) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
                Slot::Free | Slot::Orphaned(_) => {
                    Poll::Ready(-libc::EBADF) // a key polled after it was released: a bug
                }
            }
        };
        wake.into_iter().for_each(Waker::wake);
        polled
    }

    /// The owner of an operation leaves before its completion: `keep` (its buffers, its fds)
    /// stays with the driver until the kernel is done. `cancel` asks the kernel to end the
    /// operation now; otherwise it is cancelled after `ORPHAN_SEND_GRACE` (a last send that
    /// waits for a peer that reads nothing).
    fn abandon(self: &Arc<Self>, key: Key, keep: Box<dyn Any + Send>, cancel: bool) {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            match st.slots[key.index as usize] {
                Slot::Done(_) => release(&mut st, key.index),
                Slot::Waiting(_) => {
                    st.slots[key.index as usize] = Slot::Orphaned(keep);
                    // Outside a runtime (the daemon's runtime shutting down) nothing could
                    // cancel it later: it is cancelled now.
                    let runtime = tokio::runtime::Handle::try_current().ok();
                    if let (false, Some(runtime)) = (cancel, runtime) {
                        let driver = self.clone();
                        runtime.spawn(async move {
                            tokio::time::sleep(ORPHAN_SEND_GRACE).await;
                            let mut wake = Vec::new();
                            {
                                let mut st = driver.lock();
                                let index = key.index as usize;
                                if st.generations[index] == key.generation
                                    && matches!(st.slots[index], Slot::Orphaned(_))
                                {
                                    driver.cancel_locked(&mut st, key, &mut wake);
                                }
                            }
                            wake.into_iter().for_each(Waker::wake);
                        });
                    } else {
                        self.cancel_locked(&mut st, key, &mut wake);
                    }
                }
                Slot::Free | Slot::Orphaned(_) => {}
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    fn cancel_locked(&self, st: &mut State, key: Key, wake: &mut Vec<Waker>) {
        let entry = opcode::AsyncCancel::new(key.user_data())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancel names no memory. The kernel finds the operation by user_data; an
        // operation that already completed makes the cancel fail with ENOENT, harmlessly.
        let queued = unsafe { push(st, &entry, wake) }.and_then(|()| submit(st, wake));
        if let Err(error) = queued {
            tracing::warn!(%error, "io_uring: could not cancel an abandoned operation");
        }
    }

    /// Submits what is queued (the flusher task, once per scheduler pass). `false` when the
    /// kernel refused: what is queued stays queued for the next try.
    fn flush_now(&self) -> bool {
        let mut wake = Vec::new();
        let flushed = {
            let mut st = self.lock();
            match submit(&mut st, &mut wake) {
                Ok(()) => {
                    st.flush_queued = false;
                    true
                }
                Err(error) => {
                    tracing::error!(%error, "io_uring submit failed; retrying");
                    false
                }
            }
        };
        wake.into_iter().for_each(Waker::wake);
        flushed
    }
}

/// Pushes an entry, submitting first when the submission queue is full.
///
/// # Safety
/// As for [`Driver::start_op`].
unsafe fn push(st: &mut State, entry: &squeue::Entry, wake: &mut Vec<Waker>) -> io::Result<()> {
    loop {
        // SAFETY: passed on from the caller.
        if unsafe { st.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        submit(st, wake)?;
    }
}

/// `io_uring_enter` for what is queued, then reaps what completed inline.
fn submit(st: &mut State, wake: &mut Vec<Waker>) -> io::Result<()> {
    if st.ring.submission().is_empty() {
        return Ok(());
    }
    loop {
        match st.ring.submit() {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // The kernel's overflow list is full: make room, then try again.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                reap(st, wake);
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    reap(st, wake);
    Ok(())
}

/// Moves completions into their slots and collects the wakers to call after the lock.
fn reap(st: &mut State, wake: &mut Vec<Waker>) {
    let State {
        ring,
        slots,
        generations,
        free,
        ..
    } = st;
    for cqe in ring.completion() {
        let data = cqe.user_data();
        if data == CANCEL {
            continue;
        }
        COMPLETIONS.fetch_add(1, Ordering::Relaxed);
        let index = (data & u64::from(u32::MAX)) as usize;
        let Some(slot) = slots.get_mut(index) else {
            continue;
        };
        if u64::from(generations[index]) != data >> 32 {
            continue;
        }
        match std::mem::replace(slot, Slot::Done(cqe.result())) {
            Slot::Waiting(waker) => wake.extend(waker),
            Slot::Orphaned(keep) => {
                drop(keep);
                *slot = Slot::Free;
                generations[index] = generations[index].wrapping_add(1);
                free.push(index as u32);
            }
            // A second completion for one operation: not submitted by this engine.
            other @ (Slot::Done(_) | Slot::Free) => *slot = other,
        }
    }
}

fn release(st: &mut State, index: u32) {
    st.slots[index as usize] = Slot::Free;
    let g = &mut st.generations[index as usize];
    *g = g.wrapping_add(1);
    st.free.push(index);
}

/// Reaps whenever the kernel posts completions (the ring's fd is readable).
async fn reap_forever(driver: Arc<Driver>) {
    loop {
        let mut guard = match driver.ready.readable().await {
            Ok(g) => g,
            Err(error) => {
                tracing::error!(%error, "io_uring: completion readiness failed; engine stopped");
                return;
            }
        };
        let mut wake = Vec::new();
        reap(&mut driver.lock(), &mut wake);
        // Readiness that arrived while reaping carries a newer tick and is not cleared.
        guard.clear_ready();
        wake.into_iter().for_each(Waker::wake);
    }
}

/// Submits queued operations once per scheduler pass: sessions that run in the same pass
/// share one `io_uring_enter`.
async fn flush_forever(driver: Arc<Driver>) {
    loop {
        driver.flush.notified().await;
        // Let the other runnable sessions queue theirs first.
        tokio::task::yield_now().await;
        while !driver.flush_now() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// One operation as a future (splice, poll); dropping it cancels the operation.
struct Op<'a> {
    driver: &'a Arc<Driver>,
    key: Option<Key>,
    /// Fds the operation names, kept open until its completion.
    keep: Option<Box<dyn Any + Send>>,
}

impl std::future::Future for Op<'_> {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let Some(key) = self.key else {
            return Poll::Ready(-libc::EBADF);
        };
        let res = std::task::ready!(self.driver.poll_op(key, cx));
        self.key = None;
        Poll::Ready(res)
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let keep = self.keep.take().unwrap_or_else(|| Box::new(()));
            self.driver.abandon(key, keep, true);
        }
    }
}

/// Starts `entry`; `keep` holds the fds it names.
///
/// # Safety
/// `entry` may name only memory owned by `keep` or with a static lifetime.
unsafe fn op<'a>(
    driver: &'a Arc<Driver>,
    entry: squeue::Entry,
    keep: Box<dyn Any + Send>,
) -> io::Result<Op<'a>> {
    // SAFETY: passed on from the caller; `keep` lives in the Op until completion.
    let key = unsafe { driver.start_op(entry) }?;
    Ok(Op {
        driver,
        key: Some(key),
        keep: Some(keep),
    })
}

fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// A TCP connection whose I/O goes through the ring. The socket is taken out of tokio's epoll
/// set (its readiness would wake the scheduler for nothing) and set blocking: io_uring waits
/// on it internally, and a non-blocking socket would make it return EAGAIN instead.
#[derive(Debug)]
pub struct UringStream {
    fd: Arc<OwnedFd>,
    driver: Arc<Driver>,
}

impl UringStream {
    /// Moves a tokio stream onto the ring.
    pub fn new(stream: tokio::net::TcpStream, driver: Arc<Driver>) -> io::Result<Self> {
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(UringStream {
            fd: Arc::new(OwnedFd::from(std)),
            driver,
        })
    }

    /// Read and write halves that run concurrently (one operation in flight each).
    pub fn split(&self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (
            ReadHalf {
                stream: self,
                buf: Vec::new(),
                start: 0,
                end: 0,
                op: None,
            },
            WriteHalf {
                stream: self,
                buf: Vec::new(),
                start: 0,
                end: 0,
                op: None,
            },
        )
    }
}

/// The receiving half of a [`UringStream`]: one receive in flight into its own buffer,
/// copied out to the reader.
pub struct ReadHalf<'a> {
    stream: &'a UringStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    op: Option<Key>,
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.start < this.end {
                let n = out.remaining().min(this.end - this.start);
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                return Poll::Ready(Ok(()));
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let key = match this.op {
                Some(key) => key,
                None => {
                    if this.buf.is_empty() {
                        this.buf = vec![0; READ_BUFFER];
                    }
                    let entry = opcode::Recv::new(
                        types::Fd(this.stream.fd.as_raw_fd()),
                        this.buf.as_mut_ptr(),
                        this.buf.len() as u32,
                    )
                    .build();
                    // SAFETY: the buffer and the fd live in this half; a drop before the
                    // completion hands both to the driver.
                    let key = unsafe { this.stream.driver.start_op(entry) }?;
                    this.op = Some(key);
                    key
                }
            };
            let res = std::task::ready!(this.stream.driver.poll_op(key, cx));
            this.op = None;
            match result(res) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => {
                    this.start = 0;
                    this.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Drop for ReadHalf<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.op.take() {
            let keep = Box::new((std::mem::take(&mut self.buf), self.stream.fd.clone()));
            self.stream.driver.abandon(key, keep, true);
        }
    }
}

/// The sending half of a [`UringStream`]. A write is copied into the half's buffer, its send
/// is queued, and the write returns: the bytes leave with the ring's next submission. A later
/// write or a flush waits for that send first (one send in flight, so nothing queued behind
/// it can be left unsent), and reports its error.
pub struct WriteHalf<'a> {
    stream: &'a UringStream,
    /// The bytes of the send in flight, `start..end` (allocated on first write).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    op: Option<(Key, usize)>,
}

impl WriteHalf<'_> {
    /// Starts a send of `start..end`. MSG_WAITALL: the kernel retries a stream socket's
    /// partial send itself, so a send completes whole or with an error.
    fn send_queued(&mut self) -> io::Result<()> {
        let len = self.end - self.start;
        let entry = opcode::Send::new(
            types::Fd(self.stream.fd.as_raw_fd()),
            self.buf[self.start..].as_ptr(),
            len as u32,
        )
        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
        .build();
        // SAFETY: the buffer and the fd live in this half and are not touched while the send
        // is in flight; a drop before the completion hands both to the driver.
        let key = unsafe { self.stream.driver.start_op(entry) }?;
        self.op = Some((key, len));
        Ok(())
    }

    /// Waits until everything written has been sent.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((key, _)) = self.op {
            let res = std::task::ready!(self.stream.driver.poll_op(key, cx));
            self.op = None;
            match result(res) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.start = self.end;
                    return Poll::Ready(Err(e));
                }
            }
            if self.start < self.end {
                self.send_queued()?;
            } else if self.buf.capacity() > READ_BUFFER {
                // A large write's buffer is not kept by a session that goes idle.
                self.buf = Vec::new();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(this.poll_drain(cx))?;
        let n = data.len().min(WRITE_BUFFER);
        this.buf.clear();
        this.buf.extend_from_slice(&data[..n]);
        this.start = 0;
        this.end = n;
        this.send_queued()?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        super::shutdown(&*this.stream.fd, libc::SHUT_WR);
        Poll::Ready(Ok(()))
    }
}

impl Drop for WriteHalf<'_> {
    fn drop(&mut self) {
        if let Some((key, _)) = self.op.take() {
            // The session's last words (an error, a Terminate) still leave: the send is not
            // cancelled unless the peer reads nothing for a while.
            let keep = Box::new((std::mem::take(&mut self.buf), self.stream.fd.clone()));
            self.stream.driver.abandon(key, keep, false);
        }
    }
}

/// A pipe for ring splices: blocking (io_uring waits on it; a non-blocking pipe would make it
/// return EAGAIN), both ends kept by whichever operation still names them.
struct Pipe {
    read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
    capacity: u32,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let pipe = super::Pipe::with_flags(0)?;
        Ok(Pipe {
            read: Arc::new(pipe.read),
            write: Arc::new(pipe.write),
            capacity: u32::try_from(pipe.capacity).unwrap_or(u32::MAX),
        })
    }
}

/// Relays like [`super::splice_relay`], with the splices (and the wait for a direction's
/// first byte) submitted to the ring.
pub async fn splice_relay(
    driver: &Arc<Driver>,
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    counters: &Counters,
) -> io::Result<RelayStats> {
    let client = ring_fd(client)?;
    let upstream = ring_fd(upstream)?;
    super::both_ways(
        &*client,
        &*upstream,
        splice_one_way(driver, &client, &upstream, &counters.client_to_upstream),
        splice_one_way(driver, &upstream, &client, &counters.upstream_to_client),
    )
    .await
}

fn ring_fd(stream: tokio::net::TcpStream) -> io::Result<Arc<OwnedFd>> {
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok(Arc::new(OwnedFd::from(std)))
}

async fn splice_one_way(
    driver: &Arc<Driver>,
    from: &Arc<OwnedFd>,
    to: &Arc<OwnedFd>,
    counter: &AtomicU64,
) -> io::Result<u64> {
    // Idle sessions hold no pipes: the first byte (or EOF) earns the direction its pipe.
    let entry = opcode::PollAdd::new(types::Fd(from.as_raw_fd()), libc::POLLIN as u32).build();
    // SAFETY: a poll names no memory; the fd is kept by the op.
    let polled = unsafe { op(driver, entry, Box::new(from.clone())) }?.await;
    result(polled)?;
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    loop {
        let fill = opcode::Splice::new(
            types::Fd(from.as_raw_fd()),
            -1,
            types::Fd(pipe.write.as_raw_fd()),
            -1,
            pipe.capacity,
        )
        .flags(libc::SPLICE_F_MOVE)
        .build();
        let keep = Box::new((from.clone(), pipe.write.clone()));
        // SAFETY: a splice names only fds, kept by the op.
        let filled = match result(unsafe { op(driver, fill, keep) }?.await) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Drain the pipe into the other socket before reading more (backpressure).
        let mut left = filled;
        while left > 0 {
            let drain = opcode::Splice::new(
                types::Fd(pipe.read.as_raw_fd()),
                -1,
                types::Fd(to.as_raw_fd()),
                -1,
                left as u32,
            )
            .flags(libc::SPLICE_F_MOVE)
            .build();
            let keep = Box::new((pipe.read.clone(), to.clone()));
            // SAFETY: as above.
            match result(unsafe { op(driver, drain, keep) }?.await) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
        counter.fetch_add(filled as u64, Ordering::Relaxed);
    }
    super::shutdown(&**to, libc::SHUT_WR);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::tests::{check_both_ways_with_half_close, pair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_on_the_ring_echoes_both_ways_with_half_close() {
        let driver = Driver::start().unwrap();
        let (mut peer, ours) = pair().await;
        let ours = UringStream::new(ours, driver.clone()).unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let peer_task = tokio::spawn(async move {
            let (mut r, mut w) = peer.split();
            let (read, ()) = tokio::join!(
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                },
                async {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                }
            );
            read
        });
        // Echo everything back, in small writes that queue behind each other.
        let (mut r, mut w) = ours.split();
        let mut buf = vec![0u8; 7_000];
        let mut echoed = 0usize;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for chunk in buf[..n].chunks(1_000) {
                w.write_all(chunk).await.unwrap();
            }
            echoed += n;
        }
        w.shutdown().await.unwrap();
        drop((r, w));
        assert_eq!(echoed, payload.len());
        assert_eq!(peer_task.await.unwrap(), payload);
    }

    /// A session writes a message and its follow-up, then waits for the peer's answer: both
    /// must leave without a flush (nothing may wait behind the send in flight).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_to_back_writes_leave_without_a_flush() {
        let driver = Driver::start().unwrap();
        let (mut peer, ours) = pair().await;
        let ours = UringStream::new(ours, driver.clone()).unwrap();
        let (_r, mut w) = ours.split();
        let big = vec![7u8; 200_000];
        w.write_all(b"first").await.unwrap();
        w.write_all(&big).await.unwrap();
        w.write_all(b"last").await.unwrap();
        let mut got = vec![0u8; 5 + big.len() + 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("every byte written arrives with no flush")
            .unwrap();
        assert_eq!(&got[..5], b"first");
        assert!(got[5..5 + big.len()].iter().all(|&b| b == 7));
        assert_eq!(&got[5 + big.len()..], b"last");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_read_is_cancelled_and_the_last_write_still_leaves() {
        let driver = Driver::start().unwrap();
        let (mut peer, ours) = pair().await;
        let ours = UringStream::new(ours, driver.clone()).unwrap();
        {
            let (mut r, mut w) = ours.split();
            // A read that waits, dropped: its buffer goes to the driver, its recv is cancelled.
            let mut buf = [0u8; 16];
            let pending =
                tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut buf)).await;
            assert!(pending.is_err(), "nothing was sent, the read must wait");
            w.write_all(b"last words").await.unwrap();
        }
        drop(ours);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // Bytes sent after the read was cancelled are not eaten by it.
        let st = driver.lock();
        assert!(
            st.slots.iter().all(|s| matches!(s, Slot::Free)),
            "every operation completed and was released"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ring_splices_both_ways_with_half_close() {
        let driver = Driver::start().unwrap();
        check_both_ways_with_half_close(|proxy_client, proxy_upstream| {
            tokio::spawn(async move {
                let c = Counters::default();
                let r = splice_relay(&driver, proxy_client, proxy_upstream, &c).await;
                (r, c.client_to_upstream.load(Ordering::Relaxed))
            })
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_dropped_mid_splice_releases_its_operations() {
        let driver = Driver::start().unwrap();
        let (client, proxy_client) = pair().await;
        let (proxy_upstream, server) = pair().await;
        let counters = Counters::default();
        let relay = splice_relay(&driver, proxy_client, proxy_upstream, &counters);
        // Both directions wait for a first byte that never comes.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), relay)
                .await
                .is_err()
        );
        // The cancelled polls complete; their slots come back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let busy = driver
                .lock()
                .slots
                .iter()
                .filter(|s| !matches!(s, Slot::Free))
                .count();
            if busy == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{busy} operations left"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop((client, server));
    }
}
