//! The policy part of the configuration file (YAML): identities, rules, default, masking.
//!
//! `RuleSpec` is a STUB until the policy issue fills it in; the identity and masking shapes are
//! shared with the identity and masking work and change only by agreement.

use serde::Deserialize;

use crate::config::Config;

/// An identity source: OIDC tokens, or a workload matcher over the kernel's view of the
/// caller. Either way it grants `groups`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    pub name: String,
    /// Tokens from this issuer (presented in the PostgreSQL password field or as a Bearer
    /// header).
    #[serde(default)]
    pub oidc: Option<OidcSpec>,
    /// Callers whose process matches.
    #[serde(default)]
    pub workload: Option<WorkloadMatcher>,
    /// Policy groups granted to a matching caller (in addition to token group claims).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// An OIDC issuer trusted for tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSpec {
    /// Issuer URL; discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Claim holding the caller's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Allowed signing algorithms (default RS256 and ES256; `none` and HS* are refused).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Extra CA bundle (PEM) for the issuer's TLS.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Matches a caller by what the kernel reported at connect time. Every field that is set must
/// match; a list matches when any element does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMatcher {
    /// Unix user names.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub uids: Vec<u32>,
    /// cgroup v2 path globs, relative to the cgroup root (e.g. `/system.slice/ci-*.service`).
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Kubernetes pod UIDs (from the cgroup path).
    #[serde(default)]
    pub pods: Vec<String>,
    /// Process command names (`comm`).
    #[serde(default)]
    pub comms: Vec<String>,
}

/// One policy rule.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleSpec {}

/// The fail-safe default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Allow,
}

/// Masking rules, applied to answers of allowed commands.
pub type MaskingSpec = Vec<MaskRuleSpec>;

/// One masking rule: which values (by column and/or by content) and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleSpec {
    pub name: String,
    /// `schema.table.column` globs (`*.customers.email`, `public.*.ssn`).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Content detectors applied to every text value.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    pub style: MaskStyle,
    /// Groups that see raw values.
    #[serde(default)]
    pub except_groups: Vec<String>,
}

/// Content detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// Payment card numbers, Luhn-checked.
    Card,
    Iban,
    /// US social security numbers.
    Ssn,
    Phone,
    Ip,
    AwsKey,
    /// Other cloud provider keys (GCP, Azure, GitHub, Slack tokens).
    CloudKey,
    Jwt,
    PrivateKey,
    /// Generic high-entropy tokens.
    HighEntropy,
}

/// How a matched value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStyle {
    /// Replace whole value.
    Redact,
    /// Keep the last four characters.
    Partial,
    /// Deterministic keyed hash, so masked values still join.
    Hash,
    /// SQL NULL.
    Null,
}

/// Cross-field validation; an error is `(field path, message)`.
pub fn validate(_config: &Config) -> Result<(), (String, String)> {
    Ok(())
}
