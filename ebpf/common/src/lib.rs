//! Types shared by airlock's kernel programs and its userspace, laid out `#[repr(C)]` with no
//! implicit padding so both sides read the same bytes.
//!
//! Addresses are kept as 16 bytes in network order, IPv4 mapped into `::ffff:0:0/96`, so one
//! trie and one key shape serve IPv4, IPv6 and IPv4-mapped IPv6.

#![no_std]

/// Maximum number of (CIDR, port) entries in [`TargetKey`] trie.
pub const MAX_TARGET_ENTRIES: u32 = 4096;
/// Maximum number of remembered intercepted connections (LRU).
pub const MAX_CONNECTIONS: u32 = 65536;
/// Maximum number of proxy listener ports guarded against foreign binds.
pub const MAX_PROXY_PORTS: u32 = 1024;
/// Ring buffer size for interception events.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Names of the maps, as pinned under the daemon's bpffs directory.
pub mod map_names {
    pub const TARGETS: &str = "AIRLOCK_TARGETS";
    pub const SETTINGS: &str = "AIRLOCK_SETTINGS";
    pub const CONN_BY_COOKIE: &str = "AIRLOCK_CONN_BY_COOKIE";
    pub const CONN_BY_PEER: &str = "AIRLOCK_CONN_BY_PEER";
    pub const PROXY_PORTS: &str = "AIRLOCK_PROXY_PORTS";
    pub const EVENTS: &str = "AIRLOCK_EVENTS";
}

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

/// Daemon settings, in a one-element array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// cgroup v2 id of the daemon; its upstream connections are exempt.
    pub proxy_cgroup_id: u64,
    /// Network namespace cookie of the daemon (the host namespace).
    pub host_netns_cookie: u64,
    /// Process id of the daemon (init pid namespace); exemption needs cgroup, tgid and netns.
    pub proxy_tgid: u32,
    /// Node address (network order) the proxy listens on for callers in other namespaces;
    /// 0 = none, and such callers are refused.
    pub node_ip4: u32,
    /// IPv6 node address (network order); all zero = none.
    pub node_ip6: [u32; 4],
    pub _pad: [u32; 2],
}

/// Key of the connection table the proxy looks up on accept: the client's address and port
/// as the proxy sees them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    /// Network order, IPv4 mapped.
    pub addr: [u32; 4],
    /// Host order.
    pub port: u32,
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
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Original destination, network order, IPv4 mapped.
    pub orig_addr: [u32; 4],
    /// Client's own address (filled at TCP connect), network order, IPv4 mapped.
    pub src_addr: [u32; 4],
    /// Host order.
    pub orig_port: u16,
    /// Host order.
    pub src_port: u16,
    pub target_id: u32,
    /// AF_INET or AF_INET6 of the client's socket.
    pub family: u32,
    /// One of [`event_kind`].
    pub kind: u32,
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
}
