//! Packet reads and writes during the two handshakes, where nothing may be read past the
//! packet at hand: a client's TLS ClientHello follows its SSLRequest without waiting, and must
//! reach the TLS acceptor, not a read buffer. The session loop frames on a buffer instead
//! ([`codec::check_packet`](super::codec::check_packet)).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, FrameError, HEADER_LEN, MAX_PAYLOAD};

/// Largest handshake-phase packet accepted (greeting, handshake response, auth data): a
/// handshake response with long connection attributes is a few KiB; RSA keys and signatures
/// are smaller.
pub const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// Errors reading or writing handshake packets.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection during the handshake")]
    Closed,
}

/// One logical packet read exactly: its payload and its last sequence id.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<(Vec<u8>, u8), WireError> {
    let mut payload = Vec::new();
    let mut expected: Option<u8> = None;
    loop {
        let mut head = [0u8; HEADER_LEN];
        if let Err(e) = r.read_exact(&mut head).await {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                WireError::Closed
            } else {
                e.into()
            });
        }
        let Some(h) = codec::peek_header(&head) else {
            return Err(FrameError::Malformed(what).into());
        };
        if let Some(e) = expected
            && h.seq != e
        {
            return Err(FrameError::Sequence {
                got: h.seq,
                expected: e,
            }
            .into());
        }
        if payload.len() + h.len > MAX_HANDSHAKE_PACKET {
            return Err(FrameError::TooLarge {
                what,
                len: payload.len() + h.len,
                limit: MAX_HANDSHAKE_PACKET,
            }
            .into());
        }
        let at = payload.len();
        payload.resize(at + h.len, 0);
        if let Err(e) = r.read_exact(&mut payload[at..]).await {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                WireError::Closed
            } else {
                e.into()
            });
        }
        if h.len < MAX_PAYLOAD {
            return Ok((payload, h.seq));
        }
        expected = Some(h.seq.wrapping_add(1));
    }
}

/// Writes one logical packet numbered from `*seq` and flushes.
pub async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: &mut u8,
    payload: &[u8],
) -> Result<(), WireError> {
    let mut out = BytesMut::with_capacity(payload.len() + HEADER_LEN);
    codec::put_packet(&mut out, seq, payload);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Writes an ERR packet numbered `*seq`, flushes and shuts the stream down.
pub async fn write_err_and_close<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: &mut u8,
    code: u16,
    state: &str,
    message: &str,
) {
    let mut out = BytesMut::new();
    codec::put_err(&mut out, seq, code, state, message);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}
