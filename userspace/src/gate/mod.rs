//! The gate: what every protocol handler calls, so that no handler decides policy.
//!
//! A handler frames its protocol's commands into a [`Command`] and asks its session's
//! [`Gate`] to [`judge`](Judge::judge) each one before the server sees it. The gate runs policy
//! (or a test's [`Decider`]), counts the decision, and turns it into a [`Verdict`] the handler
//! acts on: forward (with the masking rules for the answer), refuse (with a message for the
//! client), or hold until a human decides — a [`Hold`] that the handler starts with its own
//! [`Notice`] sink, so the client learns the request id the way its protocol can say it
//! (a PostgreSQL NoticeResponse, SSH stderr, an HTTP header).
//!
//! Around the commands the gate also authenticates the caller ([`auth`]) and opens and closes
//! the session's audit record ([`session`]).

pub mod auth;
pub mod session;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::approval::{Approvals, Outcome, ReviewRequest, ReviewTrail};
pub use crate::approval::{Preview, PreviewAsk, PreviewFuture, Previewed};
use crate::mask::Masker;
use crate::metrics::TargetMetrics;
use crate::model::lineage::{NoRelations, Relations};
use crate::model::{Command, Decision, Facts, Identity, Protocol};
use crate::policy::Request;
use crate::runtime::Context;

pub use auth::{
    AuthError, AuthFuture, Authenticator, PolicyAuthenticator, Presented, WorkloadAuthenticator,
};

/// Decides one command in place of the policy engine (tests and benchmarks substitute their
/// own: allow-all, deny-by-marker).
pub trait Decider: Send + Sync + std::fmt::Debug {
    fn decide(&self, req: &Request<'_>) -> Decision;
}

/// How a protocol tells its client something while a command is held.
pub trait Notice: Send + Sync {
    /// Sends `text` to the client (or logs it, where the protocol has no way to say it).
    fn notice(&self, text: &str);
}

/// A [`Notice`] for protocols that cannot speak to the client mid-command (a raw TCP
/// connection): the text goes to the daemon's log.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotice {
    pub session: u64,
}

impl Notice for LogNotice {
    fn notice(&self, text: &str) {
        tracing::info!(session = self.session, "{text}");
    }
}

/// What the handler does with one command.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it.
    Allow {
        rule: String,
        /// Masking rules for the answer (after the caller's `except_groups`).
        mask: Vec<String>,
        /// The approval request that released it, when it was reviewed.
        approval: Option<String>,
        /// The database role it runs as (`None`: the target's default).
        run_as: Option<String>,
        /// The role this one command runs as, approved just for it; the session goes back to
        /// `run_as` right after.
        elevate: Option<String>,
    },
    /// Refuse it with this message for the client.
    Deny { message: String },
    /// Held until a human decides: the handler starts it with its notice sink, waits, and acts
    /// on the verdict it resolves to (never another hold).
    Hold(Hold),
}

/// A command held for approval. Dropping it (the client went away) withdraws the request.
pub struct Hold {
    start: Box<dyn FnOnce(Arc<dyn Notice>) -> HeldFuture + Send>,
    trail: ReviewTrail,
    /// The roles the command runs as once approved (`run_as`, `approved_run_as`).
    roles: (Option<String>, Option<String>),
}

/// What a [`Hold`] becomes once started.
pub type HeldFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

impl Hold {
    /// A hold that resolves by running `f` with the handler's notice sink.
    pub fn new(f: impl FnOnce(Arc<dyn Notice>) -> HeldFuture + Send + 'static) -> Self {
        Hold {
            start: Box::new(f),
            trail: ReviewTrail::default(),
            roles: (None, None),
        }
    }

    /// The database roles the command runs as once approved: its rule's `run_as` and
    /// `approved_run_as` (a MySQL statement is prepared in the role it will execute in).
    pub fn roles(&self) -> (Option<&str>, Option<&str>) {
        (self.roles.0.as_deref(), self.roles.1.as_deref())
    }

    /// Starts waiting; notices go to `notice`.
    pub fn start(self, notice: Arc<dyn Notice>) -> HeldFuture {
        (self.start)(notice)
    }

    /// The review behind this hold, for the audit record: take it once the held future
    /// resolved (how the review ended, with its votes), or after dropping it (the request,
    /// withdrawn). Call before [`start`](Self::start); record it with
    /// [`session::review_record`].
    pub fn trail(&self) -> ReviewTrail {
        self.trail.clone()
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Turns a policy decision into a verdict. A review without an approval service (tests,
/// tools) is refused; [`review`] sends reviews to the service.
pub fn verdict(decision: Decision) -> Verdict {
    match decision {
        Decision::Allow { rule, mask, run_as } => Verdict::Allow {
            rule,
            mask,
            approval: None,
            run_as,
            elevate: None,
        },
        Decision::Deny { rule, reason } => Verdict::Deny {
            message: format!("airlock: denied by rule \"{rule}\": {reason}"),
        },
        Decision::Review { rule, .. } => Verdict::Deny {
            message: format!(
                "airlock: rule \"{rule}\" requires review, and approvals are not enabled on this gateway"
            ),
        },
    }
}

/// The approval hook: a command whose rule demands review is held (or refused with a request
/// id, in retry mode) by the approval service.
pub fn review(approvals: Option<&Arc<Approvals>>, request: ReviewRequest) -> Verdict {
    let Some(svc) = approvals.cloned() else {
        return verdict(request.decision);
    };
    let (run_as, elevate) = match &request.decision {
        Decision::Review {
            run_as,
            approved_run_as,
            ..
        } => (run_as.clone(), approved_run_as.clone()),
        _ => (None, None),
    };
    let trail = ReviewTrail::default();
    let reviewing = trail.clone();
    let roles = (run_as.clone(), elevate.clone());
    Verdict::Hold(Hold {
        roles,
        start: Box::new(move |notice: Arc<dyn Notice>| {
            Box::pin(async move {
                match svc
                    .review(request, |text| notice.notice(text), &reviewing)
                    .await
                {
                    Outcome::Allow { rule, mask, review } => Verdict::Allow {
                        rule,
                        mask,
                        approval: Some(review.request.id),
                        run_as,
                        elevate,
                    },
                    Outcome::Deny { message, .. } => Verdict::Deny { message },
                }
            })
        }),
        trail,
    })
}

/// A verdict with what the audit record needs.
#[derive(Debug)]
pub struct Judged {
    pub verdict: Verdict,
    /// What classification found (shared with the cache).
    pub facts: Arc<Facts>,
    /// The decision, for the audit record (`None` when the session is not recorded).
    pub record: Option<Decision>,
    /// Column masking let the command through by the names it uses: judge it again
    /// [through](Judge::judge_through) the catalog before it runs, in case one is a view.
    /// For MySQL, whose answers name a view rather than the table column it reads, this is
    /// set for plain column references too.
    pub views_matter: bool,
    /// The deciding rule asks for the exchange's bodies in the audit record: the masking rules
    /// to apply to them first (every one the rule names: audit readers are not the caller).
    /// `None` when it does not, for a custom [`Decider`], and when the session is not
    /// recorded.
    pub record_bodies: Option<Vec<String>>,
}

/// Decides commands for one session.
pub trait Judge {
    fn judge(&self, command: &Command<'_>) -> Judged;

    /// [`Judge::judge`], with what the target's catalog says the command's relation names
    /// stand for (views read masked columns under other names).
    fn judge_through(&self, command: &Command<'_>, relations: &dyn Relations) -> Judged;
}

/// The gate bound to one session: its caller, target and protocol.
#[derive(Debug)]
pub struct Gate<'a> {
    pub ctx: &'a Context,
    /// `None`: the policy engine in the context.
    pub decider: Option<&'a dyn Decider>,
    pub identity: &'a Identity,
    pub target: &'a str,
    pub protocol: Protocol,
    pub session: u64,
    pub metrics: &'a TargetMetrics,
    pub masker: &'a Masker,
    /// Whether decisions go to the audit log.
    pub recording: bool,
    /// How this protocol shows a held command to its reviewers (parameters, dry run).
    pub preview: Option<Arc<dyn Preview>>,
}

impl Judge for Gate<'_> {
    fn judge(&self, command: &Command<'_>) -> Judged {
        self.judge_through(command, &NoRelations)
    }

    fn judge_through(&self, command: &Command<'_>, relations: &dyn Relations) -> Judged {
        let req = Request {
            identity: self.identity,
            target: self.target,
            protocol: self.protocol,
            command,
        };
        let started = std::time::Instant::now();
        let engine = self.ctx.engine.load();
        let (decision, facts, views_matter, record_bodies) = match self.decider {
            Some(d) => (d.decide(&req), engine.classify(command), false, None),
            None => {
                let v = engine.evaluate_through(&req, relations);
                (
                    v.decision,
                    v.classification,
                    v.views_matter,
                    v.record_bodies,
                )
            }
        };
        let record_bodies = record_bodies.filter(|_| self.recording);
        self.ctx.metrics.policy_eval(started.elapsed());
        self.metrics.command(decision.action());
        tracing::debug!(
            session = self.session,
            action = decision.action().as_str(),
            rule = decision.rule(),
            "decision"
        );
        let record = self.recording.then(|| decision.clone());
        let mut verdict = if let Decision::Review { .. } = decision {
            review(
                self.ctx.approvals.get(),
                ReviewRequest {
                    identity: self.identity.clone(),
                    target: self.target.to_owned(),
                    session: self.session,
                    protocol: self.protocol,
                    command: command.clone().into_owned(),
                    facts: Arc::clone(&facts),
                    decision,
                    preview: self.preview.clone(),
                },
            )
        } else {
            verdict(decision)
        };
        // A group in a rule's except_groups sees raw values.
        if let Verdict::Allow { mask, .. } = &mut verdict
            && !mask.is_empty()
        {
            *mask = self.masker.applicable(mask, &self.identity.groups);
        }
        Judged {
            verdict,
            facts,
            record,
            views_matter,
            record_bodies,
        }
    }
}
