//! The gateway's own login to the PostgreSQL server: TCP, optional TLS, the StartupMessage,
//! then SCRAM-SHA-256 (with `tls-server-end-point` channel binding over TLS), MD5 or cleartext
//! with the credentials from the target's configuration. Clients never see these credentials.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self, FrameError, HEADER_LEN, Reader};
use super::startup;
use super::tls::{self, MaybeTls, TlsError};
use crate::config::{PostgresTarget, UpstreamTlsMode};

/// Why the gateway could not open a session on the server. Each maps to what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS handshake with the server: {0}")]
    Handshake(std::io::Error),
    #[error("the server does not support TLS, and tls.mode requires it")]
    TlsRefused,
    #[error("no password configured: {0}")]
    Password(String),
    #[error("{message}")]
    /// The server refused: its SQLSTATE and message.
    Server { code: String, message: String },
    #[error("unsupported authentication method {0} requested by the server")]
    Unsupported(String),
    /// The SCRAM exchange failed (postgres-protocol's client: a foreign nonce, a bad server
    /// signature — not the real server —, a malformed message).
    #[error("SCRAM: {0}")]
    Scram(#[source] std::io::Error),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl BackendError {
    /// SQLSTATE for the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Server { code, .. } => code,
            BackendError::Password(_) | BackendError::Unsupported(_) | BackendError::Scram(_) => {
                "28000"
            }
            _ => "08001",
        }
    }

    /// Whether the failure is about credentials (logged and reported as an authentication error).
    pub fn is_auth(&self) -> bool {
        self.sqlstate().starts_with("28")
    }
}

/// An authenticated server session, ready for queries.
#[derive(Debug)]
pub struct Backend {
    pub stream: MaybeTls,
    /// ParameterStatus and NoticeResponse messages the server sent during startup, as bytes to
    /// forward to the client.
    pub forward: BytesMut,
    /// The server's own cancel key (never shown to the client).
    pub key: Option<(i32, Vec<u8>)>,
    /// Transaction status from the first ReadyForQuery.
    pub status: u8,
    /// Leftover bytes read past the first ReadyForQuery (the session loop's read buffer).
    pub buffer: BytesMut,
    /// How the server authenticated us.
    pub auth: AuthMethod,
}

/// The authentication exchange the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server let us in without a password (trust).
    None,
    Cleartext,
    Md5,
    ScramSha256,
    /// SCRAM with `tls-server-end-point` channel binding.
    ScramSha256Plus,
}

/// Reads the password the target's configuration points at.
pub fn resolve_password(pg: &PostgresTarget) -> Result<Option<String>, BackendError> {
    if let Some(p) = &pg.password {
        return Ok(Some(p.clone()));
    }
    if let Some(var) = &pg.password_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| BackendError::Password(format!("environment variable {var} is not set")));
    }
    if let Some(path) = &pg.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BackendError::Password(format!("{}: {e}", path.display())))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(None)
}

/// Connects to `addr`, negotiates TLS as configured, logs in as the target's user with the
/// startup `params` (user and database already set by the caller), and reads up to the first
/// ReadyForQuery.
///
/// With a `password_file`, a refused password is retried once with what a rotation in
/// progress holds (see [`credentials`](crate::protocol::credentials)): the server may have
/// taken the new password after this login read the file.
pub async fn connect(
    pg: &PostgresTarget,
    addr: SocketAddr,
    params: &[(&str, &str)],
) -> Result<Backend, BackendError> {
    let password = resolve_password(pg)?;
    match connect_with(pg, addr, params, password.clone()).await {
        Err(e) if e.sqlstate() == "28P01" => {
            let Some(file) = &pg.password_file else {
                return Err(e);
            };
            for candidate in crate::protocol::credentials::candidates(file) {
                if password.as_deref() == Some(candidate.as_str()) {
                    continue;
                }
                if let Ok(b) = connect_with(pg, addr, params, Some(candidate)).await {
                    return Ok(b);
                }
            }
            Err(e)
        }
        r => r,
    }
}

async fn connect_with(
    pg: &PostgresTarget,
    addr: SocketAddr,
    params: &[(&str, &str)],
    password: Option<String>,
) -> Result<Backend, BackendError> {
    let tcp = crate::intercept::sockets::connect(addr)
        .await
        .map_err(|source| BackendError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let mut out = BytesMut::with_capacity(256);
    let mut stream = match tls::connector(&pg.tls, addr.ip())? {
        None => MaybeTls::Plain(tcp),
        Some((connector, name)) => {
            let mut tcp = tcp;
            startup::put_ssl_request(&mut out);
            tcp.write_all(&out).await?;
            out.clear();
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match answer[0] {
                b'S' => {}
                b'N' => return Err(BackendError::TlsRefused),
                other => {
                    return Err(BackendError::Protocol(format!(
                        "answer {other:#x} to SSLRequest"
                    )));
                }
            }
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(BackendError::Handshake)?;
            MaybeTls::Client(Box::new(tls))
        }
    };
    debug_assert!(pg.tls.mode == UpstreamTlsMode::Disable || !matches!(stream, MaybeTls::Plain(_)));

    startup::put_startup(&mut out, params.iter().copied());
    stream.write_all(&out).await?;
    out.clear();

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut forward = BytesMut::new();
    let mut key = None;
    let mut auth = AuthMethod::None;
    let mut scram_verified = false;
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf).await?;
        match tag {
            b'R' => {
                let mut r = Reader::new(&body, "Authentication");
                let code = r.i32()?;
                match code {
                    0 => {
                        // A server that skips SASLFinal has not proven it knows the password.
                        if scram.is_some() && !scram_verified {
                            return Err(BackendError::Protocol(
                                "the server skipped SASLFinal".into(),
                            ));
                        }
                    }
                    3 => {
                        auth = AuthMethod::Cleartext;
                        if !(pg.cleartext_password || pg.tls.mode == UpstreamTlsMode::VerifyFull) {
                            return Err(BackendError::Protocol(
                                "the server asks for the password in cleartext, which goes only to a server verified by TLS (verify-full) or with cleartext_password: true".into(),
                            ));
                        }
                        let pw = need(&password)?;
                        codec::put_message(&mut out, b'p', |o| codec::put_cstr(o, pw.as_bytes()));
                    }
                    5 => {
                        auth = AuthMethod::Md5;
                        let pw = need(&password)?;
                        let salt = r.bytes(4)?;
                        let hashed = md5_password(&pg.user, pw, salt);
                        codec::put_message(&mut out, b'p', |o| {
                            codec::put_cstr(o, hashed.as_bytes())
                        });
                    }
                    10 => {
                        let pw = need(&password)?;
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        let cert = match &stream {
                            MaybeTls::Client(t) => t
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec()),
                            _ => None,
                        };
                        let (mechanism, binding) = if mechanisms.contains(&"SCRAM-SHA-256-PLUS")
                            && cert.is_some()
                        {
                            let cb = cert.as_deref().map(tls::server_end_point);
                            (
                                "SCRAM-SHA-256-PLUS",
                                Some(ChannelBinding::tls_server_end_point(cb.unwrap_or_default())),
                            )
                        } else if mechanisms.contains(&"SCRAM-SHA-256") {
                            // Over TLS without -PLUS on offer: `y,,` lets the server
                            // detect a downgrade; in plaintext, `n,,`.
                            let b = if cert.is_some() {
                                ChannelBinding::unrequested()
                            } else {
                                ChannelBinding::unsupported()
                            };
                            ("SCRAM-SHA-256", Some(b))
                        } else {
                            return Err(BackendError::Unsupported(format!(
                                "SASL ({})",
                                mechanisms.join(", ")
                            )));
                        };
                        let binding = binding.unwrap_or_else(ChannelBinding::unsupported);
                        auth = if mechanism.ends_with("-PLUS") {
                            AuthMethod::ScramSha256Plus
                        } else {
                            AuthMethod::ScramSha256
                        };
                        let client = ScramSha256::new(pw.as_bytes(), binding);
                        let first = client.message();
                        codec::put_message(&mut out, b'p', |o| {
                            codec::put_cstr(o, mechanism.as_bytes());
                            o.put_i32(i32::try_from(first.len()).unwrap_or(i32::MAX));
                            o.put_slice(first);
                        });
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLContinue without SASL".into())
                        })?;
                        client.update(r.rest()).map_err(BackendError::Scram)?;
                        codec::put_message(&mut out, b'p', |o| o.put_slice(client.message()));
                    }
                    12 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLFinal without SASL".into())
                        })?;
                        client.finish(r.rest()).map_err(BackendError::Scram)?;
                        scram_verified = true;
                    }
                    2 => return Err(BackendError::Unsupported("Kerberos V5".into())),
                    6 => return Err(BackendError::Unsupported("SCM credentials".into())),
                    7 | 8 => return Err(BackendError::Unsupported("GSSAPI".into())),
                    9 => return Err(BackendError::Unsupported("SSPI".into())),
                    other => return Err(BackendError::Unsupported(format!("code {other}"))),
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
            }
            b'E' => {
                let e = codec::parse_error(&body)?;
                return Err(BackendError::Server {
                    code: e.code.to_string(),
                    message: e.message.to_string(),
                });
            }
            b'S' | b'N' => {
                codec::put_message(&mut forward, tag, |o| o.put_slice(&body));
            }
            b'K' => {
                let mut r = Reader::new(&body, "BackendKeyData");
                let pid = r.i32()?;
                key = Some((pid, r.rest().to_vec()));
            }
            b'v' => {
                // We only send 3.0 without options; a server answering this is broken.
                return Err(BackendError::Protocol(
                    "unexpected NegotiateProtocolVersion".into(),
                ));
            }
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'I');
                return Ok(Backend {
                    stream,
                    forward,
                    key,
                    status,
                    buffer: buf,
                    auth,
                });
            }
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    char::from(other)
                )));
            }
        }
    }
}

fn need(password: &Option<String>) -> Result<&str, BackendError> {
    password.as_deref().ok_or_else(|| {
        BackendError::Password(
            "the server asks for a password; set password, password_env or password_file".into(),
        )
    })
}

/// Reads one whole message; startup-phase traffic is small, so a copy of the body is fine.
async fn read_message(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
) -> Result<(u8, Vec<u8>), BackendError> {
    loop {
        if let Some(h) = codec::peek_header(buf)? {
            if buf.len() >= h.total {
                let body = buf[HEADER_LEN..h.total].to_vec();
                buf.advance(h.total);
                return Ok((h.tag, body));
            }
            buf.reserve(h.total - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// `md5` + md5(md5(password + user) + salt), as hex.
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let inner = hex(&Md5::new()
        .chain_update(password.as_bytes())
        .chain_update(user.as_bytes())
        .finalize());
    let outer = Md5::new()
        .chain_update(inner.as_bytes())
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex(&outer))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn md5_known_answer() {
        // SELECT 'md5' || md5(md5('secretalice') || 'salt')
        assert_eq!(
            md5_password("alice", "secret", b"salt"),
            "md5986e2194384c07f4fd1df4b1351b3e68"
        );
    }
}
