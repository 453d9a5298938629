//! Who is asking: the caller's workload (from the kernel's interception event) and, once
//! authenticated, the identity that policy rules match on.

pub mod login;
pub mod oidc;
pub mod workload;

use std::net::SocketAddr;

pub use oidc::TokenClaims;

/// The calling process as the kernel saw it at `connect()` time.
///
/// Filled from the eBPF interception record, so a client cannot forge it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// Thread id of the caller (init pid namespace).
    pub pid: u32,
    /// Process id of the caller (init pid namespace).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the cgroup root, when it could be resolved.
    pub cgroup_path: Option<String>,
    /// Unix user name for `uid`, when it could be resolved.
    pub user: Option<String>,
    /// The task's command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Network namespace cookie of the caller's socket.
    pub netns_cookie: u64,
    /// Where the client believed it was connecting.
    pub original_dst: Option<SocketAddr>,
    /// The client's own address as the proxy sees it.
    pub peer: Option<SocketAddr>,
}

/// An authenticated caller, as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Subject: a token's `sub`, or `unix:<user>` for a workload-only identity.
    pub subject: String,
    /// Policy groups (from token claims, or from workload matchers in the policy).
    pub groups: Vec<String>,
    /// The kernel's view of the caller; `None` only for connections that were not intercepted
    /// (tests and benchmarks that talk to a listener directly).
    pub workload: Option<Workload>,
    /// The verified token the caller presented, if any (rules with `require: [token]` or
    /// `claims:` match only when it is set).
    pub token: Option<TokenClaims>,
}
