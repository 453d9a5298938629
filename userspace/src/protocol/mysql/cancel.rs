//! Connection ids: each client sees an id the gateway minted (in its greeting), never the
//! server's thread id. `KILL [QUERY|CONNECTION] <id>` from any session through the gateway is
//! mapped back here, like PostgreSQL's cancel keys: only ids of live sessions of the same
//! target, and only by the same caller (as the server itself lets an account kill only its own
//! threads — behind the gateway every session is the gateway's account, so the gateway checks
//! the caller instead).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// What a minted id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: String,
    /// The caller's subject (the only one allowed to kill this session's queries).
    pub subject: String,
    /// The server's thread id for this session.
    pub thread_id: u32,
}

/// Why a KILL through the gateway was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No live session of this target has that id.
    Unknown,
    /// The session belongs to another caller.
    NotOwner,
}

/// Live sessions by minted id.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u32,
    live: HashMap<u32, Entry>,
}

/// Removes its id from the registry when the session ends.
#[derive(Debug)]
pub struct Registration {
    pub id: u32,
    registry: &'static Registry,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.registry.inner.lock() {
            s.live.remove(&self.id);
        }
    }
}

impl Registry {
    /// The daemon's registry.
    pub fn global() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(Registry::default)
    }

    /// Mints an id for a session whose server thread is not known yet (`thread_id` 0 until
    /// [`Registry::bind`]).
    pub fn register(&'static self, target: &str, subject: &str) -> Option<Registration> {
        let mut s = self.inner.lock().ok()?;
        if s.next == 0 {
            // Start somewhere unpredictable, so ids say nothing about how many sessions ran.
            let seed = crate::secrets::random(4).ok()?;
            s.next = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3] & 0x3f]).max(1);
        }
        let mut id = s.next;
        while id == 0 || s.live.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        s.next = id.wrapping_add(1);
        s.live.insert(
            id,
            Entry {
                target: target.to_owned(),
                subject: subject.to_owned(),
                thread_id: 0,
            },
        );
        Some(Registration { id, registry: self })
    }

    /// Records the server thread behind a minted id once the login is done.
    pub fn bind(&self, id: u32, thread_id: u32, subject: &str) {
        if let Ok(mut s) = self.inner.lock()
            && let Some(e) = s.live.get_mut(&id)
        {
            e.thread_id = thread_id;
            e.subject = subject.to_owned();
        }
    }

    /// The server thread a caller may kill through minted id `id` of `target`.
    pub fn resolve(&self, target: &str, id: u32, subject: &str) -> Result<u32, Refusal> {
        let s = self.inner.lock().map_err(|_| Refusal::Unknown)?;
        match s.live.get(&id) {
            Some(e) if e.target == target && e.thread_id != 0 => {
                if e.subject == subject {
                    Ok(e.thread_id)
                } else {
                    Err(Refusal::NotOwner)
                }
            }
            _ => Err(Refusal::Unknown),
        }
    }
}

/// A `KILL` statement the gateway answers itself: `KILL [QUERY|CONNECTION] <n>` and nothing
/// else (`KILL HARD`, `KILL USER`, comments or several statements are judged as SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub query_only: bool,
    pub id: u64,
}

/// Recognises a plain `KILL` statement.
pub fn parse_kill(sql: &str) -> Option<Kill> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut next = words.next()?;
    let mut query_only = false;
    if next.eq_ignore_ascii_case("query") {
        query_only = true;
        next = words.next()?;
    } else if next.eq_ignore_ascii_case("connection") {
        next = words.next()?;
    }
    if words.next().is_some() || !next.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Kill {
        query_only,
        id: next.parse().ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kill_statements() {
        assert_eq!(
            parse_kill("KILL QUERY 42"),
            Some(Kill {
                query_only: true,
                id: 42
            })
        );
        assert_eq!(
            parse_kill("  kill connection 7 ;"),
            Some(Kill {
                query_only: false,
                id: 7
            })
        );
        assert_eq!(
            parse_kill("KILL 7"),
            Some(Kill {
                query_only: false,
                id: 7
            })
        );
        for other in [
            "KILL QUERY 1; DROP TABLE t",
            "KILL HARD 1",
            "KILL USER gw",
            "KILL QUERY ID 5",
            "SELECT 1",
            "KILL",
            "KILL QUERY -1",
        ] {
            assert_eq!(parse_kill(other), None, "{other}");
        }
    }

    #[test]
    fn only_the_owner_of_a_live_session_resolves_it() {
        let r: &'static Registry = Box::leak(Box::default());
        let reg = r.register("db", "unix:alice").unwrap();
        assert_eq!(r.resolve("db", reg.id, "unix:alice"), Err(Refusal::Unknown));
        r.bind(reg.id, 77, "unix:alice");
        assert_eq!(r.resolve("db", reg.id, "unix:alice"), Ok(77));
        assert_eq!(r.resolve("db", reg.id, "unix:bob"), Err(Refusal::NotOwner));
        assert_eq!(
            r.resolve("other", reg.id, "unix:alice"),
            Err(Refusal::Unknown)
        );
        let other = r.register("db", "unix:alice").unwrap();
        assert_ne!(other.id, reg.id);
        let id = reg.id;
        drop(reg);
        assert_eq!(r.resolve("db", id, "unix:alice"), Err(Refusal::Unknown));
    }
}
