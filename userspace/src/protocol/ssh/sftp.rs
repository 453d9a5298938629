//! Just enough of SFTP (version 3, draft-ietf-secsh-filexfer-02, with OpenSSH's extensions) to
//! judge every request that names a path before the server sees it.
//!
//! Packets are framed on both directions of an `sftp` subsystem channel ([`Framer`]). Client
//! requests that name paths become a [`FileOp`] on normalized paths ([`parse_request`]); those
//! that act on an open handle (read, write, close, readdir, fstat) pass, since the open was
//! judged — except `fsetstat`, judged as a write on the path the handle was opened for, which
//! the server's `HANDLE` replies tell ([`Handles`]). Requests this module does not know are
//! refused with `SSH_FX_OP_UNSUPPORTED`, never passed.
//!
//! The crates that speak SFTP (russh-sftp) implement a client or a server with their own
//! request loop; a filter in the middle needs only the framing and the request fields, so this
//! parser is written here and fuzzed (fuzz/fuzz_targets/sftp_request.rs).

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use crate::model::FileOp;
use crate::policy::files::normalize;

/// Largest packet accepted (OpenSSH's sftp-server takes at most 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024 + 1024;
/// Most open handles tracked per channel (sftp-server allows 512).
const MAX_HANDLES: usize = 1024;

pub const FXP_INIT: u8 = 1;
pub const FXP_OPEN: u8 = 3;
pub const FXP_CLOSE: u8 = 4;
pub const FXP_READ: u8 = 5;
pub const FXP_WRITE: u8 = 6;
pub const FXP_LSTAT: u8 = 7;
pub const FXP_FSTAT: u8 = 8;
pub const FXP_SETSTAT: u8 = 9;
pub const FXP_FSETSTAT: u8 = 10;
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_REMOVE: u8 = 13;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_RMDIR: u8 = 15;
pub const FXP_REALPATH: u8 = 16;
pub const FXP_STAT: u8 = 17;
pub const FXP_RENAME: u8 = 18;
pub const FXP_READLINK: u8 = 19;
pub const FXP_SYMLINK: u8 = 20;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_EXTENDED: u8 = 200;

/// `SSH_FX_PERMISSION_DENIED`.
pub const FX_PERMISSION_DENIED: u32 = 3;
/// `SSH_FX_OP_UNSUPPORTED`.
pub const FX_OP_UNSUPPORTED: u32 = 8;

const OPEN_READ: u32 = 0x01;
const OPEN_WRITE: u32 = 0x02;
const OPEN_APPEND: u32 = 0x04;
const OPEN_CREAT: u32 = 0x08;
const OPEN_TRUNC: u32 = 0x10;
const OPEN_EXCL: u32 = 0x20;

/// Malformed SFTP traffic: the channel is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SftpError {
    #[error("sftp packet of {0} bytes is larger than the limit of {MAX_PACKET}")]
    TooLarge(usize),
    #[error("empty sftp packet")]
    Empty,
    #[error("truncated sftp {0}")]
    Truncated(&'static str),
}

/// Splits a byte stream into SFTP packets (each returned with its 4-byte length prefix).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    /// Appends bytes received.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, SftpError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err(SftpError::Empty);
        }
        if len > MAX_PACKET {
            return Err(SftpError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            // Room for the whole packet at once, instead of growing chunk by chunk.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }

    /// Bytes buffered that do not make a whole packet yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads SFTP wire fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, SftpError> {
        if self.0.is_empty() {
            return Err(SftpError::Truncated(what));
        }
        Ok(self.0.get_u8())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, SftpError> {
        if self.0.len() < 4 {
            return Err(SftpError::Truncated(what));
        }
        Ok(self.0.get_u32())
    }
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], SftpError> {
        let n = self.u32(what)? as usize;
        if self.0.len() < n {
            return Err(SftpError::Truncated(what));
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s)
    }
}

/// What the filter does with one client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward it as it is: version negotiation, or an operation on a handle whose open was
    /// judged.
    Pass,
    /// Judge this operation on these (normalized) paths first. `opens` is set for `open` and
    /// `opendir`, whose `HANDLE` reply maps a handle to `path`. `reads` is set for an `open`
    /// that writes and whose handle also reads (`READ|WRITE`): a read of `path` is judged too,
    /// and both must be allowed.
    Judge {
        op: FileOp,
        path: String,
        to: Option<String>,
        opens: bool,
        reads: bool,
    },
    /// `fsetstat`: a write on the path this handle was opened for.
    JudgeHandle { op: FileOp, handle: Vec<u8> },
    /// Refuse it with this status code and message.
    Refuse { code: u32, message: String },
}

/// One client request: its id (none for `init`) and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: u8,
    pub id: Option<u32>,
    pub action: Action,
}

fn path(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8".to_owned())?;
    normalize(s).ok_or_else(|| format!("{s}: climbs above the home directory"))
}

fn judge(op: FileOp, p: &[u8], to: Option<&[u8]>, opens: bool) -> Action {
    let refuse = |message: String| Action::Refuse {
        code: FX_PERMISSION_DENIED,
        message: format!("airlock: {message}"),
    };
    let path = match path(p) {
        Ok(p) => p,
        Err(m) => return refuse(m),
    };
    let to = match to.map(self::path).transpose() {
        Ok(t) => t,
        Err(m) => return refuse(m),
    };
    Action::Judge {
        op,
        path,
        to,
        opens,
        reads: false,
    }
}

/// Parses one client packet (with its length prefix).
pub fn parse_request(packet: &[u8]) -> Result<Request, SftpError> {
    let mut r = Reader(packet.get(4..).ok_or(SftpError::Truncated("length"))?);
    let kind = r.u8("type")?;
    if kind == FXP_INIT {
        return Ok(Request {
            kind,
            id: None,
            action: Action::Pass,
        });
    }
    let id = r.u32("request id")?;
    let action = match kind {
        FXP_OPEN => {
            let p = r.string("open path")?;
            let flags = r.u32("open flags")?;
            let writes = flags & (OPEN_WRITE | OPEN_APPEND | OPEN_CREAT | OPEN_TRUNC) != 0;
            // sftp-server opens O_RDWR for READ|WRITE, and O_RDONLY without WRITE (`CREAT`
            // alone too): such a handle reads, so a write-only rule must not cover it alone.
            // Truncated, or created new (`CREAT|EXCL`), it reads back only what it wrote
            // (Go's `Client.Create` and paramiko's `w+` open READ|WRITE|CREAT|TRUNC).
            let fresh = flags & OPEN_TRUNC != 0
                || flags & (OPEN_CREAT | OPEN_EXCL) == OPEN_CREAT | OPEN_EXCL;
            let readable = (flags & OPEN_READ != 0 || flags & OPEN_WRITE == 0) && !fresh;
            match (writes, judge(FileOp::Read, p, None, true)) {
                (true, Action::Judge { path, to, .. }) => Action::Judge {
                    op: FileOp::Write,
                    path,
                    to,
                    opens: true,
                    reads: readable,
                },
                (_, action) => action,
            }
        }
        FXP_OPENDIR => judge(FileOp::Read, r.string("opendir path")?, None, true),
        FXP_CLOSE | FXP_READ | FXP_WRITE | FXP_FSTAT | FXP_READDIR => Action::Pass,
        FXP_FSETSTAT => Action::JudgeHandle {
            op: FileOp::Write,
            handle: r.string("fsetstat handle")?.to_vec(),
        },
        FXP_LSTAT | FXP_STAT | FXP_REALPATH | FXP_READLINK => {
            judge(FileOp::Read, r.string("path")?, None, false)
        }
        FXP_SETSTAT => judge(FileOp::Write, r.string("setstat path")?, None, false),
        FXP_REMOVE | FXP_RMDIR => judge(FileOp::Remove, r.string("remove path")?, None, false),
        FXP_MKDIR => judge(FileOp::Mkdir, r.string("mkdir path")?, None, false),
        FXP_RENAME => {
            let from = r.string("rename from")?;
            let to = r.string("rename to")?;
            judge(FileOp::Rename, from, Some(to), false)
        }
        FXP_SYMLINK => {
            // OpenSSH sends (target, link), the draft says (link, target): both are judged.
            let a = r.string("symlink path")?;
            let b = r.string("symlink target")?;
            judge(FileOp::Write, b, Some(a), false)
        }
        FXP_EXTENDED => {
            let name = r.string("extension name")?;
            match name {
                b"posix-rename@openssh.com" => {
                    let from = r.string("rename from")?;
                    let to = r.string("rename to")?;
                    judge(FileOp::Rename, from, Some(to), false)
                }
                b"hardlink@openssh.com" => {
                    let old = r.string("link target")?;
                    let new = r.string("link path")?;
                    judge(FileOp::Write, new, Some(old), false)
                }
                b"lsetstat@openssh.com" => judge(FileOp::Write, r.string("path")?, None, false),
                b"statvfs@openssh.com" | b"expand-path@openssh.com" => {
                    judge(FileOp::Read, r.string("path")?, None, false)
                }
                // On handles judged at their open, or about the server, not a path.
                b"fstatvfs@openssh.com"
                | b"fsync@openssh.com"
                | b"limits@openssh.com"
                | b"copy-data"
                | b"home-directory"
                | b"users-groups-by-id@openssh.com" => Action::Pass,
                other => Action::Refuse {
                    code: FX_OP_UNSUPPORTED,
                    message: format!(
                        "airlock: sftp extension {} is not supported through the gateway",
                        String::from_utf8_lossy(other)
                    ),
                },
            }
        }
        other => Action::Refuse {
            code: FX_OP_UNSUPPORTED,
            message: format!("airlock: sftp request type {other} is not supported"),
        },
    };
    Ok(Request {
        kind,
        id: Some(id),
        action,
    })
}

/// An `SSH_FXP_STATUS` reply for request `id`.
pub fn status(id: u32, code: u32, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + 1 + 12 + message.len() + 4);
    let len = 1 + 4 + 4 + 4 + message.len() + 4;
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&[FXP_STATUS]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.freeze()
}

/// Which path each open handle belongs to, from the server's `HANDLE` replies to judged
/// `open`/`opendir` requests.
#[derive(Debug, Default)]
pub struct Handles {
    /// Request id of an open in flight → its path.
    opening: HashMap<u32, String>,
    open: HashMap<Vec<u8>, String>,
}

impl Handles {
    /// Remembers an allowed open in flight.
    pub fn opening(&mut self, id: u32, path: String) {
        if self.opening.len() < MAX_HANDLES {
            self.opening.insert(id, path);
        }
    }

    /// The path `handle` was opened for.
    pub fn path(&self, handle: &[u8]) -> Option<&str> {
        self.open.get(handle).map(String::as_str)
    }

    /// Looks at one server packet (with its length prefix): a `HANDLE` reply to an open in
    /// flight maps the handle; a `STATUS` reply ends it.
    pub fn server_packet(&mut self, packet: &[u8]) {
        let Some(body) = packet.get(4..) else { return };
        let mut r = Reader(body);
        let (Ok(kind), Ok(id)) = (r.u8("type"), r.u32("id")) else {
            return;
        };
        match kind {
            FXP_HANDLE => {
                if let (Some(path), Ok(handle)) = (self.opening.remove(&id), r.string("handle"))
                    && self.open.len() < MAX_HANDLES
                {
                    self.open.insert(handle.to_vec(), path);
                }
            }
            FXP_STATUS => {
                self.opening.remove(&id);
            }
            _ => {}
        }
    }

    /// Forgets a handle the client closes.
    pub fn close(&mut self, packet: &[u8]) {
        let mut r = Reader(packet.get(4..).unwrap_or_default());
        if let (Ok(FXP_CLOSE), Ok(_), Ok(h)) = (r.u8("type"), r.u32("id"), r.string("handle")) {
            self.open.remove(h);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: Option<u32>, fields: &[&[u8]], tail: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        for f in fields {
            body.extend_from_slice(&(f.len() as u32).to_be_bytes());
            body.extend_from_slice(f);
        }
        body.extend_from_slice(tail);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn opens_are_reads_or_writes_by_their_flags() {
        let read = packet(FXP_OPEN, Some(7), &[b"/srv/a"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        let r = parse_request(&read).unwrap();
        assert_eq!(r.id, Some(7));
        assert_eq!(
            r.action,
            Action::Judge {
                op: FileOp::Read,
                path: "/srv/a".into(),
                to: None,
                opens: true,
                reads: false,
            }
        );
        let write = packet(
            FXP_OPEN,
            Some(8),
            &[b"up/../x.txt"],
            &[0, 0, 0, 0x1a, 0, 0, 0, 0],
        );
        assert_eq!(
            parse_request(&write).unwrap().action,
            Action::Judge {
                op: FileOp::Write,
                path: "~/x.txt".into(),
                to: None,
                opens: true,
                reads: false,
            }
        );
        // A handle that also reads (READ|WRITE, or CREAT without WRITE, which sftp-server
        // opens read-only) is judged as a read too; one truncated or created new reads back
        // only what it wrote (Go's `Client.Create`: READ|WRITE|CREAT|TRUNC).
        for (flags, reads) in [
            (0x03u8, true),
            (0x0b, true),
            (0x08, true),
            (0x09, true),
            (0x1b, false),
            (0x2b, false),
            (0x13, false),
        ] {
            let both = packet(
                FXP_OPEN,
                Some(9),
                &[b"/srv/up/x"],
                &[0, 0, 0, flags, 0, 0, 0, 0],
            );
            assert_eq!(
                parse_request(&both).unwrap().action,
                Action::Judge {
                    op: FileOp::Write,
                    path: "/srv/up/x".into(),
                    to: None,
                    opens: true,
                    reads,
                },
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn path_operations_and_extensions() {
        let cases: Vec<(Vec<u8>, FileOp, &str, Option<&str>)> = vec![
            (
                packet(FXP_REMOVE, Some(1), &[b"/a"], &[]),
                FileOp::Remove,
                "/a",
                None,
            ),
            (
                packet(FXP_RMDIR, Some(1), &[b"/d/"], &[]),
                FileOp::Remove,
                "/d",
                None,
            ),
            (
                packet(FXP_MKDIR, Some(1), &[b"/d"], &[0; 4]),
                FileOp::Mkdir,
                "/d",
                None,
            ),
            (
                packet(FXP_STAT, Some(1), &[b"/a"], &[]),
                FileOp::Read,
                "/a",
                None,
            ),
            (
                packet(FXP_REALPATH, Some(1), &[b"."], &[]),
                FileOp::Read,
                "~",
                None,
            ),
            (
                packet(FXP_SETSTAT, Some(1), &[b"/a"], &[0; 4]),
                FileOp::Write,
                "/a",
                None,
            ),
            (
                packet(FXP_RENAME, Some(1), &[b"/a", b"/b"], &[]),
                FileOp::Rename,
                "/a",
                Some("/b"),
            ),
            (
                packet(
                    FXP_EXTENDED,
                    Some(1),
                    &[b"posix-rename@openssh.com", b"/a", b"/b"],
                    &[],
                ),
                FileOp::Rename,
                "/a",
                Some("/b"),
            ),
            (
                packet(FXP_SYMLINK, Some(1), &[b"/etc/shadow", b"/srv/l"], &[]),
                FileOp::Write,
                "/srv/l",
                Some("/etc/shadow"),
            ),
        ];
        for (p, op, path, to) in cases {
            match parse_request(&p).unwrap().action {
                Action::Judge {
                    op: o,
                    path: pa,
                    to: t,
                    ..
                } => {
                    assert_eq!((o, pa.as_str(), t.as_deref()), (op, path, to));
                }
                other => panic!("{other:?}"),
            }
        }
        let unknown = packet(FXP_EXTENDED, Some(9), &[b"evil@example.com"], &[]);
        assert!(matches!(
            parse_request(&unknown).unwrap().action,
            Action::Refuse {
                code: FX_OP_UNSUPPORTED,
                ..
            }
        ));
        let escape = packet(FXP_STAT, Some(1), &[b"../../etc/passwd"], &[]);
        assert!(matches!(
            parse_request(&escape).unwrap().action,
            Action::Refuse {
                code: FX_PERMISSION_DENIED,
                ..
            }
        ));
        let not_utf8 = packet(FXP_STAT, Some(1), &[b"/a\xff"], &[]);
        assert!(matches!(
            parse_request(&not_utf8).unwrap().action,
            Action::Refuse { .. }
        ));
        let write = packet(FXP_WRITE, Some(2), &[b"h1"], &[0; 8]);
        assert_eq!(parse_request(&write).unwrap().action, Action::Pass);
    }

    #[test]
    fn truncated_and_oversized_packets_are_errors() {
        let p = packet(FXP_OPEN, Some(1), &[b"/srv/a"], &[]);
        assert_eq!(parse_request(&p), Err(SftpError::Truncated("open flags")));
        let mut short = packet(FXP_STAT, Some(1), &[b"/abc"], &[]);
        short.truncate(short.len() - 2);
        assert!(parse_request(&short).is_err());
        let mut f = Framer::default();
        f.push(&(MAX_PACKET as u32 + 1).to_be_bytes());
        assert!(matches!(f.next_packet(), Err(SftpError::TooLarge(_))));
        let mut f = Framer::default();
        f.push(&[0, 0, 0, 0]);
        assert_eq!(f.next_packet(), Err(SftpError::Empty));
    }

    #[test]
    fn framing_across_chunks_and_handle_tracking() {
        let a = packet(FXP_OPEN, Some(5), &[b"/srv/a"], &[0, 0, 0, 2, 0, 0, 0, 0]);
        let b = packet(FXP_FSETSTAT, Some(6), &[b"H"], &[0; 4]);
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut f = Framer::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            f.push(chunk);
            while let Some(p) = f.next_packet().unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0][..], &a[..]);
        assert_eq!(f.pending(), 0);

        let mut h = Handles::default();
        h.opening(5, "/srv/a".into());
        h.server_packet(&packet(FXP_HANDLE, Some(5), &[b"H"], &[]));
        assert_eq!(h.path(b"H"), Some("/srv/a"));
        assert_eq!(
            parse_request(&got[1]).unwrap().action,
            Action::JudgeHandle {
                op: FileOp::Write,
                handle: b"H".to_vec()
            }
        );
        h.close(&packet(FXP_CLOSE, Some(7), &[b"H"], &[]));
        assert_eq!(h.path(b"H"), None);
        let s = status(3, FX_PERMISSION_DENIED, "no");
        assert_eq!(&s[..4], &(s.len() as u32 - 4).to_be_bytes());
        assert_eq!(s[4], FXP_STATUS);
    }
}
