//! The configuration file: daemon settings, protected targets, and the policy (identities,
//! rules, masking). One YAML file, Kubernetes style; unknown keys are errors and every error
//! names the file, line and field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

pub mod approvals;
pub mod audit;
pub mod console;
pub mod host;
pub mod http;
pub mod policy;

use self::policy::{DefaultAction, IdentitySpec, MaskingSpec, RuleSpec};
use crate::model::Protocol;

/// Errors loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Parse and schema errors carry the YAML location.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Semantic errors found after parsing (duplicates, conflicts).
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub targets: Vec<Arc<TargetConfig>>,
    /// Identity sources (OIDC issuers, workload matchers) and the groups they map to.
    #[serde(default)]
    pub identities: Vec<IdentitySpec>,
    /// Policy rules, evaluated in order; the first match wins.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// What happens when no rule matches (deny unless set).
    #[serde(default)]
    pub default: DefaultAction,
    /// Masking rules for answers.
    #[serde(default)]
    pub masking: MaskingSpec,
}

/// Settings of the `airlock run` daemon itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// cgroup v2 directory the kernel programs attach to (default: the cgroup v2 root). A
    /// relative path is taken from the cgroup v2 mount point.
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned links and maps.
    pub bpffs: PathBuf,
    /// Address the proxy also listens on for clients in other network namespaces (pods):
    /// a redirect to 127.0.0.1 would land in the caller's own namespace.
    pub node_address: Option<IpAddr>,
    /// First proxy listener port; target `i` listens on `listen_port_base + i` unless it sets
    /// `listen_port`.
    pub listen_port_base: u16,
    /// Metrics (Prometheus text at /metrics).
    pub metrics: Option<SocketAddr>,
    /// REST API for approvals and status.
    pub api: Option<SocketAddr>,
    /// Where state (audit log, approval store) lives.
    pub state_dir: PathBuf,
    /// On SIGTERM, or when a new daemon takes over, how long open sessions may run on before
    /// they are ended with their protocol's error (PostgreSQL: FATAL 57P01).
    #[serde(deserialize_with = "audit::de_duration")]
    pub shutdown_grace: std::time::Duration,
    /// The control socket a new daemon takes the listening sockets over (default
    /// `<state_dir>/airlock.sock`).
    pub control_socket: Option<PathBuf>,
    /// The host's cgroup v2 hierarchy as this process sees it (default: the first cgroup2
    /// mount). In a container with its own cgroup namespace, mount the host's at another
    /// path and name it here: `cgroup` is taken relative to it, and workloads' cgroup paths
    /// are resolved in it.
    pub cgroup_root: Option<PathBuf>,
    /// The host's /proc as this process sees it. In a container without the host's pid
    /// namespace, mount the host's /proc (read-only) and name it here: the kernel programs
    /// report callers by host pid (workload resolution reads them here), and a hand-over
    /// tells the other daemon's host pid, which peer credentials show as 0 across namespaces.
    /// Nothing is exempted by pid: the daemon's own sockets are marked one by one.
    pub proc_root: PathBuf,
    /// Accept connections on the proxy listeners that the kernel programs did not redirect
    /// (their caller is then unknown). Off by default: a connection without an interception
    /// record is refused. Benchmarks use it to compare against iptables REDIRECT.
    pub accept_unintercepted: bool,
    /// Session recording and the tamper-evident audit log.
    #[serde(default)]
    pub audit: audit::AuditConfig,
    /// Human-in-the-loop approvals: store, admin token, webhooks.
    #[serde(default)]
    pub approvals: approvals::ApprovalsConfig,
    /// The reviewer console (web pages and the API, with OIDC login).
    #[serde(default)]
    pub console: Option<console::ConsoleConfig>,
    /// How sessions' sockets are driven: `epoll` (tokio's readiness loop, the default) or
    /// `io_uring` (docs/decisions/io-uring.md). A daemon that cannot set up a ring falls back
    /// to epoll and says so in its log and in `airlock status`.
    pub io_engine: IoEngine,
}

/// The socket I/O engine of PostgreSQL sessions and the opaque TCP relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    #[default]
    Epoll,
    IoUring,
}

impl DaemonConfig {
    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("airlock.sock"))
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            cgroup: None,
            bpffs: PathBuf::from("/sys/fs/bpf/airlock"),
            node_address: None,
            listen_port_base: 15000,
            metrics: None,
            api: None,
            state_dir: PathBuf::from("/var/lib/airlock"),
            shutdown_grace: std::time::Duration::from_secs(30),
            control_socket: None,
            cgroup_root: None,
            proc_root: PathBuf::from("/proc"),
            accept_unintercepted: false,
            audit: audit::AuditConfig::default(),
            approvals: approvals::ApprovalsConfig::default(),
            console: None,
            io_engine: IoEngine::Epoll,
        }
    }
}

/// A protected target: connections to any of its (address, port) pairs are intercepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub protocol: Protocol,
    /// Protected networks (CIDR, or a bare address for a single host). IPv4 targets are also
    /// protected in their IPv4-mapped IPv6 form.
    pub addresses: Vec<Cidr>,
    pub ports: Vec<u16>,
    /// Where the proxy connects; defaults to the client's original destination.
    #[serde(default)]
    pub upstream: Option<SocketAddr>,
    /// Proxy listener port for this target (default: `listen_port_base + index`).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// PostgreSQL settings: the credentials the gateway holds and TLS on both legs. Required
    /// for `protocol: postgres`.
    #[serde(default)]
    pub postgres: Option<PostgresTarget>,
    /// MySQL / MariaDB settings: the credentials the gateway holds and TLS on both legs.
    /// Required for `protocol: mysql`.
    #[serde(default)]
    pub mysql: Option<MysqlTarget>,
    /// SSH settings: how the gateway trusts and logs in to the server, and what it shows
    /// clients. Required for `protocol: ssh`.
    #[serde(default)]
    pub ssh: Option<SshTarget>,
    /// HTTP settings (TLS interception, injected credential, judged body bound) for
    /// `protocol: http`.
    #[serde(default)]
    pub http: Option<http::HttpTarget>,
}

/// How the gateway logs in to a MySQL or MariaDB target. Clients never see these credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlTarget {
    /// The account the gateway logs in as, whatever user name the client asked for.
    pub user: String,
    /// The password inline (prefer `password_env` or `password_file`). At most one of the three.
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable of the daemon holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored); read at each connection, so a
    /// rotated password takes effect without a restart.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Default database for clients that name none (a client's own choice wins: in MySQL the
    /// database is only the default schema, and `USE` is judged like any statement).
    #[serde(default)]
    pub database: Option<String>,
    /// TLS from the gateway to the server (default: `mode: disable`).
    #[serde(default)]
    pub tls: UpstreamTls,
    /// TLS termination towards clients (CLIENT_SSL is not offered when absent).
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
    /// The authentication method the gateway's greeting offers clients (whatever a client
    /// answers with is accepted: the caller is identified by the kernel or a token, never by
    /// this password).
    #[serde(default)]
    pub client_auth: MysqlClientAuth,
    /// Roles the gateway may run commands as (`run_as`, `approved_run_as` of rules): each is
    /// granted to its login user, which itself holds no rights on the data (`SET ROLE NONE`
    /// falls back to them). Empty: commands run with the login user's rights and rules name
    /// no role.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The role commands run as when their rule names none (one of `roles`); the session is
    /// switched to it right after login. Default: the login user's own rights (`SET ROLE
    /// NONE`).
    #[serde(default)]
    pub run_as: Option<String>,
    /// Rotate the login user's password on this schedule (`24h`): needs `password_file` (the
    /// new password is written back to it) and the target's `upstream`. `airlock credentials
    /// rotate` does it on demand.
    #[serde(default)]
    pub rotate_every: Option<policy::DurationSpec>,
}

impl MysqlTarget {
    /// Whether the gateway may run commands as `role` on this target.
    pub fn allows_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The default authentication plugin offered to MySQL clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MysqlClientAuth {
    /// The server's own default (`caching_sha2_password` from MySQL 8, what its connectors
    /// expect; `mysql_native_password` from MariaDB).
    #[default]
    Auto,
    CachingSha2Password,
    MysqlNativePassword,
}

/// How the gateway speaks SSH for a target. Towards clients it presents a short-lived host
/// certificate from its host CA for the target's names and addresses (or the target's own host
/// key, `host_key_file`); towards the server it trusts only the pinned host keys or host CA,
/// and logs in with a per-session user certificate from its user CA (or `key_file`). Clients
/// never see either credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    /// The account the gateway logs in as on the server, whatever user name the client gave.
    pub user: String,
    /// The server's host public keys (OpenSSH one-line form, `ssh-ed25519 AAAA…`), pinned. Give
    /// these or `host_ca`: never trusted on first use.
    #[serde(default)]
    pub host_keys: Vec<String>,
    /// A CA whose host certificates are accepted for the server (OpenSSH one-line public key);
    /// the certificate must name `host_name`.
    #[serde(default)]
    pub host_ca: Option<String>,
    /// The name the server's host certificate must carry (default: the upstream address).
    #[serde(default)]
    pub host_name: Option<String>,
    /// A private key (OpenSSH format, unencrypted) the gateway logs in with instead of a
    /// per-session certificate from its user CA.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How long a per-session user certificate is valid (default 5 minutes).
    #[serde(default = "default_ssh_cert_ttl")]
    pub certificate_ttl: policy::DurationSpec,
    /// Host names the certificate presented to clients carries, besides the target's single
    /// addresses (the names clients type: `db1`, `db1.internal`).
    #[serde(default)]
    pub names: Vec<String>,
    /// The target's own host private key: presented to clients instead of a certificate, so
    /// clients that already know the target need no change at all.
    #[serde(default)]
    pub host_key_file: Option<PathBuf>,
    /// Most channels (shells, commands, file transfers) one client connection may have open.
    #[serde(default = "default_ssh_max_channels")]
    pub max_channels: usize,
    /// Ciphers offered to every client, from [`SSH_CIPHERS`]. Empty (the default): AES-GCM
    /// alone to a client whose key exchange offer lists it (the gateway's fast cipher: AES-NI,
    /// where ring's Poly1305 for OpenSSH's ChaCha20 is portable C), all of [`SSH_CIPHERS`] to
    /// any other client (`protocol::ssh::offer`).
    #[serde(default)]
    pub ciphers: Vec<String>,
}

/// The ciphers an SSH target may offer its clients (the AEAD and CTR modes; never `none` or
/// CBC).
pub const SSH_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

fn default_ssh_cert_ttl() -> policy::DurationSpec {
    policy::DurationSpec(std::time::Duration::from_secs(300))
}

fn default_ssh_max_channels() -> usize {
    10
}

/// How the gateway logs in to a PostgreSQL target. Clients never see these credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// The role the gateway logs in as, whatever user name the client asked for.
    pub user: String,
    /// The password inline (prefer `password_env` or `password_file`). At most one of the three.
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable of the daemon holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored); read at each connection, so a
    /// rotated password takes effect without a restart.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Database to connect to; by default the one the client asked for.
    #[serde(default)]
    pub database: Option<String>,
    /// TLS from the gateway to the server (default: `mode: disable`).
    #[serde(default)]
    pub tls: UpstreamTls,
    /// TLS termination towards clients (an SSLRequest is declined when absent).
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
    /// Roles the gateway may run commands as (`run_as`, `approved_run_as` of rules): its login
    /// role is a member of each (`NOINHERIT`, so that it holds their rights only after
    /// `SET ROLE`). Empty: commands run as the login role and rules name no role.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The role commands run as when their rule names none (one of `roles`); the session is
    /// switched to it right after login. Default: the login role itself.
    #[serde(default)]
    pub run_as: Option<String>,
    /// Rotate the login role's password on this schedule (`24h`): needs `password_file` (the
    /// new password is written back to it) and the target's `upstream`. `airlock credentials
    /// rotate` does it on demand.
    #[serde(default)]
    pub rotate_every: Option<policy::DurationSpec>,
    /// Answer a server that asks for the password in cleartext even without `verify-full`
    /// TLS (default false: whoever answers on the target's address, an impersonator included,
    /// would receive it; SCRAM and MD5 give nothing reusable away).
    #[serde(default)]
    pub cleartext_password: bool,
}

impl PostgresTarget {
    /// Whether the gateway may run commands as `role` on this target.
    pub fn allows_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Whether `name` is a plain role name the gateway can put in `SET ROLE` (letters, digits,
/// `_`, `$`, `-`, `.`; not starting with a digit or `$`; at most 63 bytes). The gateway quotes
/// it anyway; this keeps configuration errors out of the session.
pub fn valid_role_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && !b[0].is_ascii_digit()
        && b[0] != b'$'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'-' | b'.'))
}

/// TLS from the gateway to a PostgreSQL server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// PEM bundle of CAs trusted for the server certificate (required for `verify-full`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name checked against the certificate (default: the upstream IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// As libpq's `sslmode`, without the modes that silently fall back to plaintext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plaintext to the server.
    #[default]
    Disable,
    /// TLS, certificate not verified (protects against passive eavesdroppers only).
    Require,
    /// TLS, certificate chain verified against `ca_file` and the name checked.
    VerifyFull,
}

/// A certificate and key the gateway presents to clients that ask for TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// The network as 16 bytes (IPv4 mapped into `::ffff:0:0/96`) and a prefix over them.
    pub fn to_mapped_v6(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + self.prefix_len),
            IpAddr::V6(v6) => (v6.octets(), self.prefix_len),
        }
    }

    /// Whether `ip` lies inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, len) = self.to_mapped_v6();
        let ip = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let net = u128::from_be_bytes(net);
        let ip = u128::from_be_bytes(ip);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        net & mask == ip & mask
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Checks an `ssh` block: an error is `(field, message)`.
/// A database target's `rotate_every`: the new password is written back to the
/// `password_file`, on the server at `upstream`, at most once a minute.
fn validate_rotation(
    every: Option<policy::DurationSpec>,
    has_file: bool,
    upstream: Option<SocketAddr>,
) -> Result<(), String> {
    let Some(every) = every else {
        return Ok(());
    };
    if !has_file || upstream.is_none() {
        return Err(
            "needs `password_file` (the new password is written back to it) and the target's `upstream`"
                .into(),
        );
    }
    if every.0 < std::time::Duration::from_secs(60) {
        return Err("at least 1m".into());
    }
    Ok(())
}

fn validate_ssh(ssh: &SshTarget) -> Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((f.to_owned(), m));
    if ssh.user.is_empty() {
        return err("user", "must not be empty".into());
    }
    match (ssh.host_keys.is_empty(), &ssh.host_ca) {
        (true, None) => {
            return err(
                "host_keys",
                "pin the server's host keys or give `host_ca`: the server is never trusted on first use"
                    .into(),
            );
        }
        (false, Some(_)) => {
            return err("host_ca", "give `host_keys` or `host_ca`, not both".into());
        }
        _ => {}
    }
    for (i, k) in ssh.host_keys.iter().enumerate() {
        if let Err(e) = russh::keys::PublicKey::from_openssh(k.trim()) {
            return err(
                &format!("host_keys[{i}]"),
                format!("not an OpenSSH public key: {e}"),
            );
        }
    }
    if let Some(ca) = &ssh.host_ca
        && let Err(e) = russh::keys::PublicKey::from_openssh(ca.trim())
    {
        return err("host_ca", format!("not an OpenSSH public key: {e}"));
    }
    if ssh.certificate_ttl.0.is_zero()
        || ssh.certificate_ttl.0 > std::time::Duration::from_secs(86_400)
    {
        return err("certificate_ttl", "must be 1 s to 24 h".into());
    }
    if ssh.max_channels == 0 {
        return err("max_channels", "must be at least 1".into());
    }
    if let Some(c) = ssh
        .ciphers
        .iter()
        .find(|c| !SSH_CIPHERS.contains(&c.as_str()))
    {
        return err(
            "ciphers",
            format!("`{c}` is not one of {}", SSH_CIPHERS.join(", ")),
        );
    }
    if ssh
        .names
        .iter()
        .any(|n| n.is_empty() || n.contains(char::is_whitespace))
    {
        return err(
            "names",
            "host names must be non-empty and without spaces".into(),
        );
    }
    Ok(())
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = e.to_string();
            // The location is already in the prefix; drop serde's copy of it.
            let message = match message.rsplit_once(" at line ") {
                Some((head, _)) => head.to_owned(),
                None => message,
            };
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let mut names = std::collections::HashSet::new();
        let mut ports = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let field = format!("targets[{i}] ({})", t.name);
            if t.name.is_empty() {
                return Err(invalid(field + ".name", "must not be empty".into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(field + ".name", "duplicate target name".into()));
            }
            if t.addresses.is_empty() {
                return Err(invalid(field + ".addresses", "at least one address".into()));
            }
            if !matches!(
                t.protocol,
                Protocol::Tcp
                    | Protocol::Postgres
                    | Protocol::Mysql
                    | Protocol::Ssh
                    | Protocol::Http
                    | Protocol::Kube
            ) {
                return Err(invalid(
                    field + ".protocol",
                    format!(
                        "protocol {} has no handler in this version (tcp, postgres, mysql, ssh, http, kube)",
                        t.protocol
                    ),
                ));
            }
            match (&t.ssh, t.protocol) {
                (Some(_), p) if p != Protocol::Ssh => {
                    return Err(invalid(
                        field + ".ssh",
                        "only for targets with protocol: ssh".into(),
                    ));
                }
                (None, Protocol::Ssh) => {
                    return Err(invalid(
                        field + ".ssh",
                        "required for protocol: ssh (at least `user` and `host_keys` or `host_ca`)"
                            .into(),
                    ));
                }
                (Some(ssh), _) => {
                    validate_ssh(ssh).map_err(|(f, m)| invalid(format!("{field}.ssh.{f}"), m))?
                }
                (None, _) => {}
            }
            if t.ports.is_empty() || t.ports.contains(&0) {
                return Err(invalid(
                    field + ".ports",
                    "at least one port, none 0".into(),
                ));
            }
            if let Some(pg) = &t.postgres {
                if t.protocol != Protocol::Postgres {
                    return Err(invalid(
                        field + ".postgres",
                        "only for targets with protocol: postgres".into(),
                    ));
                }
                let sources = [
                    pg.password.is_some(),
                    pg.password_env.is_some(),
                    pg.password_file.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() > 1 {
                    return Err(invalid(
                        field + ".postgres",
                        "set at most one of password, password_env, password_file".into(),
                    ));
                }
                for (j, r) in pg.roles.iter().enumerate() {
                    if !valid_role_name(r) {
                        return Err(invalid(
                            format!("{field}.postgres.roles[{j}]"),
                            format!("`{r}` is not a plain role name"),
                        ));
                    }
                }
                if let Some(r) = &pg.run_as
                    && !pg.allows_role(r)
                {
                    return Err(invalid(
                        field.clone() + ".postgres.run_as",
                        format!("`{r}` is not in this target's `roles`"),
                    ));
                }
                validate_rotation(pg.rotate_every, pg.password_file.is_some(), t.upstream)
                    .map_err(|m| invalid(field.clone() + ".postgres.rotate_every", m))?;
                if pg.tls.mode == UpstreamTlsMode::VerifyFull && pg.tls.ca_file.is_none() {
                    return Err(invalid(
                        field + ".postgres.tls.ca_file",
                        "required with mode: verify-full".into(),
                    ));
                }
            }
            if let Some(my) = &t.mysql {
                if t.protocol != Protocol::Mysql {
                    return Err(invalid(
                        field + ".mysql",
                        "only for targets with protocol: mysql".into(),
                    ));
                }
                let sources = [
                    my.password.is_some(),
                    my.password_env.is_some(),
                    my.password_file.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() > 1 {
                    return Err(invalid(
                        field + ".mysql",
                        "set at most one of password, password_env, password_file".into(),
                    ));
                }
                for (j, r) in my.roles.iter().enumerate() {
                    if !valid_role_name(r) {
                        return Err(invalid(
                            format!("{field}.mysql.roles[{j}]"),
                            format!("`{r}` is not a plain role name"),
                        ));
                    }
                }
                if let Some(r) = &my.run_as
                    && !my.allows_role(r)
                {
                    return Err(invalid(
                        field.clone() + ".mysql.run_as",
                        format!("`{r}` is not in this target's `roles`"),
                    ));
                }
                validate_rotation(my.rotate_every, my.password_file.is_some(), t.upstream)
                    .map_err(|m| invalid(field.clone() + ".mysql.rotate_every", m))?;
                if my.tls.mode == UpstreamTlsMode::VerifyFull && my.tls.ca_file.is_none() {
                    return Err(invalid(
                        field + ".mysql.tls.ca_file",
                        "required with mode: verify-full".into(),
                    ));
                }
            } else if t.protocol == Protocol::Mysql {
                return Err(invalid(
                    field + ".mysql",
                    "required for protocol: mysql (the account the gateway logs in as)".into(),
                ));
            }
            if let Some(h) = &t.http {
                if !matches!(t.protocol, Protocol::Http | Protocol::Kube) {
                    return Err(invalid(
                        field + ".http",
                        "only for targets with protocol: http or kube".into(),
                    ));
                }
                http::validate(h).map_err(|(f, m)| invalid(format!("{field}.http.{f}"), m))?;
            }
            let listen = self.listen_port(i);
            if listen == 0 || !ports.insert(listen) {
                return Err(invalid(
                    field + ".listen_port",
                    format!("listener port {listen} is 0 or used by another target"),
                ));
            }
            if let Some(problem) = host::proxy_port_problem(listen) {
                return Err(invalid(field + ".listen_port", problem));
            }
        }
        // Two targets must not claim the same (address, port): the kernel map holds one.
        for (i, a) in self.targets.iter().enumerate() {
            for b in &self.targets[i + 1..] {
                let overlap = a
                    .addresses
                    .iter()
                    .any(|x| b.addresses.iter().any(|y| x == y));
                if overlap && a.ports.iter().any(|p| b.ports.contains(p)) {
                    return Err(invalid(
                        format!("targets ({} and {})", a.name, b.name),
                        "protect the same address and port".into(),
                    ));
                }
            }
        }
        if let Some(console) = &self.daemon.console {
            if let Some(problem) = console.problem() {
                return Err(invalid("daemon.console".into(), problem));
            }
            let verifies = self.identities.iter().any(|i| {
                i.oidc.as_ref().is_some_and(|o| {
                    o.issuer == console.oidc.issuer && o.audience == console.oidc.client_id
                })
            });
            if !verifies {
                return Err(invalid(
                    "daemon.console.oidc".into(),
                    format!(
                        "no identities entry has issuer {} and audience {}: add one so the console's ID tokens are verified and their groups mapped",
                        console.oidc.issuer, console.oidc.client_id
                    ),
                ));
            }
        }
        policy::validate(self).map_err(|(field, message)| invalid(field, message))
    }

    /// The proxy listener port of target `index`.
    pub fn listen_port(&self, index: usize) -> u16 {
        let t = &self.targets[index];
        t.listen_port.unwrap_or_else(|| {
            self.daemon
                .listen_port_base
                .saturating_add(u16::try_from(index).unwrap_or(u16::MAX))
        })
    }

    /// Looks a target up by name.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name).map(|t| &**t)
    }

    /// The groups whose members may read through the console and the REST API:
    /// `daemon.console.readers` when set, else every group the policy makes an approver
    /// ([`console::default_readers`]).
    pub fn readers(&self) -> std::collections::BTreeSet<String> {
        match self.configured_readers() {
            Some(r) => r.iter().cloned().collect(),
            None => console::default_readers(&self.rules),
        }
    }

    /// Whether a holder of `groups` may read through the console and the REST API.
    pub fn is_reader(&self, groups: &[String]) -> bool {
        console::is_reader(self.configured_readers(), &self.rules, groups)
    }

    fn configured_readers(&self) -> Option<&[String]> {
        self.daemon
            .console
            .as_ref()
            .and_then(|c| c.readers.as_deref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_field() {
        let text = "targets:\n  - name: db\n    protocol: tcp\n    addresses: [\"198.18.0.2/33\"]\n    ports: [5432]\n";
        let err = Config::parse(Path::new("x.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:4:"), "{err}");
        assert!(err.contains("prefix length"), "{err}");

        let text = "targets:\n  - name: db\n    protocl: tcp\n";
        let err = Config::parse(Path::new("x.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:3:"), "{err}");
        assert!(err.contains("protocl"), "{err}");
    }

    #[test]
    fn ssh_ciphers_are_checked_against_the_offerable_ones() {
        let target = |ciphers: &str| {
            format!(
                "targets:\n  - name: web\n    protocol: ssh\n    addresses: [\"198.18.0.2/32\"]\n    ports: [22]\n    ssh:\n      user: root\n      host_ca: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n      ciphers: [{ciphers}]\n"
            )
        };
        let c = Config::parse(
            Path::new("x.yaml"),
            &target("aes256-gcm@openssh.com, aes128-gcm@openssh.com"),
        )
        .unwrap();
        let ssh = c.targets[0].ssh.as_ref().unwrap();
        assert_eq!(
            ssh.ciphers,
            ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
        );
        // Every offerable name is one the SSH library implements (none is dropped silently).
        for name in SSH_CIPHERS {
            assert!(russh::cipher::Name::try_from(*name).is_ok(), "{name}");
        }
        for bad in ["none", "aes128-cbc", "3des-cbc", "chacha20"] {
            let err = Config::parse(Path::new("x.yaml"), &target(bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("ssh.ciphers") && err.contains(&format!("`{bad}` is not one of")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn default_readers_are_the_policys_deciders() {
        let rules = "rules:
  - name: writes
    classes: [write]
    action: review
    review: {approvers: [dba, sre], on_timeout: escalate, escalate_to: [oncall]}
  - name: ddl
    classes: [ddl]
    action: review
    review: {approvers: [dba]}
  - name: trial
    classes: [dcl]
    action: review
    shadow: true
    review: {approvers: [auditors]}
  - name: reads
    classes: [read]
    groups: [analysts]
    action: allow
";
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let c = Config::parse(Path::new("x.yaml"), rules).unwrap();
        // Approvers and escalation groups of enforced review rules, once each; not the groups
        // of shadow rules (they hold nothing) nor those a rule merely matches on.
        assert_eq!(
            c.readers().into_iter().collect::<Vec<_>>(),
            strings(&["dba", "oncall", "sre"])
        );
        assert!(c.is_reader(&strings(&["analysts", "oncall"])));
        assert!(!c.is_reader(&strings(&["analysts", "auditors"])));
        assert!(!c.is_reader(&[]));
        // The default follows the policy: a reload without the escalation drops `oncall`.
        let c = Config::parse(
            Path::new("x.yaml"),
            &rules.replace(", on_timeout: escalate, escalate_to: [oncall]", ""),
        )
        .unwrap();
        assert!(!c.is_reader(&strings(&["oncall"])));
        // No review rule: nobody reads (only the admin token, which is not a group).
        let c = Config::parse(Path::new("x.yaml"), "default: deny\n").unwrap();
        assert!(c.readers().is_empty());
        // `readers` replaces the default entirely.
        let console = "daemon:
  console:
    listen: 127.0.0.1:9480
    oidc: {issuer: \"https://idp.example\", client_id: console}
    readers: [auditors]
identities:
  - name: reviewers
    oidc: {issuer: \"https://idp.example\", audience: console}
";
        let c = Config::parse(Path::new("x.yaml"), &format!("{console}{rules}")).unwrap();
        assert_eq!(
            c.readers().into_iter().collect::<Vec<_>>(),
            strings(&["auditors"])
        );
        assert!(c.is_reader(&strings(&["auditors"])));
        assert!(!c.is_reader(&strings(&["dba"])));
    }

    #[test]
    fn postgres_section_checks() {
        let base = "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2\"]\n    ports: [5432]\n    postgres:\n      user: gw\n";
        let ok = format!(
            "{base}      password_env: PGPW\n      tls: {{mode: verify-full, ca_file: /ca.pem}}\n      client_tls: {{cert_file: /c.pem, key_file: /k.pem}}\n"
        );
        let c = Config::parse(Path::new("x.yaml"), &ok).unwrap();
        let pg = c.targets[0].postgres.as_ref().unwrap();
        assert_eq!(pg.tls.mode, UpstreamTlsMode::VerifyFull);
        assert!(pg.client_tls.is_some());

        let two = format!("{base}      password: a\n      password_file: /pw\n");
        let err = Config::parse(Path::new("x.yaml"), &two)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most one"), "{err}");
        let no_ca = format!("{base}      tls: {{mode: verify-full}}\n");
        let err = Config::parse(Path::new("x.yaml"), &no_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca_file"), "{err}");
        let bad_mode = format!("{base}      tls: {{mode: prefer}}\n");
        let err = Config::parse(Path::new("x.yaml"), &bad_mode)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:8:"), "{err}");
    }

    #[test]
    fn mysql_section_checks() {
        let base = "targets:\n  - name: db\n    protocol: mysql\n    addresses: [\"198.18.0.2\"]\n    ports: [3306]\n";
        let err = Config::parse(Path::new("x.yaml"), base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql") && err.contains("required"), "{err}");
        let ok = format!(
            "{base}    mysql:\n      user: gw\n      password_env: PW\n      client_auth: caching_sha2_password\n      tls: {{mode: verify-full, ca_file: /ca.pem}}\n"
        );
        let c = Config::parse(Path::new("x.yaml"), &ok).unwrap();
        let my = c.targets[0].mysql.as_ref().unwrap();
        assert_eq!(my.client_auth, MysqlClientAuth::CachingSha2Password);
        let no_ca = format!("{base}    mysql:\n      user: gw\n      tls: {{mode: verify-full}}\n");
        let err = Config::parse(Path::new("x.yaml"), &no_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca_file"), "{err}");
        let wrong = "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2\"]\n    ports: [5432]\n    mysql: {user: gw}\n";
        let err = Config::parse(Path::new("x.yaml"), wrong)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only for targets with protocol: mysql"),
            "{err}"
        );
    }

    #[test]
    fn roles_checks() {
        let base = "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2\"]\n    ports: [5432]\n    postgres:\n      user: gw\n      password_file: /pw\n      roles: [ro, rw]\n";
        let rule = |extra: &str| {
            format!(
                "{base}      run_as: ro\nrules:\n  - name: r\n    classes: [write]\n    action: review\n    review: {{approvers: [dba]}}\n{extra}"
            )
        };
        let ok = rule("    approved_run_as: rw\n");
        let c = Config::parse(Path::new("x.yaml"), &ok).unwrap();
        assert_eq!(c.rules[0].approved_run_as.as_deref(), Some("rw"));
        for (bad, needle) in [
            (
                rule("    targets: [db]\n    approved_run_as: admin\n"),
                "target `db` does not list `admin`",
            ),
            (
                rule("    run_as: admin\n"),
                "no PostgreSQL or MySQL target lists `admin`",
            ),
            (
                format!("{base}      run_as: other\n"),
                "not in this target's `roles`",
            ),
            (
                format!("{base}      roles: [\"x; DROP\"]\n")
                    .replace("      roles: [ro, rw]\n", ""),
                "not a plain role name",
            ),
            (format!("{base}      rotate_every: 1h\n"), "upstream"),
        ] {
            let err = Config::parse(Path::new("x.yaml"), &bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let allow = format!(
            "{base}rules:\n  - name: a\n    classes: [read]\n    action: allow\n    approved_run_as: rw\n"
        );
        let err = Config::parse(Path::new("x.yaml"), &allow)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only `action: review`"), "{err}");
    }

    #[test]
    fn mysql_roles_checks() {
        let base = "targets:\n  - name: my\n    protocol: mysql\n    addresses: [\"198.18.0.2\"]\n    ports: [3306]\n    mysql:\n      user: gw\n      password_file: /pw\n      roles: [app_readonly, app_writer]\n";
        let rule = |extra: &str| {
            format!(
                "{base}      run_as: app_readonly\nrules:\n  - name: r\n    classes: [write]\n    action: review\n    review: {{approvers: [dba]}}\n{extra}"
            )
        };
        let c = Config::parse(
            Path::new("x.yaml"),
            &rule("    approved_run_as: app_writer\n"),
        )
        .unwrap();
        let my = c.targets[0].mysql.as_ref().unwrap();
        assert_eq!(my.run_as.as_deref(), Some("app_readonly"));
        assert!(my.allows_role("app_writer") && !my.allows_role("root"));
        for (bad, needle) in [
            (
                rule("    targets: [my]\n    approved_run_as: admin\n"),
                "does not list `admin` in its `mysql.roles`",
            ),
            (format!("{base}      run_as: other\n"), "mysql.run_as"),
            (
                format!("{base}      roles: [\"x`y\"]\n")
                    .replace("      roles: [app_readonly, app_writer]\n", ""),
                "not a plain role name",
            ),
            (
                format!("{base}      rotate_every: 1h\n"),
                "mysql.rotate_every: needs `password_file`",
            ),
            (
                format!("{base}      rotate_every: 30s\n").replace(
                    "    mysql:\n",
                    "    upstream: \"198.18.0.2:3306\"\n    mysql:\n",
                ),
                "mysql.rotate_every: at least 1m",
            ),
        ] {
            let err = Config::parse(Path::new("x.yaml"), &bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let ok = format!("{base}      rotate_every: 1h\n").replace(
            "    mysql:\n",
            "    upstream: \"198.18.0.2:3306\"\n    mysql:\n",
        );
        let c = Config::parse(Path::new("x.yaml"), &ok).unwrap();
        let every = c.targets[0].mysql.as_ref().unwrap().rotate_every.unwrap();
        assert_eq!(every.0, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn cidr_contains_mapped() {
        let c: Cidr = "198.18.0.0/24".parse().unwrap();
        assert!(c.contains("198.18.0.77".parse().unwrap()));
        assert!(c.contains("::ffff:198.18.0.77".parse().unwrap()));
        assert!(!c.contains("198.18.1.1".parse().unwrap()));
    }
}
