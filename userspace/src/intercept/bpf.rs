//! Loading, attaching and pinning the kernel programs; keeping their maps in step with the
//! configuration; looking up interception records.
//!
//! Pins live under the daemon's bpffs directory: `links/<program>` and
//! `maps/<MAPS_LAYOUT>/<MAP>`, all in directories the daemon made, owned by root, mode 0700.
//! Pinned links keep interception (and so fail-closed refusal) in force while the daemon is
//! down. On start the daemon reuses the pinned maps of the current layout (those of another
//! layout are dropped) and adopts the pinned links: its freshly loaded programs are swapped
//! into them in place ([`link::adopt`](super::link::adopt)), so a restart or an upgrade never
//! detaches a hook. Only a link pinned for another cgroup (the config moved the attach point)
//! is replaced, by attaching the new one before the old one is dropped, so protection never
//! lapses and no program is attached twice at steady state.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_common::{
    ConnInfo, MAPS_LAYOUT, PeerKey, Settings, TARGET_KEY_PORT_BITS, TargetKey, TargetValue,
    map_names,
};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::CgroupAttachMode;
use aya::programs::links::{FdLink, PinnedLink};
use aya::{Ebpf, EbpfLoader};

use super::{link, system};

/// The compiled kernel programs, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock.bpf.o"));

/// Reader of the kernel programs' aya-log records (forwarded to `log`, hence `tracing`).
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// cgroup sock_addr programs in the object, by function name.
const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "getpeername4",
    "getpeername6",
    "bind4",
    "bind6",
];
/// The sock_ops program that files, refreshes and deletes admission records.
const SOCK_OPS_PROGRAM: &str = "record_peer";
/// Maps defined with BTF (socket storage), whose pins aya does not place by itself.
const BTF_MAPS: [&str; 2] = [map_names::CONN_BY_SOCKET, map_names::DAEMON_SOCKETS];
/// How long an admission record stays good after its connection was established: the wait
/// in the proxy's accept queue, which is microseconds unless the daemon is overloaded.
pub const RECORD_TTL: Duration = Duration::from_secs(10);

/// Errors of the interception layer.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(transparent)]
    System(#[from] system::SystemError),
    #[error("loading the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pin {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel object has no program or map named {0}")]
    Missing(&'static str),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> InterceptError {
    move |source| InterceptError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> InterceptError {
    move |source| InterceptError::Program { name, source }
}

/// Where the proxy listens for one protected (CIDR, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetEntry {
    pub network: [u8; 16],
    /// Prefix length over the 16-byte (IPv4-mapped) address.
    pub prefix_len: u8,
    pub port: u16,
    pub target_id: u32,
    pub proxy_port: u16,
}

impl TargetEntry {
    fn key(&self) -> Key<TargetKey> {
        Key::new(
            TARGET_KEY_PORT_BITS + u32::from(self.prefix_len),
            TargetKey {
                port: self.port.to_be_bytes(),
                addr: self.network,
            },
        )
    }
}

/// Where the daemon is, as the kernel programs need it to route callers (nothing here exempts
/// anyone: the daemon's sockets are marked one by one, see [`super::sockets`]).
#[derive(Debug, Clone, Copy)]
pub struct DaemonIdentity {
    /// The daemon's pid as the host sees it, for `airlock status` only.
    pub pid: u32,
    pub netns_cookie: u64,
    pub node_v4: Option<Ipv4Addr>,
    pub node_v6: Option<Ipv6Addr>,
}

/// Loaded and attached kernel programs with handles on their maps.
pub struct Interceptor {
    _ebpf: Ebpf,
    _links: Vec<PinnedLink>,
    targets: LpmTrie<MapData, TargetKey, TargetValue>,
    proxy_ports: HashMap<MapData, u16, u8>,
    /// Ports of the daemon's other listeners (approvals API, metrics), guarded as proxy ports.
    daemon_ports: Vec<u16>,
    settings: Array<MapData, Settings>,
    conns: Arc<ConnTable>,
    events: Option<RingBuf<MapData>>,
    logger: Option<KernelLogger>,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("cgroup", &self.cgroup)
            .field("bpffs", &self.bpffs)
            .finish_non_exhaustive()
    }
}

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

/// Where this build's maps are pinned.
fn layout_dir(bpffs: &Path) -> PathBuf {
    maps_dir(bpffs).join(MAPS_LAYOUT)
}

/// Unpins maps of other layouts (a daemon of another version): their key or value types may
/// differ from this build's. Links still using them keep them alive until they are replaced.
fn drop_other_layouts(bpffs: &Path) {
    let Ok(entries) = std::fs::read_dir(maps_dir(bpffs)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() == MAPS_LAYOUT {
            continue;
        }
        let path = entry.path();
        tracing::info!(path = %path.display(), "dropping maps pinned by another version");
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "cannot remove stale map pin");
        }
    }
}

impl Interceptor {
    /// Loads the programs (reusing pinned maps), writes the daemon's identity, and attaches
    /// to `cgroup`, adopting the links pinned by an earlier run.
    pub fn install(
        cgroup: &Path,
        bpffs: &Path,
        me: DaemonIdentity,
    ) -> Result<Self, InterceptError> {
        system::ensure_mounts(bpffs)?;
        for dir in [
            bpffs.to_owned(),
            links_dir(bpffs),
            maps_dir(bpffs),
            layout_dir(bpffs),
        ] {
            system::own_dir(&dir)?;
        }
        drop_other_layouts(bpffs);
        let pins = layout_dir(bpffs);
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pins);
        for name in BTF_MAPS {
            loader.map_pin_path(name, pins.join(name));
        }
        let mut ebpf = loader.load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "kernel program logs unavailable");
                None
            }
        };

        let mut settings: Array<MapData, Settings> = take_map(&mut ebpf, map_names::SETTINGS)?;
        // The daemon's identity goes in first: links from an earlier run share this map, so
        // they exempt us (and guard our ports) from this point on.
        settings
            .set(0, settings_for(&me), 0)
            .map_err(map_err(map_names::SETTINGS))?;

        let targets = take_map(&mut ebpf, map_names::TARGETS)?;
        let proxy_ports = take_map(&mut ebpf, map_names::PROXY_PORTS)?;
        let conn_by_peer: HashMap<MapData, PeerKey, ConnInfo> =
            take_map(&mut ebpf, map_names::CONN_BY_PEER)?;
        let events = take_map(&mut ebpf, map_names::EVENTS)?;
        // The daemon's sockets must be markable before anything of it connects or binds.
        super::sockets::set_marks(take_map(&mut ebpf, map_names::DAEMON_SOCKETS)?);

        let (links, adopted) = attach_all(&mut ebpf, cgroup, bpffs)?;
        tracing::info!(cgroup = %cgroup.display(), bpffs = %bpffs.display(), links = links.len(), adopted, "kernel programs attached");
        Ok(Interceptor {
            _ebpf: ebpf,
            _links: links,
            targets,
            proxy_ports,
            daemon_ports: Vec::new(),
            settings,
            conns: Arc::new(ConnTable(conn_by_peer)),
            events: Some(events),
            logger,
            cgroup: cgroup.to_owned(),
            bpffs: bpffs.to_owned(),
        })
    }

    /// Guards the ports of the daemon's other listeners (approvals API, metrics) like proxy
    /// ports from the next [`Self::sync_targets`] on: nobody else may bind them, so nothing can
    /// stand in for the daemon and collect, say, an admin's bearer token while it is down.
    pub fn guard_daemon_ports(&mut self, ports: Vec<u16>) {
        self.daemon_ports = ports;
    }

    /// Makes the protected-target map match `entries` exactly, and the guarded-port map the
    /// entries' proxy ports and the daemon's other listener ports.
    pub fn sync_targets(&mut self, entries: &[TargetEntry]) -> Result<(), InterceptError> {
        let wanted: HashSet<(u32, [u8; 18])> = entries
            .iter()
            .map(|e| {
                let k = e.key();
                (k.prefix_len(), key_bytes(&k))
            })
            .collect();
        let stale: Vec<Key<TargetKey>> = self
            .targets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), key_bytes(k))))
            .collect();
        // New entries go in before stale ones come out, so an address that stays protected
        // under another prefix (a /24 narrowed to a /32) is never unprotected in between. Only
        // a map too full to hold both sets for a moment removes first.
        let insert_all = |targets: &mut LpmTrie<MapData, TargetKey, TargetValue>| {
            entries.iter().try_for_each(|e| {
                let value = TargetValue {
                    target_id: e.target_id,
                    proxy_port: e.proxy_port,
                    _pad: 0,
                };
                targets.insert(&e.key(), value, 0)
            })
        };
        let inserted = insert_all(&mut self.targets);
        for k in &stale {
            self.targets
                .remove(k)
                .map_err(map_err(map_names::TARGETS))?;
        }
        if inserted.is_err() {
            insert_all(&mut self.targets).map_err(map_err(map_names::TARGETS))?;
        }
        let ports: HashSet<u16> = entries
            .iter()
            .map(|e| e.proxy_port)
            .chain(self.daemon_ports.iter().copied())
            .collect();
        let stale_ports: Vec<u16> = self
            .proxy_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for &p in &ports {
            self.proxy_ports
                .insert(p, 1, 0)
                .map_err(map_err(map_names::PROXY_PORTS))?;
        }
        for p in stale_ports {
            self.proxy_ports
                .remove(&p)
                .map_err(map_err(map_names::PROXY_PORTS))?;
        }
        Ok(())
    }

    /// Rewrites the daemon's identity (after a restart in place, or a node address change).
    pub fn set_identity(&mut self, me: DaemonIdentity) -> Result<(), InterceptError> {
        self.settings
            .set(0, settings_for(&me), 0)
            .map_err(map_err(map_names::SETTINGS))
    }

    /// The table of interception records, for the listeners.
    pub fn conns(&self) -> Arc<ConnTable> {
        Arc::clone(&self.conns)
    }

    /// The events ring buffer, for the event reader task (taken once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The kernel programs' log reader (taken once).
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }
}

/// Admission records keyed by the connection's 4-tuple, as the proxy sees it on accept.
pub struct ConnTable(HashMap<MapData, PeerKey, ConnInfo>);

/// What the admission table holds for an accepted connection.
#[derive(Debug)]
pub enum Lookup {
    /// The record of this connection, now taken: nobody else can take it.
    Found(ConnInfo),
    /// No record: the connection was not redirected to this listener by the kernel programs.
    Missing,
    /// A record older than [`RECORD_TTL`] (taken and discarded).
    Expired { age: Duration },
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnTable")
    }
}

impl ConnTable {
    /// Takes the record of a connection accepted from `peer` on the listener at `local`. A
    /// record is taken at most once: only the caller whose delete succeeds gets it.
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> Lookup {
        let key = PeerKey {
            client_addr: mapped_words(peer.ip()),
            proxy_addr: mapped_words(local.ip()),
            client_port: peer.port(),
            proxy_port: local.port(),
        };
        let info = match lookup_and_delete(&self.0, &key) {
            Ok(Some(info)) => info,
            Ok(None) => return Lookup::Missing,
            Err(error) => {
                tracing::warn!(%error, "interception record lookup failed");
                return Lookup::Missing;
            }
        };
        let age = system::monotonic_now().saturating_sub(Duration::from_nanos(info.stamp_ns));
        if age > RECORD_TTL {
            return Lookup::Expired { age };
        }
        Lookup::Found(info)
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (kernel 5.14+ for hash maps): reads and removes `key`'s
/// value in one system call, atomically, so two accepts can never both take a record. aya's
/// `HashMap` offers a lookup and a delete only (two calls, and a lock around them to make
/// the pair atomic).
fn lookup_and_delete(
    map: &HashMap<MapData, PeerKey, ConnInfo>,
    key: &PeerKey,
) -> std::io::Result<Option<ConnInfo>> {
    use std::os::fd::{AsFd, AsRawFd};
    /// The `bpf_attr` of the map element commands.
    #[repr(C, align(8))]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<ConnInfo>::uninit();
    let map_data: &MapData = aya::maps::IterableMap::map(map);
    let attr = ElemAttr {
        map_fd: map_data.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr for this command; `key` points to a PeerKey and
    // `value` to writable memory of the map's value size (ConnInfo, checked by the map's
    // typed handle at load); the kernel reads and writes only those.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ElemAttr>() as u32,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: the call succeeded, so the kernel wrote the whole value.
    Ok(Some(unsafe { value.assume_init() }))
}

/// Takes a map out of the loaded object as its typed handle.
fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, InterceptError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(InterceptError::Missing(name))?;
    M::try_from(map).map_err(map_err(name))
}

fn key_bytes(k: &Key<TargetKey>) -> [u8; 18] {
    let d = k.data();
    let mut out = [0u8; 18];
    out[..2].copy_from_slice(&d.port);
    out[2..].copy_from_slice(&d.addr);
    out
}

fn settings_for(me: &DaemonIdentity) -> Settings {
    Settings {
        host_netns_cookie: me.netns_cookie,
        daemon_pid: me.pid,
        node_ip4: me
            .node_v4
            .map(|a| u32::from_ne_bytes(a.octets()))
            .unwrap_or(0),
        node_ip6: me.node_v6.map(|a| words(a.octets())).unwrap_or([0; 4]),
    }
}

/// 16 network-order bytes as the kernel's four u32 words.
pub(crate) fn words(b: [u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The kernel's four u32 words back into an address (IPv4-mapped becomes IPv4).
pub(crate) fn addr_from_words(w: [u32; 4]) -> IpAddr {
    let mut b = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(b).to_canonical()
}

fn mapped_words(ip: IpAddr) -> [u32; 4] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => words(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => words(v6.octets()),
    }
}

// bpf_link_create rejects attach flags for cgroups: BPF links are always multi-attach, so
// `Single` (no flags) is the mode that yields several coexisting links.
/// Returns the pinned links and how many of them were adopted in place.
fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    bpffs: &Path,
) -> Result<(Vec<PinnedLink>, usize), InterceptError> {
    let cgroup_err = |source| InterceptError::Cgroup {
        path: cgroup.to_owned(),
        source,
    };
    let cgroup_file = std::fs::File::open(cgroup).map_err(cgroup_err)?;
    let cgroup_id =
        std::os::unix::fs::MetadataExt::ino(&cgroup_file.metadata().map_err(cgroup_err)?);
    let dir = links_dir(bpffs);
    let mut adopted: Vec<&'static str> = Vec::new();
    let mut fresh: Vec<(&'static str, FdLink)> = Vec::new();
    for name in SOCK_ADDR_PROGRAMS.into_iter().chain([SOCK_OPS_PROGRAM]) {
        let program = ebpf
            .program_mut(name)
            .ok_or(InterceptError::Missing(name))?;
        let fd = match program {
            aya::programs::Program::CgroupSockAddr(p) => {
                p.load().map_err(prog_err(name))?;
                p.fd().map_err(prog_err(name))?
            }
            aya::programs::Program::SockOps(p) => {
                p.load().map_err(prog_err(name))?;
                p.fd().map_err(prog_err(name))?
            }
            _ => return Err(InterceptError::Missing(name)),
        };
        match link::adopt(&dir.join(name), cgroup_id, std::os::fd::AsFd::as_fd(fd)) {
            Ok(link::Adopted::Updated(info)) => {
                tracing::debug!(
                    program = name,
                    link_id = info.link_id,
                    "adopted the pinned link"
                );
                adopted.push(name);
                continue;
            }
            Ok(link::Adopted::No) => {}
            Err(e) => {
                tracing::warn!(program = name, error = %e, "cannot adopt the pinned link; attaching a new one")
            }
        }
        let link = match ebpf.program_mut(name) {
            Some(aya::programs::Program::CgroupSockAddr(p)) => {
                let id = p
                    .attach(&cgroup_file, CgroupAttachMode::Single)
                    .map_err(prog_err(name))?;
                FdLink::try_from(p.take_link(id).map_err(prog_err(name))?)
                    .map_err(|e| link_err(name, e))?
            }
            Some(aya::programs::Program::SockOps(p)) => {
                let id = p
                    .attach(&cgroup_file, CgroupAttachMode::Single)
                    .map_err(prog_err(name))?;
                FdLink::try_from(p.take_link(id).map_err(prog_err(name))?)
                    .map_err(|e| link_err(name, e))?
            }
            _ => return Err(InterceptError::Missing(name)),
        };
        fresh.push((name, link));
    }
    // The new links are live; now retire what an earlier run pinned in their place (links to
    // another cgroup, or unreadable pins), and pin ours.
    let mut pinned = Vec::with_capacity(adopted.len() + fresh.len());
    let adopted_count = adopted.len();
    for name in adopted {
        let path = dir.join(name);
        pinned.push(
            PinnedLink::from_pin(&path).map_err(|e| InterceptError::Pin {
                path,
                message: e.to_string(),
            })?,
        );
    }
    for (name, link) in fresh {
        let path = dir.join(name);
        detach_pin(&path);
        let p = link.pin(&path).map_err(|e| InterceptError::Pin {
            path,
            message: e.to_string(),
        })?;
        pinned.push(p);
    }
    Ok((pinned, adopted_count))
}

fn link_err(name: &'static str, e: aya::programs::links::LinkError) -> InterceptError {
    InterceptError::Pin {
        path: PathBuf::from(name),
        message: e.to_string(),
    }
}

/// Unpins (and so detaches) every link under `dir`. Returns the names removed.
fn detach_pinned(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        if detach_pin(&entry.path()) {
            removed.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    removed
}

/// Unpins (and so detaches) the link pinned at `path`, if any; whether one was.
fn detach_pin(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    match PinnedLink::from_pin(path) {
        Ok(link) => match link.unpin() {
            Ok(_fd_link) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot unpin link");
                false
            }
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "not a pinned link; removing");
            let _ = std::fs::remove_file(path);
            false
        }
    }
}

/// What `airlock uninstall` removed.
#[derive(Debug, Default)]
pub struct UninstallReport {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every pinned link and removes the pinned maps (of every layout) under `bpffs`.
pub fn uninstall(bpffs: &Path) -> Result<UninstallReport, InterceptError> {
    let links = detach_pinned(&links_dir(bpffs));
    let mut maps = Vec::new();
    if let Ok(entries) = std::fs::read_dir(maps_dir(bpffs)) {
        for entry in entries.flatten() {
            let path = entry.path();
            let pins: Vec<PathBuf> = if path.is_dir() {
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            } else {
                vec![path.clone()]
            };
            for pin in pins {
                if std::fs::remove_file(&pin).is_ok() {
                    maps.push(
                        pin.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            let _ = std::fs::remove_dir(&path);
        }
    }
    for dir in [links_dir(bpffs), maps_dir(bpffs), bpffs.to_owned()] {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(UninstallReport { links, maps })
}

/// A pinned link as `airlock status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct LinkStatus {
    pub program: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// A protected (network, port) from the pinned map.
#[derive(Debug, serde::Serialize)]
pub struct TargetStatus {
    pub network: String,
    pub port: u16,
    pub target_id: u32,
    pub proxy_port: u16,
}

/// What is pinned under a bpffs directory.
#[derive(Debug, serde::Serialize)]
pub struct PinStatus {
    pub bpffs: PathBuf,
    pub links: Vec<LinkStatus>,
    pub targets: Vec<TargetStatus>,
    pub daemon_tgid: Option<u32>,
}

/// Reads pinned links and maps without loading anything.
pub fn pin_status(bpffs: &Path) -> PinStatus {
    let mut links = Vec::new();
    if let Ok(entries) = std::fs::read_dir(links_dir(bpffs)) {
        for entry in entries.flatten() {
            let info = PinnedLink::from_pin(entry.path())
                .ok()
                .and_then(|l| FdLink::from(l).info().ok());
            links.push(LinkStatus {
                program: entry.file_name().to_string_lossy().into_owned(),
                link_id: info.as_ref().map(|i| i.id()),
                program_id: info.as_ref().map(|i| i.program_id()),
            });
        }
    }
    links.sort_by(|a, b| a.program.cmp(&b.program));
    let maps = layout_dir(bpffs);
    let mut targets = Vec::new();
    let trie = MapData::from_pin(maps.join(map_names::TARGETS))
        .ok()
        .and_then(|m| {
            LpmTrie::<_, TargetKey, TargetValue>::try_from(aya::maps::Map::LpmTrie(m)).ok()
        });
    for (k, v) in trie.iter().flat_map(|t| t.iter().filter_map(Result::ok)) {
        let d = k.data();
        let bits = k.prefix_len().saturating_sub(TARGET_KEY_PORT_BITS);
        let ip = Ipv6Addr::from(d.addr);
        let network = match ip.to_ipv4_mapped() {
            Some(v4) if bits >= 96 => format!("{v4}/{}", bits - 96),
            _ => format!("{ip}/{bits}"),
        };
        targets.push(TargetStatus {
            network,
            port: u16::from_be_bytes(d.port),
            target_id: v.target_id,
            proxy_port: v.proxy_port,
        });
    }
    let daemon_tgid = MapData::from_pin(maps.join(map_names::SETTINGS))
        .ok()
        .and_then(|m| Array::<_, Settings>::try_from(aya::maps::Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map(|s| s.daemon_pid);
    PinStatus {
        bpffs: bpffs.to_owned(),
        links,
        targets,
        daemon_tgid,
    }
}
