//! The configuration file: daemon settings, protected targets, and the policy (identities,
//! rules, masking). One YAML file, Kubernetes style; unknown keys are errors and every error
//! names the file, line and field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::policy::spec::{DefaultAction, IdentitySpec, MaskingSpec, RuleSpec};

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
    pub targets: Vec<TargetConfig>,
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
    /// Accept connections on the proxy listeners that the kernel programs did not redirect
    /// (their caller is then unknown). Off by default: a connection without an interception
    /// record is refused. Benchmarks use it to compare against iptables REDIRECT.
    pub accept_unintercepted: bool,
    /// Session recording and the tamper-evident audit log.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Human-in-the-loop approvals: store, admin token, webhooks.
    #[serde(default)]
    pub approvals: crate::approval::ApprovalsConfig,
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
            accept_unintercepted: false,
            audit: crate::audit::AuditConfig::default(),
            approvals: crate::approval::ApprovalsConfig::default(),
        }
    }
}

/// Protocols the proxy can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque TCP relay with per-session accounting.
    Tcp,
    Postgres,
}

impl Protocol {
    /// Lower-case name, as in the config file and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
                if pg.tls.mode == UpstreamTlsMode::VerifyFull && pg.tls.ca_file.is_none() {
                    return Err(invalid(
                        field + ".postgres.tls.ca_file",
                        "required with mode: verify-full".into(),
                    ));
                }
            }
            let listen = self.listen_port(i);
            if listen == 0 || !ports.insert(listen) {
                return Err(invalid(
                    field + ".listen_port",
                    format!("listener port {listen} is 0 or used by another target"),
                ));
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
        crate::policy::spec::validate(self).map_err(|(field, message)| invalid(field, message))
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
        self.targets.iter().find(|t| t.name == name)
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
    fn cidr_contains_mapped() {
        let c: Cidr = "198.18.0.0/24".parse().unwrap();
        assert!(c.contains("198.18.0.77".parse().unwrap()));
        assert!(c.contains("::ffff:198.18.0.77".parse().unwrap()));
        assert!(!c.contains("198.18.1.1".parse().unwrap()));
    }
}
