//! The cipher offer, fitted to what the client speaks.
//!
//! A client takes the first cipher of its own list that the server offers (RFC 4253 §7.1),
//! and OpenSSH lists ChaCha20-Poly1305 first. ring, the gateway's crypto, runs AES-GCM in
//! assembly but the Poly1305 of OpenSSH's ChaCha20 construction in portable C: over half the
//! gateway's CPU in a bulk transfer (docs/decisions/ssh-gateway.md). So before russh takes the
//! connection, the gateway sends its identification, reads the client's identification and
//! KEXINIT, and offers AES-GCM alone to a client that lists it both ways. Any other client
//! gets the full list, so no client that could connect with it is refused. The bytes read are
//! handed to russh unchanged (they are in the exchange hash), and russh's identification line,
//! already sent, is absorbed ([`Replayed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

macro_rules! server_id {
    () => {
        "SSH-2.0-airlock"
    };
}
/// The gateway's SSH identification (RFC 4253 §4.2), without its CR LF.
pub const SERVER_ID: &str = server_id!();
/// What russh writes for [`SERVER_ID`] (checked as it is absorbed).
const SERVER_ID_LINE: &[u8] = concat!(server_id!(), "\r\n").as_bytes();
/// Longest identification line (RFC 4253 §4.2: 255 characters with CR LF).
const MAX_ID_LINE: usize = 255;
/// Largest packet every implementation must take (RFC 4253 §6.1); a longer KEXINIT is left to
/// russh.
const MAX_KEXINIT: usize = 35_000;
/// How long the gateway waits for the client's KEXINIT after the identifications. Clients send
/// it at once (OpenSSH, asyncssh, Paramiko, Go, russh); one that waits for the server's gets
/// the full list after this.
pub const KEXINIT_WAIT: Duration = Duration::from_millis(250);
const MSG_KEXINIT: u8 = 20;
/// The AES-GCM ciphers, the gateway's fast AEAD.
pub const GCM: [&str; 2] = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"];

/// What the client sent before russh took the connection.
#[derive(Debug)]
pub struct Prelude {
    /// Every byte read, for russh to read again.
    pub read: Bytes,
    /// The client's KEXINIT lists AES-GCM in both directions.
    pub speaks_gcm: bool,
}

/// Sends the gateway's identification, then reads the client's identification and KEXINIT
/// (waiting at most [`KEXINIT_WAIT`] for the latter). Reads at most one identification line
/// and one packet of [`MAX_KEXINIT`]; anything unexpected (no `SSH-` line, a packet that is no
/// KEXINIT, end of stream) stops the reading, and russh judges the bytes as before.
pub async fn exchange_ids<S>(stream: &mut S) -> io::Result<Prelude>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(SERVER_ID_LINE).await?;
    let mut read = BytesMut::with_capacity(2048);
    let id_end = loop {
        if let Some(i) = memchr::memchr(b'\n', &read) {
            break Some(i + 1);
        }
        if read.len() >= MAX_ID_LINE || stream.read_buf(&mut read).await? == 0 {
            break None;
        }
    };
    let Some(id_end) = id_end.filter(|_| read.starts_with(b"SSH-")) else {
        return Ok(Prelude {
            read: read.freeze(),
            speaks_gcm: false,
        });
    };
    let kexinit = tokio::time::timeout(KEXINIT_WAIT, async {
        loop {
            match read_kexinit(&read[id_end..]) {
                Kexinit::Read(gcm) => return Ok::<_, io::Error>(gcm),
                Kexinit::Other => return Ok(false),
                Kexinit::Partial => {
                    if stream.read_buf(&mut read).await? == 0 {
                        return Ok(false);
                    }
                }
            }
        }
    })
    .await;
    let speaks_gcm = match kexinit {
        Ok(r) => r?,
        Err(_elapsed) => false,
    };
    Ok(Prelude {
        read: read.freeze(),
        speaks_gcm,
    })
}

/// What the bytes after the client's identification hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kexinit {
    /// More bytes are needed.
    Partial,
    /// Not a KEXINIT packet of a length the gateway reads.
    Other,
    /// A whole KEXINIT: whether it lists AES-GCM both ways.
    Read(bool),
}

/// Reads the unencrypted KEXINIT packet at the start of `bytes` (RFC 4253 §6, §7.1). Only the
/// packet's own bytes decide: once it is `Read` or `Other`, more bytes change nothing.
pub fn read_kexinit(bytes: &[u8]) -> Kexinit {
    let Some(len) = bytes.get(..4) else {
        return Kexinit::Partial;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if !(2..=MAX_KEXINIT).contains(&len) {
        return Kexinit::Other;
    }
    let Some(packet) = bytes.get(4..4 + len) else {
        return Kexinit::Partial;
    };
    // padding_length, then the payload; the padding follows the name-lists.
    let gcm = |list: &[u8]| {
        list.split(|&b| b == b',')
            .any(|name| GCM.iter().any(|g| g.as_bytes() == name))
    };
    let read = || -> Option<bool> {
        let payload = packet.get(1..)?;
        if *payload.first()? != MSG_KEXINIT {
            return None;
        }
        // Message type and the 16-byte cookie.
        let mut rest = payload.get(17..)?;
        let mut lists = [&[][..]; 4];
        for list in &mut lists {
            let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            *list = rest.get(4..4 + n)?;
            rest = &rest[4 + n..];
        }
        // kex, host key, encryption client to server, encryption server to client.
        Some(gcm(lists[2]) && gcm(lists[3]))
    };
    read().map_or(Kexinit::Other, Kexinit::Read)
}

/// The client connection as russh sees it: the prelude's bytes come first, and russh's
/// identification line, already sent, is absorbed (and checked) instead of sent again.
#[derive(Debug)]
pub struct Replayed<S> {
    inner: S,
    replay: Bytes,
    absorb: &'static [u8],
}

impl<S> Replayed<S> {
    /// `stream` after [`exchange_ids`] read `prelude` from it.
    pub fn new(stream: S, prelude: Prelude) -> Self {
        Replayed {
            inner: stream,
            replay: prelude.read,
            absorb: SERVER_ID_LINE,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                // Frees the prelude's buffer.
                this.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.absorb.is_empty() && !buf.is_empty() {
            let n = this.absorb.len().min(buf.len());
            if buf[..n] != this.absorb[..n] {
                return Poll::Ready(Err(io::Error::other(
                    "the SSH identification differs from the one already sent",
                )));
            }
            this.absorb = &this.absorb[n..];
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.absorb.is_empty() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kexinit(c2s: &str, s2c: &str, padding: usize) -> Vec<u8> {
        let mut payload = vec![MSG_KEXINIT];
        payload.extend_from_slice(&[7; 16]);
        for list in [
            "curve25519-sha256",
            "ssh-ed25519",
            c2s,
            s2c,
            "hmac-sha2-256",
            "hmac-sha2-256",
            "none",
            "none",
            "",
            "",
        ] {
            payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
            payload.extend_from_slice(list.as_bytes());
        }
        payload.extend_from_slice(&[0, 0, 0, 0, 0]);
        let mut packet = ((1 + payload.len() + padding) as u32)
            .to_be_bytes()
            .to_vec();
        packet.push(padding as u8);
        packet.extend_from_slice(&payload);
        packet.extend(std::iter::repeat_n(0, padding));
        packet
    }

    const OPENSSH: &str = "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com";

    #[test]
    fn a_kexinit_is_read_for_gcm_in_both_directions() {
        let chacha = "chacha20-poly1305@openssh.com";
        // A name that only contains a GCM name is not one.
        let lookalike = "xaes128-gcm@openssh.com,aes128-gcm@openssh.comx";
        for (c2s, s2c, padding, gcm) in [
            (OPENSSH, OPENSSH, 8, true),
            (chacha, chacha, 8, false),
            (OPENSSH, chacha, 8, false),
            (lookalike, lookalike, 4, false),
        ] {
            assert_eq!(
                read_kexinit(&kexinit(c2s, s2c, padding)),
                Kexinit::Read(gcm),
                "{c2s} / {s2c}"
            );
        }
    }

    #[test]
    fn partial_odd_and_oversized_packets_are_told_apart() {
        let whole = kexinit(OPENSSH, OPENSSH, 8);
        for cut in [0, 3, 4, 50, whole.len() - 1] {
            assert_eq!(
                read_kexinit(&whole[..cut]),
                Kexinit::Partial,
                "cut at {cut}"
            );
        }
        // Not a KEXINIT (message 21), a name-list running past the packet, absurd lengths.
        let mut other = whole.clone();
        other[5] = 21;
        assert_eq!(read_kexinit(&other), Kexinit::Other);
        let mut overrun = whole.clone();
        overrun[4 + 1 + 17..4 + 1 + 17 + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(read_kexinit(&overrun), Kexinit::Other);
        assert_eq!(read_kexinit(&u32::MAX.to_be_bytes()), Kexinit::Other);
        assert_eq!(read_kexinit(&[0, 0, 0, 1, 0]), Kexinit::Other);
    }

    #[tokio::test]
    async fn the_prelude_is_replayed_and_the_id_absorbed() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut sent = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec();
        sent.extend_from_slice(&kexinit(OPENSSH, OPENSSH, 8));
        sent.extend_from_slice(b"after");
        client.write_all(&sent).await.unwrap();
        let mut server = server;
        let prelude = exchange_ids(&mut server).await.unwrap();
        assert!(prelude.speaks_gcm);
        let mut replayed = Replayed::new(server, prelude);
        // russh writes its identification again: absorbed, then writes pass through.
        replayed.write_all(SERVER_ID_LINE).await.unwrap();
        replayed.write_all(b"kexinit").await.unwrap();
        let mut got = vec![0; SERVER_ID_LINE.len() + 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..SERVER_ID_LINE.len()], SERVER_ID_LINE);
        assert_eq!(&got[SERVER_ID_LINE.len()..], b"kexinit");
        let mut again = vec![0; sent.len()];
        replayed.read_exact(&mut again).await.unwrap();
        assert_eq!(again, sent);
    }

    #[tokio::test]
    async fn a_client_that_waits_or_speaks_garbage_gets_the_full_list() {
        // Identification only, no KEXINIT: the wait ends, nothing read is lost.
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"SSH-2.0-waits\r\n").await.unwrap();
        let prelude = exchange_ids(&mut server).await.unwrap();
        assert!(!prelude.speaks_gcm);
        assert_eq!(&prelude.read[..], b"SSH-2.0-waits\r\n");
        // Garbage without a line end: read up to one line's length, then left to russh.
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&[b'x'; 300]).await.unwrap();
        let prelude = exchange_ids(&mut server).await.unwrap();
        assert!(!prelude.speaks_gcm);
        assert!(prelude.read.iter().all(|&b| b == b'x'));
        // A different identification written through the wrapper is an error, not sent.
        let (_client, server) = tokio::io::duplex(4096);
        let mut replayed = Replayed::new(
            server,
            Prelude {
                read: Bytes::new(),
                speaks_gcm: false,
            },
        );
        assert!(replayed.write_all(b"SSH-2.0-other\r\n").await.is_err());
    }
}
