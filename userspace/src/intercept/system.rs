//! What the host provides: the cgroup v2 and bpffs mounts, directories only root controls,
//! network namespace cookies, the ephemeral port range, the monotonic
//! clock the kernel programs stamp records with, and the iptables original destination (for
//! the REDIRECT comparison).

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

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
    /// A pin or state directory (or one above it) that someone other than root could change.
    #[error(
        "{path}: {reason}; airlock keeps its pins and state only in directories it created, owned by root and writable by nobody else (remove it after checking nothing else uses it, or configure another directory)"
    )]
    UnsafeDir { path: PathBuf, reason: String },
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
            mount("cgroup2", &dir, "cgroup2", None)?;
            dir
        }
    };
    let bpf_mounts = mounts_of("bpf");
    if !bpf_mounts.iter().any(|m| bpffs_dir.starts_with(m)) {
        let root = Path::new("/sys/fs/bpf");
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        if !bpf_mounts.iter().any(|m| m == root) {
            // Without a mode bpffs comes up world-writable (1777): anyone could then make the
            // directory airlock pins into.
            mount("bpf", root, "bpf", Some(BPFFS_MOUNT_OPTIONS))?;
        }
    }
    Ok(cgroup)
}

/// Mount options for bpffs: only root may create pins (as systemd mounts it).
pub const BPFFS_MOUNT_OPTIONS: &str = "mode=0700";

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &'static str,
    options: Option<&str>,
) -> Result<(), SystemError> {
    let err = |source| SystemError::Mount {
        what: fstype,
        path: target.to_owned(),
        source,
    };
    let c = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let src = c(source)?;
    let dst = c(&target.to_string_lossy())?;
    let ty = c(fstype)?;
    let data = options.map(c).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: valid NUL-terminated strings; data is a NUL-terminated option string or null.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, data_ptr) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes `dir` (mode 0700, missing parents 0755) unless it exists, and checks that nobody but
/// root can change it or what leads to it: it must be a directory owned by root and writable
/// by nobody else (a looser mode without group or other write is tightened to 0700); every
/// directory above it, as written and as resolved, must be owned by root and writable by
/// nobody else unless sticky; a symbolic link on the way must be owned by root.
pub fn own_dir(dir: &Path) -> Result<(), SystemError> {
    let unsafe_dir = |path: &Path, reason: String| SystemError::UnsafeDir {
        path: path.to_owned(),
        reason,
    };
    if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
        return Err(unsafe_dir(dir, "not an absolute path without `..`".into()));
    }
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let trusted = |uid: u32| uid == 0 || uid == me;
    // As written: every component, including symbolic links (checked by their owner).
    let mut prefix = PathBuf::new();
    for part in dir.components() {
        prefix.push(part);
        let meta = std::fs::symlink_metadata(&prefix).map_err(io_err(&prefix))?;
        if meta.file_type().is_symlink() {
            if !trusted(meta.uid()) {
                return Err(unsafe_dir(
                    &prefix,
                    format!("a symbolic link owned by uid {}", meta.uid()),
                ));
            }
        } else if prefix != dir {
            check_ancestor(&meta, trusted).map_err(|r| unsafe_dir(&prefix, r))?;
        }
    }
    // As resolved: the directories really traversed.
    let real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    for ancestor in real.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(ancestor).map_err(io_err(ancestor))?;
        check_ancestor(&meta, trusted).map_err(|r| unsafe_dir(ancestor, r))?;
    }
    let meta = std::fs::symlink_metadata(&real).map_err(io_err(&real))?;
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, "not a directory".into()));
    }
    if !trusted(meta.uid()) {
        return Err(unsafe_dir(
            dir,
            format!("owned by uid {}, not root", meta.uid()),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(
            dir,
            format!("writable by group or others (mode {mode:o})"),
        ));
    }
    if mode != 0o700 {
        tracing::info!(path = %dir.display(), mode = format!("{mode:o}"), "tightening to mode 700");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&real))?;
    }
    Ok(())
}

/// A directory above a pin or state directory: owned by root, and writable by nobody else
/// unless sticky (others can then add entries but not rename or remove root's).
fn check_ancestor(meta: &std::fs::Metadata, trusted: impl Fn(u32) -> bool) -> Result<(), String> {
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if !trusted(meta.uid()) {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "writable by group or others without the sticky bit (mode {mode:o})"
        ));
    }
    Ok(())
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_dir_makes_tightens_and_refuses() {
        let base = std::env::temp_dir().join(format!("airlock-own-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("base");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o7777;

        let made = base.join("made/pins");
        own_dir(&made).expect("made");
        assert_eq!(mode(&made), 0o700);

        let loose = base.join("loose");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&loose)
            .expect("loose");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        own_dir(&loose).expect("tightened");
        assert_eq!(mode(&loose), 0o700);

        let open = base.join("open");
        std::fs::create_dir(&open).expect("open");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = own_dir(&open.join("pins")).expect_err("under a world-writable parent");
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        let err = own_dir(&open).expect_err("world-writable");
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );

        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        own_dir(&open.join("pins")).expect("under a sticky parent");

        let err = own_dir(Path::new("relative/pins")).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
