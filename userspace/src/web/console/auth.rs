//! Console login: OpenID Connect authorization code flow with PKCE (S256) and a nonce against
//! the configured issuer, then a server-side session behind a `Secure; HttpOnly;
//! SameSite=Strict` cookie. The reviewer's groups come from the ID token through the policy's
//! `identities` (the same verifier the CLI's tokens go through), never from the browser. The
//! admin token is not a login: only a verified ID token of a reader makes a session.
//!
//! Every state-changing request carries the session's CSRF token (a hidden form field),
//! compared in constant time; a request whose `Origin` names another site is refused too.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use cookie::{Cookie, SameSite};
use moka::sync::Cache;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, reqwest,
};
use tokio::sync::Mutex;

use crate::approval::Principal;
use crate::config::console::ConsoleConfig;
use crate::identity::oidc::{OidcVerifier, error_chain};

/// The session cookie. `__Host-` makes the browser insist on `Secure`, `Path=/` and no
/// `Domain`, so no other host can plant or read it.
pub const SESSION_COOKIE: &str = "__Host-airlock-session";
/// Binds a login in progress to the browser that started it (SameSite=Lax: it must come back
/// on the issuer's redirect, which is a cross-site navigation).
pub const LOGIN_COOKIE: &str = "__Host-airlock-login";
/// How long a started login may take at the issuer.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Logins in progress held at once.
const MAX_PENDING_LOGINS: u64 = 10_000;

/// Errors of the login flow, shown to the person logging in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the identity provider cannot be reached: {0}")]
    Discovery(String),
    #[error("this login link is unknown or expired; start again")]
    UnknownState,
    #[error("the identity provider refused the login: {0}")]
    Refused(String),
    #[error("exchanging the authorization code failed: {0}")]
    Exchange(String),
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    #[error("the ID token is invalid: {0}")]
    IdToken(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The token is valid but its groups are not among the readers: no session is opened.
    #[error("not a reviewer of this gateway: your groups ({}) are not among the readers", groups_text(.0))]
    NotReader(Vec<String>),
}

/// A principal's groups for a message (`none` when it has none).
pub fn groups_text(groups: &[String]) -> String {
    if groups.is_empty() {
        "none".to_owned()
    } else {
        groups.join(", ")
    }
}

/// A logged-in reviewer.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// Sent back in every form; a POST without it is refused.
    pub csrf: String,
    /// Absolute end (Unix seconds): the configured TTL, capped by the ID token's expiry.
    pub expires_at: u64,
}

/// A login between the redirect to the issuer and its callback.
#[derive(Debug, Clone)]
struct PendingLogin {
    verifier: Arc<str>,
    nonce: String,
    /// Where to go after logging in (a local path).
    next: String,
}

/// The OIDC client side of the console and its session store.
pub struct Auth {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    scopes: Vec<String>,
    redirect: RedirectUrl,
    http: reqwest::Client,
    /// Discovered once, retried while it fails.
    metadata: Mutex<Option<Arc<CoreProviderMetadata>>>,
    pending: Cache<String, PendingLogin>,
    sessions: Cache<String, Arc<Session>>,
    session_ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("sessions", &self.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 32 random bytes as hex (session ids, CSRF tokens).
fn random_token() -> Result<String, AuthError> {
    let b = crate::secrets::random(32).map_err(|e| AuthError::Config(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// The client for `cfg`; the issuer is discovered on the first login, not here.
    pub fn new(cfg: &ConsoleConfig) -> Result<Self, AuthError> {
        let redirect = RedirectUrl::new(format!("{}/auth/callback", cfg.base_url()))
            .map_err(|e| AuthError::Config(format!("redirect URL: {e}")))?;
        let mut builder = reqwest::Client::builder()
            // Following redirects from the token endpoint would let it send us anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        if let Some(path) = &cfg.oidc.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| AuthError::Config(e.to_string()))?;
        let client_secret = match &cfg.oidc.client_secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                AuthError::Config(format!(
                    "oidc.client_secret_env: environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        let scopes = if cfg.oidc.scopes.is_empty() {
            vec!["profile".into(), "groups".into()]
        } else {
            cfg.oidc.scopes.clone()
        };
        let idle = cfg.idle_timeout.0;
        Ok(Self {
            issuer: cfg.oidc.issuer.clone(),
            client_id: cfg.oidc.client_id.clone(),
            client_secret,
            scopes,
            redirect,
            http,
            metadata: Mutex::new(None),
            pending: Cache::builder()
                .max_capacity(MAX_PENDING_LOGINS)
                .time_to_live(LOGIN_TTL)
                .build(),
            sessions: Cache::builder()
                .max_capacity(cfg.max_sessions)
                .time_to_live(cfg.session_ttl.0)
                .time_to_idle(idle)
                .build(),
            session_ttl: cfg.session_ttl.0,
        })
    }

    async fn client(
        &self,
    ) -> Result<
        openidconnect::core::CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        AuthError,
    > {
        let metadata = {
            let mut cached = self.metadata.lock().await;
            match &*cached {
                Some(m) => Arc::clone(m),
                None => {
                    let issuer = IssuerUrl::new(self.issuer.clone())
                        .map_err(|e| AuthError::Config(format!("issuer URL: {e}")))?;
                    let m = CoreProviderMetadata::discover_async(issuer, &self.http)
                        .await
                        .map_err(|e| AuthError::Discovery(error_chain(&e)))?;
                    let m = Arc::new(m);
                    *cached = Some(Arc::clone(&m));
                    m
                }
            }
        };
        Ok(CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(self.client_id.clone()),
            self.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone()))
    }

    /// Starts a login: the issuer's authorization URL to send the browser to, and the value of
    /// the login cookie that binds the callback to this browser.
    pub async fn begin(&self, next: &str) -> Result<(String, String), AuthError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = request.url();
        let state = state.secret().clone();
        self.pending.insert(
            state.clone(),
            PendingLogin {
                verifier: verifier.secret().as_str().into(),
                nonce: nonce.secret().clone(),
                next: safe_next(next).to_owned(),
            },
        );
        Ok((url.to_string(), state))
    }

    /// Finishes a login from the issuer's callback: the state must be one this browser started
    /// (its login cookie), the code is exchanged with the PKCE verifier, and the ID token is
    /// checked (signature, issuer, audience, expiry, nonce) and then mapped to groups by the
    /// policy's identities; a session opens only when `is_reader` accepts those groups.
    /// Returns the session id (the cookie value) and where to go next.
    pub async fn finish(
        &self,
        state: &str,
        browser_state: Option<&str>,
        code: &str,
        verifier_oidc: &OidcVerifier,
        is_reader: impl Fn(&[String]) -> bool,
    ) -> Result<(String, String), AuthError> {
        // One use per login, whatever the outcome.
        let pending = self.pending.remove(state).ok_or(AuthError::UnknownState)?;
        if !browser_state.is_some_and(|b| constant_time_eq(b.as_bytes(), state.as_bytes())) {
            return Err(AuthError::UnknownState);
        }
        let client = self.client().await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| AuthError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| AuthError::Exchange(error_chain(&e)))?;
        let id_token = token.id_token().ok_or(AuthError::NoIdToken)?;
        let nonce = Nonce::new(pending.nonce.clone());
        id_token
            .claims(&client.id_token_verifier(), &nonce)
            .map_err(|e| AuthError::IdToken(e.to_string()))?;
        // Groups exactly as for a CLI token: the policy's identities entry for this issuer and
        // audience maps them.
        let claims = verifier_oidc
            .verify(&id_token.to_string())
            .await
            .map_err(|e| AuthError::IdToken(e.to_string()))?;
        let token_end = claims
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let principal = Principal {
            subject: claims.subject,
            groups: claims.groups,
            admin: false,
            via: format!("console:{}", claims.issuer),
        };
        if !is_reader(&principal.groups) {
            tracing::warn!(subject = %principal.subject, groups = ?principal.groups, "console login refused: not a reader");
            return Err(AuthError::NotReader(principal.groups));
        }
        tracing::info!(subject = %principal.subject, groups = ?principal.groups, "console login");
        let id = self.open_session(principal, token_end)?;
        Ok((id, pending.next))
    }

    /// Opens a session for a reviewer whose ID token was verified, ending at the configured
    /// TTL or `not_after` (Unix seconds), whichever comes first. Returns the cookie value.
    /// (In process only: the login callback, and the benchmarks that need many reviewers.)
    pub fn open_session(&self, principal: Principal, not_after: u64) -> Result<String, AuthError> {
        let expires_at = (unix_now() + self.session_ttl.as_secs()).min(not_after);
        let id = random_token()?;
        self.sessions.insert(
            id.clone(),
            Arc::new(Session {
                principal,
                csrf: random_token()?,
                expires_at,
            }),
        );
        Ok(id)
    }

    /// The session a request's cookie names, if it is live.
    pub fn session(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        let id = cookie_value(headers, SESSION_COOKIE)?;
        let s = self.sessions.get(&id)?;
        if s.expires_at <= unix_now() {
            self.sessions.invalidate(&id);
            return None;
        }
        Some(s)
    }

    /// Whether the session a request's cookie names is still held, without counting this as
    /// use (the idle timer keeps running: an open live stream does not keep a login alive).
    pub fn is_open(&self, headers: &HeaderMap) -> bool {
        cookie_value(headers, SESSION_COOKIE).is_some_and(|id| self.sessions.contains_key(&id))
    }

    /// Ends the session a request's cookie names.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers, SESSION_COOKIE) {
            self.sessions.invalidate(&id);
        }
    }

    /// Sessions held (for tests and the benchmark).
    pub fn session_count(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }
}

/// Whether a form's CSRF token is the session's.
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| constant_time_eq(p.as_bytes(), session.csrf.as_bytes()))
}

/// Whether a state-changing request comes from the console's own origin: `Origin`, when the
/// browser sends it, must be `base`.
pub fn same_origin(headers: &HeaderMap, base: &str) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => origin == base,
    }
}

/// A local path to return to after login (anything else becomes `/`). Browsers drop tabs and
/// newlines from URLs and read a backslash as `/`, so `/\t/evil.example` would leave the site: any
/// control character or backslash makes the path unsafe.
pub fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains(|c: char| c == '\\' || c.is_control());
    if local { next } else { "/" }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// The login-binding cookie's value from a request.
pub fn login_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, LOGIN_COOKIE)
}

/// `Set-Cookie` for the session.
pub fn session_cookie(id: &str) -> String {
    Cookie::build((SESSION_COOKIE, id.to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .build()
        .to_string()
}

/// `Set-Cookie` for a login in progress.
pub fn login_binding_cookie(state: &str) -> String {
    Cookie::build((LOGIN_COOKIE, state.to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(LOGIN_TTL.as_secs() as i64))
        .build()
        .to_string()
}

/// `Set-Cookie` that removes cookie `name`.
pub fn clear_cookie(name: &'static str) -> String {
    Cookie::build((name, ""))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build()
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_local() {
        assert_eq!(safe_next("/requests/ab"), "/requests/ab");
        assert_eq!(safe_next("//evil.example/x"), "/");
        assert_eq!(safe_next("https://evil.example"), "/");
        assert_eq!(safe_next("/\\evil"), "/");
        assert_eq!(safe_next(""), "/");
        assert_eq!(safe_next("/\t/evil.example"), "/");
        assert_eq!(safe_next("/\n/evil.example"), "/");
        assert_eq!(safe_next("/x\\..\\\\evil"), "/");
        assert_eq!(
            safe_next("/history?outcome=denied"),
            "/history?outcome=denied"
        );
    }

    #[test]
    fn cookies_are_strict_secure_http_only() {
        let c = session_cookie("abc");
        for part in [
            "__Host-airlock-session=abc",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; __Host-airlock-session=xyz".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
    }

    fn auth() -> Auth {
        let cfg: ConsoleConfig = serde_norway::from_str(
            "listen: 127.0.0.1:9480\noidc: { issuer: \"https://idp.example\", client_id: console }\n",
        )
        .unwrap();
        Auth::new(&cfg).unwrap()
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("{SESSION_COOKIE}={id}").parse().unwrap(),
        );
        h
    }

    fn reviewer() -> Principal {
        Principal {
            subject: "alice".into(),
            groups: vec!["dba".into()],
            admin: false,
            via: "console:https://idp.example".into(),
        }
    }

    #[test]
    fn a_session_ends_with_its_id_token_and_at_logout() {
        let a = auth();
        // The ID token expired: the session is over, whatever the configured TTL says.
        let expired = a.open_session(reviewer(), unix_now() - 1).unwrap();
        assert!(a.session(&with_cookie(&expired)).is_none());
        let live = a.open_session(reviewer(), unix_now() + 3600).unwrap();
        let h = with_cookie(&live);
        let s = a.session(&h).unwrap();
        assert_eq!(s.principal.subject, "alice");
        // Capped by the configured TTL (8 h by default), not the token's far-off end.
        let far = a.open_session(reviewer(), u64::MAX).unwrap();
        assert!(a.session(&with_cookie(&far)).unwrap().expires_at <= unix_now() + 8 * 3600);
        // Unknown and forged ids open nothing; logout ends the session server-side.
        assert!(a.session(&with_cookie("00")).is_none());
        assert!(a.is_open(&h));
        a.logout(&h);
        assert!(a.session(&h).is_none());
        assert!(!a.is_open(&h));
        // Each session has its own CSRF token, which nothing else matches.
        assert!(csrf_ok(&s, Some(&s.csrf)));
        assert!(!csrf_ok(&s, None));
        assert!(!csrf_ok(&s, Some("")));
        assert!(!csrf_ok(
            &s,
            Some(&a.session(&with_cookie(&far)).unwrap().csrf)
        ));
    }

    #[test]
    fn origin_check() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "https://console:9480"));
        h.insert(header::ORIGIN, "https://evil".parse().unwrap());
        assert!(!same_origin(&h, "https://console:9480"));
        h.insert(header::ORIGIN, "https://console:9480".parse().unwrap());
        assert!(same_origin(&h, "https://console:9480"));
    }
}
