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
    /// cgroup v2 directory the kernel programs attach to (default: the cgroup v2 root).
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
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
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
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.to_string(),
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
                return Err(invalid(field + ".ports", "at least one port, none 0".into()));
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
                let overlap = a.addresses.iter().any(|x| b.addresses.iter().any(|y| x == y));
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
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_field() {
        let text = "targets:\n  - name: db\n    protocol: tcp\n    addresses: [\"198.18.0.2/33\"]\n    ports: [5432]\n";
        let err = Config::parse(Path::new("x.yaml"), text).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:4:"), "{err}");
        assert!(err.contains("prefix length"), "{err}");

        let text = "targets:\n  - name: db\n    protocl: tcp\n";
        let err = Config::parse(Path::new("x.yaml"), text).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:3:"), "{err}");
        assert!(err.contains("protocl"), "{err}");
    }

    #[test]
    fn cidr_contains_mapped() {
        let c: Cidr = "198.18.0.0/24".parse().unwrap();
        assert!(c.contains("198.18.0.77".parse().unwrap()));
        assert!(c.contains("::ffff:198.18.0.77".parse().unwrap()));
        assert!(!c.contains("198.18.1.1".parse().unwrap()));
    }
}
