//! The policy part of the configuration file (YAML): identities, rules, default, masking.
//!
//! STUB: the policy issue fills these in.

use serde::Deserialize;

use crate::config::Config;

/// An identity source.
#[derive(Debug, Clone, Deserialize)]
pub struct IdentitySpec {}

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

/// Masking rules.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MaskingSpec {}

/// Cross-field validation; an error is `(field path, message)`.
pub fn validate(_config: &Config) -> Result<(), (String, String)> {
    Ok(())
}
