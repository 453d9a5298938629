//! What the host provides: the cgroup v2 and bpffs mounts, cgroup ids and paths, network
//! namespace cookies, and the iptables original destination (for the REDIRECT comparison).

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors from host facilities.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "no cgroup v2 hierarchy is mounted (mount one with `mount -t cgroup2 none DIR`, or run `cargo xtask setup`)"
    )]
    NoCgroup2,
    #[error("cannot mount {what} at {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot find this process's cgroup v2 path in /proc/self/cgroup")]
    NoOwnCgroup,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SystemError + '_ {
    move |source| SystemError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Mount points by filesystem type, from /proc/self/mountinfo.
fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| crate::identity::workload::mounts_of_type(&info, fstype))
        .unwrap_or_default()
}

/// The cgroup v2 mount point, if any.
pub fn cgroup2_mount() -> Option<PathBuf> {
    mounts_of("cgroup2").into_iter().next()
}

/// Mounts cgroup v2 and bpffs where they are missing. Idempotent.
pub fn ensure_mounts(bpffs_dir: &Path) -> Result<PathBuf, SystemError> {
    let cgroup = match cgroup2_mount() {
        Some(p) => p,
        None => {
            let dir = if Path::new("/sys/fs/cgroup/unified").is_dir() {
                PathBuf::from("/sys/fs/cgroup/unified")
            } else if is_empty_dir(Path::new("/sys/fs/cgroup")) {
                PathBuf::from("/sys/fs/cgroup")
            } else {
                PathBuf::from("/run/airlock/cgroup2")
            };
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            mount("cgroup2", &dir, "cgroup2")?;
            dir
        }
    };
    let bpf_mounts = mounts_of("bpf");
    if !bpf_mounts.iter().any(|m| bpffs_dir.starts_with(m)) {
        let root = Path::new("/sys/fs/bpf");
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        if !bpf_mounts.iter().any(|m| m == root) {
            mount("bpf", root, "bpf")?;
        }
    }
    Ok(cgroup)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn mount(source: &str, target: &Path, fstype: &'static str) -> Result<(), SystemError> {
    let err = |source| SystemError::Mount {
        what: fstype,
        path: target.to_owned(),
        source,
    };
    let c = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let src = c(source)?;
    let dst = c(&target.to_string_lossy())?;
    let ty = c(fstype)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// The calling process's cgroup v2 path, relative to the hierarchy root.
pub fn own_cgroup_path() -> Result<String, SystemError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(io_err(Path::new("/proc/self/cgroup")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or(SystemError::NoOwnCgroup)
}

/// A cgroup v2 id: the inode number of its directory.
pub fn cgroup_id(dir: &Path) -> Result<u64, SystemError> {
    Ok(std::fs::metadata(dir).map_err(io_err(dir))?.ino())
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The network namespace cookie of the calling thread's namespace.
pub fn own_netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length for an u64 option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of a connection redirected by iptables (conntrack), if any.
pub fn iptables_original_dst(sock: &impl AsRawFd) -> Option<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd and a sockaddr_in-sized out buffer.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    })
}
