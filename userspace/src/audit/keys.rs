//! The Ed25519 key that signs chain heads and retention anchors.
//!
//! Files are one line of text: `ed25519-secret:<64 hex>` (mode 0600) and
//! `ed25519-public:<64 hex>` (`<secret file>.pub`).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

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

/// Generates a new key pair: `path` (0600) and `<path>.pub`. Refuses to overwrite an existing
/// key unless `force`: the old key is what verifies the existing log.
pub fn generate_key(path: &Path, force: bool) -> Result<VerifyingKey, AuditError> {
    if !force && path.exists() {
        return Err(key_err(
            path,
            "exists; a new key cannot verify the existing log (use --force to replace it)",
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| key_err(parent, e.to_string()))?;
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| key_err(Path::new("/dev/urandom"), e.to_string()))?;
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
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(mode);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| key_err(path, e.to_string()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| key_err(path, e.to_string()))
}

/// Loads the signing key, generating it (and its `.pub`) when the file does not exist.
pub fn load_or_generate_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    if !path.exists() {
        generate_key(path, false)?;
    }
    load_signing_key(path)
}
