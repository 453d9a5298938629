//! TLS for `https` targets: the certificate the gateway presents to intercepted clients (the
//! operator's, or one minted per server name by airlock's CA), and the upstream leg, always
//! verified against the target's CA.
//!
//! Configurations are built once per target and kept until the target's `tls` block changes
//! (a reload with the same block keeps minted certificates).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::http::HttpTls;

/// The CA certificate clients trust for minted certificates, in the state directory.
pub const CA_CERT_FILE: &str = "http-ca.pem";
/// Its key (mode 0600).
pub const CA_KEY_FILE: &str = "http-ca.key";
/// The CA's subject; kept fixed so that re-signing it from the stored key after a restart
/// yields an issuer that chains to the certificate clients already trust.
const CA_NAME: &str = "airlock HTTP interception CA";
/// Minted certificates held per target (one per server name); the oldest is dropped past it.
const MAX_MINTED: usize = 1024;
/// Days a minted certificate is valid (from the day before it was minted).
const MINTED_DAYS: i64 = 30;

/// Errors setting up TLS for a target.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate authority: {0}")]
    Ca(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("no server name to verify the target's certificate against (set http.tls.server_name)")]
    NoServerName,
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN offered to clients and to targets.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// airlock's interception CA: created on first use in the state directory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "airlock");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Ca {
    /// Loads the CA from `state_dir`, creating its key and certificate when absent.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, TlsError> {
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_pem = crate::secrets::read_or_create(&key_path, || {
            KeyPair::generate()
                .map(|k| k.serialize_pem().into_bytes())
                .map_err(std::io::Error::other)
        })
        .map_err(|e| file_error(&key_path, e))?;
        let key_pem = String::from_utf8(key_pem).map_err(|e| file_error(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&key_path, e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| TlsError::Ca(e.to_string()))?;
        if !cert_path.exists() {
            // Public: clients read it to trust the gateway.
            match crate::secrets::write(&cert_path, cert.pem().as_bytes(), 0o644, false) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(file_error(&cert_path, e)),
            }
        }
        Ok(Ca { cert, key })
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by this CA.
    fn mint(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_owned()
                    .try_into()
                    .map_err(|e: rcgen::Error| TlsError::Ca(format!("{name}: {e}")))?,
            ),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let day = |offset: i64| {
            let d = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
            use chrono::Datelike as _;
            rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        params.not_before = day(-1);
        params.not_after = day(MINTED_DAYS);
        let key = KeyPair::generate().map_err(|e| TlsError::Ca(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| TlsError::Ca(e.to_string()))?;
        let der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Ca(e.to_owned()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert.der().clone()],
            signer,
        )))
    }
}

/// Mints (and caches) a certificate for the name each client asks for.
#[derive(Debug)]
struct Minter {
    ca: Arc<Ca>,
    default_name: Option<String>,
    minted: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Minter {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(str::to_ascii_lowercase)
            .or_else(|| self.default_name.clone())?;
        let mut minted = self.minted.lock().ok()?;
        if let Some(k) = minted.get(&name) {
            return Some(Arc::clone(k));
        }
        match self.ca.mint(&name) {
            Ok(k) => {
                if minted.len() >= MAX_MINTED {
                    minted.clear();
                }
                minted.insert(name, Arc::clone(&k));
                Some(k)
            }
            Err(error) => {
                tracing::error!(%name, %error, "could not mint a certificate");
                None
            }
        }
    }
}

/// Reads a PEM certificate chain.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The TLS configurations of one target.
#[derive(Debug)]
pub struct TargetTls {
    pub server: Arc<rustls::ServerConfig>,
    /// Verifies the target against `ca_file`.
    pub client: rustls::ClientConfig,
}

impl TargetTls {
    fn build(tls: &HttpTls, state_dir: &Path) -> Result<Self, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth();
        let mut server = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                builder.with_single_cert(chain, key)?
            }
            _ => builder.with_cert_resolver(Arc::new(Minter {
                ca: ca(state_dir)?,
                default_name: tls.default_name.clone(),
                minted: Mutex::new(HashMap::new()),
            })),
        };
        server.alpn_protocols = alpn();
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&tls.ca_file)? {
            roots.add(cert).map_err(|e| file_error(&tls.ca_file, e))?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let client = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                client.with_client_auth_cert(chain, key)?
            }
            _ => client.with_no_client_auth(),
        };
        Ok(TargetTls {
            server: Arc::new(server),
            client,
        })
    }
}

/// The interception CA of `state_dir`, loaded once per daemon.
fn ca(state_dir: &Path) -> Result<Arc<Ca>, TlsError> {
    static CAS: OnceLock<Mutex<HashMap<PathBuf, Arc<Ca>>>> = OnceLock::new();
    let cas = CAS.get_or_init(Mutex::default);
    let mut cas = cas
        .lock()
        .map_err(|_| TlsError::Ca("lock poisoned".into()))?;
    if let Some(ca) = cas.get(state_dir) {
        return Ok(Arc::clone(ca));
    }
    let ca = Arc::new(Ca::load_or_create(state_dir)?);
    cas.insert(state_dir.to_owned(), Arc::clone(&ca));
    Ok(ca)
}

/// Creates airlock's interception CA when a target mints certificates, so that the CA file
/// exists for clients to trust before the first TLS connection (called at daemon start).
pub fn prepare(config: &crate::config::Config) -> Result<(), TlsError> {
    let mints = config.targets.iter().any(|t| {
        t.http
            .as_ref()
            .and_then(|h| h.tls.as_ref())
            .is_some_and(|tls| tls.cert_file.is_none())
    });
    if mints {
        ca(&config.daemon.state_dir)?;
    }
    Ok(())
}

/// The TLS configurations of target `name` for its `tls` block, built on first use and rebuilt
/// when the block changes.
pub fn for_target(name: &str, tls: &HttpTls, state_dir: &Path) -> Result<Arc<TargetTls>, TlsError> {
    type Cache = HashMap<String, (HttpTls, Arc<TargetTls>)>;
    static TARGETS: OnceLock<Mutex<Cache>> = OnceLock::new();
    let targets = TARGETS.get_or_init(Mutex::default);
    if let Ok(t) = targets.lock()
        && let Some((block, built)) = t.get(name)
        && block == tls
    {
        return Ok(Arc::clone(built));
    }
    let built = Arc::new(TargetTls::build(tls, state_dir)?);
    if let Ok(mut t) = targets.lock() {
        t.insert(name.to_owned(), (tls.clone(), Arc::clone(&built)));
    }
    Ok(built)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    #[test]
    fn minted_certificates_chain_to_the_stored_ca_across_restarts() {
        let dir = std::env::temp_dir().join(format!("airlock-http-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Ca::load_or_create(&dir).unwrap();
        let stored = std::fs::read(dir.join(CA_CERT_FILE)).unwrap();
        // A restart re-signs the CA from the stored key: leaves still verify against the
        // certificate clients trust.
        let again = Ca::load_or_create(&dir).unwrap();
        let leaf = again.mint("api.internal").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&stored) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.internal").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let wrong = rustls::pki_types::ServerName::try_from("other.internal").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &leaf.cert[0],
                    &leaf.cert[1..],
                    &wrong,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .is_err()
        );
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
