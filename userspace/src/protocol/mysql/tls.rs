//! TLS on both legs. MySQL upgrades in the middle of its handshake: after the server's
//! greeting the client sends an SSLRequest (the first 32 bytes of a handshake response with
//! CLIENT_SSL set) and both sides start TLS on the same socket; the handshake response then
//! travels inside it. The rustls configurations (ring provider, cached per setting) are the
//! PostgreSQL handler's: one certificate loader and one verifier for every database protocol.

use std::net::IpAddr;

use tokio::net::TcpStream;

pub use crate::protocol::postgres::tls::{MaybeTls, TlsError};
use crate::protocol::postgres::tls::{acceptor, connector};

use crate::config::{ClientTls, UpstreamTls};

/// Accepts TLS from a client that sent an SSLRequest.
pub async fn accept(tcp: TcpStream, cfg: &ClientTls) -> Result<MaybeTls, TlsUpgradeError> {
    let acceptor = acceptor(cfg)?;
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(TlsUpgradeError::Handshake)?;
    Ok(MaybeTls::Server(Box::new(tls)))
}

/// Starts TLS to the server after our SSLRequest (`Ok(None)` for `mode: disable`).
pub async fn connect(
    tcp: TcpStream,
    cfg: &UpstreamTls,
    upstream_ip: IpAddr,
) -> Result<MaybeTls, TlsUpgradeError> {
    let Some((connector, name)) = connector(cfg, upstream_ip)? else {
        return Ok(MaybeTls::Plain(tcp));
    };
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(TlsUpgradeError::Handshake)?;
    Ok(MaybeTls::Client(Box::new(tls)))
}

/// Why a TLS upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsUpgradeError {
    #[error(transparent)]
    Config(#[from] TlsError),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// What the audit log records about a client's TLS session.
pub fn client_info(stream: &MaybeTls) -> Option<crate::audit::TlsInfo> {
    let MaybeTls::Server(t) = stream else {
        return None;
    };
    let (_, conn) = t.get_ref();
    Some(crate::audit::TlsInfo {
        version: conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("tls")
            .to_string(),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .map(str::to_string),
        server_name: conn.server_name().map(str::to_string),
        client_subject: None,
    })
}
