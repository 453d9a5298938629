//! Who is calling: the kernel's view of the process, a verified token, and the identity policy
//! matches on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The calling process as the kernel saw it at `connect()` time.
///
/// Filled from the eBPF interception record, so a client cannot forge it. Serialized as the
/// audit log's and the approval store's `workload` object; `original_dst` and `peer` describe
/// the connection, not the process, and are recorded beside it instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Thread id of the caller (init pid namespace).
    pub pid: u32,
    /// Process id of the caller (init pid namespace).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Unix user name for `uid`, when it could be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// cgroup v2 path relative to the cgroup root, when it could be resolved.
    #[serde(skip_serializing_if = "Option::is_none", alias = "cgroup")]
    pub cgroup_path: Option<String>,
    /// The task's command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// Network namespace cookie of the caller's socket.
    pub netns_cookie: u64,
    /// Where the client believed it was connecting.
    #[serde(skip)]
    pub original_dst: Option<SocketAddr>,
    /// The client's own address as the proxy sees it.
    #[serde(skip)]
    pub peer: Option<SocketAddr>,
}

impl Workload {
    /// `unix:<user>`, or `unix:<uid>` when the name is unknown: the subject of a caller known
    /// only by its process.
    pub fn unix_subject(&self) -> String {
        match &self.user {
            Some(u) => format!("unix:{u}"),
            None => format!("unix:{}", self.uid),
        }
    }
}

/// A verified token, as policy sees it: what the OIDC verifier returns and what policy's
/// `identify` takes (the one claims type of the crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The token's `sub`.
    pub subject: String,
    /// The token's `iss` (exactly as configured).
    pub issuer: String,
    /// Name of the identity entry that accepted the token.
    pub identity: String,
    /// Groups from the issuer's group claim, followed by the groups the identity entry
    /// grants; without duplicates.
    pub groups: Vec<String>,
    /// Every top-level claim whose value is a string, number or boolean, as a string (CI
    /// claims such as `repository`, `ref`, `workflow` land here).
    pub claims: BTreeMap<String, String>,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

impl TokenClaims {
    /// The identity of this token's caller, with the kernel's view when the token came over
    /// an intercepted connection. Policy's workload matchers are not consulted here; policy's
    /// `identify` adds them.
    pub fn into_identity(self, workload: Option<Workload>) -> Identity {
        Identity {
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            workload,
            token: Some(self),
        }
    }
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
