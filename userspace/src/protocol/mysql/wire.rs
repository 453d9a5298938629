//! Packet reads and writes during the two handshakes, where nothing may be read past the
//! packet at hand: a client's TLS ClientHello follows its SSLRequest without waiting, and must
//! reach the TLS acceptor, not a read buffer. The session loop frames on a buffer instead
//! ([`codec::check_packet`](super::codec::check_packet)), as do the gateway's own commands
//! between the client's ([`send_own`], [`next_own`]: role switches, catalog lookups).

use bytes::{Buf, BytesMut};
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

/// Sends a command of the gateway's own (`cmd` and its body) on the server connection, as the
/// first packet of a new exchange.
pub async fn send_own<W: AsyncWrite + Unpin>(
    w: &mut W,
    cmd: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(body.len() + HEADER_LEN + 1);
    let mut payload = Vec::with_capacity(body.len() + 1);
    payload.push(cmd);
    payload.extend_from_slice(body);
    let mut seq = 0;
    codec::put_packet(&mut out, &mut seq, &payload);
    w.write_all(&out).await?;
    w.flush().await
}

/// The next packet of the answer to a command of the gateway's own: its payload, consumed from
/// `buf` (what was read from `r` and not yet consumed). `None`: the server closed the
/// connection.
pub async fn next_own<R, E>(
    r: &mut R,
    buf: &mut BytesMut,
    limit: usize,
    what: &'static str,
) -> Result<Option<Vec<u8>>, E>
where
    R: AsyncRead + Unpin,
    E: From<std::io::Error> + From<FrameError>,
{
    loop {
        if let Some(p) = codec::check_packet(buf, limit, what)? {
            let payload = p.payload(buf).into_owned();
            buf.advance(p.total);
            return Ok(Some(payload));
        }
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}
