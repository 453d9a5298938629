//! `daemon.approvals` in the config file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which store holds approval requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded, nothing to run: `path` (default `<state_dir>/approvals.db`).
    #[default]
    Sqlite,
    /// Shared by a fleet of instances: `url` (libpq key/value or URI form).
    Postgres,
}

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookKind {
    /// The request as JSON, signed with HMAC-SHA256 (`X-Airlock-Signature: sha256=<hex>`).
    #[default]
    Generic,
    /// A Slack incoming-webhook payload (`{"text": …}`), signed the same way when a secret is
    /// set.
    Slack,
}

/// One notification endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub kind: WebhookKind,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// The HMAC secret inline (prefer `secret_env`).
    pub secret: Option<String>,
    /// Attempts before giving up (default 5), with exponential backoff from 200 ms.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_attempts() -> u32 {
    5
}

impl WebhookConfig {
    /// The HMAC key, if any: `secret`, else the variable named by `secret_env`.
    pub fn secret(&self) -> Option<Vec<u8>> {
        if let Some(s) = &self.secret {
            return Some(s.as_bytes().to_vec());
        }
        self.secret_env
            .as_ref()
            .and_then(|name| std::env::var(name).ok())
            .map(String::into_bytes)
    }
}

/// Settings of the approval workflow (`daemon.approvals`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    pub store: StoreKind,
    /// SQLite database file (default `<state_dir>/approvals.db`).
    pub path: Option<PathBuf>,
    /// PostgreSQL connection string for `store: postgres`.
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL connection string (keeps passwords out of
    /// the file).
    pub url_env: Option<String>,
    /// Admin token file for the API and CLI (default `<state_dir>/api.token`, mode 0600,
    /// created at first start).
    pub token_file: Option<PathBuf>,
    /// This instance's name in requests (default `<hostname>-<pid>`).
    pub instance: Option<String>,
    pub webhooks: Vec<WebhookConfig>,
}

impl ApprovalsConfig {
    /// The SQLite file.
    pub fn sqlite_path(&self, state_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| state_dir.join("approvals.db"))
    }

    /// The admin token file.
    pub fn token_path(&self, state_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| state_dir.join("api.token"))
    }

    /// The PostgreSQL connection string, from `url` or `url_env`.
    pub fn postgres_url(&self) -> Option<String> {
        self.url.clone().or_else(|| {
            self.url_env
                .as_ref()
                .and_then(|name| std::env::var(name).ok())
        })
    }
}
