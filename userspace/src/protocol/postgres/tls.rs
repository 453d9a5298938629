//! TLS on both legs with rustls (ring provider): termination towards clients with a configured
//! certificate, and TLS to the server (`require` or `verify-full` against a CA file). Configs are
//! built once per distinct setting (and certificate file change), not per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTls, UpstreamTls, UpstreamTlsMode};

/// TLS setup errors; they name the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

type AcceptorKey = (ClientTls, Option<SystemTime>, Option<SystemTime>);

/// The acceptor for client-facing TLS with this certificate and key.
pub fn acceptor(cfg: &ClientTls) -> Result<TlsAcceptor, TlsError> {
    static CACHE: OnceLock<Mutex<HashMap<AcceptorKey, TlsAcceptor>>> = OnceLock::new();
    let key = (cfg.clone(), mtime(&cfg.cert_file), mtime(&cfg.key_file));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(a) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(a);
    }
    let certs = load_certs(&cfg.cert_file)?;
    let private =
        PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| file_err(&cfg.key_file, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, private)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    if let Ok(mut c) = cache.lock() {
        c.insert(key, acceptor.clone());
    }
    Ok(acceptor)
}

/// The connector and the name to verify for TLS to the server; `None` for `mode: disable`.
pub fn connector(
    cfg: &UpstreamTls,
    upstream_ip: IpAddr,
) -> Result<Option<(TlsConnector, ServerName<'static>)>, TlsError> {
    type Key = (UpstreamTlsMode, Option<PathBuf>, Option<SystemTime>);
    static CACHE: OnceLock<Mutex<HashMap<Key, TlsConnector>>> = OnceLock::new();
    if cfg.mode == UpstreamTlsMode::Disable {
        return Ok(None);
    }
    let name = match &cfg.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone()))?,
        None => ServerName::IpAddress(upstream_ip.into()),
    };
    let key = (
        cfg.mode,
        cfg.ca_file.clone(),
        cfg.ca_file.as_deref().and_then(mtime),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(Some((c, name)));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = match cfg.mode {
        UpstreamTlsMode::VerifyFull => {
            let path = cfg.ca_file.as_deref().ok_or_else(|| TlsError::File {
                path: PathBuf::new(),
                message: "verify-full needs ca_file".into(),
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| file_err(path, e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertVerification(provider())))
            .with_no_client_auth(),
    };
    let connector = TlsConnector::from(Arc::new(config));
    if let Ok(mut c) = cache.lock() {
        c.insert(key, connector.clone());
    }
    Ok(Some((connector, name)))
}

/// `mode: require`, as libpq's `sslmode=require`: encrypt, but accept any certificate. The
/// handshake signature is still checked against the presented certificate.
#[derive(Debug)]
struct NoCertVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding (RFC 5929): the hash of the server's certificate
/// with the hash of its signature algorithm, SHA-256 when that is MD5, SHA-1 or unknown.
pub fn server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let alg = match signature_oid(cert_der) {
        Some(oid) if oid == OID_SHA384_RSA || oid == OID_ECDSA_SHA384 => &ring::digest::SHA384,
        Some(oid) if oid == OID_SHA512_RSA || oid == OID_ECDSA_SHA512 => &ring::digest::SHA512,
        _ => &ring::digest::SHA256,
    };
    ring::digest::digest(alg, cert_der).as_ref().to_vec()
}

const OID_SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// One DER TLV: (tag, contents, rest).
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The OID of `Certificate.signatureAlgorithm`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = der_tlv(cert)?;
    let (_, _tbs, rest) = der_tlv(cert)?;
    let (_, alg, _) = der_tlv(rest)?;
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

/// A connection on either leg: plaintext or TLS.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    /// Towards a client: airlock is the TLS server.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Towards the PostgreSQL server: airlock is the TLS client.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn der_signature_oid() {
        // SEQ { SEQ{} (tbs), SEQ { OID 1.2.840.10045.4.3.3 }, BITSTRING }
        let cert = [
            0x30, 0x10, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04,
            0x03, 0x03, 0x03, 0x02, 0x00, 0x00,
        ];
        assert_eq!(signature_oid(&cert), Some(OID_ECDSA_SHA384));
        assert_eq!(server_end_point(&cert).len(), 48);
        assert_eq!(server_end_point(&[0x30, 0x00]).len(), 32);
    }
}
