//! Least privilege on MariaDB / MySQL: the role each command runs as.
//!
//! The same design as PostgreSQL's ([`postgres::roles`](crate::protocol::postgres::roles)):
//! policy names the role (a rule's `run_as`, an approved command's `approved_run_as`, the
//! target's `run_as` otherwise) and the session obeys with `SET ROLE` commands of its own,
//! whose answers the client never sees. MySQL is simpler in two ways and harder in one:
//!
//! - One command at a time, answered completely: a switch is always sent and checked before
//!   the command that needs it, and nothing is pipelined behind it.
//! - `SET ROLE` is not transactional (no `SET LOCAL ROLE`; `ROLLBACK` does not undo it, and it
//!   commits nothing), so the gateway's belief holds whatever the client's transactions do.
//! - So an elevation is a switch before the approved command and an explicit switch back
//!   right after its answer, inside or outside a transaction alike. A switch back that fails
//!   ends the session: it never goes on elevated.
//!
//! What the client itself ran that may have changed the role (a `SET ROLE` a rule allowed, a
//! procedure call, COM_RESET_CONNECTION, anything unparsed) makes the role unknown: it is set
//! again before the next command that runs as a role.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{self, FrameError, command as com};
use super::wire;
use crate::model::Facts;

/// A role as the session sees it: `None` is the login user's own privileges (`SET ROLE NONE`).
type Role = Option<String>;

/// Statement kinds after which the server's role is unknown: a procedure may `SET ROLE`, and
/// the rest may be anything.
const RESETS: &[&str] = &[
    "set_role",
    "set_privileged",
    "reset",
    "call",
    "execute",
    "unparsed",
    "too_complex",
    "too_long",
    "other",
];

/// What the gateway believes about the server's role, and the roles it may use.
#[derive(Debug, Clone)]
pub struct Roles {
    allowed: Vec<String>,
    /// The target's `run_as`.
    base: Role,
    /// The server's current role (`None`: unknown).
    current: Option<Role>,
}

/// What to do before an allowed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send it as it is.
    Run,
    /// Send this `SET ROLE`, check its answer ([`Roles::switched`]), then the command.
    Switch(String),
    /// Send `before` and check it as for `Switch`; then the command, and once it is answered,
    /// `after` (a failure of which ends the session).
    Elevate { before: String, after: String },
    /// Refuse the command with this message.
    Refuse(String),
}

/// Why one of the gateway's own `SET ROLE`s did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The server answered with an error: the role is unchanged or unknown.
    #[error("{message} (server error {code})")]
    Refused { code: u16, message: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected answer (first byte 0x{0:02x})")]
    Unexpected(u8),
}

impl SwitchError {
    /// Whether the connection is still usable (the server refused, and said so).
    pub fn is_refusal(&self) -> bool {
        matches!(self, SwitchError::Refused { .. })
    }
}

impl Roles {
    /// The roles of a target; `None` when it lists none and has no `run_as` (nothing to do).
    /// The session is switched to `run_as` at login ([`Roles::login_sql`]).
    pub fn new(allowed: &[String], run_as: Option<&str>) -> Option<Self> {
        if allowed.is_empty() && run_as.is_none() {
            return None;
        }
        let base: Role = run_as.map(str::to_owned);
        Some(Self {
            allowed: allowed.to_vec(),
            current: Some(base.clone()),
            base,
        })
    }

    /// The role a session starts in (`None`: the login user's own privileges).
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// The switch made right after login. Always sent, even to `NONE`: the server activates
    /// the login user's `DEFAULT ROLE` at login, which the gateway does not know.
    pub fn login_sql(&self) -> String {
        switch_sql(self.base.as_deref())
    }

    /// What to send before a command allowed to run as `run_as` (`None`: the target's
    /// default), elevated to `elevate` when approved so.
    pub fn plan(&mut self, run_as: Option<&str>, elevate: Option<&str>) -> Step {
        for r in [run_as, elevate].into_iter().flatten() {
            if !self.allowed.iter().any(|a| a == r) {
                return Step::Refuse(format!(
                    "airlock: the rule runs this command as role \"{r}\", which this target does not list in mysql.roles"
                ));
            }
        }
        let desired: Role = run_as.map(str::to_owned).or_else(|| self.base.clone());
        match elevate {
            Some(e) if desired.as_deref() != Some(e) => {
                // Believed once the way back is answered; the session ends if it is not.
                self.current = Some(desired.clone());
                Step::Elevate {
                    before: switch_sql(Some(e)),
                    after: switch_sql(desired.as_deref()),
                }
            }
            _ if self.current.as_ref() == Some(&desired) => Step::Run,
            _ => {
                self.current = Some(desired.clone());
                Step::Switch(switch_sql(desired.as_deref()))
            }
        }
    }

    /// The outcome of a switch before a command: an error makes the role unknown and is the
    /// reason to refuse the command.
    pub fn switched(&mut self, outcome: Result<(), &SwitchError>) -> Result<(), String> {
        outcome.map_err(|e| {
            self.forget();
            format!("airlock: the gateway could not switch roles: {e}")
        })
    }

    /// After a command the client ran: one that may change the role itself makes it unknown.
    pub fn ran(&mut self, facts: &Facts) {
        if facts.kinds.iter().any(|k| RESETS.contains(k)) {
            self.forget();
        }
    }

    /// The server's role is unknown (a reset of the session): set it again before the next
    /// command.
    pub fn forget(&mut self) {
        self.current = None;
    }

    /// Whether `facts` describe a command after which the role is unknown.
    pub fn resets(facts: &Facts) -> bool {
        facts.kinds.iter().any(|k| RESETS.contains(k))
    }
}

/// The SQL of a switch to `role` (`None`: the login user's own privileges).
pub fn switch_sql(role: Option<&str>) -> String {
    match role {
        // Names are checked at load (`valid_role_name`); quoted anyway.
        Some(r) => format!("SET ROLE `{}`", r.replace('`', "``")),
        None => "SET ROLE NONE".into(),
    }
}

/// Sends `sql` as a COM_QUERY of the gateway's own and reads its one-packet answer: the
/// server's status flags from its OK. `buf` holds what was read from `r` and not yet
/// consumed (empty between commands); the answer is consumed from it.
pub async fn exchange<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    sql: &str,
) -> Result<Option<u16>, SwitchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    command(r, w, buf, com::QUERY, sql.as_bytes()).await
}

/// Selects the session's default database (COM_INIT_DB) once it is in a role that may use
/// it; answered as [`exchange`].
pub async fn use_database<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    database: &str,
) -> Result<Option<u16>, SwitchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    command(r, w, buf, com::INIT_DB, database.as_bytes()).await
}

/// One command of the gateway's own whose answer is a single OK or ERR packet.
async fn command<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    cmd: u8,
    body: &[u8],
) -> Result<Option<u16>, SwitchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wire::send_own(w, cmd, body).await?;
    let payload = wire::next_own::<_, SwitchError>(r, buf, 64 * 1024, "answer to the gateway")
        .await?
        .ok_or(SwitchError::Closed)?;
    match payload.first() {
        Some(0x00) => Ok(codec::ok_status(&payload)),
        Some(0xff) => {
            let e = codec::parse_err(&payload).unwrap_or(codec::ServerError {
                code: 0,
                state: String::new(),
                message: "malformed error".into(),
            });
            Err(SwitchError::Refused {
                code: e.code,
                message: e.message,
            })
        }
        other => Err(SwitchError::Unexpected(other.copied().unwrap_or(0))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn roles() -> Roles {
        Roles::new(&["ro".into(), "rw".into()], Some("ro")).unwrap()
    }

    fn facts(kinds: &[&'static str]) -> Facts {
        Facts {
            kinds: kinds.to_vec(),
            ..Facts::default()
        }
    }

    #[test]
    fn same_role_runs_without_switching() {
        let mut r = roles();
        assert_eq!(r.plan(None, None), Step::Run);
        assert_eq!(r.plan(Some("ro"), None), Step::Run);
        assert!(Roles::new(&[], None).is_none());
        assert_eq!(r.login_sql(), "SET ROLE `ro`");
        let none = Roles::new(&["rw".into()], None).unwrap();
        assert_eq!(none.login_sql(), "SET ROLE NONE");
    }

    #[test]
    fn switches_stay_until_another_role_is_needed() {
        let mut r = roles();
        assert_eq!(
            r.plan(Some("rw"), None),
            Step::Switch("SET ROLE `rw`".into())
        );
        assert_eq!(r.plan(Some("rw"), None), Step::Run);
        assert_eq!(r.plan(None, None), Step::Switch("SET ROLE `ro`".into()));
    }

    #[test]
    fn elevation_wraps_one_command() {
        let mut r = roles();
        assert_eq!(
            r.plan(None, Some("rw")),
            Step::Elevate {
                before: "SET ROLE `rw`".into(),
                after: "SET ROLE `ro`".into(),
            }
        );
        // Back in the base role once the way back was answered.
        assert_eq!(r.plan(None, None), Step::Run);
        // Elevating to the role the command runs as anyway is no elevation.
        assert_eq!(
            r.plan(Some("rw"), Some("rw")),
            Step::Switch("SET ROLE `rw`".into())
        );
    }

    #[test]
    fn refusals_failures_and_resets() {
        let mut r = roles();
        assert!(matches!(r.plan(Some("admin"), None), Step::Refuse(m) if m.contains("admin")));
        assert!(matches!(r.plan(None, Some("dba")), Step::Refuse(m) if m.contains("mysql.roles")));
        r.ran(&facts(&["select"]));
        assert_eq!(r.plan(None, None), Step::Run);
        r.ran(&facts(&["select", "call"]));
        assert_eq!(r.plan(None, None), Step::Switch("SET ROLE `ro`".into()));
        let refused = SwitchError::Refused {
            code: 1959,
            message: "Invalid role specification `ro`".into(),
        };
        assert!(refused.is_refusal());
        assert!(r.switched(Err(&refused)).is_err());
        assert_eq!(r.plan(None, None), Step::Switch("SET ROLE `ro`".into()));
        assert!(r.switched(Ok(())).is_ok());
        assert_eq!(r.plan(None, None), Step::Run);
        assert_eq!(switch_sql(Some("a`b")), "SET ROLE `a``b`");
        assert!(Roles::resets(&facts(&["set_role"])));
        assert!(!Roles::resets(&facts(&["update"])));
    }

    #[test]
    fn what_the_classifier_calls_role_changes_resets_the_belief() {
        use crate::model::Dialect;
        use crate::policy::sql::classify::{Limits, classify};
        let resets = |sql: &str| Roles::resets(&classify(sql, Dialect::Mysql, &Limits::default()));
        for sql in [
            "SET ROLE app_writer",
            "SELECT 1; SET ROLE NONE",
            "CALL p()",
            "EXECUTE s",
            "PREPARE s FROM 'SET ROLE x'",
            "RESET CONNECTION",
            "SET DEFAULT ROLE x",
        ] {
            assert!(resets(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "UPDATE t SET a = 1",
            "BEGIN",
            "COMMIT",
            "USE app",
        ] {
            assert!(!resets(sql), "{sql}");
        }
    }

    #[tokio::test]
    async fn exchange_reads_one_answer_and_reports_errors() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let answer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let (mut r, mut w) = tokio::io::split(&mut client);
            let ok = exchange(&mut r, &mut w, &mut buf, "SET ROLE `ro`").await;
            let err = exchange(&mut r, &mut w, &mut buf, "SET ROLE `x`").await;
            (ok, err, buf.len())
        });
        let mut got = vec![0u8; 4 + 14];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[4..], b"\x03SET ROLE `ro`");
        assert_eq!(got[3], 0, "a command of its own: sequence id 0");
        // OK: affected rows 0, insert id 0, status 0x0002, warnings 0.
        server
            .write_all(&[7, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0])
            .await
            .unwrap();
        let mut got = vec![0u8; 4 + 13];
        server.read_exact(&mut got).await.unwrap();
        let mut err = BytesMut::new();
        let mut seq = 1;
        codec::put_err(
            &mut err,
            &mut seq,
            1959,
            "OP000",
            "Invalid role specification `x`",
        );
        server.write_all(&err).await.unwrap();
        let (ok, err, left) = answer.await.unwrap();
        assert_eq!(ok.unwrap(), Some(0x0002));
        let err = err.unwrap_err();
        assert!(
            err.is_refusal() && err.to_string().contains("1959"),
            "{err}"
        );
        assert_eq!(left, 0);
    }
}
