//! The startup phase from the client's side: StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest, and protocol version negotiation.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec::{self, FrameError, MAX_STARTUP_LEN};

/// Request codes of the untagged startup packets.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The only major protocol version there is.
pub const PROTOCOL_MAJOR: u16 = 3;
/// The newest minor version airlock speaks to clients. Keys it mints are 4 bytes, so it stays at
/// 3.0 and negotiates newer clients down (they must then fall back, as they would with an older
/// server).
pub const PROTOCOL_MINOR: u16 = 0;

/// Errors of the startup phase.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("reading the startup packet: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    Length(u32),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "unsupported frontend protocol {major}.{minor}: airlock supports 3.0 to 3.{PROTOCOL_MINOR}"
    )]
    Version { major: u16, minor: u16 },
    #[error("startup parameter is not valid UTF-8")]
    Encoding,
}

/// A StartupMessage: the protocol version and parameters the client sent.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order sent, `_pq_.` protocol options excluded.
    pub params: Vec<(String, String)>,
    /// `_pq_.*` protocol extension names the client asked for.
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// A parameter by name (names are case-sensitive on the wire, as in PostgreSQL).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client must be told to fall back with NegotiateProtocolVersion: it asked for
    /// a newer minor version, or for protocol options we do not know (we know none).
    pub fn needs_negotiation(&self) -> bool {
        self.minor > PROTOCOL_MINOR || !self.protocol_options.is_empty()
    }

    /// Writes the NegotiateProtocolVersion answer.
    pub fn put_negotiation(&self, out: &mut BytesMut) {
        let names: Vec<&str> = self.protocol_options.iter().map(String::as_str).collect();
        codec::put_negotiate_protocol_version(out, i32::from(PROTOCOL_MINOR), &names);
    }
}

/// One packet of the startup phase.
#[derive(Debug, Clone)]
pub enum StartupPacket {
    Startup(Startup),
    SslRequest,
    GssEncRequest,
    /// A cancel request for a session, with the key the client was given.
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
}

/// Reads one startup-phase packet; `None` when the client closed before sending one.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<StartupPacket>, StartupError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_LEN as u32).contains(&len) {
        return Err(StartupError::Length(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    parse_packet(&body).map(Some)
}

/// Parses a startup packet body (after the length).
pub fn parse_packet(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let mut rd = codec::Reader::new(body, "startup");
    let code = rd.i32()?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = rd.i32()?;
            let secret = rd.rest();
            if secret.len() < 4 || secret.len() > 256 {
                return Err(FrameError::Malformed {
                    what: "CancelRequest",
                }
                .into());
            }
            Ok(StartupPacket::Cancel {
                pid,
                secret: secret.to_vec(),
            })
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != PROTOCOL_MAJOR {
                return Err(StartupError::Version { major, minor });
            }
            let mut s = Startup {
                major,
                minor,
                ..Startup::default()
            };
            loop {
                let name = rd.cstr_bytes()?;
                if name.is_empty() {
                    break;
                }
                let value = rd.cstr_bytes()?;
                let name = String::from_utf8(name.to_vec()).map_err(|_| StartupError::Encoding)?;
                let value =
                    String::from_utf8(value.to_vec()).map_err(|_| StartupError::Encoding)?;
                if name.starts_with("_pq_.") {
                    s.protocol_options.push(name);
                } else {
                    s.params.push((name, value));
                }
            }
            Ok(StartupPacket::Startup(s))
        }
    }
}

/// Writes a StartupMessage for protocol 3.0 with `params`.
pub fn put_startup<'a>(out: &mut BytesMut, params: impl IntoIterator<Item = (&'a str, &'a str)>) {
    codec::put_untagged(out, |o| {
        o.put_i32(i32::from(PROTOCOL_MAJOR) << 16);
        for (k, v) in params {
            codec::put_cstr(o, k.as_bytes());
            codec::put_cstr(o, v.as_bytes());
        }
        o.put_u8(0);
    });
}

/// Writes an SSLRequest.
pub fn put_ssl_request(out: &mut BytesMut) {
    codec::put_untagged(out, |o| o.put_i32(SSL_REQUEST));
}

/// Writes a CancelRequest.
pub fn put_cancel_request(out: &mut BytesMut, pid: i32, secret: &[u8]) {
    codec::put_untagged(out, |o| {
        o.put_i32(CANCEL_REQUEST);
        o.put_i32(pid);
        o.put_slice(secret);
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(out: &BytesMut) -> &[u8] {
        &out[4..]
    }

    #[test]
    fn startup_roundtrip_and_32_negotiation() {
        let mut out = BytesMut::new();
        put_startup(&mut out, [("user", "alice"), ("database", "db")]);
        let StartupPacket::Startup(s) = parse_packet(body(&out)).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.get("user"), Some("alice"));
        assert!(!s.needs_negotiation());

        let mut b = Vec::new();
        b.extend_from_slice(&((3i32 << 16) | 2).to_be_bytes());
        b.extend_from_slice(b"user\0bob\0_pq_.test\0x\0\0");
        let StartupPacket::Startup(s) = parse_packet(&b).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!((s.major, s.minor), (3, 2));
        assert!(s.needs_negotiation());
        assert_eq!(s.protocol_options, vec!["_pq_.test".to_string()]);
        let mut neg = BytesMut::new();
        s.put_negotiation(&mut neg);
        assert_eq!(&neg[..], b"v\0\0\0\x16\0\0\0\0\0\0\0\x01_pq_.test\0");
    }

    #[test]
    fn special_requests() {
        let mut out = BytesMut::new();
        put_ssl_request(&mut out);
        assert!(matches!(
            parse_packet(body(&out)).unwrap(),
            StartupPacket::SslRequest
        ));
        out.clear();
        put_cancel_request(&mut out, 7, &[1, 2, 3, 4]);
        assert!(matches!(
            parse_packet(body(&out)).unwrap(),
            StartupPacket::Cancel { pid: 7, .. }
        ));
        let v2 = (2i32 << 16).to_be_bytes();
        assert!(matches!(
            parse_packet(&v2),
            Err(StartupError::Version { major: 2, .. })
        ));
    }
}
