//! Zero-downtime upgrades: a new daemon takes the listening sockets of the running one, the
//! way pingora and Envoy's hot restart do, so no connection attempt is refused or reset.
//!
//! The running daemon listens on a control socket (`daemon.control_socket`, default
//! `<state_dir>/airlock.sock`). A daemon started with the same configuration finds it there
//! and takes over:
//!
//! ```text
//! new daemon                                      running daemon
//!   connect ─────────────── hello {pid} ────────▶  shares the audit log (audit::coop),
//!                                                  /readyz answers 503
//!           ◀── listeners {addrs} + SCM_RIGHTS ──  a duplicate of every listening socket
//!   adopts the pinned programs, opens the audit
//!   log shared, accepts on the inherited sockets
//!   (binds what is new), rebinds this socket
//!           ─────────────── ready ──────────────▶  stops accepting, drains its sessions
//!                                                  (daemon.shutdown_grace), closes the log,
//!   ◀──────────────── EOF at its exit ─────────────  exits
//!   takes the log for itself
//! ```
//!
//! The listening sockets never close: both processes hold them while they overlap, and the
//! kernel queues connections that arrive while neither is in `accept`. The kernel programs
//! stay attached throughout (the new daemon adopts the pinned links in place), so nothing
//! goes direct. Both daemons' own sockets are exempt by the mark each carries in the shared
//! pinned socket-storage map ([`crate::intercept::sockets`]), not by a process property, so
//! the old daemon's connections need nothing from the new one while it drains. `airlock upgrade` asks the running daemon to start its successor from the
//! binary on disk and answers once the hand-over is done (systemd's `ExecReload`); SIGUSR2
//! does the same without an answer. A DaemonSet's surge pod is simply the new daemon.

pub mod channel;
pub mod sockets;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};

pub use channel::Channel;
pub use sockets::Sockets;

/// How long a running daemon waits for a successor to say it accepts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a new daemon waits for the running one to pass its sockets.
const LISTENERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the hand-over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hand-over: {0}")]
    Protocol(String),
    #[error("the running daemon refused the hand-over: {0}")]
    Refused(String),
    #[error("hand-over: no answer within {0:?}")]
    Timeout(Duration),
}

/// Messages on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// New daemon → running daemon: I take over. Pids are the host's (`daemon.proc_root`):
    /// in a container the socket's peer credentials may not show them.
    Hello { pid: u32, version: String },
    /// Running daemon → new daemon: its pid and its listening sockets, descriptors attached
    /// in order.
    Listeners { pid: u32, addrs: Vec<SocketAddr> },
    /// New daemon → running daemon: accepting on every socket; stop and drain.
    Ready,
    /// `airlock upgrade` → running daemon: start a successor from the binary on disk.
    Upgrade,
    /// Running daemon → `airlock upgrade`: the successor has taken over.
    Upgraded { pid: u32 },
    /// Either way: why not.
    Failed { error: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HandoverError + '_ {
    move |source| HandoverError::Io {
        path: path.to_owned(),
        source,
    }
}

async fn recv_within(
    channel: &mut Channel,
    path: &Path,
    timeout: Duration,
) -> Result<Message, HandoverError> {
    match tokio::time::timeout(timeout, channel.recv::<Message>()).await {
        Err(_) => Err(HandoverError::Timeout(timeout)),
        Ok(Err(e)) => Err(io_err(path)(e)),
        Ok(Ok(None)) => Err(HandoverError::Protocol(
            "the other daemon closed the control socket".into(),
        )),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// The running daemon, as the daemon taking over from it sees it.
#[derive(Debug)]
pub struct Predecessor {
    channel: Channel,
    pid: u32,
    path: PathBuf,
    proc_root: PathBuf,
}

/// Checks a pid a peer claims against the socket's credentials, when those show a pid (a
/// peer in another pid namespace shows as 0).
fn check_claim(channel: &Channel, claimed: u32) -> Result<(), HandoverError> {
    match channel.peer_pid() {
        Some(0) | None => Ok(()),
        Some(p) if p == claimed => Ok(()),
        Some(p) => Err(HandoverError::Protocol(format!(
            "the peer says it is pid {claimed}, but the socket's peer is pid {p}"
        ))),
    }
}

impl Predecessor {
    /// Connects to the control socket at `path` and receives the running daemon's sockets.
    /// `None` when no daemon answers there. `me` is this process's host pid, `proc_root`
    /// where the host's processes are seen.
    pub async fn connect(
        path: &Path,
        me: u32,
        proc_root: &Path,
    ) -> Result<Option<(Predecessor, HashMap<SocketAddr, OwnedFd>)>, HandoverError> {
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut channel = Channel::new(stream);
        // Sockets are taken only from a daemon of our own user (root).
        // SAFETY: geteuid has no preconditions.
        let me_uid = unsafe { libc::geteuid() };
        if channel.peer_uid() != Some(me_uid) {
            return Err(HandoverError::Refused(format!(
                "{} is served by uid {:?}, not {me_uid}",
                path.display(),
                channel.peer_uid()
            )));
        }
        let hello = Message::Hello {
            pid: me,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        channel.send(&hello, &[]).await.map_err(io_err(path))?;
        let (pid, addrs) = match recv_within(&mut channel, path, LISTENERS_TIMEOUT).await? {
            Message::Listeners { pid, addrs } => (pid, addrs),
            Message::Failed { error } => return Err(HandoverError::Refused(error)),
            other => {
                return Err(HandoverError::Protocol(format!(
                    "expected listeners, got {other:?}"
                )));
            }
        };
        check_claim(&channel, pid)?;
        let fds = channel.take_fds();
        if fds.len() != addrs.len() {
            return Err(HandoverError::Protocol(format!(
                "{} addresses but {} descriptors",
                addrs.len(),
                fds.len()
            )));
        }
        tracing::info!(
            predecessor = pid,
            sockets = addrs.len(),
            "taking over from the running daemon"
        );
        let sockets = addrs.into_iter().zip(fds).collect();
        Ok(Some((
            Predecessor {
                channel,
                pid,
                path: path.to_owned(),
                proc_root: proc_root.to_owned(),
            },
            sockets,
        )))
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Tells the running daemon that this one accepts on every socket: it stops and drains.
    pub async fn ready(&self) -> Result<(), HandoverError> {
        self.channel
            .send(&Message::Ready, &[])
            .await
            .map_err(io_err(&self.path))
    }

    /// Resolves once the old daemon has exited (its end of the control socket closed and its
    /// process gone).
    pub async fn gone(mut self) {
        while let Ok(Some(_)) = self.channel.recv::<Message>().await {}
        // The socket closes as the process exits; the exit itself is what counts.
        while process_alive_in(&self.proc_root, self.pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `pid` is a live process (not a zombie: a zombie has closed its files, so it no
/// longer writes the audit log).
pub fn process_alive(pid: u32) -> bool {
    process_alive_in(Path::new("/proc"), pid)
}

/// [`process_alive`] for a pid as `proc_root` (the host's /proc in a container) shows it.
pub fn process_alive_in(proc_root: &Path, pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) else {
        return false;
    };
    // "pid (comm) state ..." — comm may contain spaces, so split after the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    pid != 0 && !matches!(state, Some("Z" | "X"))
}

/// The running daemon's control socket.
#[derive(Debug)]
struct Control {
    listener: UnixListener,
    path: PathBuf,
    me: u32,
    proc_root: PathBuf,
}

/// A connection on the control socket, by its first message.
#[derive(Debug)]
pub enum Request {
    /// A new daemon wants the sockets.
    TakeOver(Successor),
    /// `airlock upgrade`: start a successor and answer once it has taken over.
    Upgrade(Requester),
}

/// A new daemon taking over from this one.
#[derive(Debug)]
pub struct Successor {
    channel: Channel,
    pub pid: u32,
    me: u32,
    path: PathBuf,
    proc_root: PathBuf,
}

/// An `airlock upgrade` waiting for its answer.
#[derive(Debug)]
pub struct Requester {
    channel: Channel,
}

/// Binds the control socket at `path` and serves it from a task of its own: each request
/// arrives on the returned channel (receiving from it is cancel-safe, unlike reading a
/// connection's first message). The task ends when the receiver is dropped. `me` is this
/// process's host pid, `proc_root` where the host's processes are seen.
pub fn serve_control(
    path: &Path,
    me: u32,
    proc_root: &Path,
) -> Result<tokio::sync::mpsc::Receiver<Request>, HandoverError> {
    let mut control = Control::bind(path)?;
    control.me = me;
    control.proc_root = proc_root.to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = control.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let tx = tx.clone();
            let (path, me, proc_root) =
                (control.path.clone(), control.me, control.proc_root.clone());
            tokio::spawn(async move {
                match Control::request(stream, path, me, proc_root).await {
                    Ok(request) => {
                        let _ = tx.send(request).await;
                    }
                    Err(error) => tracing::warn!(%error, "control socket: bad request"),
                }
            });
        }
    });
    Ok(rx)
}

impl Control {
    /// Binds `path`, replacing a socket a predecessor (or a crashed run) left there. The new
    /// socket is bound beside it and renamed over it, so `path` always answers.
    fn bind(path: &Path) -> Result<Control, HandoverError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(Control {
            listener,
            path: path.to_owned(),
            me: std::process::id(),
            proc_root: PathBuf::from("/proc"),
        })
    }

    /// A connection's request, by its first message.
    async fn request(
        stream: UnixStream,
        path: PathBuf,
        me: u32,
        proc_root: PathBuf,
    ) -> Result<Request, HandoverError> {
        let mut channel = Channel::new(stream);
        // The socket is mode 0600, but a connection made in the instant before its mode was
        // set would outlive it: whoever gets our sockets must be our own user (root).
        // SAFETY: geteuid has no preconditions.
        let me_uid = unsafe { libc::geteuid() };
        if channel.peer_uid() != Some(me_uid) {
            return Err(HandoverError::Refused(format!(
                "control connection from uid {:?}, not {me_uid}",
                channel.peer_uid()
            )));
        }
        match recv_within(&mut channel, &path, LISTENERS_TIMEOUT).await? {
            Message::Hello { pid, version } => {
                check_claim(&channel, pid)?;
                tracing::info!(successor = pid, %version, "a new daemon is taking over");
                Ok(Request::TakeOver(Successor {
                    channel,
                    pid,
                    me,
                    path,
                    proc_root,
                }))
            }
            Message::Upgrade => Ok(Request::Upgrade(Requester { channel })),
            other => Err(HandoverError::Protocol(format!(
                "unexpected first message {other:?}"
            ))),
        }
    }
}

impl Successor {
    /// Passes the listening sockets.
    pub async fn send_listeners(
        &self,
        sockets: &[(SocketAddr, OwnedFd)],
    ) -> Result<(), HandoverError> {
        let addrs = sockets.iter().map(|(a, _)| *a).collect();
        let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        self.channel
            .send(
                &Message::Listeners {
                    pid: self.me,
                    addrs,
                },
                &fds,
            )
            .await
            .map_err(io_err(&self.path))
    }

    /// Waits for the successor to accept on every socket.
    pub async fn wait_ready(&mut self) -> Result<(), HandoverError> {
        match recv_within(&mut self.channel, &self.path, READY_TIMEOUT).await? {
            Message::Ready => Ok(()),
            other => Err(HandoverError::Protocol(format!(
                "expected ready, got {other:?}"
            ))),
        }
    }

    /// Refuses the hand-over.
    pub async fn refuse(self, why: &str) {
        let _ = self
            .channel
            .send(
                &Message::Failed {
                    error: why.to_owned(),
                },
                &[],
            )
            .await;
    }

    /// Waits until the successor is gone (a hand-over that failed half-way): only then may
    /// this daemon write the audit log alone again.
    pub async fn gone(mut self) {
        while let Ok(Some(_)) = self.channel.recv::<Message>().await {}
        while process_alive_in(&self.proc_root, self.pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The connection, to keep open until this daemon exits (its end is the successor's
    /// signal that the old daemon is gone).
    pub fn into_channel(self) -> Channel {
        self.channel
    }
}

impl Requester {
    /// Answers `airlock upgrade`.
    pub async fn answer(self, result: Result<u32, String>) {
        let msg = match result {
            Ok(pid) => Message::Upgraded { pid },
            Err(error) => Message::Failed { error },
        };
        let _ = self.channel.send(&msg, &[]).await;
    }
}

/// Starts `exe run --config config` (with this daemon's command-line settings) as the
/// successor of this daemon, with this daemon's standard error (the journal under systemd).
pub fn spawn_successor(
    exe: &Path,
    config: &Path,
    node_address: Option<std::net::IpAddr>,
) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run").arg("--config").arg(config);
    if let Some(addr) = node_address {
        cmd.arg("--node-address").arg(addr.to_string());
    }
    cmd.stdin(std::process::Stdio::null()).spawn()
}

/// `airlock upgrade`: asks the daemon behind `path` to hand over to a fresh process and
/// waits for the answer. Returns the new daemon's pid.
pub async fn request_upgrade(path: &Path, timeout: Duration) -> Result<u32, HandoverError> {
    let stream = UnixStream::connect(path).await.map_err(io_err(path))?;
    let mut channel = Channel::new(stream);
    channel
        .send(&Message::Upgrade, &[])
        .await
        .map_err(io_err(path))?;
    match recv_within(&mut channel, path, timeout).await? {
        Message::Upgraded { pid } => Ok(pid),
        Message::Failed { error } => Err(HandoverError::Refused(error)),
        other => Err(HandoverError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}
