//! The Ed25519 key that signs chain heads and retention anchors, and the record MAC key
//! derived from it.
//!
//! Files are one line of text: `ed25519-secret:<64 hex>` (mode 0600) and
//! `ed25519-public:<64 hex>` (`<secret file>.pub`). The MAC key that authenticates every
//! record (format 2) is derived from the secret (HMAC-SHA256 over a fixed label), so it needs no file of its
//! own and is exactly as secret: whoever can check a record's MAC could also forge one, so
//! only the holder of the signing key can.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use ring::hmac;

use super::AuditError;
use super::record::{from_hex, to_hex};

const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519-public:";

/// Where the public key of a signing key file lives (`<file>.pub`).
pub fn public_key_path(signing_key: &Path) -> PathBuf {
    let mut s = signing_key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn key_err(path: &Path, message: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn parse_key_line(path: &Path, text: &str, prefix: &str) -> Result<[u8; 32], AuditError> {
    let hex = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| key_err(path, format!("expected a line `{prefix}<64 hex digits>`")))?;
    from_hex(hex).ok_or_else(|| key_err(path, "key is not 64 hex digits"))
}

/// Reads a signing key file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))?;
    Ok(SigningKey::from_bytes(&parse_key_line(
        path,
        &text,
        SECRET_PREFIX,
    )?))
}

/// Reads a public key file, or derives the public key from a signing key file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))?;
    if text.trim_start().starts_with(SECRET_PREFIX) {
        return Ok(
            SigningKey::from_bytes(&parse_key_line(path, &text, SECRET_PREFIX)?).verifying_key(),
        );
    }
    let bytes = parse_key_line(path, &text, PUBLIC_PREFIX)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| key_err(path, format!("not an Ed25519 public key: {e}")))
}

/// What a key file lets verify check: the public key always; from a signing key file also
/// the records' MAC key (so the records after the signed head can be authenticated).
pub fn load_verify_keys(path: &Path) -> Result<(VerifyingKey, Option<hmac::Key>), AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))?;
    if text.trim_start().starts_with(SECRET_PREFIX) {
        let key = SigningKey::from_bytes(&parse_key_line(path, &text, SECRET_PREFIX)?);
        return Ok((key.verifying_key(), Some(record_mac_key(&key))));
    }
    Ok((load_public_key(path)?, None))
}

/// Generates a new key pair: `path` (0600) and `<path>.pub`. Refuses to overwrite an existing
/// key unless `force`: the old key is what verifies the existing log.
pub fn generate_key(path: &Path, force: bool) -> Result<VerifyingKey, AuditError> {
    if !force && path.exists() {
        return Err(key_err(
            path,
            "exists; a new key cannot verify the existing log (use --force to replace it)",
        ));
    }
    let mut seed = [0u8; 32];
    let random = crate::secrets::random(32).map_err(|e| key_err(path, e.to_string()))?;
    seed.copy_from_slice(&random);
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    write_new(
        path,
        &format!("{SECRET_PREFIX}{}\n", to_hex(&seed)),
        0o600,
        force,
    )?;
    let pub_path = public_key_path(path);
    write_new(
        &pub_path,
        &format!("{PUBLIC_PREFIX}{}\n", to_hex(public.as_bytes())),
        0o644,
        true,
    )?;
    tracing::info!(key = %path.display(), public = %to_hex(public.as_bytes()), "generated audit signing key");
    Ok(public)
}

fn write_new(path: &Path, text: &str, mode: u32, overwrite: bool) -> Result<(), AuditError> {
    crate::secrets::write(path, text.as_bytes(), mode, overwrite)
        .map_err(|e| key_err(path, e.to_string()))
}

/// Loads the signing key, generating it (and its `.pub`) when the file does not exist.
/// Refuses a key another user could read or replace ([`check_private`]): whoever reads it can
/// extend the chain, whoever replaces it can rewrite the log under a key of their own.
pub fn load_or_generate_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    if !path.exists() {
        generate_key(path, false)?;
    }
    check_private(path)?;
    load_signing_key(path)
}

/// The signing key file must belong to the daemon's user and be neither readable nor
/// writable by anyone else (mode 0600 or 0400, as `keygen` writes it and the Helm chart
/// mounts it). Symbolic links are followed (a Kubernetes Secret volume's files are links).
pub fn check_private(path: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| key_err(path, e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    if meta.uid() != euid {
        return Err(key_err(
            path,
            format!(
                "belongs to uid {}, not to the daemon's uid {euid}: another user could read or replace the key that authenticates the log (chown it)",
                meta.uid()
            ),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(key_err(
            path,
            format!(
                "has mode {mode:04o}: group or others can read or write the key that authenticates the log, and so could extend or rewrite it (chmod 600; rotate with `airlock audit keygen --force` if it may have leaked)"
            ),
        ));
    }
    Ok(())
}

/// The key of the records' MACs, derived from the signing key: HMAC-SHA256 keyed with the
/// secret over a label used for nothing else (a one-block KDF, as in NIST SP 800-108).
pub fn record_mac_key(key: &SigningKey) -> hmac::Key {
    let secret = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let derived = hmac::sign(&secret, b"airlock-audit record-mac v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}
