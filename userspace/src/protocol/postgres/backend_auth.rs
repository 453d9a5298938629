//! The gateway's own login to the PostgreSQL server: TCP, optional TLS, the StartupMessage,
//! then SCRAM-SHA-256 (with `tls-server-end-point` channel binding over TLS), MD5 or cleartext
//! with the credentials from the target's configuration. Clients never see these credentials.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, BufMut, BytesMut};
use ring::rand::SecureRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    #[error("SCRAM: {0}")]
    Scram(&'static str),
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
pub async fn connect(
    pg: &PostgresTarget,
    addr: SocketAddr,
    params: &[(&str, &str)],
) -> Result<Backend, BackendError> {
    let tcp = TcpStream::connect(addr)
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

    let password = resolve_password(pg)?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramClient> = None;
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
                            return Err(BackendError::Scram("the server skipped SASLFinal"));
                        }
                    }
                    3 => {
                        auth = AuthMethod::Cleartext;
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
                        let (mechanism, binding) =
                            if mechanisms.contains(&"SCRAM-SHA-256-PLUS") && cert.is_some() {
                                let cb = cert.as_deref().map(tls::server_end_point);
                                (
                                    "SCRAM-SHA-256-PLUS",
                                    ChannelBinding::Required(cb.unwrap_or_default()),
                                )
                            } else if mechanisms.contains(&"SCRAM-SHA-256") {
                                let b = if cert.is_some() {
                                    ChannelBinding::SupportedNotUsed
                                } else {
                                    ChannelBinding::NotSupported
                                };
                                ("SCRAM-SHA-256", b)
                            } else {
                                return Err(BackendError::Unsupported(format!(
                                    "SASL ({})",
                                    mechanisms.join(", ")
                                )));
                            };
                        auth = if matches!(binding, ChannelBinding::Required(_)) {
                            AuthMethod::ScramSha256Plus
                        } else {
                            AuthMethod::ScramSha256
                        };
                        let client = ScramClient::new(pw, binding)?;
                        let first = client.client_first();
                        codec::put_message(&mut out, b'p', |o| {
                            codec::put_cstr(o, mechanism.as_bytes());
                            o.put_i32(i32::try_from(first.len()).unwrap_or(i32::MAX));
                            o.put_slice(first.as_bytes());
                        });
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLContinue without SASL".into())
                        })?;
                        let fin = client.handle_server_first(r.rest())?;
                        codec::put_message(&mut out, b'p', |o| o.put_slice(fin.as_bytes()));
                    }
                    12 => {
                        let client = scram.as_ref().ok_or_else(|| {
                            BackendError::Protocol("SASLFinal without SASL".into())
                        })?;
                        client.verify_server_final(r.rest())?;
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

/// Channel binding state of a SCRAM exchange (the GS2 header).
#[derive(Debug, Clone)]
pub enum ChannelBinding {
    /// No TLS: `n,,`.
    NotSupported,
    /// TLS, but the server did not offer -PLUS: `y,,` (lets the server detect a downgrade).
    SupportedNotUsed,
    /// `p=tls-server-end-point,,` with the certificate hash.
    Required(Vec<u8>),
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::NotSupported => "n,,",
            ChannelBinding::SupportedNotUsed => "y,,",
            ChannelBinding::Required(_) => "p=tls-server-end-point,,",
        }
    }
}

/// A SCRAM-SHA-256 client (RFC 5802, RFC 7677).
#[derive(Debug)]
pub struct ScramClient {
    password: String,
    binding: ChannelBinding,
    client_first_bare: String,
    nonce: String,
    /// Set after the server's first message.
    auth_message: String,
    salted: Vec<u8>,
}

fn hmac256(key: &[u8], data: &[u8]) -> ring::hmac::Tag {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data)
}

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(password: &str, binding: ChannelBinding) -> Result<Self, BackendError> {
        let mut raw = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| BackendError::Scram("no randomness"))?;
        // PostgreSQL takes the user from the startup packet; the SCRAM user name stays empty.
        Ok(Self::with_nonce(password, "", &B64.encode(raw), binding))
    }

    /// A client with a given nonce (tests use the RFC's vectors).
    pub fn with_nonce(password: &str, user: &str, nonce: &str, binding: ChannelBinding) -> Self {
        Self {
            password: password.to_string(),
            binding,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_string(),
            auth_message: String::new(),
            salted: Vec::new(),
        }
    }

    /// The client-first-message.
    pub fn client_first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare)
    }

    /// Takes the server-first-message, returns the client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<String, BackendError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| BackendError::Scram("server-first is not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in msg.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(BackendError::Scram("server-first without nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(BackendError::Scram(
                "server nonce does not extend the client nonce",
            ));
        }
        let salt = B64
            .decode(salt.ok_or(BackendError::Scram("server-first without salt"))?)
            .map_err(|_| BackendError::Scram("salt is not base64"))?;
        let iterations = iterations
            .and_then(NonZeroU32::new)
            .ok_or(BackendError::Scram("invalid iteration count"))?;
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::Required(data) = &self.binding {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
        self.auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let client_key = hmac256(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
        let signature = hmac256(stored_key.as_ref(), self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        self.salted = salted.to_vec();
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: the server proves it knows the password too.
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), BackendError> {
        let msg = std::str::from_utf8(msg)
            .map_err(|_| BackendError::Scram("server-final is not UTF-8"))?;
        if msg.starts_with("e=") {
            return Err(BackendError::Scram("the server reported a SCRAM error"));
        }
        let v = msg
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or(BackendError::Scram("server-final without signature"))?;
        let v = B64
            .decode(v)
            .map_err(|_| BackendError::Scram("server signature is not base64"))?;
        if self.salted.is_empty() {
            return Err(BackendError::Scram("server-final before server-first"));
        }
        let server_key = hmac256(&self.salted, b"Server Key");
        ring::hmac::verify(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_key.as_ref()),
            self.auth_message.as_bytes(),
            &v,
        )
        .map_err(|_| BackendError::Scram("the server's signature is wrong (not the real server?)"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scram_rfc7677_vector() {
        let mut c = ScramClient::with_nonce(
            "pencil",
            "user",
            "rOprNGfwEbeRWgbNEkqO",
            ChannelBinding::NotSupported,
        );
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .handle_server_first(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            )
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(
            c.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
                .is_err()
        );
    }

    #[test]
    fn scram_rejects_foreign_nonce() {
        let mut c = ScramClient::with_nonce("p", "", "abc", ChannelBinding::NotSupported);
        assert!(c.handle_server_first(b"r=xyz123,s=QUJD,i=4096").is_err());
    }

    #[test]
    fn md5_known_answer() {
        // SELECT 'md5' || md5(md5('secretalice') || 'salt')
        assert_eq!(
            md5_password("alice", "secret", b"salt"),
            "md5986e2194384c07f4fd1df4b1351b3e68"
        );
    }
}
