//! Client authentication to airlock: who is calling, as policy sees it. Pluggable, so OIDC
//! tokens presented in the password field can replace or extend the workload identity.

use super::startup::Startup;
use crate::identity::{Identity, Workload};

/// Why a client was not let in. The message goes to the client (SQLSTATE 28000).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Rejected(String),
}

/// Turns what a client presented into an [`Identity`].
pub trait ClientAuthenticator: Send + Sync + std::fmt::Debug {
    /// Whether the client must present a secret (asked for with AuthenticationCleartextPassword
    /// on the local leg) before [`authenticate`](Self::authenticate) runs.
    fn wants_secret(&self, _startup: &Startup, _workload: Option<&Workload>) -> bool {
        false
    }

    /// Authenticates the client. `presented_secret` is the password message's content when
    /// [`wants_secret`](Self::wants_secret) asked for one.
    fn authenticate(
        &self,
        startup: &Startup,
        presented_secret: Option<&[u8]>,
        workload: Option<&Workload>,
    ) -> Result<Identity, AuthError>;
}

/// The kernel's view of the caller is the identity: subject `unix:<user>` (or `unix:<uid>` when
/// the name is unknown). Groups come from the policy's workload matchers once the policy engine
/// offers that lookup; until then they are empty. A connection that was not intercepted has the
/// subject `unintercepted` and no groups, so only rules written for it can match.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadAuthenticator;

impl ClientAuthenticator for WorkloadAuthenticator {
    fn authenticate(
        &self,
        _startup: &Startup,
        _presented_secret: Option<&[u8]>,
        workload: Option<&Workload>,
    ) -> Result<Identity, AuthError> {
        let subject = match workload {
            Some(w) => match &w.user {
                Some(user) => format!("unix:{user}"),
                None => format!("unix:{}", w.uid),
            },
            None => "unintercepted".to_string(),
        };
        Ok(Identity {
            subject,
            groups: Vec::new(),
            workload: workload.cloned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn workload_subject() {
        let a = WorkloadAuthenticator;
        let s = Startup::default();
        assert!(!a.wants_secret(&s, None));
        let w = Workload {
            uid: 1000,
            ..Workload::default()
        };
        let id = a.authenticate(&s, None, Some(&w)).unwrap();
        assert_eq!(id.subject, "unix:1000");
        assert_eq!(id.workload, Some(w.clone()));
        let named = Workload {
            user: Some("ci".into()),
            ..w
        };
        assert_eq!(
            a.authenticate(&s, None, Some(&named)).unwrap().subject,
            "unix:ci"
        );
        assert_eq!(
            a.authenticate(&s, None, None).unwrap().subject,
            "unintercepted"
        );
    }
}
