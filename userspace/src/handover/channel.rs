//! The control socket's framing: one JSON message per line over a unix stream socket, with
//! file descriptors riding `SCM_RIGHTS` on the message that carries them.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Most descriptors one message may carry (every listener of a daemon).
pub const MAX_FDS: usize = 64;
/// Longest message line.
const MAX_LINE: usize = 64 * 1024;

/// One framed, descriptor-capable connection.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The peer's process id (`SO_PEERCRED`).
    pub fn peer_pid(&self) -> Option<u32> {
        self.stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
    }

    /// The peer's user id (`SO_PEERCRED`).
    pub fn peer_uid(&self) -> Option<u32> {
        self.stream.peer_cred().ok().map(|c| c.uid())
    }

    /// Sends `msg` with `fds` attached to its first byte.
    pub async fn send<M: Serialize>(&self, msg: &M, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors, at most {MAX_FDS}", fds.len()),
            ));
        }
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while sent < line.len() {
            let rest = &line[sent..];
            // The descriptors go with the first chunk only.
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            sent += self
                .stream
                .async_io(Interest::WRITABLE, || {
                    sendmsg::<UnixAddr>(
                        self.stream.as_raw_fd(),
                        &[IoSlice::new(rest)],
                        cmsgs,
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(io::Error::from)
                })
                .await?;
        }
        Ok(())
    }

    /// The next message; `None` once the peer has closed. Descriptors that arrived are kept
    /// for [`take_fds`](Self::take_fds).
    pub async fn recv<M: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<M>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line[..end])
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "control message too long",
                ));
            }
            let mut chunk = [0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let (n, fds) = self
                .stream
                .async_io(Interest::READABLE, || {
                    let mut iov = [IoSliceMut::new(&mut chunk)];
                    let msg = recvmsg::<UnixAddr>(
                        self.stream.as_raw_fd(),
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    let mut fds = Vec::new();
                    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            fds.extend(received);
                        }
                    }
                    Ok((msg.bytes, fds))
                })
                .await?;
            // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
            self.fds.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The descriptors received so far, in the order they were sent.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Note {
        text: String,
    }

    #[tokio::test]
    async fn descriptors_arrive_with_their_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, mut b) = (Channel::new(a), Channel::new(b));
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&Note { text: "one".into() }, &[right.as_fd()])
            .await
            .unwrap();
        a.send(&Note { text: "two".into() }, &[]).await.unwrap();
        let first: Note = b.recv().await.unwrap().unwrap();
        assert_eq!(first.text, "one");
        let fds = b.take_fds();
        assert_eq!(fds.len(), 1);
        let second: Note = b.recv().await.unwrap().unwrap();
        assert_eq!(second.text, "two");
        // The received descriptor is the same socket: bytes written to it reach `left`.
        let mut got = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        got.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        left.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(a);
        assert!(b.recv::<Note>().await.unwrap().is_none());
    }
}
