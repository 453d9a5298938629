//! `daemon.console` in the config file: the reviewer console (web pages served by the daemon,
//! with the REST API beside them), its TLS and its OIDC login.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::policy::{DurationSpec, RuleSpec};

/// Settings of the reviewer console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens. Plain HTTP only on a loopback address; anything else needs
    /// `tls` (the session cookie is `Secure`).
    pub listen: SocketAddr,
    /// The URL reviewers open (scheme, host and port, no path), from which the OIDC redirect URI
    /// `<public_url>/auth/callback` is made. Default: `https://<listen>` with `tls`, else
    /// `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Certificate and key the console presents.
    #[serde(default)]
    pub tls: Option<super::ClientTls>,
    /// How reviewers log in.
    pub oidc: ConsoleOidc,
    /// How long a login lasts at most (default 8 h; never longer than the ID token's own
    /// lifetime allows at login).
    #[serde(default = "default_session_ttl")]
    pub session_ttl: DurationSpec,
    /// A login unused for this long ends (default 1 h).
    #[serde(default = "default_idle")]
    pub idle_timeout: DurationSpec,
    /// Logins held at once; the least recently used goes first when full (default 10,000).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u64,
    /// Groups whose members may log in to the console and read through it and the REST API
    /// (OIDC tokens; the admin token always may). Default: every group that can decide
    /// something under the loaded policy ([`default_readers`]), recomputed on each reload.
    #[serde(default)]
    pub readers: Option<Vec<String>>,
}

/// The OIDC client the console logs reviewers in as (authorization code flow with PKCE).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidc {
    /// Issuer URL. It must also be an `identities` entry whose `audience` is `client_id`: that
    /// entry verifies the ID token and maps its groups, exactly as for a CLI token.
    pub issuer: String,
    pub client_id: String,
    /// Environment variable holding the client secret, for a confidential client. Without it the
    /// console is a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes asked for (default `openid profile groups`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra CA bundle (PEM) for the issuer's TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_session_ttl() -> DurationSpec {
    DurationSpec(Duration::from_secs(8 * 3600))
}

fn default_idle() -> DurationSpec {
    DurationSpec(Duration::from_secs(3600))
}

fn default_max_sessions() -> u64 {
    10_000
}

/// The readers when `readers` is not configured: the union of the approver groups of every
/// enforced `review` rule, with their `escalate_to` groups (they decide once a request is
/// escalated). Shadow rules hold nothing, so their groups do not count.
pub fn default_readers(rules: &[RuleSpec]) -> BTreeSet<String> {
    deciding_groups(rules).map(str::to_owned).collect()
}

/// Every group that can decide a request under `rules` (with repeats).
fn deciding_groups(rules: &[RuleSpec]) -> impl Iterator<Item = &str> {
    rules
        .iter()
        .filter(|r| !r.shadow)
        .filter_map(|r| r.review.as_ref())
        .flat_map(|rv| rv.approvers.iter().chain(&rv.escalate_to))
        .map(String::as_str)
}

/// Whether any of `groups` is a reader: one of `configured` when set, else one of the
/// [`default_readers`] of `rules`. Checked on every console and API request, so it allocates
/// nothing.
pub fn is_reader(configured: Option<&[String]>, rules: &[RuleSpec], groups: &[String]) -> bool {
    match configured {
        Some(readers) => groups.iter().any(|g| readers.contains(g)),
        None => deciding_groups(rules).any(|d| groups.iter().any(|g| g == d)),
    }
}

impl ConsoleConfig {
    /// The base URL reviewers use, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            }
        }
    }

    /// Why this configuration is unsafe or unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Some(format!(
                "listening on {} without tls: plain HTTP is accepted only on loopback",
                self.listen
            ));
        }
        let base = self.base_url();
        let Ok(url) = url::Url::parse(&base) else {
            return Some(format!("public_url `{base}` is not a URL"));
        };
        if url.path() != "/" || url.query().is_some() {
            return Some(format!("public_url `{base}` must not have a path or query"));
        }
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Some(format!(
                "public_url `{base}` must use https (plain http only on loopback)"
            ));
        }
        if self.oidc.client_id.is_empty() {
            return Some("oidc.client_id must not be empty".into());
        }
        if self.session_ttl.0.is_zero() || self.idle_timeout.0.is_zero() {
            return Some("session_ttl and idle_timeout must be positive".into());
        }
        if self.max_sessions == 0 {
            return Some("max_sessions must be at least 1".into());
        }
        None
    }
}
