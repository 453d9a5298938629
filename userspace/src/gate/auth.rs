//! Client authentication to airlock: who is calling, as policy sees it, from what the protocol
//! offers (the kernel's view of the caller; a secret the client presented: an OIDC token in a
//! password field, a Bearer header). Pluggable, so tests can substitute their own; the daemon
//! uses [`PolicyAuthenticator`].

use std::future::Future;
use std::pin::Pin;

use crate::identity::oidc::TokenError;
use crate::model::{Identity, Workload};
use crate::runtime::Context;

/// Why a client was not let in. The message goes to the client (SQLSTATE 28000).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A token was presented and refused; the message says why (expired, wrong audience, …).
    #[error("invalid token: {0}")]
    InvalidToken(#[from] TokenError),
    #[error("{0}")]
    Rejected(String),
}

/// What [`Authenticator::authenticate`] returns: token verification talks to the issuer
/// (discovery, JWKS refresh), so authentication is asynchronous.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;

/// What a client presented, in whatever form its protocol carries it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The kernel's view of the caller (`None` only for connections that were not
    /// intercepted).
    pub workload: Option<&'a Workload>,
    /// The user name the client asked for (the PostgreSQL or MySQL `user`, an SSH login). Not
    /// trusted: the gateway logs in with its own credentials whatever it says.
    pub user: Option<&'a str>,
    /// A secret the client presented when asked (a password field, a Bearer token).
    pub secret: Option<&'a [u8]>,
}

/// Turns what a client presented into an [`Identity`].
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Whether the client must present a secret (PostgreSQL asks for it with
    /// AuthenticationCleartextPassword) before [`authenticate`](Self::authenticate) runs.
    fn wants_secret(&self, _ctx: &Context, _presented: &Presented<'_>) -> bool {
        false
    }

    /// Authenticates the client. `presented.secret` is set when
    /// [`wants_secret`](Self::wants_secret) asked for one.
    fn authenticate<'a>(&'a self, ctx: &'a Context, presented: Presented<'a>) -> AuthFuture<'a>;
}

/// The daemon's authenticator.
///
/// Without OIDC identities in the configuration, the caller is its workload:
/// `Engine::identify(workload, None)` (subject `unix:<user>`, groups from the policy's
/// workload matchers). With OIDC identities, the client is asked for a password and a
/// non-empty one must be a valid token: the identity is then
/// `Engine::identify(workload, Some(&claims))` (the token's subject and groups plus the
/// workload matchers' groups). An empty password means "no token": the workload identity alone,
/// which rules with `require: [token]` or `claims:` never match. A token that fails
/// verification ends the connection (fail closed), never falls back to the workload.
#[derive(Debug, Default, Clone, Copy)]
pub struct PolicyAuthenticator;

impl Authenticator for PolicyAuthenticator {
    /// A token is asked for only where the policy can use one: an OIDC issuer is trusted and
    /// some rule requires a token or matches token claims. Issuers trusted only for reviewers
    /// (the approvals API) must not make every psql prompt for a password it cannot leave
    /// empty.
    fn wants_secret(&self, ctx: &Context, _presented: &Presented<'_>) -> bool {
        ctx.oidc.load().issuers().next().is_some()
            && ctx.config.load().rules.iter().any(|r| {
                r.require
                    .contains(&crate::config::policy::Requirement::Token)
                    || !r.claims.is_empty()
            })
    }

    fn authenticate<'a>(&'a self, ctx: &'a Context, presented: Presented<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            let workload = presented.workload;
            let token = match presented.secret {
                Some(s) if !s.is_empty() => Some(
                    std::str::from_utf8(s)
                        .map_err(|_| TokenError::Malformed("the password is not UTF-8".into()))?,
                ),
                _ => None,
            };
            let claims = match token {
                // Load the verifier once: a reload during verification must not mix configs.
                Some(t) => Some(ctx.oidc.load_full().verify(t).await?),
                None => None,
            };
            let engine = ctx.engine.load();
            Ok(match workload {
                Some(w) => engine.identify(w, claims.as_ref()),
                // Not intercepted (tests, or `accept_unintercepted`): no workload matcher can
                // apply, so only the token speaks.
                None => match claims {
                    Some(c) => c.into_identity(None),
                    None => Identity {
                        subject: "unintercepted".into(),
                        ..Identity::default()
                    },
                },
            })
        })
    }
}

/// The kernel's view of the caller is the identity, without policy groups: subject
/// `unix:<user>` (or `unix:<uid>` when the name is unknown). A connection that was not
/// intercepted has the subject `unintercepted`. For tests that want no policy lookups.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadAuthenticator;

impl Authenticator for WorkloadAuthenticator {
    fn authenticate<'a>(&'a self, _ctx: &'a Context, presented: Presented<'a>) -> AuthFuture<'a> {
        let workload = presented.workload;
        let subject = match workload {
            Some(w) => w.unix_subject(),
            None => "unintercepted".to_string(),
        };
        let identity = Identity {
            subject,
            groups: Vec::new(),
            workload: workload.cloned(),
            token: None,
        };
        Box::pin(std::future::ready(Ok(identity)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::policy::Engine;

    fn ctx(yaml: &str) -> Context {
        let config = Config::parse(Path::new("t.yaml"), yaml).unwrap();
        let engine = Engine::new(&config).unwrap();
        Context::new(config, engine).unwrap()
    }

    fn p<'a>(secret: Option<&'a [u8]>, workload: Option<&'a Workload>) -> Presented<'a> {
        Presented {
            workload,
            user: None,
            secret,
        }
    }

    const TARGET: &str = "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2\"]\n    ports: [5432]\n";

    #[tokio::test]
    async fn workload_subject() {
        let c = ctx(TARGET);
        let a = WorkloadAuthenticator;
        assert!(!a.wants_secret(&c, &Presented::default()));
        let w = Workload {
            uid: 1000,
            ..Workload::default()
        };
        let id = a.authenticate(&c, p(None, Some(&w))).await.unwrap();
        assert_eq!(id.subject, "unix:1000");
        assert_eq!(id.workload, Some(w.clone()));
        let named = Workload {
            user: Some("ci".into()),
            ..w
        };
        assert_eq!(
            a.authenticate(&c, p(None, Some(&named)))
                .await
                .unwrap()
                .subject,
            "unix:ci"
        );
        assert_eq!(
            a.authenticate(&c, p(None, None)).await.unwrap().subject,
            "unintercepted"
        );
    }

    #[tokio::test]
    async fn policy_authenticator_uses_workload_matchers_without_oidc() {
        let c = ctx(&format!(
            "{TARGET}identities:\n  - name: ci\n    workload: {{users: [ci]}}\n    groups: [agents]\n"
        ));
        let a = PolicyAuthenticator;
        assert!(
            !a.wants_secret(&c, &Presented::default()),
            "no OIDC identity: no password asked"
        );
        let ci = Workload {
            uid: 1000,
            user: Some("ci".into()),
            ..Workload::default()
        };
        let id = a.authenticate(&c, p(None, Some(&ci))).await.unwrap();
        assert_eq!(id.subject, "unix:ci");
        assert_eq!(id.groups, ["agents"]);
        assert!(id.token.is_none());
        let other = Workload {
            uid: 1001,
            user: Some("web".into()),
            ..Workload::default()
        };
        assert!(
            a.authenticate(&c, p(None, Some(&other)))
                .await
                .unwrap()
                .groups
                .is_empty()
        );
    }

    #[tokio::test]
    async fn policy_authenticator_refuses_bad_tokens_and_accepts_no_token() {
        // The issuer is never contacted: these tokens fail before any network access.
        let identities = "identities:\n  - name: corp\n    oidc: {issuer: \"https://127.0.0.1:1\", audience: airlock}\n    groups: [staff]\n";
        let a = PolicyAuthenticator;
        // An issuer trusted only for reviewers: clients are not asked for a token.
        let reviewers_only = ctx(&format!("{TARGET}{identities}"));
        assert!(
            !a.wants_secret(&reviewers_only, &Presented::default()),
            "no rule uses a token: no password asked"
        );
        let c = ctx(&format!(
            "{TARGET}{identities}rules:\n  - name: staff-read\n    groups: [staff]\n    require: [token]\n    classes: [read]\n    action: allow\n"
        ));
        assert!(
            a.wants_secret(&c, &Presented::default()),
            "a rule requires a token: a password is asked for"
        );
        let w = Workload {
            user: Some("alice".into()),
            ..Workload::default()
        };
        let err = a
            .authenticate(&c, p(Some(b"not-a-jwt"), Some(&w)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidToken(TokenError::Malformed(_))),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("invalid token: malformed token"),
            "{err}"
        );
        let err = a
            .authenticate(&c, p(Some(&[0xff, 0xfe]), Some(&w)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        // An empty password: the workload identity, no token, no token groups.
        let id = a.authenticate(&c, p(Some(b""), Some(&w))).await.unwrap();
        assert_eq!(id.subject, "unix:alice");
        assert!(id.token.is_none() && id.groups.is_empty());
    }
}
