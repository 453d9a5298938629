//! Loading, attaching and pinning the kernel programs; keeping their maps in step with the
//! configuration; looking up interception records.
//!
//! Pins live under the daemon's bpffs directory: `links/<program>` and `maps/<MAP>`. Pinned
//! links keep interception (and so fail-closed refusal) in force while the daemon is down.
//! On start the daemon reuses the pinned maps, attaches fresh links and only then drops the
//! old ones, so protection never lapses and no program is attached twice at steady state.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airlock_common::{
    ConnInfo, PeerKey, Settings, TARGET_KEY_PORT_BITS, TargetKey, TargetValue, map_names,
};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};

use super::system;

/// The compiled kernel programs, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock.bpf.o"));

/// Reader of the kernel programs' aya-log records (forwarded to `log`, hence `tracing`).
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// cgroup sock_addr programs in the object, by function name.
const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "bind4",
    "bind6",
];
/// The sock_ops program that re-keys records by the client's address.
const SOCK_OPS_PROGRAM: &str = "record_peer";

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

/// The daemon's identity as the kernel programs check it.
#[derive(Debug, Clone, Copy)]
pub struct DaemonIdentity {
    pub cgroup_id: u64,
    pub tgid: u32,
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

impl Interceptor {
    /// Loads the programs (reusing pinned maps), writes the daemon's identity, and attaches
    /// to `cgroup`, replacing any links pinned by an earlier run.
    pub fn install(
        cgroup: &Path,
        bpffs: &Path,
        me: DaemonIdentity,
    ) -> Result<Self, InterceptError> {
        system::ensure_mounts(bpffs)?;
        for dir in [links_dir(bpffs), maps_dir(bpffs)] {
            std::fs::create_dir_all(&dir).map_err(|e| InterceptError::Pin {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(maps_dir(bpffs))
            .load(OBJECT)?;
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
        let conn_by_peer = take_map(&mut ebpf, map_names::CONN_BY_PEER)?;
        let events = take_map(&mut ebpf, map_names::EVENTS)?;

        let links = attach_all(&mut ebpf, cgroup, bpffs)?;
        tracing::info!(cgroup = %cgroup.display(), bpffs = %bpffs.display(), links = links.len(), "kernel programs attached");
        Ok(Interceptor {
            _ebpf: ebpf,
            _links: links,
            targets,
            proxy_ports,
            settings,
            conns: Arc::new(ConnTable(Mutex::new(conn_by_peer))),
            events: Some(events),
            logger,
            cgroup: cgroup.to_owned(),
            bpffs: bpffs.to_owned(),
        })
    }

    /// Makes the protected-target and proxy-port maps match `entries` exactly.
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
        for k in &stale {
            self.targets
                .remove(k)
                .map_err(map_err(map_names::TARGETS))?;
        }
        for e in entries {
            let value = TargetValue {
                target_id: e.target_id,
                proxy_port: e.proxy_port,
                _pad: 0,
            };
            self.targets
                .insert(&e.key(), value, 0)
                .map_err(map_err(map_names::TARGETS))?;
        }
        let ports: HashSet<u16> = entries.iter().map(|e| e.proxy_port).collect();
        let stale_ports: Vec<u16> = self
            .proxy_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for p in stale_ports {
            self.proxy_ports
                .remove(&p)
                .map_err(map_err(map_names::PROXY_PORTS))?;
        }
        for p in ports {
            self.proxy_ports
                .insert(p, 1, 0)
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

/// Interception records keyed by the client's address, as the proxy sees it on accept.
pub struct ConnTable(Mutex<HashMap<MapData, PeerKey, ConnInfo>>);

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnTable")
    }
}

impl ConnTable {
    /// Takes the record of an accepted connection by the client's address and port.
    pub fn take(&self, peer: SocketAddr) -> Option<ConnInfo> {
        let key = PeerKey {
            addr: mapped_words(peer.ip()),
            port: u32::from(peer.port()),
        };
        let mut map = self.0.lock().ok()?;
        let info = map.get(&key, 0).ok()?;
        // A stale record must not be matched again by a later connection from the same port.
        let _ = map.remove(&key);
        Some(info)
    }
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
        proxy_cgroup_id: me.cgroup_id,
        host_netns_cookie: me.netns_cookie,
        proxy_tgid: me.tgid,
        node_ip4: me
            .node_v4
            .map(|a| u32::from_ne_bytes(a.octets()))
            .unwrap_or(0),
        node_ip6: me.node_v6.map(|a| words(a.octets())).unwrap_or([0; 4]),
        _pad: [0; 2],
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
fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    bpffs: &Path,
) -> Result<Vec<PinnedLink>, InterceptError> {
    let cgroup_file = std::fs::File::open(cgroup).map_err(|source| InterceptError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mut fresh: Vec<(&'static str, FdLink)> = Vec::new();
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(InterceptError::Missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        prog.load().map_err(prog_err(name))?;
        let id = prog
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        fresh.push((name, FdLink::try_from(link).map_err(|e| link_err(name, e))?));
    }
    {
        let name = SOCK_OPS_PROGRAM;
        let prog: &mut SockOps = ebpf
            .program_mut(name)
            .ok_or(InterceptError::Missing(name))?
            .try_into()
            .map_err(prog_err(name))?;
        prog.load().map_err(prog_err(name))?;
        let id = prog
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        fresh.push((name, FdLink::try_from(link).map_err(|e| link_err(name, e))?));
    }
    // The new links are live; now retire what an earlier run pinned, and pin ours.
    let dir = links_dir(bpffs);
    detach_pinned(&dir);
    let mut pinned = Vec::with_capacity(fresh.len());
    for (name, link) in fresh {
        let path = dir.join(name);
        let p = link.pin(&path).map_err(|e| InterceptError::Pin {
            path,
            message: e.to_string(),
        })?;
        pinned.push(p);
    }
    Ok(pinned)
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
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            Ok(link) => match link.unpin() {
                Ok(_fd_link) => removed.push(entry.file_name().to_string_lossy().into_owned()),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot unpin link"),
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "not a pinned link; removing");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    removed
}

/// What `airlock uninstall` removed.
#[derive(Debug, Default)]
pub struct UninstallReport {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every pinned link and removes the pinned maps under `bpffs`.
pub fn uninstall(bpffs: &Path) -> Result<UninstallReport, InterceptError> {
    let links = detach_pinned(&links_dir(bpffs));
    let mut maps = Vec::new();
    if let Ok(entries) = std::fs::read_dir(maps_dir(bpffs)) {
        for entry in entries.flatten() {
            if std::fs::remove_file(entry.path()).is_ok() {
                maps.push(entry.file_name().to_string_lossy().into_owned());
            }
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
    let maps = maps_dir(bpffs);
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
        .map(|s| s.proxy_tgid);
    PinStatus {
        bpffs: bpffs.to_owned(),
        links,
        targets,
        daemon_tgid,
    }
}
