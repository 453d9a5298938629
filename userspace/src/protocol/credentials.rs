//! Rotating the password the gateway logs in to a database target with, for every protocol
//! that has one (PostgreSQL, MariaDB/MySQL).
//!
//! What is the same for all of them lives here: a new random password (24 bytes, URL-safe
//! base64), staged next to the target's `password_file` (`<file>.rotating`, mode 0600) before
//! the server is changed, moved into place by a rename after, then a login with what the file
//! holds; the audit-recorded wrapper; the schedule; and the [`candidates`] a login retries with
//! when the server refuses the file's password in the middle of a rotation. Each protocol
//! supplies the rest ([`postgres::credentials`](super::postgres::credentials),
//! [`mysql::credentials`](super::mysql::credentials)): log in with the current password, set
//! the new one on the server, and log in again. New sessions read the file, so they use the
//! new password; open ones go on (both servers check passwords only at login). A failure at
//! any step says which password works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use crate::config::{MysqlTarget, PostgresTarget, TargetConfig};
use crate::model::{Class, Dialect, Protocol};

/// A protocol's login error, boxed: the steps here do not need its shape.
pub type LoginError = Box<dyn std::error::Error + Send + Sync>;

/// The longest a protocol's change or check may take before the rotation gives up on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The login a rotation changes: a database target's block.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    Postgres(&'a PostgresTarget),
    Mysql(&'a MysqlTarget),
}

/// How a protocol's "log in, set the new password" step failed.
#[derive(Debug)]
pub enum ChangeError {
    /// The login with the current password failed: nothing was sent.
    Login(LoginError),
    /// The gateway would not send the change (why): nothing was sent.
    Unsafe(String),
    /// The server answered the change with an error: nothing changed.
    Refused(String),
    /// The connection broke or timed out after the change was sent: it may have applied.
    Interrupted(String),
}

/// Why a rotation failed; every message says which password works now.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "rotation writes the new password back to `{0}.password_file`, and this target has none; the old password still works"
    )]
    NoFile(&'static str),
    #[error("cannot stage the new password at {path}: {source}; the old password still works")]
    Stage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("logging in with the current password: {0}; the old password is unchanged")]
    Login(LoginError),
    #[error("{0}; the old password still works")]
    Unsafe(String),
    #[error("the server refused the new password: {0}; the old password still works")]
    Alter(String),
    #[error(
        "setting the new password: {error}; the server may have applied it: the new password is in {staged}, the old one still in the password file"
    )]
    Interrupted { error: String, staged: PathBuf },
    #[error(
        "the server took the new password, but {file} could not be replaced: {source}; the new password is in {staged}"
    )]
    Commit {
        file: PathBuf,
        staged: PathBuf,
        source: std::io::Error,
    },
    #[error("the new password (now in {file}) does not log in: {0}", file = .1.display())]
    Verify(LoginError, PathBuf),
    #[error("no random bytes: {0}")]
    Random(std::io::Error),
}

impl<'a> Account<'a> {
    /// The database login of `target`, if its protocol has one.
    pub fn of(target: &'a TargetConfig) -> Option<Self> {
        match target.protocol {
            Protocol::Postgres => target.postgres.as_ref().map(Account::Postgres),
            Protocol::Mysql => target.mysql.as_ref().map(Account::Mysql),
            _ => None,
        }
    }

    /// The user the gateway logs in as.
    pub fn user(&self) -> &'a str {
        match self {
            Account::Postgres(pg) => &pg.user,
            Account::Mysql(my) => &my.user,
        }
    }

    /// The file the password is read from and written back to.
    pub fn password_file(&self) -> Option<&'a Path> {
        match self {
            Account::Postgres(pg) => pg.password_file.as_deref(),
            Account::Mysql(my) => my.password_file.as_deref(),
        }
    }

    /// How often the daemon rotates it.
    pub fn rotate_every(&self) -> Option<Duration> {
        match self {
            Account::Postgres(pg) => pg.rotate_every.map(|d| d.0),
            Account::Mysql(my) => my.rotate_every.map(|d| d.0),
        }
    }

    /// The configuration key of the block (`postgres`, `mysql`).
    fn key(&self) -> &'static str {
        match self {
            Account::Postgres(_) => "postgres",
            Account::Mysql(_) => "mysql",
        }
    }

    /// The command as the audit log shows it (never the secret), and its kind and class.
    fn recorded(&self) -> (Protocol, Dialect, String, &'static str, Class) {
        match self {
            Account::Postgres(pg) => (
                Protocol::Postgres,
                Dialect::Postgres,
                format!(
                    "ALTER ROLE \"{}\" PASSWORD '…'",
                    pg.user.replace('"', "\"\"")
                ),
                "alter_role",
                Class::Admin,
            ),
            Account::Mysql(_) => (
                Protocol::Mysql,
                Dialect::Mysql,
                super::mysql::credentials::RECORDED.to_owned(),
                "set_privileged",
                Class::Dcl,
            ),
        }
    }

    /// Logs in with the current password and sets `password` on the server.
    async fn change(&self, upstream: SocketAddr, password: &str) -> Result<(), ChangeError> {
        let step = async {
            match self {
                Account::Postgres(pg) => {
                    super::postgres::credentials::change(pg, upstream, password).await
                }
                Account::Mysql(my) => {
                    super::mysql::credentials::change(my, upstream, password).await
                }
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .unwrap_or_else(|_| {
                Err(ChangeError::Interrupted(format!(
                    "no answer within {STEP_TIMEOUT:?}"
                )))
            })
    }

    /// Logs in with what the password file holds.
    async fn verify(&self, upstream: SocketAddr) -> Result<(), LoginError> {
        let step = async {
            match self {
                Account::Postgres(pg) => super::postgres::credentials::log_in(pg, upstream).await,
                Account::Mysql(my) => super::mysql::credentials::log_in(my, upstream).await,
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {STEP_TIMEOUT:?}").into()))
    }
}

/// Sets a new password for the account's login on the server at `upstream` and writes it to
/// the account's `password_file`. Returns the file.
pub async fn rotate(account: Account<'_>, upstream: SocketAddr) -> Result<PathBuf, RotateError> {
    let file = account
        .password_file()
        .ok_or(RotateError::NoFile(account.key()))?
        .to_owned();
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::secrets::random(24).map_err(RotateError::Random)?);
    let staged = staged_path(&file);
    crate::secrets::write(&staged, format!("{password}\n").as_bytes(), 0o600, true).map_err(
        |source| RotateError::Stage {
            path: staged.clone(),
            source,
        },
    )?;
    let discard = |e: RotateError| {
        let _ = std::fs::remove_file(&staged);
        e
    };
    match account.change(upstream, &password).await {
        Ok(()) => {}
        Err(ChangeError::Login(e)) => return Err(discard(RotateError::Login(e))),
        Err(ChangeError::Unsafe(m)) => return Err(discard(RotateError::Unsafe(m))),
        Err(ChangeError::Refused(m)) => return Err(discard(RotateError::Alter(m))),
        // The server may have applied it: the staged password is kept (and named).
        Err(ChangeError::Interrupted(error)) => {
            return Err(RotateError::Interrupted { error, staged });
        }
    }
    std::fs::rename(&staged, &file).map_err(|source| RotateError::Commit {
        file: file.clone(),
        staged: staged.clone(),
        source,
    })?;
    // The file is what new sessions read: log in with what it holds now.
    account
        .verify(upstream)
        .await
        .map_err(|e| RotateError::Verify(e, file.clone()))?;
    tracing::info!(protocol = account.key(), user = %account.user(), file = %file.display(), "gateway password rotated");
    Ok(file)
}

/// Errors of a recorded rotation.
#[derive(Debug, thiserror::Error)]
pub enum RecordedError {
    #[error("target `{0}` is not a database target (PostgreSQL, MariaDB/MySQL) with a login")]
    NotDatabase(String),
    #[error("the audit log cannot record the rotation, so it was not made: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Rotate(#[from] RotateError),
}

/// [`rotate`], recorded in the audit log as a session of the gateway's own (subject
/// `airlock:credential-rotation`) with one command (PostgreSQL `ALTER ROLE "<user>" PASSWORD
/// '…'`, MySQL `SET PASSWORD = '…'`; never the secret) and its outcome. A rotation the log
/// cannot record is not made.
pub async fn rotate_recorded(
    ctx: &crate::runtime::Context,
    target: &TargetConfig,
    upstream: SocketAddr,
) -> Result<PathBuf, RecordedError> {
    use crate::audit::{CommandEvent, CommandResult, EndReason, SessionStart};
    let account =
        Account::of(target).ok_or_else(|| RecordedError::NotDatabase(target.name.clone()))?;
    let (protocol, dialect, text, kind, class) = account.recorded();
    let identity = crate::model::Identity {
        subject: "airlock:credential-rotation".into(),
        groups: Vec::new(),
        workload: None,
        token: None,
    };
    let mut rec = crate::gate::session::open(
        ctx,
        SessionStart {
            proxy_session: None,
            identity: &identity,
            workload: None,
            target: &target.name,
            protocol,
            client: None,
            original_dst: None,
            tls: None,
        },
    )
    .await?;
    let decision = crate::model::Decision::Allow {
        rule: "credential-rotation".into(),
        mask: Vec::new(),
        run_as: None,
    };
    let (n, ack) = rec
        .command(CommandEvent {
            command: &crate::model::Command::sql(dialect, &text),
            facts: &crate::model::Facts::single(kind, class),
            decision: &decision,
            approval: None,
            caller: None,
        })
        .await?;
    if let Err(e) = ack.durable().await {
        crate::gate::session::close(rec, EndReason::AuditFailure, None, 0, 0).await;
        return Err(e.into());
    }
    let started = std::time::Instant::now();
    let outcome = rotate(account, upstream).await;
    let result = CommandResult {
        duration: started.elapsed(),
        error: outcome.as_ref().err().map(ToString::to_string),
        ..CommandResult::default()
    };
    if let Ok(ack) = rec.result(n, result).await {
        let _ = ack.durable().await;
    }
    let reason = if outcome.is_ok() {
        EndReason::ClientClosed
    } else {
        EndReason::Error
    };
    crate::gate::session::close(rec, reason, None, 0, 0).await;
    Ok(outcome?)
}

/// Rotates every database target with `rotate_every` on that schedule until `stop` resolves
/// (the daemon drains). A failed rotation is logged and recorded; the old password keeps
/// working and the next attempt comes one interval later.
pub async fn schedule(ctx: std::sync::Arc<crate::runtime::Context>, stop: crate::drain::Watch) {
    let config = ctx.config.load_full();
    let mut tasks = tokio::task::JoinSet::new();
    for t in &config.targets {
        let (Some(every), Some(upstream)) =
            (Account::of(t).and_then(|a| a.rotate_every()), t.upstream)
        else {
            continue;
        };
        let (ctx, t) = (std::sync::Arc::clone(&ctx), t.clone());
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match rotate_recorded(&ctx, &t, upstream).await {
                    Ok(_) => tracing::info!(target = %t.name, "scheduled password rotation done"),
                    Err(error) => {
                        tracing::error!(target = %t.name, %error, "scheduled password rotation failed")
                    }
                }
            }
        });
    }
    if tasks.is_empty() {
        return;
    }
    stop.draining().await;
    tasks.abort_all();
}

/// Passwords a rotation writing to `file` may have set, newest first: the staged one (the
/// server may have it before it is moved into place), then the file's current content. A
/// login the server refuses with the password it read from `file` tries these once.
pub fn candidates(file: &Path) -> Vec<String> {
    [staged_path(file), file.to_owned()]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn staged_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".rotating");
    PathBuf::from(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn staged_next_to_the_file_and_candidates_newest_first() {
        assert_eq!(
            staged_path(Path::new("/etc/airlock/db.pw")),
            Path::new("/etc/airlock/db.pw.rotating")
        );
        let dir = std::env::temp_dir().join(format!("airlock-cand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("db.pw");
        assert!(candidates(&file).is_empty());
        std::fs::write(&file, "old\n").unwrap();
        assert_eq!(candidates(&file), ["old"]);
        std::fs::write(staged_path(&file), "new\r\n").unwrap();
        assert_eq!(candidates(&file), ["new", "old"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
