//! The `http` block of a target: TLS interception, the credential the gateway injects, the
//! judged request-body bound and what happens to answers masking cannot read.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// Default bound on a request body judged by policy (and hashed for approvals).
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Largest judged-body bound accepted (every judged body sits in memory while judged).
pub const MAX_MAX_BODY: u64 = 64 * 1024 * 1024;

/// HTTP settings of a target (`protocol: http`). Every field has a default, so a plain HTTP
/// target may omit the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// TLS interception: clients that open TLS get a certificate for the target's name and an
    /// upstream leg verified against the target's CA. Without it a TLS client is refused.
    #[serde(default)]
    pub tls: Option<HttpTls>,
    /// The credential the gateway adds to every forwarded request.
    #[serde(default)]
    pub credential: Option<HttpCredential>,
    /// More request headers to strip as client credentials (besides `authorization`,
    /// `proxy-authorization` and the credential's own header).
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Bytes of a request body read and judged before anything goes upstream (`64KiB`,
    /// `1MiB`, or a number). A larger body is judged `unknown`: only rules with
    /// `http.large_body: true` allow it, and they cannot see it. Default 1 MiB.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// What an answer that masking cannot read (not JSON, not text, or an encoding other than
    /// gzip) does when masking rules apply: `refuse` (default: the client gets a 502) or
    /// `pass`.
    #[serde(default)]
    pub binary: BinaryAnswers,
    /// Host names this target answers to (`Host`/`:authority`, and TLS SNI), besides its own
    /// addresses, `tls.server_name` and `tls.default_name`; globs (`*.billing.internal`). A
    /// request for any other name gets a 421 before any credential is added: behind a shared
    /// front end (an ingress, a load balancer) the name picks the site that receives it.
    #[serde(default)]
    pub names: Vec<String>,
}

impl HttpTarget {
    /// The judged request-body bound in bytes.
    pub fn max_body(&self) -> u64 {
        self.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0)
    }

    /// Whether a request for `host` (lower-case, without port or trailing dot) is one for this
    /// target, whose addresses are `addresses`.
    pub fn answers_to(&self, host: &str, addresses: &[super::Cidr]) -> bool {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return addresses.iter().any(|c| c.contains(ip));
        }
        let named = |n: &str| {
            super::policy::glob_match_ignore_ascii_case(
                n.trim_end_matches('.').as_bytes(),
                host.as_bytes(),
            )
        };
        self.names.iter().any(|n| named(n))
            || self.tls.as_ref().is_some_and(|t| {
                t.server_name.as_deref().is_some_and(named)
                    || t.default_name.as_deref().is_some_and(named)
            })
    }
}

/// TLS between client and gateway, and from gateway to target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The certificate presented to clients (PEM chain, leaf first), given by the operator so
    /// that clients need no change. Without it, airlock mints one per server name with its
    /// own CA (`<state_dir>/http-ca.pem`, which clients must trust).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file` (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name minted certificates carry when the client sent no SNI.
    #[serde(default)]
    pub default_name: Option<String>,
    /// PEM bundle of the CAs the target's certificate must chain to. Required: the upstream
    /// leg is always verified.
    pub ca_file: PathBuf,
    /// Name checked against the target's certificate (default: the name the client asked for
    /// with SNI, else `default_name`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The gateway's client certificate for the target (PEM chain, leaf first): a Kubernetes
    /// cluster credential, or any server that authenticates clients by certificate. Clients
    /// never hold it; their own TLS ends at the gateway.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The key of `client_cert_file` (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Ports the target serves with TLS (default 443, 6443 and 8443). A client speaking plain
    /// HTTP to one of them is sent on over verified TLS all the same: whether the upstream leg
    /// is encrypted (and the credential with it) is the operator's choice, not the client's.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
}

impl HttpTls {
    /// Whether the target serves `port` with TLS.
    pub fn serves_tls_on(&self, port: u16) -> bool {
        match &self.ports {
            Some(p) => p.contains(&port),
            None => matches!(port, 443 | 6443 | 8443),
        }
    }
}

/// A credential the gateway holds for a target. The secret comes from an environment variable
/// of the daemon or a file (read per connection, so rotation needs no restart).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCredential {
    /// How the secret is written into the header.
    pub kind: CredentialKind,
    /// The header (default `authorization`; e.g. `x-api-key` for `kind: header`).
    #[serde(default)]
    pub header: Option<String>,
    /// Environment variable holding the secret (`user:password` for `basic`).
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the secret (trailing newline ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl HttpCredential {
    /// The header the credential goes in, lower-case.
    pub fn header_name(&self) -> String {
        self.header
            .as_deref()
            .unwrap_or("authorization")
            .to_ascii_lowercase()
    }
}

/// How a credential's secret becomes a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// `Bearer <secret>`.
    Bearer,
    /// `Basic base64(<secret>)`, the secret being `user:password`.
    Basic,
    /// The secret as it is (an API key header).
    Header,
}

/// What happens to an answer masking cannot read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryAnswers {
    /// The client gets a 502 naming the content type.
    #[default]
    Refuse,
    /// Passed unmasked (recorded as such).
    Pass,
}

/// A size in bytes, written as a number or with a `KiB`/`MiB`/`GiB` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            other => return Err(format!("`{other}` is not a size unit (KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size in bytes (65536, 64KiB, 1MiB)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks an `http` block; an error is `(field under the block, message)`.
pub fn validate(h: &HttpTarget) -> Result<(), (String, String)> {
    if h.max_body() > MAX_MAX_BODY {
        return Err((
            "max_body".into(),
            format!("at most {} MiB", MAX_MAX_BODY >> 20),
        ));
    }
    if let Some(tls) = &h.tls
        && tls.cert_file.is_some() != tls.key_file.is_some()
    {
        return Err((
            "tls".into(),
            "cert_file and key_file go together (or neither: airlock's CA mints certificates)"
                .into(),
        ));
    }
    if let Some(tls) = &h.tls
        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
    {
        return Err((
            "tls".into(),
            "client_cert_file and client_key_file go together".into(),
        ));
    }
    if let Some(c) = &h.credential {
        if c.env.is_some() == c.file.is_some() {
            return Err(("credential".into(), "set exactly one of env, file".into()));
        }
        let name = c.header_name();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err((
                "credential.header".into(),
                format!("`{name}` is not a header name"),
            ));
        }
    }
    for (i, s) in h.strip_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(s.as_bytes()).is_err() {
            return Err((
                format!("strip_headers[{i}]"),
                format!("`{s}` is not a header name"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("65536".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert!("1 parsec".parse::<ByteSize>().is_err());
        assert!("x".parse::<ByteSize>().is_err());
    }

    #[test]
    fn credentials_need_one_source() {
        let mut h = HttpTarget {
            credential: Some(HttpCredential {
                kind: CredentialKind::Bearer,
                header: None,
                env: None,
                file: None,
            }),
            ..HttpTarget::default()
        };
        assert!(validate(&h).is_err());
        if let Some(c) = h.credential.as_mut() {
            c.env = Some("TOKEN".into());
        }
        assert!(validate(&h).is_ok());
        h.max_body = Some(ByteSize(1 << 30));
        assert!(validate(&h).is_err());
    }
}
