//! airlock's kernel programs.
//!
//! - `connect4`/`connect6` (cgroup/connect*): a TCP connect to a protected (CIDR, port) is
//!   rewritten to the target's proxy listener — 127.0.0.1 / ::1 for callers in the host
//!   network namespace, the configured node address for callers in other namespaces (a
//!   loopback redirect would land in their own namespace). The caller and its original
//!   destination are remembered by socket cookie.
//! - `record_peer` (sock_ops, TCP_CONNECT_CB): once the source port is known, the record is re-keyed by the
//!   client's (address, port) — what the proxy sees on accept — and reported on the ring buffer.
//! - `getpeername4`/`getpeername6`: the client sees its original destination as its peer.
//! - `bind4`/`bind6`: only the daemon may bind a proxy listener port, so nobody can stand in
//!   for the proxy while it is down.
//!
//! The daemon's own upstream connections are exempt only when cgroup id, process id and
//! network namespace all match (SO_MARK alone is forgeable).

#![no_std]
#![no_main]

use airlock_common::{
    ConnInfo, PeerKey, Settings, TARGET_KEY_PORT_BITS, TargetKey, TargetValue, event_kind,
    EVENTS_BYTES, MAX_CONNECTIONS, MAX_PROXY_PORTS, MAX_TARGET_ENTRIES,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_TCP_CONNECT_CB,
        bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LpmTrie, LruHashMap, RingBuf, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;

const ALLOW: i32 = 1;
/// Returning 0 from a cgroup sock_addr program fails the syscall with EPERM.
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[map(name = "AIRLOCK_TARGETS")]
static TARGETS: LpmTrie<TargetKey, TargetValue> = LpmTrie::pinned(MAX_TARGET_ENTRIES, 0);

#[map(name = "AIRLOCK_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map(name = "AIRLOCK_CONN_BY_COOKIE")]
static CONN_BY_COOKIE: LruHashMap<u64, ConnInfo> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "AIRLOCK_CONN_BY_PEER")]
static CONN_BY_PEER: LruHashMap<PeerKey, ConnInfo> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "AIRLOCK_PROXY_PORTS")]
static PROXY_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_PROXY_PORTS, 0);

#[map(name = "AIRLOCK_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

const MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

#[inline(always)]
fn settings() -> Settings {
    match SETTINGS.get(0) {
        Some(s) => *s,
        None => Settings::default(),
    }
}

/// The daemon itself: cgroup, process and network namespace must all match.
#[inline(always)]
fn is_proxy(s: &Settings, netns: u64) -> bool {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    s.proxy_cgroup_id != 0
        && cgroup == s.proxy_cgroup_id
        && tgid == s.proxy_tgid
        && netns == s.host_netns_cookie
}

#[inline(always)]
fn addr_bytes(addr: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn lookup_target(addr: &[u32; 4], port_net: u16) -> Option<TargetValue> {
    let key = Key::new(
        TARGET_KEY_PORT_BITS + 128,
        TargetKey {
            port: port_net.to_ne_bytes(),
            addr: addr_bytes(addr),
        },
    );
    TARGETS.get(&key).copied()
}

fn new_conn(ctx: &SockAddrContext, orig: [u32; 4], port: u16, target: &TargetValue, family: u32) -> ConnInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ConnInfo {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        orig_addr: orig,
        src_addr: [0; 4],
        orig_port: port,
        src_port: 0,
        target_id: target.target_id,
        family,
        kind: event_kind::REDIRECTED,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Callers in the daemon's network namespace reach it on loopback. Before the daemon has
/// written its settings every caller counts as local: the redirect then finds no listener and
/// the connect is refused, never sent direct.
#[inline(always)]
fn is_local(s: &Settings, netns: u64) -> bool {
    s.host_netns_cookie == 0 || netns == s.host_netns_cookie
}

fn report_refused(conn: &mut ConnInfo) {
    conn.kind = event_kind::REFUSED;
    let _ = EVENTS.output::<ConnInfo>(&*conn, 0);
}

/// Remembers the caller by socket cookie, for sockops and getpeername.
#[inline(always)]
fn remember(conn: &mut ConnInfo) -> bool {
    if CONN_BY_COOKIE.insert(&conn.cookie, &*conn, 0).is_err() {
        report_refused(conn);
        return false;
    }
    true
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let orig = [0, 0, MAPPED_PREFIX, sa.user_ip4];
    let port_net = sa.user_port as u16;
    let Some(target) = lookup_target(&orig, port_net) else {
        return ALLOW;
    };
    let s = settings();
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if is_proxy(&s, netns) {
        return ALLOW;
    }
    let mut conn = new_conn(&ctx, orig, u16::from_be(port_net), &target, AF_INET);
    let dst = if is_local(&s, netns) { LOOPBACK4 } else { s.node_ip4 };
    if dst == 0 {
        warn!(&ctx, "airlock: refused connect from netns {} without a node address", netns);
        report_refused(&mut conn);
        return REFUSE;
    }
    if !remember(&mut conn) {
        return REFUSE;
    }
    sa.user_ip4 = dst;
    sa.user_port = u32::from(target.proxy_port.to_be());
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let orig = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let port_net = sa.user_port as u16;
    let Some(target) = lookup_target(&orig, port_net) else {
        return ALLOW;
    };
    let s = settings();
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if is_proxy(&s, netns) {
        return ALLOW;
    }
    let mut conn = new_conn(&ctx, orig, u16::from_be(port_net), &target, AF_INET6);
    let local = is_local(&s, netns);
    let mapped = orig[0] == 0 && orig[1] == 0 && orig[2] == MAPPED_PREFIX;
    let (dst, routable) = if mapped {
        let v4 = if local { LOOPBACK4 } else { s.node_ip4 };
        ([0, 0, MAPPED_PREFIX, v4], v4 != 0)
    } else {
        let v6 = if local { LOOPBACK6 } else { s.node_ip6 };
        (v6, v6 != [0; 4])
    };
    if !routable {
        warn!(&ctx, "airlock: refused connect6 from netns {} without a node address", netns);
        report_refused(&mut conn);
        return REFUSE;
    }
    if !remember(&mut conn) {
        return REFUSE;
    }
    sa.user_ip6[0] = dst[0];
    sa.user_ip6[1] = dst[1];
    sa.user_ip6[2] = dst[2];
    sa.user_ip6[3] = dst[3];
    sa.user_port = u32::from(target.proxy_port.to_be());
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(conn) = unsafe { CONN_BY_COOKIE.get(&cookie) } {
        let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = conn.orig_addr[3];
        sa.user_port = u32::from(conn.orig_port.to_be());
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(conn) = unsafe { CONN_BY_COOKIE.get(&cookie) } {
        let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
        sa.user_ip6[0] = conn.orig_addr[0];
        sa.user_ip6[1] = conn.orig_addr[1];
        sa.user_ip6[2] = conn.orig_addr[2];
        sa.user_ip6[3] = conn.orig_addr[3];
        sa.user_port = u32::from(conn.orig_port.to_be());
    }
    ALLOW
}

#[inline(always)]
fn guard_bind(ctx: &SockAddrContext) -> i32 {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    if port == 0 || unsafe { PROXY_PORTS.get(&port) }.is_none() {
        return ALLOW;
    }
    let s = settings();
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // Another namespace's port space is not the proxy's.
    if netns != s.host_netns_cookie || is_proxy(&s, netns) {
        return ALLOW;
    }
    warn!(ctx, "airlock: refused bind to proxy port {}", port);
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = ConnInfo {
        cookie: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie: netns,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        orig_addr: [0; 4],
        src_addr: [0; 4],
        orig_port: port,
        src_port: 0,
        target_id: u32::MAX,
        family: 0,
        kind: event_kind::BIND_REFUSED,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = EVENTS.output::<ConnInfo>(&event, 0);
    REFUSE
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    guard_bind(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    guard_bind(&ctx)
}

#[sock_ops]
pub fn record_peer(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(conn) = CONN_BY_COOKIE.get_ptr_mut(&cookie) else {
        return 1;
    };
    let conn = unsafe { &mut *conn };
    // Read every field unconditionally: the verifier rejects context loads at an offset the
    // compiler computed from a branch.
    let ops = ctx.ops;
    let (family, ip4, ip6, port) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_ip4),
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
            core::ptr::read_volatile(&(*ops).local_port),
        )
    };
    conn.src_addr = if family == AF_INET {
        [0, 0, MAPPED_PREFIX, ip4]
    } else {
        ip6
    };
    conn.src_port = port as u16;
    let key = PeerKey {
        addr: conn.src_addr,
        port: u32::from(conn.src_port),
    };
    let _ = CONN_BY_PEER.insert(&key, &*conn, 0);
    // A redirect is routine: the daemon drains these on a timer instead of being woken on
    // every connect (a wakeup per connect costs connect latency); it is woken once the ring
    // is a quarter full. Refusals always wake it.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > u64::from(EVENTS_BYTES / 4) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    let _ = EVENTS.output::<ConnInfo>(&*conn, flags);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
