//! OIDC token verification: the tokens people, CI jobs and agents present in the PostgreSQL
//! password field or as an API Bearer header.
//!
//! One [`OidcVerifier`] covers every OIDC issuer of the policy. Per issuer it discovers the
//! provider metadata, caches the JWKS for a TTL, and refetches it (rate-limited) when a token
//! names a key it does not know, so key rotation at the provider needs no restart.
//!
//! Checks, in order: token shape; `alg` against the issuer's allow-list (`none` and HS* are
//! never accepted, so a token "signed" with an RSA public key as an HMAC secret cannot pass);
//! `iss` is a configured issuer; `aud` holds a configured audience; signature with the issuer's
//! published key; `exp`, `nbf` and `iat` with a small leeway. Anything that cannot be checked
//! (issuer unreachable and no usable cached keys) is refused: verification fails closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use openidconnect::core::{
    CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, JsonWebTokenType, NormalizedJsonWebTokenType,
    SignatureVerificationError, reqwest,
};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::config::policy::IdentitySpec;
use crate::model::TokenClaims;

/// Tokens longer than this are refused before any parsing (no provider issues them).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Algorithms used when an issuer's `algorithms` list is empty.
const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256"];

/// Asymmetric algorithms that may appear in an allow-list. HS* is absent on purpose: with a
/// public JWKS an HMAC "signature" can be made by anyone who reads the key.
const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

/// Why a token was refused. Each variant is a distinct, loggable reason; [`TokenError::kind`]
/// gives a short fixed label for metrics.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("signing algorithm `{alg}` is not allowed (allowed: {allowed})")]
    AlgorithmNotAllowed { alg: String, allowed: String },
    #[error("token issuer `{issuer}` is not a trusted issuer")]
    WrongIssuer { issuer: String },
    #[error("token audience {found:?} does not contain an accepted audience {expected:?}")]
    WrongAudience {
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("token expired at {exp} (now {now}, leeway {leeway_secs}s)")]
    Expired {
        exp: i64,
        now: i64,
        leeway_secs: u64,
    },
    #[error("token not valid before {nbf} (now {now}, leeway {leeway_secs}s)")]
    NotYetValid {
        nbf: i64,
        now: i64,
        leeway_secs: u64,
    },
    #[error("token issued in the future (iat {iat}, now {now})")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("signing key {kid:?} is not in the JWKS of `{issuer}`")]
    UnknownKey { issuer: String, kid: Option<String> },
    #[error("bad token signature: {0}")]
    BadSignature(String),
    #[error("issuer `{issuer}` unreachable: {reason}")]
    IssuerUnreachable { issuer: String, reason: String },
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
}

impl TokenError {
    /// A short fixed label (`expired`, `wrong_audience`, …) for metrics and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::IssuedInFuture { .. } => "issued_in_future",
            TokenError::UnknownKey { .. } => "unknown_key",
            TokenError::BadSignature(_) => "bad_signature",
            TokenError::IssuerUnreachable { .. } => "issuer_unreachable",
            TokenError::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// A configuration problem found by [`OidcVerifier::new`].
#[derive(Debug, Error)]
pub enum OidcConfigError {
    #[error("identity `{identity}`: invalid issuer URL `{issuer}`: {reason}")]
    IssuerUrl {
        identity: String,
        issuer: String,
        reason: String,
    },
    #[error(
        "identity `{identity}`: issuer `{issuer}` must use https (plain http is accepted only on loopback)"
    )]
    InsecureIssuer { identity: String, issuer: String },
    #[error(
        "identity `{identity}`: algorithm `{alg}` is not allowed (use one of {})",
        ASYMMETRIC_ALGORITHMS.join(", ")
    )]
    Algorithm { identity: String, alg: String },
    #[error("identity `{identity}`: empty audience")]
    EmptyAudience { identity: String },
    #[error("identity `{identity}`: CA file {path}: {reason}")]
    CaFile {
        identity: String,
        path: PathBuf,
        reason: String,
    },
    #[error("HTTP client for issuer `{issuer}`: {reason}")]
    HttpClient { issuer: String, reason: String },
}

/// Tuning of caching and time checks. [`Default`] suits production.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How long discovery and JWKS are used before they are fetched again.
    pub jwks_ttl: Duration,
    /// How long cached keys may still be used when a refetch after the TTL fails. Past this,
    /// tokens of that issuer are refused (fail closed).
    pub max_stale: Duration,
    /// Minimum time between two fetches for one issuer, triggered by an unknown `kid` or after
    /// a failed fetch: a stream of tokens with random `kid`s must not turn into a stream of
    /// requests to the provider.
    pub min_refresh_interval: Duration,
    /// Timeout of each HTTP request to a provider.
    pub http_timeout: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(30),
            jwks_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// One accepted audience of an issuer, from one `IdentitySpec`.
#[derive(Debug)]
struct Audience {
    identity: String,
    audience: String,
    groups_claim: String,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    algorithm_names: Vec<String>,
    groups: Vec<String>,
}

/// What one successful discovery produced.
struct Keys {
    jwks: CoreJsonWebKeySet,
    fetched_at: Instant,
}

/// Last fetch attempt, successful or not, for rate limiting.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

struct Issuer {
    url: IssuerUrl,
    http: reqwest::Client,
    audiences: Vec<Audience>,
    keys: ArcSwapOption<Keys>,
    fetch: Mutex<FetchState>,
}

/// Verifies OIDC tokens against every OIDC issuer of the policy. Cheap to share behind an
/// `Arc`; all methods take `&self`.
pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    options: VerifierOptions,
    jose_types: Vec<NormalizedJsonWebTokenType>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.url.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl OidcVerifier {
    /// Builds a verifier over the OIDC issuers among `specs` (workload-only specs are skipped),
    /// with default options. No network access happens here; discovery runs on first use.
    pub fn new(specs: &[IdentitySpec]) -> Result<Self, OidcConfigError> {
        Self::with_options(specs, VerifierOptions::default())
    }

    /// Like [`OidcVerifier::new`] with explicit cache and clock options.
    pub fn with_options(
        specs: &[IdentitySpec],
        options: VerifierOptions,
    ) -> Result<Self, OidcConfigError> {
        // Several identities may share an issuer (CI and reviewers with different audiences):
        // one discovery and one JWKS cache per issuer.
        let mut grouped: Vec<(String, Vec<&IdentitySpec>)> = Vec::new();
        for spec in specs {
            let Some(oidc) = &spec.oidc else { continue };
            match grouped.iter_mut().find(|(url, _)| *url == oidc.issuer) {
                Some((_, list)) => list.push(spec),
                None => grouped.push((oidc.issuer.clone(), vec![spec])),
            }
        }
        let mut issuers = Vec::with_capacity(grouped.len());
        for (issuer, specs) in grouped {
            issuers.push(build_issuer(&issuer, &specs, &options)?);
        }
        let jose_types = ["JWT", "at+jwt", "application/jwt", "application/jose"]
            .iter()
            .filter_map(|t| JsonWebTokenType::new((*t).to_string()).normalize().ok())
            .collect();
        Ok(Self {
            issuers,
            options,
            jose_types,
        })
    }

    /// Issuer URLs this verifier trusts.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.url.as_str())
    }

    /// Runs discovery for every issuer now (daemon start), so a misconfigured or unreachable
    /// issuer shows up in the log at once rather than at the first token. Returns the failures;
    /// tokens of a failed issuer are refused until a later fetch succeeds.
    pub async fn warm_up(&self) -> Vec<TokenError> {
        let mut errors = Vec::new();
        for issuer in &self.issuers {
            if let Err(e) = issuer.current_keys(&self.options).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Verifies `token` (a compact JWS) and returns its claims. Fails closed: any doubt is an
    /// error.
    pub async fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let token = token.trim();
        let raw = RawJwt::parse(token)?;
        if raw.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgorithmNotAllowed {
                alg: raw.alg,
                allowed: "asymmetric algorithms only".into(),
            });
        }
        let iss = raw
            .payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Malformed("no `iss` claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.url.as_str() == iss)
            .ok_or_else(|| TokenError::WrongIssuer {
                issuer: iss.to_string(),
            })?;
        let found = audiences(&raw.payload);
        let audience = issuer
            .audiences
            .iter()
            .find(|a| found.contains(&a.audience))
            .ok_or_else(|| TokenError::WrongAudience {
                found: found.clone(),
                expected: issuer
                    .audiences
                    .iter()
                    .map(|a| a.audience.clone())
                    .collect(),
            })?;
        if !audience.algorithm_names.contains(&raw.alg) {
            return Err(TokenError::AlgorithmNotAllowed {
                alg: raw.alg,
                allowed: audience.algorithm_names.join(", "),
            });
        }

        let keys = issuer.current_keys(&self.options).await?;
        let mut outcome = self.check_signed(issuer, audience, &keys, token);
        if matches!(
            outcome,
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
            ))
        ) {
            // Perhaps the provider rotated its keys since we fetched them.
            tracing::debug!(issuer = %iss, kid = ?raw.kid, "unknown signing key; refetching JWKS");
            if let Ok(fresh) = issuer.refresh(&self.options, true).await {
                outcome = self.check_signed(issuer, audience, &fresh, token);
            }
        }
        let (subject, exp) = outcome.map_err(|e| map_error(e, issuer, &raw, &self.options))?;

        let now = unix_now();
        let leeway = self.options.leeway.as_secs();
        let leeway_i = i64::try_from(leeway).unwrap_or(i64::MAX);
        if let Some(nbf) = raw.payload.get("nbf").and_then(Value::as_i64)
            && nbf > now.saturating_add(leeway_i)
        {
            return Err(TokenError::NotYetValid {
                nbf,
                now,
                leeway_secs: leeway,
            });
        }
        if let Some(iat) = raw.payload.get("iat").and_then(Value::as_i64)
            && iat > now.saturating_add(leeway_i)
        {
            return Err(TokenError::IssuedInFuture { iat, now });
        }

        let mut groups = token_groups(&raw.payload, &audience.groups_claim);
        for g in &audience.groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let claims = raw
            .payload
            .iter()
            .filter_map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.clone(), s))
            })
            .collect();
        tracing::debug!(issuer = %iss, subject = %subject, identity = %audience.identity, "token verified");
        Ok(TokenClaims {
            subject,
            issuer: iss.to_string(),
            identity: audience.identity.clone(),
            groups,
            claims,
            expires_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
        })
    }

    /// Signature, issuer, audience and expiry through openidconnect. Returns `(sub, exp)`.
    fn check_signed(
        &self,
        issuer: &Issuer,
        audience: &Audience,
        keys: &Keys,
        token: &str,
    ) -> Result<(String, i64), ClaimsVerificationError> {
        let id_token: CoreIdToken = token
            .parse()
            .map_err(|e: serde_json::Error| ClaimsVerificationError::Other(e.to_string()))?;
        let leeway = chrono::Duration::from_std(self.options.leeway)
            .unwrap_or_else(|_| chrono::Duration::seconds(0));
        let verifier = openidconnect::core::CoreIdTokenVerifier::new_public_client(
            ClientId::new(audience.audience.clone()),
            issuer.url.clone(),
            keys.jwks.clone(),
        )
        .set_allowed_algs(audience.algorithms.iter().cloned())
        .set_allowed_jose_types(self.jose_types.iter().cloned())
        // Tokens from CI providers carry several audiences; the configured one is what matters.
        .set_other_audience_verifier_fn(|_| true)
        // Expiry leeway: the crate compares `now >= exp`.
        .set_time_fn(move || chrono::Utc::now() - leeway)
        // `iat` is checked after the signature, with a specific error.
        .set_issue_time_verifier_fn(|_| Ok(()));
        let claims = id_token.into_claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(()))?;
        Ok((
            claims.subject().as_str().to_string(),
            claims.expiration().timestamp(),
        ))
    }
}

fn build_issuer(
    issuer: &str,
    specs: &[&IdentitySpec],
    options: &VerifierOptions,
) -> Result<Issuer, OidcConfigError> {
    let first = specs.first().map(|s| s.name.clone()).unwrap_or_default();
    let url = IssuerUrl::new(issuer.to_string()).map_err(|e| OidcConfigError::IssuerUrl {
        identity: first.clone(),
        issuer: issuer.to_string(),
        reason: e.to_string(),
    })?;
    let parsed = url.url();
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_host(parsed) => {}
        _ => {
            return Err(OidcConfigError::InsecureIssuer {
                identity: first,
                issuer: issuer.to_string(),
            });
        }
    }

    // Following redirects would let a provider send us anywhere (SSRF).
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(options.http_timeout);
    let mut audiences = Vec::new();
    for spec in specs {
        let Some(oidc) = &spec.oidc else { continue };
        if oidc.audience.is_empty() {
            return Err(OidcConfigError::EmptyAudience {
                identity: spec.name.clone(),
            });
        }
        if let Some(path) = &oidc.ca_file {
            let ca_err = |reason: String| OidcConfigError::CaFile {
                identity: spec.name.clone(),
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate found".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let names: Vec<String> = if oidc.algorithms.is_empty() {
            DEFAULT_ALGORITHMS.iter().map(|s| s.to_string()).collect()
        } else {
            oidc.algorithms.clone()
        };
        let mut algorithms = Vec::with_capacity(names.len());
        for name in &names {
            let alg_err = || OidcConfigError::Algorithm {
                identity: spec.name.clone(),
                alg: name.clone(),
            };
            if !ASYMMETRIC_ALGORITHMS.contains(&name.as_str()) {
                return Err(alg_err());
            }
            let alg: CoreJwsSigningAlgorithm =
                serde_json::from_value(Value::String(name.clone())).map_err(|_| alg_err())?;
            algorithms.push(alg);
        }
        audiences.push(Audience {
            identity: spec.name.clone(),
            audience: oidc.audience.clone(),
            groups_claim: oidc.groups_claim.clone(),
            algorithms,
            algorithm_names: names,
            // A spec that also has a workload matcher grants its groups only when the caller's
            // process matches too; `Engine::identify` checks that, so they are not added here.
            groups: if spec.workload.is_some() {
                Vec::new()
            } else {
                spec.groups.clone()
            },
        });
    }
    let http = builder.build().map_err(|e| OidcConfigError::HttpClient {
        issuer: issuer.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Issuer {
        url,
        http,
        audiences,
        keys: ArcSwapOption::empty(),
        fetch: Mutex::new(FetchState::default()),
    })
}

impl Issuer {
    /// Keys within their TTL; refetched past it. Past the TTL, a failed refetch keeps the old
    /// keys for up to `max_stale` and then fails closed.
    async fn current_keys(&self, options: &VerifierOptions) -> Result<Arc<Keys>, TokenError> {
        if let Some(keys) = self.keys.load_full() {
            let age = keys.fetched_at.elapsed();
            if age < options.jwks_ttl {
                return Ok(keys);
            }
            // Another task is already refetching: use the stale keys rather than queue behind
            // it for up to the HTTP timeout.
            if age < options.max_stale && self.fetch.try_lock().is_err() {
                return Ok(keys);
            }
        }
        match self.refresh(options, false).await {
            Ok(keys) => Ok(keys),
            Err(e) => match self.keys.load_full() {
                Some(keys) if keys.fetched_at.elapsed() < options.max_stale => {
                    tracing::warn!(issuer = %self.url.as_str(), error = %e, "JWKS refetch failed; using cached keys");
                    Ok(keys)
                }
                _ => Err(e),
            },
        }
    }

    /// Runs discovery and fetches the JWKS. Concurrent callers share one fetch; attempts closer
    /// than `min_refresh_interval` are refused, except the very first fetch after a success when
    /// `rate_limited` is false (TTL expiry).
    async fn refresh(
        &self,
        options: &VerifierOptions,
        rate_limited: bool,
    ) -> Result<Arc<Keys>, TokenError> {
        let waited_since = Instant::now();
        let mut state = self.fetch.lock().await;
        // Someone else fetched while we waited for the lock: use theirs.
        if let Some(keys) = self.keys.load_full()
            && keys.fetched_at >= waited_since
        {
            return Ok(keys);
        }
        if let Some(last) = state.last_attempt {
            let recent = last.elapsed() < options.min_refresh_interval;
            if recent && (rate_limited || state.last_error.is_some()) {
                return Err(TokenError::IssuerUnreachable {
                    issuer: self.url.as_str().to_string(),
                    reason: state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "refetch rate-limited".into()),
                });
            }
        }
        state.last_attempt = Some(Instant::now());
        match CoreProviderMetadata::discover_async(self.url.clone(), &self.http).await {
            Ok(metadata) => {
                let keys = Arc::new(Keys {
                    jwks: metadata.jwks().clone(),
                    fetched_at: Instant::now(),
                });
                tracing::info!(issuer = %self.url.as_str(), keys = keys.jwks.keys().len(), "fetched OIDC discovery and JWKS");
                self.keys.store(Some(keys.clone()));
                state.last_error = None;
                Ok(keys)
            }
            Err(e) => {
                let reason = error_chain(&e);
                tracing::warn!(issuer = %self.url.as_str(), error = %reason, "OIDC discovery failed");
                state.last_error = Some(reason.clone());
                Err(TokenError::IssuerUnreachable {
                    issuer: self.url.as_str().to_string(),
                    reason,
                })
            }
        }
    }
}

fn map_error(
    e: ClaimsVerificationError,
    issuer: &Issuer,
    raw: &RawJwt,
    options: &VerifierOptions,
) -> TokenError {
    match e {
        ClaimsVerificationError::Expired(_) => TokenError::Expired {
            exp: raw.payload.get("exp").and_then(Value::as_i64).unwrap_or(0),
            now: unix_now(),
            leeway_secs: options.leeway.as_secs(),
        },
        ClaimsVerificationError::InvalidAudience(m) => TokenError::WrongAudience {
            found: audiences(&raw.payload),
            expected: vec![m],
        },
        ClaimsVerificationError::InvalidIssuer(_) => TokenError::WrongIssuer {
            issuer: raw
                .payload
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        ClaimsVerificationError::SignatureVerification(sig) => match sig {
            SignatureVerificationError::DisallowedAlg(m)
            | SignatureVerificationError::UnsupportedAlg(m) => TokenError::AlgorithmNotAllowed {
                alg: raw.alg.clone(),
                allowed: m,
            },
            SignatureVerificationError::NoMatchingKey => TokenError::UnknownKey {
                issuer: issuer.url.as_str().to_string(),
                kid: raw.kid.clone(),
            },
            other => TokenError::BadSignature(other.to_string()),
        },
        ClaimsVerificationError::Other(m) => TokenError::Malformed(m),
        other => TokenError::InvalidClaims(other.to_string()),
    }
}

/// The parts of a JWT read before verification, to pick the issuer, audience and key. Nothing
/// here is trusted until openidconnect has checked the signature over the same bytes.
struct RawJwt {
    alg: String,
    kid: Option<String>,
    payload: Map<String, Value>,
}

impl RawJwt {
    fn parse(token: &str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "token longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "not a compact JWS (expected three dot-separated parts)".into(),
            ));
        };
        let header = decode_json(header, "header")?;
        let payload = decode_json(payload, "payload")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Malformed("no `alg` in header".into()))?
            .to_string();
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self { alg, kid, payload })
    }
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("{what} is not a JSON object: {e}")))
}

/// `aud` as a list (it may be a string or an array).
fn audiences(payload: &Map<String, Value>) -> Vec<String> {
    match payload.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Groups from `claim`: a top-level key, or else a dotted path (`realm_access.roles`). An array
/// of strings or a single string; anything else yields no groups.
fn token_groups(payload: &Map<String, Value>, claim: &str) -> Vec<String> {
    let value = payload.get(claim).or_else(|| {
        let mut parts = claim.split('.');
        let mut cur = payload.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    });
    let mut groups: Vec<String> = Vec::new();
    let mut push = |g: &str| {
        if !g.is_empty() && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    };
    match value {
        Some(Value::String(s)) => push(s),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(push),
        _ => {}
    }
    groups
}

fn is_loopback_host(url: &openidconnect::url::Url) -> bool {
    match url.host() {
        Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::OidcSpec;

    fn spec(issuer: &str, algs: &[&str]) -> IdentitySpec {
        IdentitySpec {
            name: "ci".into(),
            oidc: Some(OidcSpec {
                issuer: issuer.into(),
                audience: "airlock".into(),
                groups_claim: "groups".into(),
                algorithms: algs.iter().map(|s| s.to_string()).collect(),
                ca_file: None,
            }),
            workload: None,
            groups: vec!["ci".into()],
        }
    }

    #[test]
    fn refuses_symmetric_and_none_algorithms_in_config() {
        for alg in ["HS256", "none", "RS1"] {
            let err = OidcVerifier::new(&[spec("https://idp.example", &[alg])]).unwrap_err();
            assert!(
                matches!(err, OidcConfigError::Algorithm { .. }),
                "{alg}: {err}"
            );
        }
        assert!(OidcVerifier::new(&[spec("https://idp.example", &["PS256", "EdDSA"])]).is_ok());
    }

    #[test]
    fn refuses_plain_http_issuer_off_loopback() {
        let err = OidcVerifier::new(&[spec("http://idp.example", &[])]).unwrap_err();
        assert!(
            matches!(err, OidcConfigError::InsecureIssuer { .. }),
            "{err}"
        );
        assert!(OidcVerifier::new(&[spec("http://127.0.0.1:9/", &[])]).is_ok());
    }

    #[test]
    fn groups_from_array_string_or_path() {
        let p: Map<String, Value> = serde_json::from_str(
            r#"{"groups":["a","b","a"],"g":"x","realm_access":{"roles":["r1"]}}"#,
        )
        .unwrap();
        assert_eq!(token_groups(&p, "groups"), ["a", "b"]);
        assert_eq!(token_groups(&p, "g"), ["x"]);
        assert_eq!(token_groups(&p, "realm_access.roles"), ["r1"]);
        assert!(token_groups(&p, "missing").is_empty());
    }

    #[tokio::test]
    async fn rejects_malformed_and_untrusted_before_network() {
        let v = OidcVerifier::new(&[spec("https://idp.example", &[])]).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        assert_eq!(v.verify("abc").await.unwrap_err().kind(), "malformed");
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"iss":"https://idp.example","aud":"airlock","sub":"x"}"#)
        );
        assert_eq!(
            v.verify(&none).await.unwrap_err().kind(),
            "algorithm_not_allowed"
        );
        let other = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://evil.example","aud":"airlock","sub":"x"}"#)
        );
        assert_eq!(v.verify(&other).await.unwrap_err().kind(), "wrong_issuer");
        let aud = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://idp.example","aud":["x","y"],"sub":"x"}"#)
        );
        assert_eq!(v.verify(&aud).await.unwrap_err().kind(), "wrong_audience");
    }
}
