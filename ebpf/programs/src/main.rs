//! airlock's kernel programs.
//!
//! - `connect4`/`connect6` (cgroup/connect*): a TCP connect to a protected (CIDR, port) is
//!   rewritten to the target's proxy listener — 127.0.0.1 / ::1 for callers in the host
//!   network namespace, the configured node address for callers in other namespaces (a
//!   loopback redirect would land in their own namespace). The caller and its original
//!   destination are kept in the socket's own storage, which dies with the socket. The
//!   unspecified address counts as the loopback address the kernel turns it into.
//! - `record_peer` (sock_ops): at TCP connect, once the source port is known, an admission
//!   record is filed under the connection's 4-tuple as the proxy will see it on accept (client
//!   address and port, proxy listener address and port) and reported on the ring buffer; the
//!   record is refreshed when the connection is established and deleted when the socket
//!   closes, so it never outlives the connection it was made for.
//! - `getpeername4`/`getpeername6`: the client sees its original destination as its peer
//!   (MPTCP sockets too: the record is copied to the MPTCP socket from its first subflow).
//! - `bind4`/`bind6`: only the daemon's own sockets may bind a proxy listener port, so nobody
//!   can stand in for the proxy while it is down.
//!
//! The daemon's own upstream and listener sockets are exempt because the daemon marked each of
//! them in `AIRLOCK_DAEMON_SOCKETS` (socket storage, written from userspace through a map fd
//! only root can open): the mark belongs to a socket, not to a process id, cgroup or
//! namespace that another process could come to share, and it dies with the socket.

#![no_std]
#![no_main]

use core::ffi::c_void;

use airlock_common::{
    ConnInfo, EVENTS_BYTES, MAX_CONNECTIONS, MAX_PROXY_PORTS, MAX_TARGET_ENTRIES, PeerKey,
    Settings, TARGET_KEY_PORT_BITS, TargetKey, TargetValue, event_kind,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED, bpf_sock, bpf_sock_addr,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{
            bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_storage_get, bpf_skc_to_mptcp_sock,
        },
    },
    macros::{btf_map, cgroup_sock_addr, map, sock_ops},
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

/// The interception record of a client socket (and of its MPTCP socket).
#[btf_map(name = "AIRLOCK_CONN_BY_SOCKET")]
static CONN_BY_SOCKET: SkStorage<ConnInfo> = SkStorage::new();

/// Admission records by 4-tuple, taken once by the proxy on accept.
#[map(name = "AIRLOCK_CONN_BY_PEER")]
static CONN_BY_PEER: LruHashMap<PeerKey, ConnInfo> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "AIRLOCK_PROXY_PORTS")]
static PROXY_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_PROXY_PORTS, 0);

/// The daemon's own sockets, marked from userspace.
#[btf_map(name = "AIRLOCK_DAEMON_SOCKETS")]
static DAEMON_SOCKETS: SkStorage<u32> = SkStorage::new();

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

/// The map pointer a helper takes, for the socket-storage maps used outside sock_addr
/// programs (aya's wrapper only takes a sock_addr context).
#[inline(always)]
fn map_ptr<T>(map: &T) -> *mut c_void {
    core::ptr::from_ref(map).cast_mut().cast()
}

/// The socket a sock_addr program runs for.
#[inline(always)]
fn sock_of(ctx: &SockAddrContext) -> *mut bpf_sock {
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

/// One of the daemon's own sockets (marked by the daemon before connect or bind).
#[inline(always)]
fn is_daemon_socket(ctx: &SockAddrContext) -> bool {
    !unsafe { DAEMON_SOCKETS.get_ptr_mut(ctx) }.is_null()
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

fn new_conn(
    ctx: &SockAddrContext,
    orig: [u32; 4],
    port: u16,
    target: &TargetValue,
    family: u32,
) -> ConnInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ConnInfo {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        stamp_ns: 0,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        orig_addr: orig,
        src_addr: [0; 4],
        proxy_addr: [0; 4],
        orig_port: port,
        src_port: 0,
        proxy_port: 0,
        _pad: 0,
        target_id: target.target_id,
        family,
        kind: event_kind::REDIRECTED,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad2: 0,
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

/// Keeps the record in the socket's storage (and, for an MPTCP subflow, in its MPTCP
/// socket's, which is what getpeername sees).
#[inline(always)]
fn remember(ctx: &SockAddrContext, conn: &mut ConnInfo) -> bool {
    let slot = unsafe { CONN_BY_SOCKET.get_or_insert_ptr_mut(ctx, Some(&mut *conn)) };
    if slot.is_null() {
        report_refused(conn);
        return false;
    }
    // An existing record (a socket connecting again) is overwritten.
    unsafe { *slot = *conn };
    let msk = unsafe { bpf_skc_to_mptcp_sock(sock_of(ctx).cast()) };
    if !msk.is_null() {
        let slot = unsafe {
            bpf_sk_storage_get(
                map_ptr(&CONN_BY_SOCKET),
                msk.cast(),
                core::ptr::from_mut(conn).cast(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            )
        }
        .cast::<ConnInfo>();
        if slot.is_null() {
            report_refused(conn);
            return false;
        }
        unsafe { *slot = *conn };
    }
    true
}

/// Where the kernel sends a connect to 0.0.0.0 after this hook: to the address the socket is
/// bound to, or to 127.0.0.1 when it has none (`ip_route_output_key_hash_rcu`). A socket bound
/// to a protected local address must not reach it by dialling 0.0.0.0.
#[inline(always)]
fn unspecified_dst4(ctx: &SockAddrContext) -> u32 {
    let bound = unsafe { core::ptr::read_volatile(&(*sock_of(ctx)).src_ip4) };
    if bound != 0 { bound } else { LOOPBACK4 }
}

/// A datagram to a protected target: the proxy speaks TCP, so there is nothing to redirect
/// it to, and sent direct it would bypass the gateway (HTTP/3 to a target's 443). Refused;
/// clients fall back to TCP, which is intercepted.
#[inline(always)]
fn datagram(ctx: &SockAddrContext, orig: &[u32; 4], port_net: u16) -> i32 {
    if lookup_target(orig, port_net).is_none() || own_loopback(ctx, orig) {
        ALLOW
    } else {
        REFUSE
    }
}

/// A loopback destination dialled from another network namespace (a pod): that namespace's
/// own loopback (a sidecar), not the host's. Not a protected target: redirected to the node,
/// it would reach a host service listening on loopback only.
#[inline(always)]
fn own_loopback(ctx: &SockAddrContext, orig: &[u32; 4]) -> bool {
    let loopback = (orig[0] == 0
        && orig[1] == 0
        && orig[2] == MAPPED_PREFIX
        && orig[3].to_ne_bytes()[0] == 127)
        || *orig == LOOPBACK6;
    loopback && !is_local(&settings(), unsafe { bpf_get_netns_cookie(ctx.as_ptr()) })
}

#[inline(always)]
fn user_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
    [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ]
}

#[inline(always)]
fn dst4(ctx: &SockAddrContext, user_ip4: u32) -> [u32; 4] {
    let ip4 = if user_ip4 == 0 {
        unspecified_dst4(ctx)
    } else {
        user_ip4
    };
    [0, 0, MAPPED_PREFIX, ip4]
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let orig = dst4(&ctx, sa.user_ip4);
    let port_net = sa.user_port as u16;
    if sa.type_ != SOCK_STREAM {
        return datagram(&ctx, &orig, port_net);
    }
    let Some(target) = lookup_target(&orig, port_net) else {
        return ALLOW;
    };
    if is_daemon_socket(&ctx) || own_loopback(&ctx, &orig) {
        return ALLOW;
    }
    let s = settings();
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut conn = new_conn(&ctx, orig, u16::from_be(port_net), &target, AF_INET);
    let dst = if is_local(&s, netns) {
        LOOPBACK4
    } else {
        s.node_ip4
    };
    if dst == 0 {
        warn!(
            &ctx,
            "airlock: refused connect from netns {} without a node address", netns
        );
        report_refused(&mut conn);
        return REFUSE;
    }
    // Known here already, for the MPTCP socket's copy (sock_ops sees only the subflow).
    conn.proxy_addr = [0, 0, MAPPED_PREFIX, dst];
    conn.proxy_port = target.proxy_port;
    if !remember(&ctx, &mut conn) {
        return REFUSE;
    }
    sa.user_ip4 = dst;
    sa.user_port = u32::from(target.proxy_port.to_be());
    ALLOW
}

/// Where a connect6 really goes: the kernel sends `::` to `::1`, or to `::ffff:127.0.0.1`
/// when the socket is bound to an IPv4-mapped address, and `::ffff:0.0.0.0` where IPv4 sends
/// 0.0.0.0 (the bound IPv4 address, else `::ffff:127.0.0.1`).
#[inline(always)]
fn effective_dst6(ctx: &SockAddrContext, addr: [u32; 4]) -> [u32; 4] {
    if addr[0] != 0 || addr[1] != 0 || addr[3] != 0 || (addr[2] != 0 && addr[2] != MAPPED_PREFIX) {
        return addr;
    }
    let sk = sock_of(ctx);
    let bound = unsafe {
        [
            core::ptr::read_volatile(&(*sk).src_ip6[0]),
            core::ptr::read_volatile(&(*sk).src_ip6[1]),
            core::ptr::read_volatile(&(*sk).src_ip6[2]),
            core::ptr::read_volatile(&(*sk).src_ip6[3]),
        ]
    };
    let bound_mapped = bound[0] == 0 && bound[1] == 0 && bound[2] == MAPPED_PREFIX;
    if addr[2] == MAPPED_PREFIX {
        let ip4 = if bound_mapped && bound[3] != 0 {
            bound[3]
        } else {
            LOOPBACK4
        };
        [0, 0, MAPPED_PREFIX, ip4]
    } else if bound_mapped {
        [0, 0, MAPPED_PREFIX, LOOPBACK4]
    } else {
        LOOPBACK6
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let orig = effective_dst6(&ctx, user_ip6(sa));
    let port_net = sa.user_port as u16;
    if sa.type_ != SOCK_STREAM {
        return datagram(&ctx, &orig, port_net);
    }
    let Some(target) = lookup_target(&orig, port_net) else {
        return ALLOW;
    };
    if is_daemon_socket(&ctx) || own_loopback(&ctx, &orig) {
        return ALLOW;
    }
    let s = settings();
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
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
        warn!(
            &ctx,
            "airlock: refused connect6 from netns {} without a node address", netns
        );
        report_refused(&mut conn);
        return REFUSE;
    }
    conn.proxy_addr = dst;
    conn.proxy_port = target.proxy_port;
    if !remember(&ctx, &mut conn) {
        return REFUSE;
    }
    sa.user_ip6[0] = dst[0];
    sa.user_ip6[1] = dst[1];
    sa.user_ip6[2] = dst[2];
    sa.user_ip6[3] = dst[3];
    sa.user_port = u32::from(target.proxy_port.to_be());
    ALLOW
}

/// The socket's record, if it is connected to the proxy listener it was sent to (not after a
/// disconnect and a connect elsewhere).
#[inline(always)]
fn record_for_peer(ctx: &SockAddrContext, peer: [u32; 4], port_net: u16) -> Option<ConnInfo> {
    let conn = unsafe { CONN_BY_SOCKET.get_ptr_mut(ctx) };
    if conn.is_null() {
        return None;
    }
    let conn = unsafe { *conn };
    (conn.proxy_addr == peer && conn.proxy_port == u16::from_be(port_net)).then_some(conn)
}

/// An unconnected UDP send names its destination per datagram: judged like a connect. A
/// datagram to 0.0.0.0 goes to its source address (`msg_src_ip4`: an `IP_PKTINFO` cmsg's,
/// else the bound one), or to loopback.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let orig = if sa.user_ip4 == 0 && sa.msg_src_ip4 != 0 {
        [0, 0, MAPPED_PREFIX, sa.msg_src_ip4]
    } else {
        dst4(&ctx, sa.user_ip4)
    };
    datagram(&ctx, &orig, sa.user_port as u16)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    datagram(&ctx, &effective_dst6(&ctx, user_ip6(sa)), sa.user_port as u16)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let peer = [0, 0, MAPPED_PREFIX, sa.user_ip4];
    if let Some(conn) = record_for_peer(&ctx, peer, sa.user_port as u16) {
        sa.user_ip4 = conn.orig_addr[3];
        sa.user_port = u32::from(conn.orig_port.to_be());
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if let Some(conn) = record_for_peer(&ctx, user_ip6(sa), sa.user_port as u16) {
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
    if netns != s.host_netns_cookie || is_daemon_socket(ctx) {
        return ALLOW;
    }
    warn!(ctx, "airlock: refused bind to proxy port {}", port);
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = ConnInfo {
        cookie: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie: netns,
        stamp_ns: 0,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        orig_addr: [0; 4],
        src_addr: [0; 4],
        proxy_addr: [0; 4],
        orig_port: port,
        src_port: 0,
        proxy_port: 0,
        _pad: 0,
        target_id: u32::MAX,
        family: 0,
        kind: event_kind::BIND_REFUSED,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad2: 0,
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

/// The record in a sock_ops socket's storage, if it is an intercepted client socket.
#[inline(always)]
fn sock_ops_record(ctx: &SockOpsContext) -> Option<&'static mut ConnInfo> {
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let conn = unsafe {
        bpf_sk_storage_get(
            map_ptr(&CONN_BY_SOCKET),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<ConnInfo>();
    if conn.is_null() {
        None
    } else {
        Some(unsafe { &mut *conn })
    }
}

#[sock_ops]
pub fn record_peer(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
        _ => {}
    }
    1
}

/// The SYN is about to leave: file the admission record under the 4-tuple the proxy will see,
/// and ask for state changes so it can be refreshed and deleted.
#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    let Some(conn) = sock_ops_record(ctx) else {
        return;
    };
    // Read every field unconditionally: the verifier rejects context loads at an offset the
    // compiler computed from a branch.
    let ops = ctx.ops;
    let (family, local4, remote4, local6, remote6, local_port, remote_port) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_ip4),
            core::ptr::read_volatile(&(*ops).remote_ip4),
            [
                core::ptr::read_volatile(&(*ops).local_ip6[0]),
                core::ptr::read_volatile(&(*ops).local_ip6[1]),
                core::ptr::read_volatile(&(*ops).local_ip6[2]),
                core::ptr::read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&(*ops).remote_ip6[0]),
                core::ptr::read_volatile(&(*ops).remote_ip6[1]),
                core::ptr::read_volatile(&(*ops).remote_ip6[2]),
                core::ptr::read_volatile(&(*ops).remote_ip6[3]),
            ],
            core::ptr::read_volatile(&(*ops).local_port),
            core::ptr::read_volatile(&(*ops).remote_port),
        )
    };
    if family == AF_INET {
        conn.src_addr = [0, 0, MAPPED_PREFIX, local4];
        conn.proxy_addr = [0, 0, MAPPED_PREFIX, remote4];
    } else {
        conn.src_addr = local6;
        conn.proxy_addr = remote6;
    }
    conn.src_port = local_port as u16;
    // sock_ops keeps the remote port as a 32-bit network-order number.
    conn.proxy_port = u32::from_be(remote_port) as u16;
    conn.stamp_ns = unsafe { bpf_ktime_get_ns() };
    let _ = CONN_BY_PEER.insert(&conn.peer_key(), &*conn, 0);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    // A redirect is routine: the daemon drains these on a timer instead of being woken on
    // every connect (a wakeup per connect costs connect latency); it is woken once the ring
    // is a quarter full. Refusals always wake it.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) > u64::from(EVENTS_BYTES / 4) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    let _ = EVENTS.output::<ConnInfo>(&*conn, flags);
}

/// Established: the time to live counts from here (a SYN may wait in retransmission).
/// Closed (refused, reset, finished, disconnected): the admission record goes.
#[inline(always)]
fn on_state_change(ctx: &SockOpsContext) {
    let new_state = ctx.arg(1);
    if new_state != BPF_TCP_ESTABLISHED && new_state != BPF_TCP_CLOSE {
        return;
    }
    let Some(conn) = sock_ops_record(ctx) else {
        return;
    };
    let key = conn.peer_key();
    if new_state == BPF_TCP_CLOSE {
        let _ = CONN_BY_PEER.remove(&key);
    } else if let Some(filed) = CONN_BY_PEER.get_ptr_mut(&key) {
        unsafe { (*filed).stamp_ns = bpf_ktime_get_ns() };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
