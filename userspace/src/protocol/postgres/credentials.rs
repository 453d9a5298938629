//! Rotating the password the gateway logs in to a PostgreSQL target with: what PostgreSQL
//! adds to the shared steps of [`protocol::credentials`](crate::protocol::credentials).
//!
//! The gateway logs in with its current password and sets a new one on its own login role
//! with `ALTER ROLE … PASSWORD` and a SCRAM-SHA-256 verifier computed here, so the plaintext
//! never reaches the server or its logs. PostgreSQL checks passwords only at login: open
//! sessions go on.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::BytesMut;

use super::backend_auth;
use super::codec;
use crate::config::PostgresTarget;
use crate::protocol::credentials::{ChangeError, LoginError};

/// PBKDF2 iterations of the verifier (PostgreSQL's default `scram_iterations`).
const ITERATIONS: u32 = 4096;

fn params(pg: &PostgresTarget) -> [(&str, &str); 3] {
    [
        ("user", pg.user.as_str()),
        ("database", pg.database.as_deref().unwrap_or("postgres")),
        ("application_name", "airlock-rotate"),
    ]
}

/// Logs in to `upstream` with the current password and sets `password` on the login role.
pub(crate) async fn change(
    pg: &PostgresTarget,
    upstream: SocketAddr,
    password: &str,
) -> Result<(), ChangeError> {
    let mut b = backend_auth::connect(pg, upstream, &params(pg))
        .await
        .map_err(|e| ChangeError::Login(e.into()))?;
    let verifier = scram_verifier(password)
        .map_err(|e| ChangeError::Unsafe(format!("no random bytes for the salt: {e}")))?;
    let sql = format!(
        "ALTER ROLE \"{}\" PASSWORD '{verifier}'",
        pg.user.replace('"', "\"\"")
    );
    let mut out = BytesMut::new();
    codec::put_message(&mut out, b'Q', |o| codec::put_cstr(o, sql.as_bytes()));
    let altered = super::roles::exchange(&mut b.stream, &mut b.buffer, &out).await;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut b.stream, &[b'X', 0, 0, 0, 4]).await;
    match altered {
        Ok(_) => Ok(()),
        // A server error (`message (SQLSTATE)`) changed nothing; a broken connection may have
        // applied it.
        Err(e) if e.ends_with(')') => Err(ChangeError::Refused(e)),
        Err(e) => Err(ChangeError::Interrupted(e)),
    }
}

/// Logs in to `upstream` with what the password file holds.
pub(crate) async fn log_in(pg: &PostgresTarget, upstream: SocketAddr) -> Result<(), LoginError> {
    backend_auth::connect(pg, upstream, &params(pg)).await?;
    Ok(())
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
    }
}
