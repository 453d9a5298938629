//! Rotating the password the gateway logs in to a MariaDB/MySQL target with: what MySQL adds
//! to the shared steps of [`protocol::credentials`](crate::protocol::credentials).
//!
//! The gateway logs in with its current password and changes its own account's password with
//! `SET PASSWORD`, the one form an account may use on itself without the `CREATE USER`
//! privilege on both servers (MariaDB refuses `ALTER USER` to an account without it, and the
//! gateway's login user, in a least-privilege setup, holds no rights of its own):
//!
//! - MariaDB, logged in with `mysql_native_password`: `SET PASSWORD = '*<SHA1(SHA1(pw))>'`,
//!   the stored hash, so the plaintext never reaches the server or its logs.
//! - MariaDB with another method (`ed25519`, …): `SET PASSWORD = PASSWORD('<pw>')`, which
//!   MariaDB hashes with the account's own plugin.
//! - MySQL: `SET PASSWORD = '<pw>'` (MySQL takes no stored hash from an account changing its
//!   own password).
//!
//! The last two carry the plaintext, so the gateway sends them only over TLS (`tls.mode`) or
//! to a loopback server, and otherwise refuses the rotation, changing nothing. MySQL checks
//! passwords only at login: open sessions go on.

use std::net::SocketAddr;

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;

use super::backend_auth::{self, Backend, LoginRequest};
use super::tls::MaybeTls;
use crate::config::MysqlTarget;
use crate::protocol::credentials::{ChangeError, LoginError};

/// The change as the audit log records it (never the secret).
pub(crate) const RECORDED: &str = "SET PASSWORD = '…'";

/// utf8mb4_general_ci, known to MariaDB and MySQL alike.
const COLLATION: u8 = 45;

/// Logs in to `upstream` with what the configuration (the password file) holds: no default
/// database (the login user may have no rights on it), no attributes.
async fn login(my: &MysqlTarget, upstream: SocketAddr) -> Result<Backend, LoginError> {
    let request = LoginRequest {
        capabilities: CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_TRANSACTIONS,
        collation: COLLATION,
        max_packet: 1 << 24,
        database: None,
        attributes: None,
        no_database: true,
    };
    let greeted = backend_auth::connect(upstream).await?;
    Ok(backend_auth::login(greeted, my, &request).await?)
}

/// Logs in to `upstream` with the current password and sets `password` on the account.
pub(crate) async fn change(
    my: &MysqlTarget,
    upstream: SocketAddr,
    password: &str,
) -> Result<(), ChangeError> {
    let mut b = login(my, upstream).await.map_err(ChangeError::Login)?;
    let private = !matches!(b.stream, MaybeTls::Plain(_)) || upstream.ip().is_loopback();
    let sql = statement(b.hello.mariadb, &b.method, private, password).map_err(|why| {
        ChangeError::Unsafe(format!(
            "the gateway logs in to {upstream} as `{}` with {}, {why}",
            my.user, b.method
        ))
    })?;
    let mut buf = BytesMut::new();
    let changed = {
        let (mut rd, mut wr) = tokio::io::split(&mut b.stream);
        super::roles::exchange(&mut rd, &mut wr, &mut buf, &sql).await
    };
    // COM_QUIT.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut b.stream, &[1, 0, 0, 0, 1]).await;
    match changed {
        Ok(_) => Ok(()),
        Err(e) if e.is_refusal() => Err(ChangeError::Refused(e.to_string())),
        Err(e) => Err(ChangeError::Interrupted(e.to_string())),
    }
}

/// Logs in to `upstream` with what the password file holds.
pub(crate) async fn log_in(my: &MysqlTarget, upstream: SocketAddr) -> Result<(), LoginError> {
    let mut b = login(my, upstream).await?;
    let _ = tokio::io::AsyncWriteExt::write_all(&mut b.stream, &[1, 0, 0, 0, 1]).await;
    Ok(())
}

/// The statement that sets `password` on the logged-in account, or why the gateway will not
/// send one: `private` is whether the connection is TLS or to a loopback address.
fn statement(mariadb: bool, method: &str, private: bool, password: &str) -> Result<String, String> {
    // Generated passwords are URL-safe base64: nothing to escape in a string literal.
    if password.is_empty()
        || !password
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err("and the new password is not URL-safe base64".into());
    }
    if mariadb && method == "mysql_native_password" {
        return Ok(format!("SET PASSWORD = '{}'", native_hash(password)));
    }
    if !private {
        return Err(
            "so the new password would reach the server in clear over a plaintext connection: set `mysql.tls.mode`, or rotate against a loopback server"
                .into(),
        );
    }
    Ok(if mariadb {
        format!("SET PASSWORD = PASSWORD('{password}')")
    } else {
        format!("SET PASSWORD = '{password}'")
    })
}

/// The hash `mysql_native_password` stores: `*` and the upper-case hex of SHA1(SHA1(pw)).
fn native_hash(password: &str) -> String {
    use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY as SHA1, digest};
    let inner = digest(&SHA1, password.as_bytes());
    let outer = digest(&SHA1, inner.as_ref());
    let mut hex = String::with_capacity(41);
    hex.push('*');
    for b in outer.as_ref() {
        hex.push_str(&format!("{b:02X}"));
    }
    hex
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn native_hash_known_vector() {
        assert_eq!(
            native_hash("password"),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn plaintext_only_over_tls_or_loopback() {
        let native = "mysql_native_password";
        assert_eq!(
            statement(true, native, false, "pw").unwrap(),
            format!("SET PASSWORD = '{}'", native_hash("pw"))
        );
        for (mariadb, method) in [(true, "client_ed25519"), (false, native)] {
            let err = statement(mariadb, method, false, "pw").unwrap_err();
            assert!(err.contains("in clear"), "{err}");
        }
        assert_eq!(
            statement(true, "client_ed25519", true, "pw").unwrap(),
            "SET PASSWORD = PASSWORD('pw')"
        );
        assert_eq!(
            statement(false, "caching_sha2_password", true, "pw").unwrap(),
            "SET PASSWORD = 'pw'"
        );
        assert!(statement(true, native, true, "a'b").is_err());
    }
}
