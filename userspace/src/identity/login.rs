//! Reviewer login: `airlock login` runs the OAuth 2.0 device authorization flow (RFC 8628)
//! against the organisation's OIDC issuer and caches the resulting token, which the CLI then
//! sends as `Authorization: Bearer …` so the API can record who approved or denied.
//!
//! The cache is `$XDG_CONFIG_HOME/airlock/token` (else `~/.config/airlock/token`), mode 0600.
//! It holds the ID token (audience = the CLI's client id, which the reviewers' `IdentitySpec`
//! names as its audience) and the access token, with their expiry.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, DeviceAuthorizationUrl, IssuerUrl, OAuth2TokenResponse,
    ProviderMetadata, Scope, reqwest,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Scopes asked for when none are given: identity and group membership.
const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "groups"];

/// Why login failed.
#[derive(Debug, Error)]
pub enum LoginError {
    #[error("invalid issuer URL `{0}`")]
    IssuerUrl(String),
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("OIDC discovery at `{issuer}` failed: {reason}")]
    Discovery { issuer: String, reason: String },
    #[error("issuer `{0}` does not offer the device authorization flow")]
    NoDeviceFlow(String),
    #[error("device authorization request failed: {0}")]
    DeviceAuthorization(String),
    #[error("login did not complete: {0}")]
    Token(String),
    #[error("the issuer returned an invalid ID token: {0}")]
    IdToken(String),
    #[error("no home directory: set HOME or XDG_CONFIG_HOME")]
    NoHome,
    #[error("token cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the user must do to finish logging in, shown by the prompt callback.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub user_code: String,
    pub verification_uri: String,
    /// The URI with the code already filled in, when the issuer provides one.
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
}

/// Options of [`login_with`].
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    /// Scopes to request; empty means `openid profile groups`.
    pub scopes: Vec<String>,
    /// Extra CA bundle (PEM) for the issuer's TLS.
    pub ca_file: Option<PathBuf>,
    /// Where to cache the token; `None` means [`default_token_path`].
    pub token_path: Option<PathBuf>,
}

/// The token cache file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedToken {
    pub issuer: String,
    pub client_id: String,
    pub id_token: Option<String>,
    /// Unix seconds; from the ID token's `exp`.
    pub id_token_expires_at: Option<u64>,
    pub access_token: String,
    /// Unix seconds; from the token response's `expires_in`.
    pub access_token_expires_at: Option<u64>,
}

impl CachedToken {
    /// The token to send as Bearer: the ID token while valid (it names the reviewer and its
    /// audience is the CLI), else the access token while valid.
    pub fn bearer(&self, now: u64) -> Option<&str> {
        let valid = |exp: Option<u64>| exp.is_none_or(|e| e > now);
        if let Some(id) = &self.id_token
            && valid(self.id_token_expires_at)
        {
            return Some(id);
        }
        valid(self.access_token_expires_at).then_some(self.access_token.as_str())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// `airlock login`: runs the device flow, printing the verification URI and code on stderr,
/// and caches the token at [`default_token_path`].
pub async fn login(issuer_url: &str, client_id: &str) -> Result<(), LoginError> {
    login_with(issuer_url, client_id, &LoginOptions::default(), |d| {
        eprintln!(
            "To log in, open {} and enter the code {}",
            d.verification_uri_complete
                .as_deref()
                .unwrap_or(&d.verification_uri),
            d.user_code
        );
    })
    .await
    .map(|_| ())
}

/// The device flow with explicit options. `prompt` is called once with what the user must do;
/// then this polls the issuer until the user approves, refuses, or the code expires. The ID
/// token is verified (issuer, audience, signature, expiry) before it is cached.
pub async fn login_with(
    issuer_url: &str,
    client_id: &str,
    options: &LoginOptions,
    prompt: impl FnOnce(&DeviceAuthorization),
) -> Result<CachedToken, LoginError> {
    let issuer = IssuerUrl::new(issuer_url.to_string())
        .map_err(|_| LoginError::IssuerUrl(issuer_url.into()))?;
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(path) = &options.ca_file {
        let ca_err = |reason: String| LoginError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder
        .build()
        .map_err(|e| LoginError::Http(e.to_string()))?;

    let metadata = DeviceProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| LoginError::Discovery {
            issuer: issuer_url.into(),
            reason: super::oidc::error_chain(&e),
        })?;
    let device_url = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
        .ok_or_else(|| LoginError::NoDeviceFlow(issuer_url.into()))?;
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.into()), None)
            .set_device_authorization_url(device_url);

    let scopes: Vec<String> = if options.scopes.is_empty() {
        DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()
    } else {
        options.scopes.clone()
    };
    let mut request = client.exchange_device_code();
    // openidconnect adds `openid` itself.
    for s in scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let details: CoreDeviceAuthorizationResponse = request
        .request_async(&http)
        .await
        .map_err(|e| LoginError::DeviceAuthorization(super::oidc::error_chain(&e)))?;
    prompt(&DeviceAuthorization {
        user_code: details.user_code().secret().clone(),
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().clone()),
        expires_in: details.expires_in(),
    });

    let token = client
        .exchange_device_access_token(&details)
        .map_err(|e| LoginError::Token(e.to_string()))?
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map_err(|e| LoginError::Token(super::oidc::error_chain(&e)))?;

    let now = unix_now();
    let (id_token, id_token_expires_at) = match token.extra_fields().id_token() {
        Some(id) => {
            let claims = id
                .claims(
                    &client.id_token_verifier(),
                    |_: Option<&openidconnect::Nonce>| Ok(()),
                )
                .map_err(|e| LoginError::IdToken(e.to_string()))?;
            let exp = u64::try_from(claims.expiration().timestamp()).ok();
            tracing::info!(subject = %claims.subject().as_str(), issuer = %issuer_url, "logged in");
            (Some(id.to_string()), exp)
        }
        None => (None, None),
    };
    let cached = CachedToken {
        issuer: issuer_url.into(),
        client_id: client_id.into(),
        id_token,
        id_token_expires_at,
        access_token: token.access_token().secret().clone(),
        access_token_expires_at: token.expires_in().map(|d| now + d.as_secs()),
    };
    let path = match &options.token_path {
        Some(p) => p.clone(),
        None => default_token_path().ok_or(LoginError::NoHome)?,
    };
    store_token(&path, &cached)?;
    Ok(cached)
}

/// `$XDG_CONFIG_HOME/airlock/token`, else `$HOME/.config/airlock/token`.
pub fn default_token_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("airlock").join("token"))
}

/// The cached Bearer token for the CLI, if one exists and has not expired.
pub fn cached_token() -> Option<String> {
    cached_token_at(&default_token_path()?)
}

/// Like [`cached_token`] for an explicit cache file.
pub fn cached_token_at(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let cached: CachedToken = serde_json::from_slice(&bytes).ok()?;
    cached.bearer(unix_now()).map(str::to_string)
}

/// Writes the cache atomically, readable only by the owner.
pub fn store_token(path: &Path, token: &CachedToken) -> Result<(), LoginError> {
    let io = |source| LoginError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        // Best effort: the directory may be shared (e.g. an existing ~/.config/airlock).
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let json = serde_json::to_vec_pretty(token).map_err(|e| io(std::io::Error::other(e)))?;
    f.write_all(&json).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_is_private_and_honours_expiry() {
        let dir = std::env::temp_dir().join(format!("airlock-login-{}", std::process::id()));
        let path = dir.join("airlock").join("token");
        let now = unix_now();
        let mut t = CachedToken {
            issuer: "https://idp".into(),
            client_id: "cli".into(),
            id_token: Some("id".into()),
            id_token_expires_at: Some(now + 60),
            access_token: "at".into(),
            access_token_expires_at: Some(now + 600),
        };
        store_token(&path, &t).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(cached_token_at(&path).as_deref(), Some("id"));
        t.id_token_expires_at = Some(now - 1);
        store_token(&path, &t).unwrap();
        assert_eq!(cached_token_at(&path).as_deref(), Some("at"));
        t.access_token_expires_at = Some(now - 1);
        store_token(&path, &t).unwrap();
        assert_eq!(cached_token_at(&path), None);
        assert_eq!(cached_token_at(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
