//! The daemon's own sockets. Each is marked in the kernel programs' socket storage
//! (`AIRLOCK_DAEMON_SOCKETS`) before it connects or binds, so the programs neither redirect the
//! daemon's upstream connections nor refuse it its listener ports. Only a holder of the map fd
//! (root: the pin directory is root's, mode 0700) can write a mark; it belongs to one socket,
//! not to a pid, cgroup or namespace someone else could come to share, and it dies with the
//! socket, so nothing of the exemption survives the daemon.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};

use airlock_common::DAEMON_SOCKET;
use aya::maps::{MapData, SkStorage};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Backlog of the daemon's listeners: an upgrade's hand-over relies on the queue to hold
/// connections that arrive while neither daemon is between two accepts (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// The marks map, set once the kernel programs are installed. Unset (unit tests, benchmarks
/// of the handlers alone) nothing is marked: no programs are in the way then.
static MARKS: OnceLock<Mutex<SkStorage<MapData, u32>>> = OnceLock::new();

/// Hands over the marks map of the installed programs.
pub(crate) fn set_marks(map: SkStorage<MapData, u32>) {
    if MARKS.set(Mutex::new(map)).is_err() {
        // A second install in one process reuses the same pinned map.
        tracing::debug!("daemon socket marks already set");
    }
}

fn mark(socket: &TcpSocket) -> io::Result<()> {
    let Some(marks) = MARKS.get() else {
        return Ok(());
    };
    // The map has no state a panicking holder could have left half-written.
    let mut marks = marks.lock().unwrap_or_else(PoisonError::into_inner);
    marks
        .insert(socket, DAEMON_SOCKET, 0)
        .map_err(|e| io::Error::other(format!("marking a daemon socket: {e}")))
}

fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Connects to a target's upstream from a marked socket, which the kernel programs let through.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket_for(addr)?;
    mark(&socket)?;
    socket.connect(addr).await
}

/// Listens on a proxy port from a marked socket, which the bind hook lets bind it. (A
/// listening socket handed to a successor keeps its mark: it lives in the socket's storage.)
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    mark(&socket)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
