//! Least privilege on the server: the database role each command runs as.
//!
//! Policy names the role (a rule's `run_as`, an approved command's `approved_run_as`, the
//! target's `run_as` otherwise); the session obeys with `SET ROLE` statements of its own,
//! whose answers the client never sees. [`Roles`] keeps what the gateway believes the server's
//! role to be and says, for each allowed command, what to send first:
//!
//! - A session-level `SET ROLE` only when the server is idle (transaction status `I`) and has
//!   answered everything sent, so it commits at once and no rollback can undo it. Inside a
//!   transaction the switch is `SET LOCAL ROLE`, which the transaction's end undoes whichever
//!   way it ends; the gateway forgets it then.
//! - Every switch is waited for before the command goes on: a switch the server refused
//!   refuses the command (fail closed) rather than run it with the wrong role.
//! - An approved command with `approved_run_as` runs between a switch to that role and one
//!   back, both in the same scope (session or `LOCAL`), so the elevation ends with the
//!   statement. Such a command may not begin or end a transaction (the way back would land in
//!   another scope).
//! - Whatever the client ran that may have changed the role itself (`RESET ALL`, `DISCARD
//!   ALL`, `SET ROLE`, … when a rule allowed it) makes the role unknown: it is set again before
//!   the next command.
//! - In the extended protocol the role changes only at the start of a pipeline (right after a
//!   Sync): a command in the middle of one that needs another role is refused.

use bytes::{BufMut, BytesMut};

use super::codec;
use crate::model::Facts;

/// Name of the gateway's own prepared statement and portal for its `SET ROLE`s.
const STATEMENT: &[u8] = b"airlock_role";

/// A role as the session sees it: `None` is the login role itself.
type Role = Option<String>;

/// Statement kinds after which the server's role is unknown.
const RESETS: &[&str] = &[
    "reset",
    "discard",
    "set_role",
    "set_session_authorization",
    "set_privileged",
    "unparsed",
    "too_complex",
    "too_long",
    "other",
];

/// Statement kinds that begin or end a transaction.
const TX_CONTROL: &[&str] = &[
    "begin",
    "commit",
    "rollback",
    "savepoint",
    "release_savepoint",
];

/// What the gateway believes about the server's role, and the roles it may use.
#[derive(Debug, Clone)]
pub struct Roles {
    allowed: Vec<String>,
    /// The target's `run_as`.
    base: Role,
    /// The session-level role (`None`: unknown).
    session: Option<Role>,
    /// The role set with `SET LOCAL` in the open transaction.
    local: Option<Role>,
    /// A switch was sent without waiting for it (the way back after an elevation): check its
    /// outcome before the next command.
    unverified: bool,
    /// Extended protocol: the way back after an elevated command, sent after the next Sync.
    pub(super) after_sync: Option<BytesMut>,
}

/// What the session knows about the server when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    /// Everything sent has been answered (and `status` is current).
    pub synced: bool,
    /// Transaction status of the last ReadyForQuery.
    pub status: u8,
    /// Inside an extended-protocol pipeline (messages since the last Sync).
    pub mid_batch: bool,
}

/// What to do before an allowed command.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send it as it is.
    Run,
    /// Wait until the server answered everything sent, then ask again.
    Sync,
    /// Send this switch, wait for it, check it ([`Roles::switched`]), then send the command.
    Switch(BytesMut),
    /// Send `before`, wait and check as for `Switch`; then the command and right after it
    /// `after` (for the extended protocol: after the pipeline's Sync).
    Elevate { before: BytesMut, after: BytesMut },
    /// In the middle of a pipeline (an approved Bind or Execute): `before` goes right in front
    /// of the message, `after` right behind the statement's Execute, both `SET LOCAL ROLE`
    /// without a Sync (the pipeline's transaction ends the elevation at the latest). A
    /// failed switch fails the pipeline on the server: the statement does not run.
    Inline { before: BytesMut, after: BytesMut },
    /// Refuse the command with this message.
    Refuse(String),
}

impl Roles {
    /// The roles of a target; `None` when it lists none and has no `run_as` (nothing to do).
    /// The session starts as `run_as` (set at login).
    pub fn new(allowed: &[String], run_as: Option<&str>) -> Option<Self> {
        if allowed.is_empty() && run_as.is_none() {
            return None;
        }
        let base: Role = run_as.map(str::to_owned);
        Some(Self {
            allowed: allowed.to_vec(),
            session: Some(base.clone()),
            base,
            local: None,
            unverified: false,
            after_sync: None,
        })
    }

    /// The role a session starts in.
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// What to send before a command allowed to run as `run_as` (`None`: the target's
    /// default), elevated to `elevate` when approved so.
    pub fn plan(
        &mut self,
        run_as: Option<&str>,
        elevate: Option<&str>,
        facts: &Facts,
        server: Server,
    ) -> Step {
        for r in [run_as, elevate].into_iter().flatten() {
            if !self.allowed.iter().any(|a| a == r) {
                return Step::Refuse(format!(
                    "airlock: the rule runs this command as role \"{r}\", which this target does not list in postgres.roles"
                ));
            }
        }
        // The common case first, without allocating: the role in effect is the one wanted.
        let wanted = run_as.or(self.base.as_deref());
        let settled = !self.unverified && self.local.is_none() && self.after_sync.is_none();
        if settled
            && elevate.is_none()
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.as_deref() == wanted)
        {
            return Step::Run;
        }
        let desired: Role = wanted.map(str::to_owned);
        if let Some(e) = elevate
            && server.mid_batch
            && self.after_sync.is_none()
        {
            if facts.kinds.iter().any(|k| TX_CONTROL.contains(k)) {
                return Step::Refuse(format!(
                    "airlock: an approved command that runs as role \"{e}\" may not begin or end a transaction; send it on its own"
                ));
            }
            // Checked once the pipeline is answered.
            self.local = Some(desired.clone());
            self.unverified = true;
            return Step::Inline {
                before: inline(Some(e)),
                after: inline(desired.as_deref()),
            };
        }
        if server.mid_batch
            && self.after_sync.is_none()
            && elevate.is_none()
            && self.session.as_ref() == Some(&desired)
            && self.local.as_ref().is_none_or(|l| l == &desired)
        {
            // Behind an inline elevation and its way back in this pipeline: whichever way the
            // pipeline's transaction ends, the role is `desired` (a failed switch fails the
            // whole pipeline).
            return Step::Run;
        }
        if server.mid_batch || self.after_sync.is_some() {
            return Step::Refuse(format!(
                "airlock: this command runs as role \"{}\"; the gateway changes roles only at the start of a pipeline (send Sync first)",
                elevate.map_or_else(|| show(&desired), str::to_owned)
            ));
        }
        if !server.synced {
            return Step::Sync;
        }
        if server.status == b'I' {
            // Whatever was set LOCAL ended with its transaction.
            self.local = None;
        }
        self.unverified = false;
        if server.status == b'E' {
            // A failed transaction runs nothing but its end.
            return Step::Run;
        }
        let local = server.status == b'T';
        if let Some(e) = elevate {
            if facts.kinds.iter().any(|k| TX_CONTROL.contains(k)) {
                return Step::Refuse(format!(
                    "airlock: an approved command that runs as role \"{e}\" may not begin or end a transaction; send it on its own"
                ));
            }
            self.set(local, desired.clone());
            self.unverified = true;
            return Step::Elevate {
                before: switch(Some(e), local),
                after: switch(desired.as_deref(), local),
            };
        }
        let effective = self.local.as_ref().or(self.session.as_ref());
        if effective == Some(&desired) {
            return Step::Run;
        }
        self.set(local, desired.clone());
        Step::Switch(switch(desired.as_deref(), local))
    }

    fn set(&mut self, local: bool, role: Role) {
        if local {
            self.local = Some(role);
        } else {
            self.session = Some(role);
        }
    }

    /// The outcome of a switch, once the server answered it: an error makes the role unknown
    /// and is the reason to refuse the command.
    pub fn switched(&mut self, error: Option<String>) -> Result<(), String> {
        match error {
            None => Ok(()),
            Some(e) => {
                self.forget();
                Err(format!("airlock: the gateway could not switch roles: {e}"))
            }
        }
    }

    /// After a command went to the server: one that may change the role itself makes it
    /// unknown.
    pub fn ran(&mut self, facts: &Facts) {
        if facts.kinds.iter().any(|k| RESETS.contains(k)) {
            self.forget();
        }
    }

    /// A pipelined switch (the way back) failed: set the role again before the next command.
    pub fn forget(&mut self) {
        self.session = None;
        self.local = None;
    }
}

fn show(role: &Role) -> String {
    role.clone().unwrap_or_else(|| "(login role)".into())
}

/// The SQL of a switch to `role` (`None`: back to the login role).
pub fn switch_sql(role: Option<&str>, local: bool) -> String {
    let scope = if local { "SET LOCAL ROLE" } else { "SET ROLE" };
    match role {
        // Names are checked at load (`valid_role_name`); quoted anyway.
        Some(r) => format!("{scope} \"{}\"", r.replace('"', "\"\"")),
        None => format!("{scope} NONE"),
    }
}

/// A switch as extended-protocol messages on the gateway's own named statement and portal
/// (a simple Query would drop the client's unnamed statement), ending with a Sync: its
/// answers end with their own ReadyForQuery.
pub fn switch(role: Option<&str>, local: bool) -> BytesMut {
    let mut out = statements(&switch_sql(role, local));
    codec::put_message(&mut out, b'S', |_| {});
    out
}

/// How many CloseCompletes answer one switch's messages (see [`statements`]).
pub const CLOSES: u8 = 3;

/// A `SET LOCAL ROLE` inside the client's pipeline (no Sync): answered by a CloseComplete,
/// ParseComplete, BindComplete, CommandComplete and two more CloseCompletes (and a warning
/// outside a transaction block).
pub fn inline(role: Option<&str>) -> BytesMut {
    statements(&switch_sql(role, true))
}

/// Close, Parse, Bind, Execute, Close portal, Close statement. The first Close (not an
/// error when nothing has the name) clears a statement left by a switch the server refused:
/// its error skipped the closing messages up to the Sync.
fn statements(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    codec::put_message(&mut out, b'C', |o| {
        o.put_u8(b'S');
        codec::put_cstr(o, STATEMENT);
    });
    codec::put_message(&mut out, b'P', |o| {
        codec::put_cstr(o, STATEMENT);
        codec::put_cstr(o, sql.as_bytes());
        o.put_i16(0);
    });
    codec::put_message(&mut out, b'B', |o| {
        codec::put_cstr(o, STATEMENT);
        codec::put_cstr(o, STATEMENT);
        o.put_i16(0);
        o.put_i16(0);
        o.put_i16(0);
    });
    codec::put_message(&mut out, b'E', |o| {
        codec::put_cstr(o, STATEMENT);
        o.put_i32(0);
    });
    codec::put_message(&mut out, b'C', |o| {
        o.put_u8(b'P');
        codec::put_cstr(o, STATEMENT);
    });
    codec::put_message(&mut out, b'C', |o| {
        o.put_u8(b'S');
        codec::put_cstr(o, STATEMENT);
    });
    out
}

/// Switches a fresh server session to `role` before the client's first command; the
/// server's error when it refuses. `buf` holds what the server sent after its ReadyForQuery
/// and keeps what follows this exchange. Returns the transaction status after it.
pub async fn set_at_login<S>(stream: &mut S, buf: &mut BytesMut, role: &str) -> Result<u8, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    exchange(stream, buf, &switch(Some(role), false)).await
}

/// Sends `out` (ending with a Sync or a Query) on a session of the gateway's own and reads
/// up to its ReadyForQuery: the transaction status, or the first error (`message (SQLSTATE)`).
pub async fn exchange<S>(stream: &mut S, buf: &mut BytesMut, out: &[u8]) -> Result<u8, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use bytes::Buf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| format!("i/o: {e}");
    stream.write_all(out).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut error = None;
    loop {
        while let Some(h) = codec::peek_header(buf).map_err(|e| e.to_string())? {
            if buf.len() < h.total {
                break;
            }
            let body = &buf[codec::HEADER_LEN..h.total];
            match h.tag {
                b'E' if error.is_none() => {
                    error = Some(
                        codec::parse_error(body)
                            .map(|e| format!("{} ({})", e.message, e.code))
                            .unwrap_or_else(|_| "malformed error".into()),
                    );
                }
                b'Z' => {
                    let status = body.first().copied().unwrap_or(b'I');
                    buf.advance(h.total);
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(status),
                    };
                }
                _ => {}
            }
            buf.advance(h.total);
        }
        if stream.read_buf(buf).await.map_err(io)? == 0 {
            return Err("the server closed the connection".into());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(kinds: &[&'static str]) -> Facts {
        Facts {
            kinds: kinds.to_vec(),
            ..Facts::default()
        }
    }

    const IDLE: Server = Server {
        synced: true,
        status: b'I',
        mid_batch: false,
    };

    fn roles() -> Roles {
        Roles::new(&["ro".into(), "rw".into()], Some("ro")).unwrap()
    }

    #[test]
    fn same_role_runs_without_switching() {
        let mut r = roles();
        let busy = Server {
            synced: false,
            mid_batch: true,
            ..IDLE
        };
        assert_eq!(r.plan(None, None, &facts(&["select"]), busy), Step::Run);
        assert_eq!(
            r.plan(Some("ro"), None, &facts(&["update"]), busy),
            Step::Run
        );
        assert!(Roles::new(&[], None).is_none());
    }

    #[test]
    fn switches_wait_for_the_server_and_use_local_in_transactions() {
        let mut r = roles();
        let pending = Server {
            synced: false,
            ..IDLE
        };
        assert_eq!(
            r.plan(Some("rw"), None, &facts(&["update"]), pending),
            Step::Sync
        );
        assert_eq!(
            r.plan(Some("rw"), None, &facts(&["update"]), IDLE),
            Step::Switch(switch(Some("rw"), false))
        );
        assert_eq!(
            r.plan(Some("rw"), None, &facts(&["update"]), IDLE),
            Step::Run
        );
        let tx = Server {
            status: b'T',
            ..IDLE
        };
        assert_eq!(
            r.plan(None, None, &facts(&["select"]), tx),
            Step::Switch(switch(Some("ro"), true))
        );
        // The LOCAL role is checked again once the transaction may have ended.
        assert_eq!(r.plan(None, None, &facts(&["select"]), pending), Step::Sync);
        assert_eq!(r.plan(None, None, &facts(&["select"]), tx), Step::Run);
        assert_eq!(
            r.plan(None, None, &facts(&["select"]), IDLE),
            Step::Switch(switch(Some("ro"), false))
        );
    }

    #[test]
    fn elevation_wraps_one_statement() {
        let mut r = roles();
        assert_eq!(
            r.plan(None, Some("rw"), &facts(&["update"]), IDLE),
            Step::Elevate {
                before: switch(Some("rw"), false),
                after: switch(Some("ro"), false),
            }
        );
        // The way back is checked before the next command.
        let pending = Server {
            synced: false,
            ..IDLE
        };
        assert_eq!(r.plan(None, None, &facts(&["select"]), pending), Step::Sync);
        assert_eq!(r.plan(None, None, &facts(&["select"]), IDLE), Step::Run);
        let tx = Server {
            status: b'T',
            ..IDLE
        };
        assert_eq!(
            r.plan(None, Some("rw"), &facts(&["update"]), tx),
            Step::Elevate {
                before: switch(Some("rw"), true),
                after: switch(Some("ro"), true),
            }
        );
        assert!(matches!(
            r.plan(None, Some("rw"), &facts(&["begin", "update"]), IDLE),
            Step::Refuse(_)
        ));
    }

    #[test]
    fn refusals_and_resets() {
        let mut r = roles();
        assert!(matches!(
            r.plan(Some("admin"), None, &facts(&["select"]), IDLE),
            Step::Refuse(m) if m.contains("admin")
        ));
        let mid = Server {
            mid_batch: true,
            ..IDLE
        };
        assert!(matches!(
            r.plan(Some("rw"), None, &facts(&["update"]), mid),
            Step::Refuse(m) if m.contains("Sync")
        ));
        assert_eq!(
            r.plan(None, Some("rw"), &facts(&["update"]), mid),
            Step::Inline {
                before: inline(Some("rw")),
                after: inline(Some("ro")),
            }
        );
        let mut r = roles();
        r.ran(&facts(&["discard"]));
        assert_eq!(
            r.plan(None, None, &facts(&["select"]), IDLE),
            Step::Switch(switch(Some("ro"), false))
        );
        assert!(r.switched(Some("permission denied".into())).is_err());
        assert_eq!(
            r.plan(None, None, &facts(&["select"]), IDLE),
            Step::Switch(switch(Some("ro"), false))
        );
        assert_eq!(switch_sql(None, true), "SET LOCAL ROLE NONE");
        assert_eq!(switch_sql(Some("a\"b"), false), "SET ROLE \"a\"\"b\"");
    }
}
