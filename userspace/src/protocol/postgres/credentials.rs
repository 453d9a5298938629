//! Rotating the password the gateway logs in to a PostgreSQL target with.
//!
//! The gateway logs in with its current password, sets a new random one on its own login
//! role (`ALTER ROLE … PASSWORD` with a SCRAM-SHA-256 verifier computed here, so the
//! plaintext never reaches the server or its logs), and writes it back to the target's
//! `password_file`, which every new session reads: new sessions use the new password, open
//! ones go on (PostgreSQL checks passwords only at login). The new secret is staged next to
//! the file (mode 0600) before the server is changed, and moved into place after, so a failure
//! at any step says which password works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::BytesMut;

use super::backend_auth::{self, BackendError};
use super::codec;
use crate::config::PostgresTarget;

/// PBKDF2 iterations of the verifier (PostgreSQL's default `scram_iterations`).
const ITERATIONS: u32 = 4096;

/// Why a rotation failed; every message says which password works now.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "rotation writes the new password back to `postgres.password_file`, and this target has none; the old password still works"
    )]
    NoFile,
    #[error("cannot stage the new password at {path}: {source}; the old password still works")]
    Stage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("logging in with the current password: {0}; the old password is unchanged")]
    Login(BackendError),
    #[error("the server refused the new password: {0}; the old password still works")]
    Alter(String),
    #[error(
        "the server took the new password, but {file} could not be replaced: {source}; the new password is in {staged}"
    )]
    Commit {
        file: PathBuf,
        staged: PathBuf,
        source: std::io::Error,
    },
    #[error("the new password (now in {file}) does not log in: {0}", file = .1.display())]
    Verify(BackendError, PathBuf),
    #[error("no random bytes: {0}")]
    Random(std::io::Error),
}

/// Sets a new password for the target's login role on the server at `upstream` and writes it
/// to the target's `password_file`. Returns the file.
pub async fn rotate(pg: &PostgresTarget, upstream: SocketAddr) -> Result<PathBuf, RotateError> {
    let file = pg.password_file.clone().ok_or(RotateError::NoFile)?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::secrets::random(24).map_err(RotateError::Random)?);
    let staged = staged_path(&file);
    crate::secrets::write(&staged, format!("{password}\n").as_bytes(), 0o600, true).map_err(
        |source| RotateError::Stage {
            path: staged.clone(),
            source,
        },
    )?;
    let database = pg.database.as_deref().unwrap_or("postgres");
    let params = [
        ("user", pg.user.as_str()),
        ("database", database),
        ("application_name", "airlock-rotate"),
    ];
    let fail = |e| {
        let _ = std::fs::remove_file(&staged);
        e
    };
    let mut b = backend_auth::connect(pg, upstream, &params)
        .await
        .map_err(|e| fail(RotateError::Login(e)))?;
    let verifier = scram_verifier(&password).map_err(|e| fail(RotateError::Random(e)))?;
    let sql = format!(
        "ALTER ROLE \"{}\" PASSWORD '{verifier}'",
        pg.user.replace('"', "\"\"")
    );
    let mut out = BytesMut::new();
    codec::put_message(&mut out, b'Q', |o| codec::put_cstr(o, sql.as_bytes()));
    let altered = super::roles::exchange(&mut b.stream, &mut b.buffer, &out).await;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut b.stream, &[b'X', 0, 0, 0, 4]).await;
    if let Err(e) = altered {
        // A server error changed nothing; a broken connection may have applied it, so the
        // staged password is kept (and named) then.
        if e.ends_with(')') {
            let _ = std::fs::remove_file(&staged);
            return Err(RotateError::Alter(e));
        }
        return Err(RotateError::Alter(format!(
            "{e} (the server may have applied it: the new password is in {})",
            staged.display()
        )));
    }
    std::fs::rename(&staged, &file).map_err(|source| RotateError::Commit {
        file: file.clone(),
        staged: staged.clone(),
        source,
    })?;
    // The file is what new sessions read: log in with what it holds now.
    backend_auth::connect(pg, upstream, &params)
        .await
        .map_err(|e| RotateError::Verify(e, file.clone()))?;
    tracing::info!(user = %pg.user, file = %file.display(), "gateway password rotated");
    Ok(file)
}

/// Errors of a recorded rotation.
#[derive(Debug, thiserror::Error)]
pub enum RecordedError {
    #[error("target `{0}` is not a PostgreSQL target")]
    NotPostgres(String),
    #[error("the audit log cannot record the rotation, so it was not made: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Rotate(#[from] RotateError),
}

/// [`rotate`], recorded in the audit log as a session of the gateway's own (subject
/// `airlock:credential-rotation`) with one command, `ALTER ROLE "<user>" PASSWORD '…'`
/// (never the secret), and its outcome. A rotation the log cannot record is not made.
pub async fn rotate_recorded(
    ctx: &crate::runtime::Context,
    target: &crate::config::TargetConfig,
    upstream: SocketAddr,
) -> Result<PathBuf, RecordedError> {
    use crate::audit::{CommandEvent, CommandResult, EndReason, SessionStart};
    let pg = target
        .postgres
        .as_ref()
        .ok_or_else(|| RecordedError::NotPostgres(target.name.clone()))?;
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
            protocol: crate::model::Protocol::Postgres,
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
    let text = format!(
        "ALTER ROLE \"{}\" PASSWORD '…'",
        pg.user.replace('"', "\"\"")
    );
    let (n, ack) = rec
        .command(CommandEvent {
            command: &crate::model::Command::sql(crate::model::Dialect::Postgres, &text),
            facts: &crate::model::Facts::single("alter_role", crate::model::Class::Admin),
            decision: &decision,
            approval: None,
        })
        .await?;
    if let Err(e) = ack.durable().await {
        crate::gate::session::close(rec, EndReason::AuditFailure, None, 0, 0).await;
        return Err(e.into());
    }
    let started = std::time::Instant::now();
    let outcome = rotate(pg, upstream).await;
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

/// Rotates every PostgreSQL target with `rotate_every` on that schedule until `stop`
/// resolves (the daemon drains). A failed rotation is logged and recorded; the old password
/// keeps working and the next attempt comes one interval later.
pub async fn schedule(ctx: std::sync::Arc<crate::runtime::Context>, stop: crate::drain::Watch) {
    let config = ctx.config.load_full();
    let mut tasks = tokio::task::JoinSet::new();
    for t in &config.targets {
        let (Some(every), Some(upstream)) =
            (t.postgres.as_ref().and_then(|p| p.rotate_every), t.upstream)
        else {
            continue;
        };
        let (ctx, t) = (std::sync::Arc::clone(&ctx), t.clone());
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every.0).await;
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

/// Passwords a rotation of `pg` may have set, newest first: the staged one (the server may
/// have it before it is moved into place), then the file's current content.
pub fn candidates(pg: &PostgresTarget) -> Vec<String> {
    let Some(file) = &pg.password_file else {
        return Vec::new();
    };
    [staged_path(file), file.clone()]
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

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677; an ASCII
/// password needs no SASLprep).
fn scram_verifier(password: &str) -> std::io::Result<String> {
    use ring::{digest, hmac, pbkdf2};
    let salt = crate::secrets::random(16)?;
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        b64(&salt),
        b64(stored_key.as_ref()),
        b64(server_key.as_ref())
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verifier_shape() {
        let v = scram_verifier("pw").unwrap();
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(head.len(), "4096:".len() + 24);
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!((stored.len(), server.len()), (44, 44));
        assert_ne!(v, scram_verifier("pw").unwrap(), "fresh salt each time");
        assert_eq!(
            staged_path(Path::new("/etc/airlock/db.pw")),
            Path::new("/etc/airlock/db.pw.rotating")
        );
    }
}
