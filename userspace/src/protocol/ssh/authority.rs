//! airlock's two SSH certificate authorities, kept in `<state_dir>/ssh/`:
//!
//! - the **host CA** signs, per target, a short-lived host certificate for the target's names
//!   and addresses, which the gateway presents to clients in the target's place (clients trust
//!   it with one `@cert-authority` line in `known_hosts`);
//! - the **user CA** signs, per session, a short-lived user certificate for a fresh key that
//!   never leaves the gateway's memory, which the gateway logs in to the server with (the
//!   server trusts it with `TrustedUserCAKeys`). Its key id names the caller and the session.
//!
//! Both are Ed25519 keys in OpenSSH format, created on first use with mode 0600 (their public
//! halves beside them as `.pub`), never replaced.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};

use crate::config::TargetConfig;

/// How long a presented host certificate is valid.
const HOST_CERT_VALIDITY: Duration = Duration::from_secs(3600);
/// A host certificate is re-issued once less than this is left.
const HOST_CERT_RENEW: Duration = Duration::from_secs(1800);
/// Certificates start this long in the past, for clocks that run a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Errors loading the authorities or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an OpenSSH private key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("issuing a certificate: {0}")]
    Sign(String),
}

/// A private key presented to clients for a target, with its certificate when it is the
/// gateway's own key rather than the target's.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Option<Certificate>,
}

#[derive(Debug)]
struct Issued {
    identity: HostIdentity,
    /// Unix time after which it is re-issued.
    renew_at: u64,
    /// The principals it was issued for (a config change re-issues it).
    principals: Vec<String>,
}

/// The host and user CAs of one state directory.
#[derive(Debug)]
pub struct Authority {
    host_ca: PrivateKey,
    user_ca: PrivateKey,
    issued: Mutex<HashMap<String, Issued>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh Ed25519 key from the system's random source.
pub fn random_key() -> Result<PrivateKey, AuthorityError> {
    let seed = crate::secrets::random(32).map_err(|source| AuthorityError::Io {
        path: PathBuf::from("<random>"),
        source,
    })?;
    let mut s = [0u8; 32];
    s.copy_from_slice(&seed);
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&s)))
}

fn random_u64() -> u64 {
    crate::secrets::random(8)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Reads the CA key at `path`, or creates it (and its `.pub`).
fn load_or_create(path: &Path, comment: &str) -> Result<PrivateKey, AuthorityError> {
    let io = |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    };
    let pem = crate::secrets::read_or_create(path, || {
        let mut key = random_key().map_err(|e| std::io::Error::other(e.to_string()))?;
        key.set_comment(comment);
        key.to_openssh(LineEnding::LF)
            .map(|z| z.as_bytes().to_vec())
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(io)?;
    let key = PrivateKey::from_openssh(&pem).map_err(|e| AuthorityError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| AuthorityError::Sign(e.to_string()))?;
    let pub_path = path.with_extension("pub");
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(&format!("{public}\n")) {
        crate::secrets::write(&pub_path, format!("{public}\n").as_bytes(), 0o644, true).map_err(
            |source| AuthorityError::Io {
                path: pub_path,
                source,
            },
        )?;
    }
    Ok(key)
}

impl Authority {
    /// The authorities of `state_dir`, loaded (or created) once per process.
    pub fn of(state_dir: &Path) -> Result<Arc<Authority>, AuthorityError> {
        static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Authority>>>> = OnceLock::new();
        let map = LOADED.get_or_init(Mutex::default);
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.get(state_dir) {
            return Ok(Arc::clone(a));
        }
        let a = Arc::new(Self::load(state_dir)?);
        map.insert(state_dir.to_owned(), Arc::clone(&a));
        Ok(a)
    }

    /// Loads (or creates) the authorities in `<state_dir>/ssh/`.
    pub fn load(state_dir: &Path) -> Result<Authority, AuthorityError> {
        let dir = state_dir.join("ssh");
        Ok(Authority {
            host_ca: load_or_create(&dir.join("host_ca"), "airlock host CA")?,
            user_ca: load_or_create(&dir.join("user_ca"), "airlock user CA")?,
            issued: Mutex::default(),
        })
    }

    /// The host CA's public key.
    pub fn host_ca(&self) -> &PublicKey {
        self.host_ca.public_key()
    }

    /// The user CA's public key (for the servers' `TrustedUserCAKeys`).
    pub fn user_ca(&self) -> &PublicKey {
        self.user_ca.public_key()
    }

    /// The `known_hosts` line that makes OpenSSH clients trust every host certificate the
    /// gateway presents for hosts matching `pattern` (`*`, `*.internal,198.18.*`).
    pub fn known_hosts_line(&self, pattern: &str) -> String {
        let key = self
            .host_ca
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| "<unencodable key>".into());
        format!("@cert-authority {pattern} {key}")
    }

    /// The names a target's host certificate carries: its configured names and its
    /// single-host addresses.
    pub fn host_principals(target: &TargetConfig) -> Vec<String> {
        let mut names: Vec<String> = target
            .ssh
            .as_ref()
            .map(|s| s.names.clone())
            .unwrap_or_default();
        for cidr in &target.addresses {
            let single = match cidr.addr {
                IpAddr::V4(_) => cidr.prefix_len == 32,
                IpAddr::V6(_) => cidr.prefix_len == 128,
            };
            if single {
                names.push(cidr.addr.to_string());
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// What the gateway presents to clients of `target`: the target's own host key when the
    /// operator gave it, else a per-target key of the gateway's with a host certificate for the
    /// target's names (re-issued before it runs out).
    pub fn host_identity(&self, target: &TargetConfig) -> Result<HostIdentity, AuthorityError> {
        if let Some(path) = target.ssh.as_ref().and_then(|s| s.host_key_file.as_ref()) {
            let pem = std::fs::read(path).map_err(|source| AuthorityError::Io {
                path: path.clone(),
                source,
            })?;
            let key = PrivateKey::from_openssh(&pem).map_err(|e| AuthorityError::Key {
                path: path.clone(),
                message: e.to_string(),
            })?;
            return Ok(HostIdentity {
                key,
                certificate: None,
            });
        }
        let principals = Self::host_principals(target);
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        if let Some(i) = issued.get(&target.name)
            && i.renew_at > t
            && i.principals == principals
        {
            return Ok(i.identity.clone());
        }
        let key = match issued.get(&target.name) {
            Some(i) => i.identity.key.clone(),
            None => random_key()?,
        };
        let mut b = Builder::new(
            crate::secrets::random(16).map_err(|e| AuthorityError::Sign(e.to_string()))?,
            key.public_key().key_data().clone(),
            t.saturating_sub(CLOCK_SKEW.as_secs()),
            t + HOST_CERT_VALIDITY.as_secs(),
        )
        .map_err(|e| AuthorityError::Sign(e.to_string()))?;
        let sign_err = |e: russh::keys::ssh_key::Error| AuthorityError::Sign(e.to_string());
        b.serial(random_u64()).map_err(sign_err)?;
        b.cert_type(CertType::Host).map_err(sign_err)?;
        b.key_id(format!("airlock host {}", target.name))
            .map_err(sign_err)?;
        for p in &principals {
            b.valid_principal(p.clone()).map_err(sign_err)?;
        }
        let cert = b.sign(&self.host_ca).map_err(sign_err)?;
        let identity = HostIdentity {
            key,
            certificate: Some(cert),
        };
        issued.insert(
            target.name.clone(),
            Issued {
                identity: identity.clone(),
                renew_at: t + (HOST_CERT_VALIDITY - HOST_CERT_RENEW).as_secs(),
                principals,
            },
        );
        Ok(identity)
    }

    /// A fresh key and a user certificate for it: valid for `ttl` as `principal` (the login
    /// on the server), only from `source` (the gateway's own address on that connection), only
    /// with a pty; its key id names the caller and the session.
    pub fn user_certificate(
        &self,
        principal: &str,
        key_id: &str,
        source: IpAddr,
        ttl: Duration,
    ) -> Result<(PrivateKey, Certificate), AuthorityError> {
        let key = random_key()?;
        let t = now();
        let sign_err = |e: russh::keys::ssh_key::Error| AuthorityError::Sign(e.to_string());
        let mut b = Builder::new(
            crate::secrets::random(16).map_err(|e| AuthorityError::Sign(e.to_string()))?,
            key.public_key().key_data().clone(),
            t.saturating_sub(CLOCK_SKEW.as_secs()),
            t + ttl.as_secs().max(1),
        )
        .map_err(sign_err)?;
        b.serial(random_u64()).map_err(sign_err)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        b.key_id(key_id).map_err(sign_err)?;
        b.valid_principal(principal).map_err(sign_err)?;
        b.critical_option("source-address", source.to_string())
            .map_err(sign_err)?;
        b.extension("permit-pty", "").map_err(sign_err)?;
        let cert = b.sign(&self.user_ca).map_err(sign_err)?;
        Ok((key, cert))
    }
}

/// Whether `cert` is a valid host certificate from `ca` for `name`, now (`Err`: why not).
pub fn check_host_certificate(
    cert: &Certificate,
    ca: &PublicKey,
    name: &str,
) -> Result<(), String> {
    cert.validate([&ca.fingerprint(HashAlg::Sha256)])
        .map_err(|e| format!("not signed by the pinned host CA, or not valid now ({e})"))?;
    if cert.cert_type() != CertType::Host {
        return Err("a user certificate, not a host certificate".into());
    }
    if !cert.valid_principals().iter().any(|p| p == name) {
        return Err(format!(
            "issued for {:?}, not for {name}",
            cert.valid_principals()
        ));
    }
    if !cert.critical_options().is_empty() {
        return Err("carries critical options".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(yaml_ssh: &str) -> TargetConfig {
        let text = format!(
            "targets:\n  - name: web\n    protocol: ssh\n    addresses: [\"198.18.0.2\", \"198.18.4.0/24\"]\n    ports: [22]\n    ssh:\n      user: deploy\n      host_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFnWSSZ1pOF2o3OSkvs+e5bHHd7aZwYSjNl3hmrgP9yF\"]\n{yaml_ssh}"
        );
        crate::config::Config::parse(Path::new("t.yaml"), &text)
            .unwrap()
            .targets
            .remove(0)
            .as_ref()
            .clone()
    }

    #[test]
    fn created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("airlock-sshca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load(&dir).unwrap();
        let b = Authority::load(&dir).unwrap();
        assert_eq!(a.host_ca(), b.host_ca());
        assert_eq!(a.user_ca(), b.user_ca());
        assert_ne!(a.host_ca(), a.user_ca());
        let pub_text = std::fs::read_to_string(dir.join("ssh/user_ca.pub")).unwrap();
        assert_eq!(
            PublicKey::from_openssh(pub_text.trim()).unwrap().key_data(),
            a.user_ca().key_data()
        );
        let line = a.known_hosts_line("*");
        assert!(line.starts_with("@cert-authority * ssh-ed25519 "), "{line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_certificates_name_the_target_and_verify() {
        let dir = std::env::temp_dir().join(format!("airlock-sshca-h-{}", std::process::id()));
        let a = Authority::load(&dir).unwrap();
        let t = target("      names: [web1, web1.internal]\n");
        assert_eq!(
            Authority::host_principals(&t),
            ["198.18.0.2", "web1", "web1.internal"]
        );
        let id = a.host_identity(&t).unwrap();
        let cert = id.certificate.clone().unwrap();
        assert_eq!(cert.public_key(), id.key.public_key().key_data());
        check_host_certificate(&cert, a.host_ca(), "web1").unwrap();
        check_host_certificate(&cert, a.host_ca(), "198.18.0.2").unwrap();
        assert!(check_host_certificate(&cert, a.host_ca(), "other").is_err());
        assert!(check_host_certificate(&cert, a.user_ca(), "web1").is_err());
        // Cached until renewal.
        let again = a.host_identity(&t).unwrap();
        assert_eq!(again.certificate, id.certificate);

        let (key, ucert) = a
            .user_certificate(
                "deploy",
                "airlock session s1 for unix:ci",
                "198.18.0.1".parse().unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(ucert.public_key(), key.public_key().key_data());
        assert_eq!(ucert.cert_type(), CertType::User);
        assert_eq!(ucert.key_id(), "airlock session s1 for unix:ci");
        assert_eq!(ucert.valid_principals(), ["deploy"]);
        ucert
            .validate([&a.user_ca().fingerprint(HashAlg::Sha256)])
            .unwrap();
        assert!(check_host_certificate(&ucert, a.user_ca(), "deploy").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
