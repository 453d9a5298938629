//! Framing: every MySQL packet is a 3-byte little-endian payload length and a sequence id,
//! then the payload. A payload of 16 MiB − 1 bytes says "continued in the next packet": a
//! logical packet of any length is a chain of full packets ended by a shorter one (possibly
//! empty). The session loop checks headers on its `BytesMut` ([`check_packet`]), parses the
//! few payloads it must understand, and advances; the builders write whole packets (split and
//! numbered) into a `BytesMut`.
//!
//! The payloads mysql_common parses well (handshake, handshake response, auth switch, column
//! definitions, ERR) go through it; the small ones the hot path reads (OK and EOF status flags,
//! length-encoded integers) are read here without allocating.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

/// Payload length and sequence id.
pub const HEADER_LEN: usize = 4;

/// A payload of this length is continued in the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Command bytes (the first payload byte of a client command).
pub mod command {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CREATE_DB: u8 = 0x05;
    pub const DROP_DB: u8 = 0x06;
    pub const REFRESH: u8 = 0x07;
    pub const SHUTDOWN: u8 = 0x08;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const CONNECT: u8 = 0x0b;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const TIME: u8 = 0x0f;
    pub const DELAYED_INSERT: u8 = 0x10;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const CONNECT_OUT: u8 = 0x14;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const DAEMON: u8 = 0x1d;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB: several commands in one packet.
    pub const MULTI: u8 = 0xfe;
    /// MariaDB: array binding of a prepared statement.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// Server status flags the loop looks at.
pub mod status {
    /// Another result set (or OK) follows this one.
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    /// The rows of this prepared statement's result wait in a cursor (COM_STMT_FETCH).
    pub const CURSOR_EXISTS: u16 = 0x0040;
    /// sql_mode NO_BACKSLASH_ESCAPES: a backslash in a string is an ordinary character.
    pub const NO_BACKSLASH_ESCAPES: u16 = 0x0200;
    /// MariaDB: sql_mode ANSI_QUOTES (double quotes delimit identifiers).
    pub const ANSI_QUOTES: u16 = 0x8000;
}

/// A framing violation; the session ends with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("packet of {len} bytes is over the {limit}-byte limit for {what}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("packet out of order: sequence id {got}, expected {expected}")]
    Sequence { got: u8, expected: u8 },
    #[error("malformed {0} packet")]
    Malformed(&'static str),
}

/// One physical packet's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: usize,
    pub seq: u8,
}

impl Header {
    /// Whether the logical packet continues in the next physical one.
    pub fn continued(&self) -> bool {
        self.len == MAX_PAYLOAD
    }
}

/// The header at the start of `buf`, if four bytes are there.
#[inline]
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    let h = buf.get(..HEADER_LEN)?;
    Some(Header {
        len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
        seq: h[3],
    })
}

/// A complete logical packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Bytes it takes in the buffer, headers included.
    pub total: usize,
    /// Payload bytes over all its physical packets.
    pub len: usize,
    /// Physical packets it was sent in.
    pub parts: usize,
    pub first_seq: u8,
    pub last_seq: u8,
}

impl Packet {
    /// The payload: borrowed when it came in one physical packet, joined otherwise.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> Cow<'a, [u8]> {
        if self.parts == 1 {
            return Cow::Borrowed(&buf[HEADER_LEN..HEADER_LEN + self.len]);
        }
        let mut out = Vec::with_capacity(self.len);
        let mut pos = 0;
        while pos < self.total {
            let Some(h) = peek_header(&buf[pos..]) else {
                break;
            };
            out.extend_from_slice(&buf[pos + HEADER_LEN..pos + HEADER_LEN + h.len]);
            pos += HEADER_LEN + h.len;
        }
        Cow::Owned(out)
    }

    /// The first payload byte, if any.
    pub fn first_byte(&self, buf: &[u8]) -> Option<u8> {
        (self.len > 0).then(|| buf[HEADER_LEN])
    }
}

/// Checks for a whole logical packet at the start of `buf` whose payload is at most `limit`
/// bytes. `Ok(None)`: more bytes are needed (nothing is consumed). Sequence ids must count up
/// from the first packet's (wrapping at 256).
pub fn check_packet(
    buf: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<Option<Packet>, FrameError> {
    let mut pos = 0;
    let mut len = 0usize;
    let mut parts = 0usize;
    let mut first_seq = 0u8;
    loop {
        let Some(h) = peek_header(&buf[pos..]) else {
            return Ok(None);
        };
        if parts == 0 {
            first_seq = h.seq;
        } else {
            let expected = first_seq.wrapping_add(parts as u8);
            if h.seq != expected {
                return Err(FrameError::Sequence {
                    got: h.seq,
                    expected,
                });
            }
        }
        len += h.len;
        if len > limit {
            return Err(FrameError::TooLarge { what, len, limit });
        }
        parts += 1;
        let end = pos + HEADER_LEN + h.len;
        if buf.len() < end {
            return Ok(None);
        }
        pos = end;
        if !h.continued() {
            return Ok(Some(Packet {
                total: pos,
                len,
                parts,
                first_seq,
                last_seq: h.seq,
            }));
        }
    }
}

/// Appends `payload` as one logical packet, split into physical packets numbered from `*seq`
/// (left at the next id).
pub fn put_packet(out: &mut BytesMut, seq: &mut u8, payload: &[u8]) {
    out.reserve(payload.len() + HEADER_LEN * (1 + payload.len() / MAX_PAYLOAD));
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        put_header(out, n, *seq);
        out.put_slice(&rest[..n]);
        *seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return;
        }
    }
}

/// Appends one physical packet header.
#[inline]
pub fn put_header(out: &mut BytesMut, len: usize, seq: u8) {
    debug_assert!(len <= MAX_PAYLOAD);
    out.put_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
}

/// A length-encoded integer at the start of `b`: its value and how many bytes it took.
/// `None` when truncated or when `b` starts with 0xFB (NULL) or 0xFF (never an integer).
#[inline]
pub fn read_lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    };
    match first {
        0..=0xfa => Some((u64::from(first), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc(out: &mut impl BufMut, v: u64) {
    if v < 0xfb {
        out.put_u8(v as u8);
    } else if v <= 0xffff {
        out.put_u8(0xfc);
        out.put_u16_le(v as u16);
    } else if v <= 0xff_ffff {
        out.put_u8(0xfd);
        out.put_slice(&(v as u32).to_le_bytes()[..3]);
    } else {
        out.put_u8(0xfe);
        out.put_u64_le(v);
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut impl BufMut, b: &[u8]) {
    put_lenenc(out, b.len() as u64);
    out.put_slice(b);
}

/// A length-encoded string at the start of `b` and the bytes it took (`None`: truncated or
/// NULL).
#[inline]
pub fn read_lenenc_bytes(b: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = read_lenenc(b)?;
    let len = usize::try_from(len).ok()?;
    let end = n.checked_add(len)?;
    Some((b.get(n..end)?, end))
}

/// The cells of a text-protocol row (`None`: NULL); `None` when the row is malformed.
pub fn text_row_cells(payload: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut cells = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        if payload[pos] == 0xfb {
            cells.push(None);
            pos += 1;
        } else {
            let (v, n) = read_lenenc_bytes(&payload[pos..])?;
            cells.push(Some(v));
            pos += n;
        }
    }
    Some(cells)
}

/// Appends one text-protocol row cell (`None`: NULL).
pub fn put_text_cell(out: &mut impl BufMut, cell: Option<&[u8]>) {
    match cell {
        Some(v) => put_lenenc_bytes(out, v),
        None => out.put_u8(0xfb),
    }
}

/// Whether a payload is a result set terminator: EOF (0xFE, shorter than 9 bytes) or, with
/// CLIENT_DEPRECATE_EOF, an OK packet with the 0xFE header (which a row starting with a
/// 9-byte length can never be mistaken for: such a row fills a whole physical packet).
#[inline]
pub fn is_terminator(first: u8, len: usize, deprecate_eof: bool) -> bool {
    first == 0xfe
        && if deprecate_eof {
            len < MAX_PAYLOAD
        } else {
            len < 9
        }
}

/// Status flags of an OK payload (0x00 or 0xFE header; affected rows, last insert id, status).
pub fn ok_status(payload: &[u8]) -> Option<u16> {
    let mut pos = 1;
    for _ in 0..2 {
        let (_, n) = read_lenenc(payload.get(pos..)?)?;
        pos += n;
    }
    let s = payload.get(pos..pos + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Affected rows of an OK payload.
pub fn ok_affected_rows(payload: &[u8]) -> Option<u64> {
    read_lenenc(payload.get(1..)?).map(|(v, _)| v)
}

/// Status flags of a terminator: an old EOF packet (0xFE, warnings, status) or an OK packet.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Option<u16> {
    if deprecate_eof {
        ok_status(payload)
    } else {
        let s = payload.get(3..5)?;
        Some(u16::from_le_bytes([s[0], s[1]]))
    }
}

/// An ERR payload's code, SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub state: String,
    pub message: String,
}

/// Parses an ERR payload (protocol 4.1).
pub fn parse_err(payload: &[u8]) -> Option<ServerError> {
    use mysql_common::constants::CapabilityFlags;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::ErrPacket;
    match ParseBuf(payload)
        .parse::<ErrPacket<'_>>(CapabilityFlags::CLIENT_PROTOCOL_41)
        .ok()?
    {
        ErrPacket::Error(e) => Some(ServerError {
            code: e.error_code(),
            state: e
                .sql_state_ref()
                .map(|s| s.as_str().into_owned())
                .unwrap_or_default(),
            message: e.message_str().into_owned(),
        }),
        ErrPacket::Progress(_) => None,
    }
}

/// Well-known error codes the gateway answers with.
pub mod errno {
    /// ER_ACCESS_DENIED_ERROR (login refused).
    pub const ACCESS_DENIED: u16 = 1045;
    /// ER_TABLEACCESS_DENIED_ERROR: a statement refused by policy.
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR: an operation refused by policy.
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// ER_NOT_SUPPORTED_YET.
    pub const NOT_SUPPORTED: u16 = 1235;
    /// ER_UNKNOWN_COM_ERROR.
    pub const UNKNOWN_COMMAND: u16 = 1047;
    /// ER_NET_PACKETS_OUT_OF_ORDER / malformed packets.
    pub const MALFORMED_PACKET: u16 = 1835;
    /// ER_NET_PACKET_TOO_LARGE.
    pub const PACKET_TOO_LARGE: u16 = 1153;
    /// ER_UNKNOWN_STMT_HANDLER.
    pub const UNKNOWN_STMT: u16 = 1243;
    /// ER_NO_SUCH_THREAD.
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// ER_KILL_DENIED_ERROR.
    pub const KILL_DENIED: u16 = 1095;
    /// ER_NOT_ALLOWED_COMMAND (LOAD DATA LOCAL).
    pub const NOT_ALLOWED_COMMAND: u16 = 1148;
    /// ER_CANT_CONNECT / the server could not be reached (CR_CONN_HOST_ERROR).
    pub const CONN_HOST_ERROR: u16 = 2003;
    /// ER_QUERY_INTERRUPTED (a masking refusal stops the result).
    pub const QUERY_INTERRUPTED: u16 = 1317;
    /// ER_OUT_OF_RESOURCES (audit log cannot record).
    pub const OUT_OF_RESOURCES: u16 = 1041;
}

/// Appends an ERR packet (protocol 4.1: code, `#`, SQLSTATE, message).
pub fn put_err(out: &mut BytesMut, seq: &mut u8, code: u16, state: &str, message: &str) {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut st = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in st.iter_mut().zip(state.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&st);
    p.extend_from_slice(message.as_bytes());
    put_packet(out, seq, &p);
}

/// Appends an OK packet with no affected rows and the given status flags.
pub fn put_ok(out: &mut BytesMut, seq: &mut u8, status: u16) {
    let mut p = [0u8; 7];
    p[3..5].copy_from_slice(&status.to_le_bytes());
    put_packet(out, seq, &p);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn physical(len: usize, seq: u8, fill: u8) -> Vec<u8> {
        let mut v = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        v.resize(HEADER_LEN + len, fill);
        v
    }

    #[test]
    fn single_and_split_packets() {
        let p = physical(3, 0, b'a');
        assert_eq!(check_packet(&p[..5], 100, "x").unwrap(), None);
        let got = check_packet(&p, 100, "x").unwrap().unwrap();
        assert_eq!((got.total, got.len, got.parts), (7, 3, 1));
        assert_eq!(&*got.payload(&p), b"aaa");

        // 16 MiB − 1, then an empty packet: one logical packet of exactly MAX_PAYLOAD bytes.
        let mut big = physical(MAX_PAYLOAD, 7, b'b');
        big.extend_from_slice(&physical(0, 8, 0));
        let got = check_packet(&big, 1 << 30, "x").unwrap().unwrap();
        assert_eq!(
            (got.len, got.parts, got.first_seq, got.last_seq),
            (MAX_PAYLOAD, 2, 7, 8)
        );
        assert_eq!(got.payload(&big).len(), MAX_PAYLOAD);
        assert!(
            check_packet(&big[..big.len() - 1], 1 << 30, "x")
                .unwrap()
                .is_none()
        );

        // Out of order continuation.
        let mut bad = physical(MAX_PAYLOAD, 1, 0);
        bad.extend_from_slice(&physical(0, 5, 0));
        assert!(matches!(
            check_packet(&bad, 1 << 30, "x"),
            Err(FrameError::Sequence {
                got: 5,
                expected: 2
            })
        ));
        // A declared length over the limit fails on the header alone.
        let huge = [0xff, 0xff, 0xff, 0];
        assert!(matches!(
            check_packet(&huge, 1024, "handshake"),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn builders_split_and_number() {
        let mut out = BytesMut::new();
        let mut seq = 254;
        put_packet(&mut out, &mut seq, &vec![1u8; MAX_PAYLOAD + 10]);
        assert_eq!(seq, 0);
        let p = check_packet(&out, 1 << 30, "x").unwrap().unwrap();
        assert_eq!((p.parts, p.first_seq, p.last_seq), (2, 254, 255));
        let mut out = BytesMut::new();
        let mut seq = 1;
        put_err(&mut out, &mut seq, 1142, "42000", "denied");
        let p = check_packet(&out, 100, "x").unwrap().unwrap();
        let e = parse_err(&p.payload(&out)).unwrap();
        assert_eq!(
            (e.code, e.state.as_str(), e.message.as_str()),
            (1142, "42000", "denied")
        );
    }

    #[test]
    fn lenenc_and_status() {
        for v in [
            0u64,
            250,
            251,
            0xffff,
            0x10000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_lenenc(&mut b, v);
            assert_eq!(read_lenenc(&b), Some((v, b.len())), "{v}");
        }
        assert_eq!(read_lenenc(&[0xfb]), None);
        assert_eq!(read_lenenc(&[0xfc, 1]), None);
        // OK: header, affected 1, insert id 0, status 0x0002, warnings 0.
        assert_eq!(ok_status(&[0, 1, 0, 2, 0, 0, 0]), Some(2));
        assert_eq!(ok_affected_rows(&[0, 1, 0, 2, 0, 0, 0]), Some(1));
        assert_eq!(terminator_status(&[0xfe, 0, 0, 8, 0], false), Some(8));
        assert!(is_terminator(0xfe, 5, false));
        assert!(!is_terminator(0xfe, 9, false));
        assert!(is_terminator(0xfe, 200, true));
        assert!(!is_terminator(0xfe, MAX_PAYLOAD, true));
    }
}
