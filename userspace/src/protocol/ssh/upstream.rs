//! The gateway's own SSH connection to the target: the server's host key must be one of the
//! pinned keys, or a host certificate from the pinned CA for the target's name (never trusted
//! on first use), and the login is a per-session user certificate from airlock's user CA, or
//! the key the operator gave the gateway. The caller never sees either.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{
    Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use tokio::sync::watch;

use super::authority::{Authority, AuthorityError, check_host_certificate};
use crate::config::SshTarget;

/// How long connecting and logging in to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not reach or log in to the server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the server's host key is not trusted: {0}")]
    HostKey(String),
    #[error("ssh to the server: {0}")]
    Ssh(#[from] russh::Error),
    #[error("the server refused the gateway's login as {0}")]
    Login(String),
    #[error("gateway credential: {0}")]
    Credential(String),
}

impl From<AuthorityError> for UpstreamError {
    fn from(e: AuthorityError) -> Self {
        UpstreamError::Credential(e.to_string())
    }
}

/// What the server's host key must be.
#[derive(Debug, Clone)]
pub enum HostTrust {
    Keys(Vec<PublicKey>),
    Ca { ca: PublicKey, name: String },
}

impl HostTrust {
    /// The trust a target's `ssh` block pins (validated at load: the keys parse).
    pub fn of(ssh: &SshTarget, upstream: SocketAddr) -> Result<Self, UpstreamError> {
        let parse = |k: &str| {
            PublicKey::from_openssh(k.trim())
                .map_err(|e| UpstreamError::Credential(format!("pinned key: {e}")))
        };
        Ok(match &ssh.host_ca {
            Some(ca) => HostTrust::Ca {
                ca: parse(ca)?,
                name: ssh
                    .host_name
                    .clone()
                    .unwrap_or_else(|| upstream.ip().to_string()),
            },
            None => HostTrust::Keys(
                ssh.host_keys
                    .iter()
                    .map(|k| parse(k))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Why `presented` is not trusted (`None`: it is).
    fn refuse(&self, presented: &PublicKeyOrCertificate) -> Option<String> {
        match (self, presented) {
            (HostTrust::Keys(keys), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                (!keys.iter().any(|k| k.key_data() == key.key_data())).then(|| {
                    format!(
                        "{} is not one of the pinned host keys",
                        key.fingerprint(HashAlg::Sha256)
                    )
                })
            }
            (HostTrust::Keys(_), PublicKeyOrCertificate::Certificate(_)) => {
                Some("a certificate where a pinned key was expected".into())
            }
            (HostTrust::Ca { ca, name }, PublicKeyOrCertificate::Certificate(cert)) => {
                check_host_certificate(cert, ca, name).err()
            }
            (HostTrust::Ca { .. }, PublicKeyOrCertificate::PublicKey { key, .. }) => Some(format!(
                "a bare key ({}) where a certificate from the pinned host CA was expected",
                key.fingerprint(HashAlg::Sha256)
            )),
        }
    }
}

/// The russh client handler of the gateway's connection to the server.
pub struct UpstreamHandler {
    trust: HostTrust,
    /// Why the host key was refused, for the error message.
    refused: Arc<Mutex<Option<String>>>,
    /// Dropped with the handler, when the connection ends: receivers learn the server is gone.
    _alive: watch::Sender<()>,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.trust.refuse(key) {
            None => Ok(true),
            Some(why) => {
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// A logged-in connection to the server.
pub struct Upstream {
    pub handle: client::Handle<UpstreamHandler>,
    /// Changes (with an error) once the connection has ended.
    pub gone: watch::Receiver<()>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// Ciphers towards the server, fastest first: here the gateway chooses (towards the client
/// the client does, from what [`offer`](super::offer) offers it). ring's AES-GCM runs on AES-NI and carry-less multiply, several
/// times the speed of its ChaCha20-Poly1305 (whose Poly1305 is portable C): on a bulk sftp
/// transfer the two ciphers were over half the gateway's CPU with ChaCha20 on both legs.
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The client configuration: the server's window and packet sizes as OpenSSH uses them, AES-GCM
/// first, and certificate host key algorithms when a host CA is pinned.
fn config(trust: &HostTrust) -> client::Config {
    let mut c = client::Config {
        window_size: super::WINDOW_SIZE,
        maximum_packet_size: super::MAX_PACKET_SIZE,
        channel_buffer_size: super::CHANNEL_BUFFER,
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    c.preferred.cipher = std::borrow::Cow::Borrowed(UPSTREAM_CIPHERS);
    if let HostTrust::Ca { .. } = trust {
        c.preferred.host_key_certificates = std::borrow::Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]);
    }
    c
}

/// Connects to `addr` and logs in as `ssh.user`. `key_id` names the caller and the session in
/// the user certificate.
pub async fn connect(
    ssh: &SshTarget,
    authority: &Authority,
    addr: SocketAddr,
    key_id: &str,
) -> Result<Upstream, UpstreamError> {
    let trust = HostTrust::of(ssh, addr)?;
    // A marked socket: the kernel programs let the daemon's own connections through.
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, crate::intercept::sockets::connect(addr))
        .await
        .map_err(|_| UpstreamError::Timeout("connecting to the server"))?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let local = stream
        .local_addr()
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let refused = Arc::new(Mutex::new(None));
    let (alive, gone) = watch::channel(());
    let handler = UpstreamHandler {
        trust: trust.clone(),
        refused: Arc::clone(&refused),
        _alive: alive,
    };
    let login = async {
        let mut handle =
            match client::connect_stream(Arc::new(config(&trust)), stream, handler).await {
                Ok(h) => h,
                Err(e) => {
                    let why = refused.lock().ok().and_then(|mut r| r.take());
                    return Err(match why {
                        Some(why) => UpstreamError::HostKey(why),
                        None => UpstreamError::Ssh(e),
                    });
                }
            };
        let result = match &ssh.key_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| UpstreamError::Credential(format!("{}: {e}", path.display())))?;
                let key = PrivateKey::from_openssh(&pem)
                    .map_err(|e| UpstreamError::Credential(format!("{}: {e}", path.display())))?;
                let hash = handle.best_supported_rsa_hash().await?.flatten();
                handle
                    .authenticate_publickey(
                        ssh.user.clone(),
                        PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await?
            }
            None => {
                let (key, cert) = authority.user_certificate(
                    &ssh.user,
                    key_id,
                    local.ip(),
                    ssh.certificate_ttl.0,
                )?;
                handle
                    .authenticate_openssh_cert(ssh.user.clone(), Arc::new(key), cert)
                    .await?
            }
        };
        if !result.success() {
            return Err(UpstreamError::Login(ssh.user.clone()));
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(CONNECT_TIMEOUT, login)
        .await
        .map_err(|_| UpstreamError::Timeout("logging in to the server"))??;
    Ok(Upstream { handle, gone })
}
