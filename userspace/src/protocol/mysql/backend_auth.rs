//! The gateway's own login to the MySQL or MariaDB server: TCP and the server's greeting (read
//! first: the client-facing greeting is built from it), then TLS when configured, the handshake
//! response with the session's capabilities, and the challenge-response of whatever method the
//! server asks for, with the credentials from the target's configuration:
//! `mysql_native_password`, `caching_sha2_password` (fast path; full authentication with the
//! password in clear over TLS, or RSA-encrypted with the server's public key without it),
//! MariaDB's `client_ed25519`, and `mysql_clear_password` over TLS only. mysql_common's plugins
//! compute the answers; this module drives the exchange. Clients never see these credentials.

use std::collections::HashMap;
use std::net::SocketAddr;

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakeResponse, SslRequest};
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::codec;
use super::handshake::{HandshakeError, ServerHello};
use super::tls::{self, MaybeTls};
use super::wire::{self, WireError};
use crate::config::{MysqlTarget, UpstreamTlsMode};

/// Why the gateway could not open a session on the server.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection to the server: {0}")]
    Wire(#[from] WireError),
    #[error("server greeting: {0}")]
    Greeting(#[from] HandshakeError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsUpgradeError),
    #[error("the server does not support TLS, and tls.mode requires it")]
    TlsRefused,
    #[error("no password configured: {0}")]
    Password(String),
    /// The server refused: its error code, SQLSTATE and message.
    #[error("{message} (server error {code})")]
    Server {
        code: u16,
        state: String,
        message: String,
    },
    #[error("unsupported authentication method {0} requested by the server")]
    Unsupported(String),
    #[error("{0}")]
    Auth(String),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl BackendError {
    /// Whether the failure is about credentials.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            BackendError::Password(_)
                | BackendError::Unsupported(_)
                | BackendError::Auth(_)
                | BackendError::Server { code: 1045, .. }
        )
    }

    /// The error code and SQLSTATE for the client.
    pub fn client_code(&self) -> (u16, &str) {
        match self {
            BackendError::Server { code, state, .. } => (*code, state),
            e if e.is_auth() => (codec::errno::ACCESS_DENIED, "28000"),
            _ => (codec::errno::CONN_HOST_ERROR, "08001"),
        }
    }
}

/// Reads the password the target's configuration points at.
pub fn resolve_password(cfg: &MysqlTarget) -> Result<Vec<u8>, BackendError> {
    if let Some(p) = &cfg.password {
        return Ok(p.as_bytes().to_vec());
    }
    if let Some(var) = &cfg.password_env {
        return std::env::var(var)
            .map(String::into_bytes)
            .map_err(|_| BackendError::Password(format!("environment variable {var} is not set")));
    }
    if let Some(path) = &cfg.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BackendError::Password(format!("{}: {e}", path.display())))?;
        return Ok(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec());
    }
    Ok(Vec::new())
}

/// A connected server that sent its greeting, not yet logged in.
#[derive(Debug)]
pub struct Greeted {
    pub stream: TcpStream,
    pub hello: ServerHello,
    addr: SocketAddr,
}

/// Connects and reads the server's greeting.
pub async fn connect(addr: SocketAddr) -> Result<Greeted, BackendError> {
    // A marked socket: the kernel programs let the daemon's own upstream connections through.
    let mut stream = crate::intercept::sockets::connect(addr)
        .await
        .map_err(|source| BackendError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let (payload, _) = wire::read_packet(&mut stream, "server greeting").await?;
    let hello = ServerHello::parse(&payload)?;
    Ok(Greeted {
        stream,
        hello,
        addr,
    })
}

/// What the session asks of the login.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// The session's capabilities (both legs use the same).
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub max_packet: u32,
    pub database: Option<String>,
    pub attributes: Option<HashMap<String, String>>,
    /// Log in without a default database (the session selects it after switching to a role
    /// that may use it: the login user itself may not).
    pub no_database: bool,
}

/// An authenticated server session, ready for commands.
#[derive(Debug)]
pub struct Backend {
    pub stream: MaybeTls,
    pub hello: ServerHello,
    /// The server's final OK payload (status flags, session state), for the client.
    pub ok: Vec<u8>,
    /// The plugin that authenticated us.
    pub method: String,
}

/// Logs in to a greeted server with the target's credentials.
///
/// With a `password_file`, a password the server refuses (error 1045) is retried once with
/// what a rotation in progress holds (see [`credentials`](crate::protocol::credentials)), on a
/// new connection (the refusal closed this one): the server may have taken the new password
/// after this login read the file. The returned [`Backend`] carries the greeting of the
/// connection that logged in.
pub async fn login(
    greeted: Greeted,
    cfg: &MysqlTarget,
    req: &LoginRequest,
) -> Result<Backend, BackendError> {
    let addr = greeted.addr;
    let password = resolve_password(cfg)?;
    match login_with(greeted, cfg, req, &password).await {
        Err(e @ BackendError::Server { code: 1045, .. }) => {
            let Some(file) = &cfg.password_file else {
                return Err(e);
            };
            for candidate in crate::protocol::credentials::candidates(file) {
                if candidate.as_bytes() == password.as_slice() {
                    continue;
                }
                let Ok(greeted) = connect(addr).await else {
                    break;
                };
                if let Ok(b) = login_with(greeted, cfg, req, candidate.as_bytes()).await {
                    tracing::info!(user = %cfg.user, "logged in with the password of a rotation in progress");
                    return Ok(b);
                }
            }
            Err(e)
        }
        r => r,
    }
}

async fn login_with(
    greeted: Greeted,
    cfg: &MysqlTarget,
    req: &LoginRequest,
    password: &[u8],
) -> Result<Backend, BackendError> {
    let Greeted {
        stream,
        hello,
        addr,
    } = greeted;
    let mut caps = req.capabilities & hello.capabilities;
    caps.insert(
        CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH,
    );
    let mut seq = 1u8;
    let stream = if cfg.tls.mode == UpstreamTlsMode::Disable {
        MaybeTls::Plain(stream)
    } else {
        if !hello.capabilities.contains(CapabilityFlags::CLIENT_SSL) {
            return Err(BackendError::TlsRefused);
        }
        caps.insert(CapabilityFlags::CLIENT_SSL);
        let mut tcp = stream;
        let mut p = Vec::with_capacity(32);
        SslRequest::new(caps, req.max_packet, req.collation).serialize(&mut p);
        wire::write_packet(&mut tcp, &mut seq, &p).await?;
        tls::connect(tcp, &cfg.tls, addr.ip()).await?
    };
    let tls_on = !matches!(stream, MaybeTls::Plain(_));
    // In MySQL the database is only the default schema (USE switches it, judged): the
    // client's choice, else the configured default.
    let database = req
        .database
        .clone()
        .or_else(|| cfg.database.clone())
        .filter(|_| !req.no_database);
    let (stream, ok, method) = authenticate(
        stream,
        &hello,
        caps,
        req,
        cfg.user.as_bytes(),
        database.as_deref(),
        password,
        tls_on,
        seq,
    )
    .await?;
    Ok(Backend {
        stream,
        hello,
        ok,
        method,
    })
}

/// Everything mysql_common's plugins need to compute an answer.
struct Ctx<'a> {
    pass: &'a [u8],
    tls: bool,
    scramble: &'a [u8],
    key: Option<&'a [u8]>,
}

impl mysql_common::auth::plugins::Context for &Ctx<'_> {
    fn pass(&self) -> &[u8] {
        self.pass
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        self.key
    }
}

/// The auth plugins the gateway logs in with. `mysql_clear_password` and the other plugins
/// that send the password itself are refused on a plaintext connection.
fn plugin_for(name: &[u8], tls: bool) -> Result<AuthPlugin<'static>, BackendError> {
    let plugin = AuthPlugin::from_bytes(name).into_owned();
    match plugin {
        AuthPlugin::MysqlNativePassword | AuthPlugin::CachingSha2Password | AuthPlugin::Ed25519 => {
            Ok(plugin)
        }
        AuthPlugin::MysqlClearPassword if tls => Ok(plugin),
        AuthPlugin::MysqlClearPassword => Err(BackendError::Auth(
            "the server asks for the password in clear (mysql_clear_password) over a plaintext \
             connection; set tls.mode for this target"
                .into(),
        )),
        other => Err(BackendError::Unsupported(
            String::from_utf8_lossy(other.as_bytes()).into_owned(),
        )),
    }
}

/// The handshake response and the challenge-response loop, up to the server's OK. Generic over
/// the stream so unit tests can play the server.
#[allow(clippy::too_many_arguments)]
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    hello: &ServerHello,
    caps: CapabilityFlags,
    req: &LoginRequest,
    user: &[u8],
    database: Option<&str>,
    password: &[u8],
    tls: bool,
    mut seq: u8,
) -> Result<(S, Vec<u8>, String), BackendError> {
    use mysql_common::auth::plugins::{AuthProc, ChallengeResponsePlugin, Response};

    let mut plugin = plugin_for(&hello.plugin, tls)?;
    let mut nonce = hello.nonce.clone();
    let mut key: Option<Vec<u8>> = None;
    let mut proc = AuthProc::init(&plugin).map_err(|e| BackendError::Auth(e.to_string()))?;
    let step = |proc: &mut AuthProc, nonce: &[u8], key: Option<&[u8]>, challenge: &[u8]| {
        let ctx = Ctx {
            pass: password,
            tls,
            scramble: nonce,
            key,
        };
        proc.run(&ctx, challenge)
            .map_err(|e| BackendError::Auth(format!("authentication step failed: {e}")))
    };
    let first = step(&mut proc, &nonce, None, &nonce.clone())?;
    let data = first.data().map(<[u8]>::to_vec).unwrap_or_default();
    let response = HandshakeResponse::new(
        Some(data),
        (5, 5, 3),
        Some(user),
        database.map(str::as_bytes),
        Some(plugin.clone()),
        caps,
        req.attributes.clone(),
        req.max_packet,
    );
    // The session's collation, not mysql_common's default.
    let mut p = Vec::with_capacity(128);
    response.serialize(&mut p);
    if let Some(c) = p.get_mut(8) {
        *c = req.collation;
    }
    drop(response);
    wire::write_packet(&mut stream, &mut seq, &p).await?;
    let mut done = matches!(first, Response::Last { .. });
    loop {
        let (packet, s) = wire::read_packet(&mut stream, "authentication").await?;
        seq = s.wrapping_add(1);
        match packet.first() {
            Some(0x00) => {
                let method = String::from_utf8_lossy(plugin.as_bytes()).into_owned();
                return Ok((stream, packet, method));
            }
            Some(0xff) => {
                let e = codec::parse_err(&packet).ok_or_else(|| {
                    BackendError::Protocol("malformed ERR packet during login".into())
                })?;
                return Err(BackendError::Server {
                    code: e.code,
                    state: e.state,
                    message: e.message,
                });
            }
            Some(0xfe) => {
                // AuthSwitchRequest: start over with another plugin and nonce.
                let switch: AuthSwitchRequest<'_> = ParseBuf(&packet)
                    .parse(())
                    .map_err(|_| BackendError::Protocol("malformed auth switch".into()))?;
                plugin = plugin_for(switch.auth_plugin().as_bytes(), tls)?;
                nonce = switch.plugin_data().to_vec();
                proc = AuthProc::init(&plugin).map_err(|e| BackendError::Auth(e.to_string()))?;
                key = None;
                let r = step(&mut proc, &nonce, None, &nonce.clone())?;
                done = matches!(r, Response::Last { .. });
                let data = r.data().map(<[u8]>::to_vec).unwrap_or_default();
                wire::write_packet(&mut stream, &mut seq, &data).await?;
            }
            Some(0x01) => {
                // AuthMoreData: the plugin's next challenge (caching_sha2's 0x03/0x04, or the
                // server's PEM public key).
                if done {
                    return Err(BackendError::Protocol(
                        "more authentication data after the last answer".into(),
                    ));
                }
                let challenge = &packet[1..];
                if challenge.starts_with(b"-----BEGIN") {
                    key = Some(challenge.to_vec());
                }
                let r = step(&mut proc, &nonce, key.as_deref(), challenge)?;
                done = matches!(r, Response::Last { .. });
                if let Some(d) = r.data() {
                    wire::write_packet(&mut stream, &mut seq, d).await?;
                }
            }
            _ => {
                return Err(BackendError::Protocol(
                    "unexpected packet during login".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
