//! The daemon's listening sockets, kept so they can be handed to a successor: every
//! listener (proxy, metrics, API) is bound through [`Sockets`], which takes an inherited
//! socket for the address when the predecessor passed one and binds afresh otherwise.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use tokio::net::TcpListener;

/// Listening sockets by local address.
#[derive(Debug, Default)]
pub struct Sockets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Passed by the predecessor and not yet taken.
    inherited: HashMap<SocketAddr, OwnedFd>,
    /// A duplicate of every socket in use, for a successor.
    held: HashMap<SocketAddr, OwnedFd>,
}

impl Sockets {
    /// A registry starting with the sockets a predecessor passed.
    pub fn with_inherited(inherited: HashMap<SocketAddr, OwnedFd>) -> Self {
        Sockets {
            inner: Mutex::new(Inner {
                inherited,
                held: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves maps that are still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listener on `addr`: the inherited socket if there is one (it has been accepting all
    /// along, and is bound already: the bind hook does not run for it again), else a new,
    /// marked one ([`crate::intercept::sockets::listen`]).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let mut inner = self.lock();
        let listener = match inner.inherited.remove(&addr) {
            Some(fd) => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                tracing::info!(%addr, "listening on the inherited socket");
                TcpListener::from_std(std)?
            }
            // Marked before bind, so the bind hook lets the daemon have its guarded ports.
            None => crate::intercept::sockets::listen(addr)?,
        };
        let local = listener.local_addr()?;
        inner
            .held
            .insert(local, listener.as_fd().try_clone_to_owned()?);
        Ok(listener)
    }

    /// Forgets the socket on `addr` (its listener was stopped by a reload).
    pub fn release(&self, addr: SocketAddr) {
        self.lock().held.remove(&addr);
    }

    /// Closes inherited sockets nothing took (the configuration no longer has them).
    pub fn close_unclaimed(&self) -> Vec<SocketAddr> {
        let mut inner = self.lock();
        inner.inherited.drain().map(|(addr, _)| addr).collect()
    }

    /// Duplicates of every socket in use, for a successor.
    pub fn for_successor(&self) -> io::Result<Vec<(SocketAddr, OwnedFd)>> {
        let inner = self.lock();
        let mut out = Vec::with_capacity(inner.held.len());
        for (addr, fd) in &inner.held {
            out.push((*addr, fd.try_clone()?));
        }
        out.sort_by_key(|(addr, _)| *addr);
        Ok(out)
    }

    /// Drops every duplicate: once the accept loops have stopped, the sockets close (or live
    /// on only in the successor).
    pub fn close_all(&self) {
        let mut inner = self.lock();
        inner.held.clear();
        inner.inherited.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inherited_socket_keeps_its_queue() {
        let old = Sockets::default();
        let listener = old.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // A client connects before the hand-over; nobody has accepted it yet.
        let client = std::net::TcpStream::connect(addr).unwrap();
        let passed: HashMap<_, _> = old.for_successor().unwrap().into_iter().collect();
        drop(listener);
        old.close_all();
        let new = Sockets::with_inherited(passed);
        let listener = new.bind(addr).unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(new.close_unclaimed().is_empty());
        assert_eq!(new.for_successor().unwrap().len(), 1);
    }
}
