//! Two daemons on one log: during an upgrade hand-over the daemon being replaced still
//! records the sessions it drains while its successor records new ones, into the same chain.
//!
//! While both run, each writer appends only under an exclusive `flock` on `<dir>/.lock`,
//! first following the chain's tip (the newest segment and its last record, which the other
//! process may have written), then chaining and writing its group. Inline appends, rotation
//! and retention pause; a head is signed only if it is newer than the one on disk. The
//! successor leaves this mode once its predecessor has exited, the predecessor when it
//! closes. Outside a hand-over nothing here runs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::AuditError;
use ring::hmac;

use super::record::{ChainHash, MacCheck, Record, SignedHead, check_mac};
use super::writer::HEAD_FILE;

const LOCK_FILE: &str = ".lock";

/// The cross-process lock of a log directory.
#[derive(Debug)]
pub(crate) struct LogLock {
    file: File,
    path: PathBuf,
}

/// Holds the lock until dropped (on a duplicate of the lock file's descriptor: the lock
/// belongs to the open file description both share).
pub(crate) struct Held(File);

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.0.unlock() {
            tracing::error!(error = %e, "audit: cannot release the log lock");
        }
    }
}

impl LogLock {
    pub(crate) fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditError::io(&path, &e))?;
        Ok(LogLock { file, path })
    }

    /// Waits for the lock (the other writer holds it for one group write at most).
    pub(crate) fn hold(&self) -> Result<Held, AuditError> {
        let io = |e: std::io::Error| AuditError::io(&self.path, &e);
        let file = self.file.try_clone().map_err(io)?;
        file.lock().map_err(io)?;
        Ok(Held(file))
    }
}

/// The seq after the last complete record of the first `len` bytes of `path`, and that
/// record's hash; `None` when there is none. With `mac`, the record must carry a valid MAC:
/// a writer never chains onto a line the other writer did not write (one appended by someone
/// without the key while both run), so it stays the tip and the next start refuses it.
pub(crate) fn tail(
    path: &Path,
    len: u64,
    mac: Option<&hmac::Key>,
) -> Result<Option<(u64, ChainHash)>, AuditError> {
    match last_line(path, len)? {
        Some(line) => parse(path, &line, mac).map(Some),
        None => Ok(None),
    }
}

/// The last line (without its newline) of the first `len` bytes of `path`, which must end
/// in one; `None` when `len` is 0.
pub(crate) fn last_line(path: &Path, len: u64) -> Result<Option<Vec<u8>>, AuditError> {
    let io = |e: std::io::Error| AuditError::io(path, &e);
    if len == 0 {
        return Ok(None);
    }
    let mut file = File::open(path).map_err(io)?;
    // Read backwards in growing windows until the last line is whole.
    let mut window: u64 = 16 << 10;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![
            0u8;
            usize::try_from(len - start).map_err(|e| AuditError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        ];
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        if buf.last() != Some(&b'\n') {
            return Err(AuditError::Corrupt {
                path: path.to_owned(),
                message: "the segment ends in a partial record".into(),
            });
        }
        buf.pop();
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(p) => return Ok(Some(buf.split_off(p + 1))),
            None if start == 0 => return Ok(Some(buf)),
            None => window = window.saturating_mul(4),
        }
    }
}

fn parse(
    path: &Path,
    line: &[u8],
    mac: Option<&hmac::Key>,
) -> Result<(u64, ChainHash), AuditError> {
    let rec: Record = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
        path: path.to_owned(),
        message: format!("last record does not parse ({e})"),
    })?;
    if let Some(key) = mac
        && check_mac(key, line) != MacCheck::Valid
    {
        return Err(AuditError::Corrupt {
            path: path.to_owned(),
            message: format!(
                "the last record (seq {}) carries no valid MAC: the other writer did not write it; the recorder will not chain onto it (run `airlock audit verify --strict`)",
                rec.seq
            ),
        });
    }
    Ok((rec.seq + 1, ChainHash::of_line(line)))
}

/// Signs the head with `sign` under the log's lock, unless the head on disk (the other
/// writer's) already covers `seq`: a signed head never moves back.
pub(crate) fn sign_unless_newer(
    dir: &Path,
    seq: u64,
    sign: impl FnOnce() -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let lock = LogLock::open(dir)?;
    let _held = lock.hold()?;
    match signed_seq(&dir.join(HEAD_FILE)) {
        Some(on_disk) if on_disk >= seq => Ok(()),
        _ => sign(),
    }
}

/// The seq of the signed head on disk, if any.
fn signed_seq(head: &Path) -> Option<u64> {
    let bytes = std::fs::read(head).ok()?;
    serde_json::from_slice::<SignedHead>(&bytes)
        .ok()
        .map(|h| h.seq)
}
