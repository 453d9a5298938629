//! What a start finds in the log before it writes anything: where the chain ends, a torn
//! last line to cut, and whether every record after the last signed head was written with
//! this daemon's key.
//!
//! A start vouches for what it adopts: the first head it signs covers every record before it.
//! So it adopts only what it can authenticate (fail closed): `head.json` and `anchor.json`
//! must be signed by the signing key, the record the head names must be the one it signed,
//! and every record after it must continue the chain and carry a valid MAC. Anything else is
//! a log someone changed, cut or extended without the key, and the start is refused with
//! where and what, before a byte is changed.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ring::hmac;
use serde::Deserialize;

use super::AuditError;
use super::record::{ChainHash, MacCheck, SignedAnchor, SignedHead, TornTail, check_mac};
use super::writer::{ANCHOR_FILE, HEAD_FILE, list_segments};

/// What [`scan`] found.
#[derive(Debug)]
pub(crate) struct Found {
    /// The seq of the next record and the hash of the last line (the chain's end).
    pub next: (u64, ChainHash),
    /// A partial last line of the newest segment (left by a crash, never acknowledged): the
    /// segment and the length to cut it back to.
    pub torn: Option<(PathBuf, TornTail)>,
    /// Records after the signed head (left by a crash), each authenticated by its MAC.
    pub adopted: u64,
    /// The newest segment when it holds no complete record (reused if its name still fits).
    pub empty_newest: Option<PathBuf>,
    /// Whether the other writer of a shared log writes MACs (format 2): then the chain's tip
    /// it leaves must carry a valid one. False only behind a format-1 predecessor.
    pub peer_macs: bool,
}

/// What a chain link needs of a record (and retention, its time); the rest of the line is
/// not parsed, so a record of a newer format reads too.
#[derive(Deserialize)]
pub(super) struct Link {
    pub(super) seq: u64,
    pub(super) ts: u64,
    pub(super) prev: ChainHash,
}

fn corrupt(path: &Path, message: String) -> AuditError {
    AuditError::Corrupt {
        path: path.to_owned(),
        message,
    }
}

/// Reads a signed file; `None` when it does not exist.
pub(super) fn read_signed<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, AuditError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            corrupt(
                path,
                format!("does not parse ({e}); run `airlock audit verify`"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::io(path, &e)),
    }
}

/// Where a record must continue the chain: its seq and prev.
type Expect = (u64, ChainHash);

/// Finds where the log in `dir` ends and authenticates every record after its last signed
/// head. Changes nothing on disk.
///
/// `shared`: called under the lock of a log a predecessor still writes during an upgrade's
/// hand-over ([`coop`](super::coop)). Records after its head are its own, written since it
/// shared the log (it signed a head first). A predecessor of format 1 writes them without a
/// MAC: they are taken as its only when the head's record has none either (the last record
/// it wrote before sharing; it is alive, holds the lock's other end, and signs heads over
/// them itself). Behind a format-2 head a missing MAC is refused as in any start, and so is a
/// MAC that does not check. [`Found::peer_macs`] tells the writer which of the two it shares
/// the log with.
pub(crate) fn scan(
    dir: &Path,
    public: &VerifyingKey,
    mac: &hmac::Key,
    shared: bool,
) -> Result<Found, AuditError> {
    let segs = list_segments(dir).map_err(|e| AuditError::io(dir, &e))?;
    let anchor_path = dir.join(ANCHOR_FILE);
    let anchor: Option<SignedAnchor> = read_signed(&anchor_path)?;
    if let Some(a) = &anchor
        && !a.verify(public)
    {
        return Err(corrupt(
            &anchor_path,
            "the retention anchor is not signed by this log's key; the recorder will not continue from it (run `airlock audit verify`)".into(),
        ));
    }
    let head_path = dir.join(HEAD_FILE);
    // The head after each sync is not synced to the disk: a power loss can leave the file
    // empty or cut. Then no head vouches for anything, and every record must prove itself by
    // its MAC (which needs no more trust than an older head put back would).
    let head: Option<SignedHead> = match read_signed(&head_path) {
        Err(AuditError::Corrupt { message, .. }) => {
            tracing::warn!(head = %head_path.display(), %message, "audit log: the signed head is unreadable; authenticating every record by its MAC");
            None
        }
        other => other?,
    };
    if let Some(h) = &head
        && !h.verify(public)
    {
        return Err(corrupt(
            &head_path,
            "the signed head is not signed by this log's key (forged, or the key was replaced without `airlock audit keygen --force`, which hands the log over); the recorder will not sign over this log".into(),
        ));
    }
    // Where records stop being vouched for by the head: `looking` while the head's own record
    // is still to be found, then `expect` is what the next record must carry.
    let mut looking = None;
    let mut expect: Option<Expect> = None;
    let mut start = 0;
    match (&head, &anchor) {
        // Retention deleted the head's record with its segment: the head must meet the anchor.
        (Some(h), Some(a)) if h.seq < a.seq => {
            if h.seq + 1 != a.seq || h.hash != a.prev {
                return Err(corrupt(
                    &head_path,
                    format!(
                        "the signed head (seq {}) is older than the retention anchor (seq {}) and does not meet it",
                        h.seq, a.seq
                    ),
                ));
            }
            expect = Some((a.seq, a.prev));
        }
        (Some(h), _) => {
            looking = Some(h);
            start = segs
                .iter()
                .rposition(|(first, _)| *first <= h.seq)
                .unwrap_or(0);
        }
        (None, Some(a)) => expect = Some((a.seq, a.prev)),
        (None, None) => expect = Some((0, ChainHash::ZERO)),
    }
    let mut found = Found {
        next: expect.unwrap_or((0, ChainHash::ZERO)),
        torn: None,
        adopted: 0,
        empty_newest: None,
        peer_macs: true,
    };
    let mut last_seen: Option<u64> = None;
    // Under a shared start: the live predecessor writes format 1 (no MACs).
    let mut legacy_peer = false;
    for (i, (_, path)) in segs.iter().enumerate().skip(start) {
        let newest = i + 1 == segs.len();
        let data = std::fs::read(path).map_err(|e| AuditError::io(path, &e))?;
        let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if end < data.len() {
            if newest {
                let fragment = &data[end..];
                found.torn = Some((
                    path.clone(),
                    TornTail {
                        segment: name.clone(),
                        offset: end as u64,
                        bytes: fragment.len() as u64,
                        sha256: ChainHash::of_line(fragment),
                    },
                ));
            } else {
                tracing::error!(segment = %path.display(), "audit log: partial record inside the log; run `airlock audit verify`");
            }
        }
        if end == 0 && newest {
            found.empty_newest = Some(path.clone());
        }
        let lines = match end {
            0 => None,
            _ => Some(data[..end - 1].split(|&b| b == b'\n')),
        };
        let mut offset = 0usize;
        for (n, line) in lines.into_iter().flatten().enumerate() {
            let at = offset;
            offset += line.len() + 1;
            let refuse = |what: String| {
                corrupt(
                    path,
                    format!(
                        "line {} (byte {at}): {what}. The recorder will not sign over records it cannot authenticate. Inspect the log with `airlock audit verify --strict`; if the records from here on are not genuine, cut them off (`truncate -s {at} {}`, and any newer segments) and start again",
                        n + 1,
                        path.display()
                    ),
                )
            };
            let link = serde_json::from_slice::<Link>(line);
            if let Some(h) = looking {
                // Still inside what the head vouches for: only the head's record matters.
                let Ok(link) = link else { continue };
                last_seen = Some(link.seq);
                if link.seq < h.seq {
                    continue;
                }
                let hash = ChainHash::of_line(line);
                if link.seq > h.seq || hash != h.hash {
                    return Err(refuse(format!(
                        "seq {} is not the record the signed head vouches for (seq {}): the log was changed",
                        link.seq, h.seq
                    )));
                }
                looking = None;
                // The head's record is the last one the predecessor wrote before sharing:
                // without a MAC only when it writes format 1.
                legacy_peer = shared && check_mac(mac, line) == MacCheck::Missing;
                expect = Some((h.seq + 1, hash));
                found.next = (h.seq + 1, hash);
                continue;
            }
            let Some((seq, prev)) = expect else { continue };
            let link = link.map_err(|e| refuse(format!("does not parse ({e})")))?;
            if link.seq != seq || link.prev != prev {
                return Err(refuse(format!(
                    "seq {} does not continue the chain (expected seq {seq} after its predecessor)",
                    link.seq
                )));
            }
            match check_mac(mac, line) {
                MacCheck::Valid => {}
                MacCheck::Missing if legacy_peer => {}
                MacCheck::Missing => {
                    return Err(refuse(format!(
                        "seq {seq} follows the last signed head but carries no MAC (written before format 2, or by hand)"
                    )));
                }
                MacCheck::Invalid => {
                    return Err(refuse(format!(
                        "seq {seq} follows the last signed head but its MAC is not this daemon's key's: it was changed or appended by someone without the key"
                    )));
                }
            }
            let hash = ChainHash::of_line(line);
            found.adopted += 1;
            expect = Some((seq + 1, hash));
            found.next = (seq + 1, hash);
            last_seen = Some(seq);
        }
    }
    found.peer_macs = !legacy_peer;
    if let Some(h) = looking {
        return Err(corrupt(
            dir,
            format!(
                "the log ends at {} but the signed head vouches for seq {}: records were cut off; the recorder will not continue a truncated log (run `airlock audit verify`)",
                last_seen.map_or("its start".to_owned(), |s| format!("seq {s}")),
                h.seq
            ),
        ));
    }
    Ok(found)
}

/// Hands the log in `dir` over from the key `old` to `new` (`airlock audit keygen --force`):
/// with the daemon stopped, checks with `old` that every record is vouched for (as a start
/// would), then signs the chain's end and the retention anchor with `new`. Returns the seq the
/// new head vouches for. Call [`scan`] with `old` first when the key file is to be replaced
/// only if this can succeed.
pub(crate) fn hand_over(
    dir: &Path,
    old: &ed25519_dalek::SigningKey,
    new: &ed25519_dalek::SigningKey,
) -> Result<Option<u64>, AuditError> {
    let found = scan(
        dir,
        &old.verifying_key(),
        &super::keys::record_mac_key(old),
        false,
    )?;
    let now = super::time::now_us();
    let anchor_path = dir.join(ANCHOR_FILE);
    if let Some(a) = read_signed::<SignedAnchor>(&anchor_path)? {
        let anchor = SignedAnchor::sign(new, a.seq, a.prev, now);
        super::writer::write_atomic(&anchor_path, &to_json(&anchor_path, &anchor)?)?;
    }
    let (next, hash) = found.next;
    let Some(seq) = next.checked_sub(1) else {
        return Ok(None);
    };
    let head_path = dir.join(HEAD_FILE);
    let head = SignedHead::sign(new, seq, hash, now);
    super::writer::write_atomic(&head_path, &to_json(&head_path, &head)?)?;
    Ok(Some(seq))
}

fn to_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(v).map_err(|e| AuditError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
