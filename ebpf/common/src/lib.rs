//! Types shared by airlock's kernel programs and its userspace, laid out `#[repr(C)]` with no
//! implicit padding so both sides read the same bytes.
//!
//! Addresses are kept as 16 bytes in network order, IPv4 mapped into `::ffff:0:0/96`, so one
//! trie and one key shape serve IPv4, IPv6 and IPv4-mapped IPv6.

#![no_std]

/// Maximum number of (CIDR, port) entries in [`TargetKey`] trie.
pub const MAX_TARGET_ENTRIES: u32 = 4096;
/// Maximum number of admission records (intercepted connections not yet accepted by the
/// proxy; LRU).
pub const MAX_CONNECTIONS: u32 = 65536;
/// Maximum number of ports (proxy listeners, the daemon's API and metrics) guarded against
/// foreign binds.
pub const MAX_PROXY_PORTS: u32 = 1024;
/// Ring buffer size for interception events.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Names of the maps, as pinned under the daemon's bpffs directory (`maps/<MAPS_LAYOUT>/`).
pub mod map_names {
    pub const TARGETS: &str = "AIRLOCK_TARGETS";
    pub const SETTINGS: &str = "AIRLOCK_SETTINGS";
    /// Socket storage: the interception record of a client socket.
    pub const CONN_BY_SOCKET: &str = "AIRLOCK_CONN_BY_SOCKET";
    pub const CONN_BY_PEER: &str = "AIRLOCK_CONN_BY_PEER";
    pub const PROXY_PORTS: &str = "AIRLOCK_PROXY_PORTS";
    /// Socket storage: marks the daemon's own upstream and listener sockets.
    pub const DAEMON_SOCKETS: &str = "AIRLOCK_DAEMON_SOCKETS";
    pub const EVENTS: &str = "AIRLOCK_EVENTS";
}

/// Version of the maps' key and value layouts; maps pinned under another layout are replaced
/// rather than reused. Bump it with any change to a map's key or value type.
pub const MAPS_LAYOUT: &str = "v2";

/// Value the daemon stores in [`map_names::DAEMON_SOCKETS`] for each socket of its own.
pub const DAEMON_SOCKET: u32 = 1;

/// Data of the protected-target LPM trie key: the port first (network order, always matched
/// in full) and then the address, so the prefix length is `16 + address prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of [`TargetKey`] always matched: the port.
pub const TARGET_KEY_PORT_BITS: u32 = 16;

/// What a protected (CIDR, port) maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    /// Index of the target in the daemon's configuration.
    pub target_id: u32,
    /// The proxy listener port for this target (host order).
    pub proxy_port: u16,
    pub _pad: u16,
}

/// Daemon settings, in a one-element array map. Nothing here exempts anyone: the daemon's
/// own sockets are marked one by one in [`map_names::DAEMON_SOCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Network namespace cookie of the daemon (the host namespace).
    pub host_netns_cookie: u64,
    /// Process id of the daemon that wrote the settings, for `airlock status` only.
    pub daemon_pid: u32,
    /// Node address (network order) the proxy listens on for callers in other namespaces;
    /// 0 = none, and such callers are refused.
    pub node_ip4: u32,
    /// IPv6 node address (network order); all zero = none.
    pub node_ip6: [u32; 4],
}

/// Key of the admission table: an intercepted connection as the proxy sees it on accept, so a
/// record can only be taken by the listener its client was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    /// The client's address, network order, IPv4 mapped.
    pub client_addr: [u32; 4],
    /// The proxy listener's address the client was sent to, network order, IPv4 mapped.
    pub proxy_addr: [u32; 4],
    /// Host order.
    pub client_port: u16,
    /// Host order.
    pub proxy_port: u16,
}

/// Kinds of [`ConnInfo`] events on the ring buffer.
pub mod event_kind {
    /// A connection was redirected to the proxy.
    pub const REDIRECTED: u32 = 1;
    /// A connection to a protected target was refused (no listener reachable).
    pub const REFUSED: u32 = 2;
    /// A bind to a proxy listener port by another process was refused.
    pub const BIND_REFUSED: u32 = 3;
}

/// One intercepted connect: who called and where they meant to go. Value of the connection
/// tables and payload of the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub cookie: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// CLOCK_MONOTONIC nanoseconds when the connection was last seen to progress (SYN sent,
    /// established); the proxy refuses a record older than its time to live.
    pub stamp_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Original destination, network order, IPv4 mapped.
    pub orig_addr: [u32; 4],
    /// Client's own address (filled at TCP connect), network order, IPv4 mapped.
    pub src_addr: [u32; 4],
    /// The proxy listener the client was sent to (filled at TCP connect), network order,
    /// IPv4 mapped.
    pub proxy_addr: [u32; 4],
    /// Host order.
    pub orig_port: u16,
    /// Host order.
    pub src_port: u16,
    /// Host order.
    pub proxy_port: u16,
    pub _pad: u16,
    pub target_id: u32,
    /// AF_INET or AF_INET6 of the client's socket.
    pub family: u32,
    /// One of [`event_kind`].
    pub kind: u32,
    pub comm: [u8; 16],
    pub _pad2: u32,
}

impl ConnInfo {
    /// The admission-table key of this record (meaningful once TCP connect filled it).
    pub fn peer_key(&self) -> PeerKey {
        PeerKey {
            client_addr: self.src_addr,
            proxy_addr: self.proxy_addr,
            client_port: self.src_port,
            proxy_port: self.proxy_port,
        }
    }
}

// Both sides must agree on these layouts without implicit padding.
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 136);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 36);
const _: () = assert!(core::mem::size_of::<Settings>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
}
