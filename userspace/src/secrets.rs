//! Secret files the daemon keeps in its state directory (the masking key, the API admin token,
//! the audit signing key): created once with mode 0600, never overwritten by accident, synced
//! before use. One writer for all of them.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `n` random bytes from the operating system.
pub fn random(n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| io::Error::other("the system random source failed"))?;
    Ok(b)
}

/// Writes `bytes` to `path` with `mode`, creating parent directories. Without `overwrite` an
/// existing file is an error (`AlreadyExists`): an old key may be what verifies old data.
pub fn write(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    // Never through a link (a link planted where a secret goes would have root write it
    // wherever the link points), and with `mode` whatever the file had before.
    opts.write(true).mode(mode).custom_flags(libc::O_NOFOLLOW);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path)?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads the secret at `path`, or creates it (mode 0600) with what `make` returns when the
/// file does not exist. Two processes racing to create it both end up reading the one that
/// won.
pub fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> io::Result<Vec<u8>>,
) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => return Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes = make()?;
    match write(path, &bytes, 0o600, false) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("airlock-secrets-{}", std::process::id()));
        let path = dir.join("sub/key");
        let first = read_or_create(&path, || random(32)).unwrap();
        assert_eq!(first.len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = read_or_create(&path, || Ok(b"other".to_vec())).unwrap();
        assert_eq!(first, again, "an existing secret is never replaced");
        let err = write(&path, b"x", 0o600, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
