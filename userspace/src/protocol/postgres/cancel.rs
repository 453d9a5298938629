//! Cancel keys. Clients only ever see keys airlock minted; a CancelRequest (a new connection to
//! the same listener) is mapped back to the server's real key and sent to the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use bytes::BytesMut;
use ring::rand::SecureRandom;
use tokio::io::AsyncWriteExt;

use super::startup;

/// Where a cancel for one session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// Target name: a cancel must arrive on the listener of the same target.
    pub target: String,
    pub upstream: SocketAddr,
    /// The server's own process id and secret.
    pub pid: i32,
    pub secret: Vec<u8>,
}

/// Minted key → the server's key, for every live session in this process.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, [u8; 4]), CancelTarget>>,
}

/// Keeps a minted key registered; unregisters it when the session ends.
#[derive(Debug)]
pub struct Registration {
    registry: &'static CancelRegistry,
    /// The key the client sees.
    pub pid: i32,
    pub secret: [u8; 4],
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&(self.pid, self.secret));
        }
    }
}

impl CancelRegistry {
    /// The process-wide registry: a cancel arrives on a connection of its own, so the sessions
    /// of all listeners share it.
    pub fn global() -> &'static CancelRegistry {
        static REGISTRY: OnceLock<CancelRegistry> = OnceLock::new();
        REGISTRY.get_or_init(CancelRegistry::default)
    }

    /// Mints a fresh key for `target`. `None` only if the system has no randomness.
    pub fn register(&'static self, target: CancelTarget) -> Option<Registration> {
        let rng = ring::rand::SystemRandom::new();
        let mut map = self.map.lock().ok()?;
        loop {
            let mut raw = [0u8; 8];
            rng.fill(&mut raw).ok()?;
            // Positive, like a real process id, so clients that print it are not confused.
            let pid = i32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]).max(1);
            let secret = [raw[4], raw[5], raw[6], raw[7]];
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, secret)) {
                e.insert(target);
                return Some(Registration {
                    registry: self,
                    pid,
                    secret,
                });
            }
        }
    }

    /// The session a minted key belongs to.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let secret: [u8; 4] = secret.try_into().ok()?;
        self.map.lock().ok()?.get(&(pid, secret)).cloned()
    }
}

/// Sends the server's own CancelRequest for `t`. Like libpq, over a plain connection: the
/// server acts on it before any authentication or TLS.
pub async fn send_cancel(t: &CancelTarget) -> std::io::Result<()> {
    let mut s = crate::intercept::sockets::connect(t.upstream).await?;
    let mut out = BytesMut::with_capacity(16);
    startup::put_cancel_request(&mut out, t.pid, &t.secret);
    s.write_all(&out).await?;
    s.shutdown().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mint_lookup_unregister() {
        let reg = CancelRegistry::global();
        let t = CancelTarget {
            target: "db".into(),
            upstream: "127.0.0.1:1".parse().unwrap(),
            pid: 42,
            secret: vec![1, 2, 3, 4],
        };
        let r = reg.register(t.clone()).unwrap();
        assert!(r.pid > 0);
        assert_eq!(reg.lookup(r.pid, &r.secret), Some(t));
        assert_eq!(reg.lookup(r.pid, &[0, 0, 0]), None);
        let (pid, secret) = (r.pid, r.secret);
        drop(r);
        assert_eq!(reg.lookup(pid, &secret), None);
    }
}
