//! Framing: every message after startup is a tag byte and a big-endian length that counts
//! itself but not the tag. The session loop only peeks at headers ([`peek_header`]) and parses
//! bodies of the few message types it must understand ([`Reader`]); everything else is forwarded
//! as bytes. The builders write whole messages into a `BytesMut` with no intermediate buffer.

use bytes::{BufMut, BytesMut};

/// Tag byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Largest message accepted from either side, as PostgreSQL's own limit for most messages.
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Largest startup-phase packet (startup, SSL and cancel requests); PostgreSQL uses 10000.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// PostgreSQL's cap for the small frontend messages (`PQ_SMALL_MESSAGE_LIMIT`): Close,
/// Describe, Execute, CopyFail.
pub const SMALL_MESSAGE_LEN: usize = 10_000;

/// PostgreSQL's cap for a password or SASL message during authentication
/// (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE_LEN: usize = 65_535;

/// Room a Parse needs besides its statement text: a statement name (at most 64 bytes on the
/// server) and up to 65535 parameter type OIDs.
const PARSE_OVERHEAD: usize = 64 + 2 + 4 * 65_535 + 2;

/// The largest whole message (tag included) the client may send with `tag`, checked as soon
/// as the 5-byte header is read, before any of the body is buffered: the server's own cap per
/// message type (`SocketBackend` in postgres.c), with Query and Parse held to the gateway's
/// statement limit (`statement_limit` bytes of SQL) and the messages with no body to exactly
/// their header. `None`: not a message a client may send after startup (refused at once, as
/// the server does: "invalid frontend message type").
pub fn frontend_cap(tag: u8, statement_limit: usize) -> Option<usize> {
    Some(match tag {
        // Sync, Flush, Terminate, CopyDone: no body.
        b'S' | b'H' | b'X' | b'c' => HEADER_LEN,
        b'C' | b'D' | b'E' | b'f' => SMALL_MESSAGE_LEN + 1,
        // Query: the SQL and its NUL.
        b'Q' => HEADER_LEN + statement_limit + 1,
        b'P' => HEADER_LEN + statement_limit + 1 + PARSE_OVERHEAD,
        // Bind carries parameter values (bytea uploads) and CopyData rows: the server's 1 GiB,
        // bounded in practice by the daemon-wide buffer budget (CopyData is streamed).
        b'B' | b'd' => MAX_MESSAGE_LEN + 1,
        // FunctionCall: refused by the gateway, framed to answer it.
        b'F' => SMALL_MESSAGE_LEN + 1,
        _ => return None,
    })
}

/// Why a client's message header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
    #[error("{what} message of {len} bytes exceeds the limit of {cap} bytes")]
    TooLong {
        what: &'static str,
        len: usize,
        cap: usize,
    },
}

/// The name of a frontend message type, for errors.
pub fn frontend_name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'E' => "Execute",
        b'D' => "Describe",
        b'C' => "Close",
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'F' => "FunctionCall",
        b'p' => "password",
        _ => "unknown",
    }
}

/// Checks a client message's header against [`frontend_cap`].
#[inline]
pub fn check_frontend(h: Header, statement_limit: usize) -> Result<(), HeaderError> {
    let cap = frontend_cap(h.tag, statement_limit).ok_or(HeaderError::UnknownType(h.tag))?;
    if h.total > cap {
        return Err(HeaderError::TooLong {
            what: frontend_name(h.tag),
            len: h.total,
            cap,
        });
    }
    Ok(())
}

/// A framing violation; the session ends with it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    Length { tag: char, len: u32 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
}

/// The header of one tagged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole message length including the tag byte.
    pub total: usize,
}

/// The header at the start of `buf`, if five bytes are there.
#[inline]
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        return Err(FrameError::Length {
            tag: char::from(h[0]),
            len,
        });
    }
    Ok(Some(Header {
        tag: h[0],
        total: len as usize + 1,
    }))
}

/// A cursor over a message body.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the message in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn malformed(&self) -> FrameError {
        FrameError::Malformed { what: self.what }
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.malformed())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// A NUL-terminated string, as bytes without the NUL.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed())?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let b = self.cstr_bytes()?;
        std::str::from_utf8(b).map_err(|_| self.malformed())
    }
}

/// Writes one tagged message whose body `body` appends to the buffer; the length is patched in
/// afterwards, so nothing is built twice.
#[inline]
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    body(out);
    patch_len(out, start + 1);
}

/// Writes an untagged startup-phase packet (length first).
pub fn put_untagged(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    patch_len(out, start);
}

fn patch_len(out: &mut BytesMut, at: usize) {
    // Lengths are bounded by what we build ourselves: small, well under u32::MAX.
    let len = u32::try_from(out.len() - at).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string.
#[inline]
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Fields of an ErrorResponse or NoticeResponse we build.
#[derive(Debug, Clone, Copy)]
pub struct ErrorFields<'a> {
    /// `ERROR` or `FATAL`.
    pub severity: &'a str,
    /// SQLSTATE.
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

/// ErrorResponse ('E').
pub fn put_error(out: &mut BytesMut, e: &ErrorFields<'_>) {
    put_message(out, b'E', |o| {
        for (code, value) in [
            (b'S', Some(e.severity)),
            (b'V', Some(e.severity)),
            (b'C', Some(e.code)),
            (b'M', Some(e.message)),
            (b'D', e.detail),
            (b'H', e.hint),
        ] {
            if let Some(v) = value {
                o.put_u8(code);
                put_cstr(o, v.as_bytes());
            }
        }
        o.put_u8(0);
    });
}

/// ReadyForQuery ('Z') with a transaction status (`I`, `T` or `E`).
pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |o| o.put_u8(status));
}

/// AuthenticationOk, or any other Authentication request by its code.
pub fn put_authentication(out: &mut BytesMut, code: i32) {
    put_message(out, b'R', |o| o.put_i32(code));
}

/// BackendKeyData ('K') with a 4-byte secret (protocol 3.0).
pub fn put_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_message(out, b'K', |o| {
        o.put_i32(pid);
        o.put_i32(secret);
    });
}

/// NegotiateProtocolVersion ('v'): the newest minor version we speak and the `_pq_.` options
/// we did not recognise.
pub fn put_negotiate_protocol_version(out: &mut BytesMut, minor: i32, unrecognized: &[&str]) {
    put_message(out, b'v', |o| {
        o.put_i32(minor);
        o.put_i32(i32::try_from(unrecognized.len()).unwrap_or(i32::MAX));
        for name in unrecognized {
            put_cstr(o, name.as_bytes());
        }
    });
}

/// The fields of an ErrorResponse or NoticeResponse body we look at.
#[derive(Debug, Default, Clone, Copy)]
pub struct ParsedError<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
}

/// Parses the body (after the header) of an ErrorResponse or NoticeResponse.
pub fn parse_error(body: &[u8]) -> Result<ParsedError<'_>, FrameError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut e = ParsedError::default();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(e);
        }
        let value = r.cstr()?;
        match code {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_limits() {
        let mut out = BytesMut::new();
        put_ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        let h = peek_header(&out).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                tag: b'Z',
                total: 6
            }
        );
        assert!(peek_header(&out[..4]).unwrap().is_none());
        assert!(peek_header(b"Q\0\0\0\x03").is_err());
        assert!(peek_header(b"Q\x7f\xff\xff\xff").is_err());
    }

    #[test]
    fn frontend_caps_per_type() {
        let h = |tag: u8, total: usize| Header { tag, total };
        assert!(check_frontend(h(b'S', 5), 1000).is_ok());
        assert!(matches!(
            check_frontend(h(b'S', 6), 1000),
            Err(HeaderError::TooLong { what: "Sync", .. })
        ));
        assert!(check_frontend(h(b'H', 6), 1000).is_err());
        assert!(check_frontend(h(b'Q', 5 + 1001), 1000).is_ok());
        assert!(check_frontend(h(b'Q', 5 + 1002), 1000).is_err());
        assert!(check_frontend(h(b'E', 10_001), 1000).is_ok());
        assert!(check_frontend(h(b'E', 10_002), 1000).is_err());
        assert!(check_frontend(h(b'B', 64 << 20), 1000).is_ok());
        assert_eq!(
            check_frontend(h(b'Y', 64 << 20), 1000),
            Err(HeaderError::UnknownType(b'Y'))
        );
        // Startup-phase and backend-only types are not frontend messages after startup.
        for tag in [b'p', b'R', b'Z', b'T', 0u8] {
            assert!(frontend_cap(tag, 1000).is_none(), "{}", tag as char);
        }
    }

    #[test]
    fn error_roundtrip() {
        let mut out = BytesMut::new();
        put_error(
            &mut out,
            &ErrorFields {
                severity: "ERROR",
                code: "42501",
                message: "denied",
                detail: Some("d"),
                hint: None,
            },
        );
        let e = parse_error(&out[HEADER_LEN..]).unwrap();
        assert_eq!(
            (e.severity, e.code, e.message),
            ("ERROR", "42501", "denied")
        );
        assert!(parse_error(b"Mno terminator").is_err());
    }

    #[test]
    fn reader_rejects_truncation() {
        let mut r = Reader::new(b"ab\0\0\0", "x");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert!(r.i32().is_err());
    }
}
