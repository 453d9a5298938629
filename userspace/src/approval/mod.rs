//! Human-in-the-loop approvals: a command whose rule says `review` is held on the data path
//! (or refused with a request id, in retry mode) until enough of the right people decide.
//!
//! - [`model`]: the request and its state machine (quorum, self-approval, timeouts,
//!   escalation, grants by command hash, revoke). Pure, so every store applies the same rules.
//! - [`store`]: the [`Store`] trait; [`sqlite`] (embedded default) and [`postgres`] (a fleet,
//!   with LISTEN/NOTIFY so a decision on one instance releases a command held on another).
//! - This module: [`Approvals`], the service protocol handlers call ([`Approvals::review`]),
//!   and the decisions the API makes ([`Approvals::decide`], [`Approvals::submit_plan`]).
//! - [`api`]: the JSON REST API with its OpenAPI document; [`notify`]: webhooks;
//!   [`cli`]: `airlock requests|approve|deny|revoke|plan`; [`text`]: the review context as
//!   plain text (CLI and chat).
//!
//! Fail-closed: a store that cannot be reached refuses every command needing review (allowed
//! commands never touch it); a notification that fails approves nothing; a held command is
//! forwarded only after its own use of an approved grant was taken in the store.

pub mod cli;
pub mod model;
pub mod notify;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod text;

#[cfg(test)]
pub(crate) mod scratch;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::task::TaskTracker;

pub use model::{
    ApprovalRequest, CommandEntry, DryRun, Kind, Principal, Ruling, ShownParam, State, Transition,
    command_sha256,
};
pub use notify::Notifier;
pub use store::{Store, StoreEvent};

use crate::config::approvals::{ApprovalsConfig, StoreKind};
use crate::metrics::{ApprovalOutcome, Metrics};
use crate::model::{Command, Decision, Facts, Identity, OnTimeout, Protocol, ReviewMode};
use crate::policy::{Engine, Request};

/// Errors of the approval workflow.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval store unavailable: {0}")]
    Store(String),
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("request {id} is {state}; it cannot take this decision")]
    Conflict { id: String, state: &'static str },
    #[error("nobody approves their own request")]
    OwnRequest,
    #[error("only members of {groups} may decide this request")]
    NotApprover { groups: String },
    #[error("you already approved this request")]
    AlreadyVoted,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("approvals config: {0}")]
    Config(String),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> Result<String, ApprovalError> {
    let b = crate::secrets::random(bytes).map_err(|e| ApprovalError::Config(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One command that policy sent to review, as the gate hands it over.
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    pub identity: Identity,
    pub target: String,
    pub session: u64,
    pub protocol: Protocol,
    pub command: Command<'static>,
    /// What classification found in it (shown to reviewers; never re-parsed here).
    pub facts: Arc<Facts>,
    /// Must be [`Decision::Review`].
    pub decision: Decision,
    /// The protocol's reviewer view of the command (parameters decoded, dry run); `None`:
    /// parameters shown by type and length only, and no dry run.
    pub preview: Option<Arc<dyn Preview>>,
}

/// What a protocol adds to a held command for its reviewers. Called once per request, after
/// no grant covered the command and before the request is stored and announced, so webhooks
/// carry it too. Never on the path of a command that is not held.
pub trait Preview: Send + Sync + std::fmt::Debug {
    /// The command's parameters decoded and masked for display and, with `ask.dry_run`, the
    /// effect of running it in a transaction that is rolled back.
    fn preview(
        &self,
        command: Command<'static>,
        facts: Arc<Facts>,
        ask: PreviewAsk,
    ) -> PreviewFuture;
}

/// What the review decision asks of a [`Preview`].
#[derive(Debug, Clone, Default)]
pub struct PreviewAsk {
    /// The rule asks for a dry run.
    pub dry_run: bool,
    /// The masking rules the command's answer would pass through once approved: values
    /// shown to reviewers (parameters, dry-run samples) pass through the same rules.
    pub mask: Vec<String>,
    /// The database role the approved command would run as (`approved_run_as`, else the
    /// rule's `run_as`; `None`: the target's default).
    pub run_as: Option<String>,
}

/// What [`Preview::preview`] resolves to.
pub type PreviewFuture = Pin<Box<dyn Future<Output = Previewed> + Send>>;

/// A held command as its reviewers see it.
#[derive(Debug, Clone, Default)]
pub struct Previewed {
    pub params: Vec<ShownParam>,
    pub dry_run: Option<DryRun>,
}

/// How a review of one command ended, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Approved while the command waited; it runs.
    Approved,
    /// An approval given earlier (a retry-mode request, a plan) covered it.
    Granted,
    Denied,
    /// Nobody decided in time (after escalation, when the rule escalates).
    TimedOut,
    /// An approver revoked the request while the command waited.
    Revoked,
    /// The client went away before a decision.
    Withdrawn,
    /// Retry mode: refused now with the request id; the request waits for review.
    Pending,
    /// The store failed while the command waited.
    Unavailable,
}

/// One review: the request as it stood when the review ended (its rule, approvers, votes
/// with voter and reason), and how it ended. What the audit log records beside the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub request: Box<ApprovalRequest>,
    pub outcome: ReviewOutcome,
    /// For a grant: runs of this command it still allows after this one.
    pub uses_left: Option<u32>,
}

/// Where a running review leaves its state, so that whoever waits on it can record it even
/// when it stops waiting: the request once it exists (marked withdrawn until it ends), then
/// the final review. Cheap to clone; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct ReviewTrail(Arc<std::sync::Mutex<Option<Review>>>);

impl ReviewTrail {
    fn clear(&self) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = None;
        }
    }

    fn set(&self, request: &ApprovalRequest, outcome: ReviewOutcome) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Review {
                request: Box::new(request.clone()),
                outcome,
                uses_left: None,
            });
        }
    }

    fn put(&self, review: Review) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(review);
        }
    }

    /// The review as it ended; or, when the waiting future was dropped before a decision, the
    /// request as it last stood, `Withdrawn`. `None` when no request was made (the store was
    /// down, or policy sent nothing to review).
    pub fn take(&self) -> Option<Review> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// What the protocol handler does with a reviewed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Forward it: approved (or covered by a grant).
    Allow {
        rule: String,
        mask: Vec<String>,
        /// The approval used, with its votes.
        review: Review,
    },
    /// Refuse it with this message.
    Deny {
        message: String,
        /// The review that refused it; `None` when no request could be made.
        review: Option<Review>,
    },
}

/// A plan: commands submitted ahead of time for a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSubmission {
    pub target: String,
    /// The identity that will run the commands (default: the submitter).
    #[serde(default, deserialize_with = "present")]
    pub subject: Option<String>,
    /// Its policy groups, for evaluating the commands (the grant still matches only the
    /// subject, and only commands policy sends to review can be covered).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    pub task: Option<String>,
    pub commands: Vec<String>,
    /// Validity once approved, in seconds (default: the shortest TTL of the rules involved).
    #[serde(default, deserialize_with = "integral")]
    pub ttl_seconds: Option<u64>,
    /// Runs allowed per command (default 1).
    #[serde(default, deserialize_with = "integral")]
    pub uses: Option<u32>,
}

/// An optional field that, when present, must hold a value: the API documents these as plain
/// `string`/`integer`, so `null` is refused rather than read as "absent" (use with
/// `#[serde(default)]`, which covers the absent case).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// An unsigned integer, also written with a zero fraction (`5.0`), as JSON Schema's `integer`
/// allows; `null` is refused like any other non-number.
fn integral<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    whole
        .and_then(|w| T::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}

/// The approval service: one per daemon, shared by every session and the API.
#[derive(Debug)]
pub struct Approvals {
    store: Arc<dyn Store>,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    instance: String,
    admin_token: String,
    /// Withdrawals of requests whose held command went away, still being written
    /// ([`settle`](Self::settle) waits for them before the daemon exits).
    withdrawals: TaskTracker,
}

/// The longest plan TTL accepted.
const MAX_PLAN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Reads the admin token, creating it (mode 0600) on first start.
pub fn load_or_create_token(path: &Path) -> Result<String, ApprovalError> {
    let io = |e: std::io::Error| ApprovalError::Config(format!("{}: {e}", path.display()));
    let bytes = crate::secrets::read_or_create(path, || {
        let token = random_hex(32).map_err(std::io::Error::other)?;
        Ok(format!("{token}\n").into_bytes())
    })
    .map_err(io)?;
    let token = String::from_utf8_lossy(&bytes).trim().to_owned();
    if token.len() < 32 {
        return Err(ApprovalError::Config(format!(
            "{}: admin token shorter than 32 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Approvals {
    /// Waits until the withdrawals of requests whose held commands went away are written (a
    /// draining daemon calls it before it exits: a request must not stay pending for a
    /// command that is gone).
    pub async fn settle(&self) {
        self.withdrawals.close();
        self.withdrawals.wait().await;
        self.withdrawals.reopen();
    }

    /// Opens the configured store, the admin token and the webhooks.
    pub async fn open(
        cfg: &ApprovalsConfig,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ApprovalError> {
        let store: Arc<dyn Store> = match cfg.store {
            StoreKind::Sqlite => Arc::new(sqlite::SqliteStore::open(&cfg.sqlite_path(state_dir))?),
            StoreKind::Postgres => {
                let url = cfg.postgres_url().ok_or_else(|| {
                    ApprovalError::Config("`store: postgres` needs `url` or `url_env`".into())
                })?;
                Arc::new(postgres::PostgresStore::open(&url).await?)
            }
        };
        let token = load_or_create_token(&cfg.token_path(state_dir))?;
        let instance = cfg.instance.clone().unwrap_or_else(default_instance);
        let notifier = Notifier::new(&cfg.webhooks)?;
        Ok(Self::with_store(store, notifier, metrics, instance, token))
    }

    /// A service over an open store (tests, benchmarks).
    pub fn with_store(
        store: Arc<dyn Store>,
        notifier: Notifier,
        metrics: Arc<Metrics>,
        instance: String,
        admin_token: String,
    ) -> Arc<Self> {
        let svc = Arc::new(Self {
            store,
            notifier,
            metrics,
            instance,
            admin_token,
            withdrawals: TaskTracker::new(),
        });
        // The pending gauge follows the store, whichever instance decided.
        let weak = Arc::downgrade(&svc);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(svc) = weak.upgrade() else { return };
                if let Ok(n) = svc.store.count_pending().await {
                    svc.metrics.set_approvals_pending(n);
                }
            }
        });
        svc
    }

    /// The store (for the API's listings).
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Who presents `bearer`: the local admin token, or an OIDC token verified by `oidc`.
    pub async fn authenticate(
        &self,
        bearer: &str,
        oidc: &crate::identity::oidc::OidcVerifier,
    ) -> Result<Principal, ApprovalError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(ApprovalError::Unauthorized("no bearer token".into()));
        }
        if constant_time_eq(bearer.as_bytes(), self.admin_token.as_bytes()) {
            return Ok(Principal::admin());
        }
        if bearer.matches('.').count() != 2 {
            return Err(ApprovalError::Unauthorized(
                "not the admin token, and not a JWT".into(),
            ));
        }
        let claims = oidc
            .verify(bearer)
            .await
            .map_err(|e| ApprovalError::Unauthorized(e.to_string()))?;
        Ok(Principal {
            subject: claims.subject,
            groups: claims.groups,
            admin: false,
            via: format!("oidc:{}", claims.issuer),
        })
    }

    fn announce(&self, t: Transition, req: &ApprovalRequest) {
        match t {
            Transition::Approved
            | Transition::Denied
            | Transition::Revoked
            | Transition::TimedOut
            | Transition::Escalated => self.notifier.notify(t.event(), req),
            _ => {}
        }
        tracing::info!(
            request = %req.id,
            event = t.event(),
            state = req.state.as_str(),
            target = %req.target,
            subject = %req.subject,
            "approval request changed"
        );
    }

    /// Records a decision by `who` on request `id`.
    pub async fn decide(
        &self,
        id: &str,
        who: &Principal,
        verdict: Ruling,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 4096) {
            return Err(ApprovalError::Invalid(
                "reason longer than 4096 characters".into(),
            ));
        }
        let who2 = who.clone();
        let (req, t) = self
            .store
            .update(
                id,
                Box::new(move |r| r.decide(&who2, verdict, reason, now_ms()).map(Some)),
            )
            .await?;
        if let Some(t) = t {
            self.announce(t, &req);
        }
        tracing::info!(request = %id, by = %who.subject, via = %who.via, ?verdict, "approval decision");
        Ok(req)
    }

    /// A request by id (the clock applied).
    pub async fn get(&self, id: &str) -> Result<ApprovalRequest, ApprovalError> {
        let now = now_ms();
        let (req, t) = self
            .store
            .update(id, Box::new(move |r| Ok(r.tick(now))))
            .await?;
        if let Some(t) = t {
            self.announce(t, &req);
        }
        Ok(req.with_clock(now))
    }

    /// Requests, newest first.
    pub async fn list(&self, pending_only: bool) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        let now = now_ms();
        let mut list = self.store.list(pending_only, 1000).await?;
        // Show the clock's effect without writing from a listing.
        for r in &mut list {
            r.tick(now);
        }
        if pending_only {
            list.retain(ApprovalRequest::is_pending);
        }
        Ok(list.into_iter().map(|r| r.with_clock(now)).collect())
    }

    /// Submits a plan: every command is checked against policy for the plan's identity and
    /// target; denied commands refuse the plan, and the review rules involved must share their
    /// approver groups.
    pub async fn submit_plan(
        &self,
        plan: PlanSubmission,
        who: &Principal,
        engine: &Engine,
        protocol: Protocol,
    ) -> Result<ApprovalRequest, ApprovalError> {
        if plan.commands.is_empty() || plan.commands.len() > 1000 {
            return Err(ApprovalError::Invalid(
                "a plan holds 1 to 1000 commands".into(),
            ));
        }
        let Some(dialect) = protocol.dialect() else {
            return Err(ApprovalError::Invalid(format!(
                "plans hold SQL commands; target {} speaks {protocol}",
                plan.target
            )));
        };
        let subject = plan.subject.clone().unwrap_or_else(|| who.subject.clone());
        let identity = Identity {
            subject: subject.clone(),
            groups: plan.groups.clone(),
            workload: None,
            token: None,
        };
        let mut rules: Vec<String> = Vec::new();
        let mut approvers: Option<Vec<String>> = None;
        let (mut quorum, mut ttl, mut timeout) = (1u32, Duration::MAX, Duration::ZERO);
        let mut mask = Vec::new();
        for text in &plan.commands {
            let d = engine.decide(&Request {
                identity: &identity,
                target: &plan.target,
                protocol,
                command: &Command::sql(dialect, text),
            });
            match d {
                Decision::Deny { rule, reason } => {
                    return Err(ApprovalError::Invalid(format!(
                        "policy denies {text:?} (rule \"{rule}\": {reason}); a plan cannot approve it"
                    )));
                }
                Decision::Allow { .. } => {}
                Decision::Review {
                    rule,
                    approvers: a,
                    quorum: q,
                    ttl: t,
                    timeout: to,
                    mask: m,
                    ..
                } => {
                    let mut a = a;
                    a.sort();
                    match &approvers {
                        None => approvers = Some(a),
                        Some(prev) if *prev != a => {
                            return Err(ApprovalError::Invalid(format!(
                                "commands need different approver groups ({} and {}); split the plan",
                                prev.join(","),
                                a.join(",")
                            )));
                        }
                        Some(_) => {}
                    }
                    if !rules.contains(&rule) {
                        rules.push(rule);
                    }
                    quorum = quorum.max(q);
                    ttl = ttl.min(t);
                    timeout = timeout.max(to);
                    for x in m {
                        if !mask.contains(&x) {
                            mask.push(x);
                        }
                    }
                }
            }
        }
        let Some(approvers) = approvers else {
            return Err(ApprovalError::Invalid(
                "no command in the plan needs review; nothing to approve".into(),
            ));
        };
        if let Some(s) = plan.ttl_seconds {
            ttl = Duration::from_secs(s);
        }
        if ttl.is_zero() || ttl > MAX_PLAN_TTL {
            return Err(ApprovalError::Invalid("ttl must be 1 s to 24 h".into()));
        }
        let uses = plan.uses.unwrap_or(1).max(1);
        let now = now_ms();
        let req = ApprovalRequest {
            id: random_hex(6)?,
            kind: Kind::Plan,
            state: State::Pending,
            commands: plan
                .commands
                .iter()
                .map(|c| CommandEntry::new(c, uses))
                .collect(),
            protocol: Some(protocol),
            classes: Vec::new(),
            kinds: Vec::new(),
            tables: Vec::new(),
            tables_read: Vec::new(),
            functions: Vec::new(),
            objects: Vec::new(),
            notes: Vec::new(),
            dry_run: None,
            subject,
            groups: plan.groups,
            workload: None,
            target: plan.target,
            session: None,
            instance: self.instance.clone(),
            rule: rules.join(","),
            requested_by: Some(who.subject.clone()),
            task: plan.task,
            approvers,
            escalate_to: Vec::new(),
            escalated: false,
            quorum,
            ttl_ms: ttl.as_millis() as u64,
            timeout_ms: timeout.as_millis() as u64,
            on_timeout: OnTimeout::Deny,
            mode: ReviewMode::Retry,
            mask,
            created_ms: now,
            deadline_ms: now.saturating_add(timeout.as_millis() as u64),
            decided_ms: None,
            expires_ms: None,
            votes: Vec::new(),
            reason: None,
            age_ms: None,
            deadline_in_ms: None,
        };
        self.store.insert(&req).await?;
        self.notifier.notify("requested", &req);
        tracing::info!(request = %req.id, target = %req.target, subject = %req.subject, commands = req.commands.len(), "plan submitted");
        Ok(req)
    }

    /// Takes one use of an approved grant covering `sha` for this subject and target, granted
    /// under the rule that reviews the command now (a grant approved under another rule —
    /// a plan judged for other groups, a retry from another identity of the same subject —
    /// was approved by other reviewers, or fewer).
    async fn take_grant(
        &self,
        subject: &str,
        target: &str,
        sha: &str,
        now_needs: (&str, &[String], &[String], u32),
    ) -> Result<Option<ApprovalRequest>, ApprovalError> {
        let (rule, approvers, escalate_to, quorum) = now_needs;
        let now = now_ms();
        for g in self.store.grants(subject, target).await? {
            // A held command's approval belongs to the session waiting on it.
            let reusable = g.kind == Kind::Plan || g.mode == ReviewMode::Retry;
            // Whoever approved it was one of the groups that decide now.
            let same_review = g.rule.split(',').any(|r| r == rule)
                && g.eligible_groups()
                    .all(|a| approvers.contains(a) || escalate_to.contains(a))
                && g.quorum >= quorum;
            if !reusable
                || !same_review
                || !g
                    .commands
                    .iter()
                    .any(|c| c.sha256 == sha && c.uses_left > 0)
            {
                continue;
            }
            let sha = sha.to_owned();
            let (req, t) = self
                .store
                .update(
                    &g.id,
                    Box::new(move |r| {
                        Ok(if r.consume(&sha, now) {
                            Some(Transition::Consumed)
                        } else {
                            r.tick(now)
                        })
                    }),
                )
                .await?;
            if t == Some(Transition::Consumed) {
                return Ok(Some(req));
            }
        }
        Ok(None)
    }

    /// Decides a command that policy sent to review: a grant covers it, or a request is
    /// created and (hold mode) waited on, sending `notice` once the request exists. Dropping
    /// the future withdraws a pending request. `trail` follows the review for the audit log
    /// (see [`ReviewTrail`]).
    pub async fn review(
        self: Arc<Self>,
        r: ReviewRequest,
        notice: impl FnOnce(&str),
        trail: &ReviewTrail,
    ) -> Outcome {
        let Decision::Review {
            rule,
            approvers,
            quorum,
            ttl,
            timeout,
            on_timeout,
            escalate_to,
            mode,
            mask,
            dry_run,
            run_as,
            approved_run_as,
        } = r.decision
        else {
            return Outcome::Deny {
                message: "airlock: internal error: review without a review decision".into(),
                review: None,
            };
        };
        let rule_name = rule.clone();
        let unavailable = move |e: &dyn std::fmt::Display, review: Option<Review>| Outcome::Deny {
            message: format!(
                "airlock: rule \"{rule_name}\" needs approval, but the approval store is unavailable ({e}); the command was not run"
            ),
            review,
        };
        if !self.store.is_up() {
            return unavailable(&"not connected", None);
        }
        let sha = model::command_sha256(&r.command);
        match self
            .take_grant(
                &r.identity.subject,
                &r.target,
                &sha,
                (&rule, &approvers, &escalate_to, quorum),
            )
            .await
        {
            Ok(Some(g)) => {
                self.metrics.approval_granted(&r.target);
                tracing::info!(request = %g.id, session = r.session, target = %r.target, "command covered by an approval");
                let review = Review {
                    uses_left: g
                        .commands
                        .iter()
                        .find(|c| c.sha256 == sha)
                        .map(|c| c.uses_left),
                    request: Box::new(g),
                    outcome: ReviewOutcome::Granted,
                };
                trail.put(review.clone());
                // The rule reviewing it now masks it, whatever the grant was judged with.
                return Outcome::Allow { rule, mask, review };
            }
            Ok(None) => {}
            Err(e) => return unavailable(&e, None),
        }
        let id = match random_hex(6) {
            Ok(id) => id,
            Err(e) => return unavailable(&e, None),
        };
        let shown = match &r.preview {
            Some(p) => {
                let ask = PreviewAsk {
                    dry_run,
                    mask: mask.clone(),
                    run_as: approved_run_as.or(run_as),
                };
                p.preview(r.command.clone(), Arc::clone(&r.facts), ask)
                    .await
            }
            None => Previewed {
                params: r
                    .command
                    .params()
                    .iter()
                    .zip(1u32..)
                    .map(|(p, n)| ShownParam::hidden(n, p))
                    .collect(),
                dry_run: dry_run
                    .then(|| DryRun::skipped(format!("{} targets have no dry run", r.protocol))),
            },
        };
        let now = now_ms();
        let req = ApprovalRequest {
            id: id.clone(),
            kind: Kind::Command,
            state: State::Pending,
            commands: vec![CommandEntry::for_command(&r.command, shown.params, 1)],
            protocol: Some(r.protocol),
            classes: vec![r.facts.class.as_str().to_owned()],
            kinds: r.facts.kinds.iter().map(|k| (*k).to_owned()).collect(),
            tables: if r.facts.tables_written.is_empty() {
                r.facts.objects.clone()
            } else {
                r.facts.tables_written.clone()
            },
            tables_read: r.facts.tables_read.clone(),
            functions: r.facts.functions.clone(),
            objects: r.facts.objects.clone(),
            notes: r.facts.notes.clone(),
            dry_run: shown.dry_run,
            subject: r.identity.subject.clone(),
            groups: r.identity.groups.clone(),
            workload: r.identity.workload.clone(),
            target: r.target.clone(),
            session: Some(r.session),
            instance: self.instance.clone(),
            rule: rule.clone(),
            requested_by: None,
            task: None,
            approvers: approvers.clone(),
            escalate_to,
            escalated: false,
            quorum,
            ttl_ms: ttl.as_millis() as u64,
            timeout_ms: timeout.as_millis() as u64,
            on_timeout,
            mode,
            mask: mask.clone(),
            created_ms: now,
            deadline_ms: now.saturating_add(timeout.as_millis() as u64),
            decided_ms: None,
            expires_ms: None,
            votes: Vec::new(),
            reason: None,
            age_ms: None,
            deadline_in_ms: None,
        };
        // Subscribed before the request exists, so no decision can slip between.
        let mut events = self.store.subscribe();
        // A held waiter that goes away from here on (even while the insert is in flight)
        // withdraws the request, and a reader of the trail finds it withdrawn; a waiter
        // dropped between the insert and the wait would otherwise leave it pending for good.
        let mut guard = Withdraw {
            svc: (mode == ReviewMode::Hold).then(|| Arc::clone(&self)),
            id: id.clone(),
        };
        if mode == ReviewMode::Hold {
            trail.set(&req, ReviewOutcome::Withdrawn);
        }
        if let Err(e) = self.store.insert(&req).await {
            guard.svc = None;
            trail.clear();
            return unavailable(&e, None);
        }
        self.notifier.notify("requested", &req);
        tracing::info!(request = %id, session = r.session, target = %r.target, subject = %r.identity.subject, %rule, ?mode, "approval requested");
        if mode == ReviewMode::Retry {
            trail.set(&req, ReviewOutcome::Pending);
            return Outcome::Deny {
                message: format!(
                    "airlock: rule \"{rule}\" needs approval: request {id} is pending (approvers: {}). Once approved (airlock approve {id}), run the same command again.",
                    approvers.join(", ")
                ),
                review: Some(Review {
                    request: Box::new(req),
                    outcome: ReviewOutcome::Pending,
                    uses_left: None,
                }),
            };
        }
        self.metrics.approval_requested();
        notice(&format!(
            "airlock: waiting for approval of request {id} (rule \"{rule}\", approvers: {}); approve with: airlock approve {id}",
            approvers.join(", ")
        ));
        let outcome = self.wait(&req, &sha, &mut events, rule, mask, trail).await;
        guard.svc = None;
        let (label, message) = match &outcome {
            Ok(o) => (o.0, None),
            Err(e) => (ApprovalOutcome::Cancelled, Some(e.to_string())),
        };
        self.metrics.approval_resolved(
            &r.target,
            label,
            Duration::from_millis(now_ms().saturating_sub(now)),
        );
        match outcome {
            Ok((_, o)) => o,
            Err(_) => {
                let review = trail.take().map(|r| Review {
                    outcome: ReviewOutcome::Unavailable,
                    ..r
                });
                if let Some(r) = &review {
                    trail.set(&r.request, ReviewOutcome::Unavailable);
                }
                unavailable(&message.unwrap_or_default(), review)
            }
        }
    }

    async fn wait(
        &self,
        req: &ApprovalRequest,
        sha: &str,
        events: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
        rule: String,
        mask: Vec<String>,
        trail: &ReviewTrail,
    ) -> Result<(ApprovalOutcome, Outcome), ApprovalError> {
        let id = req.id.as_str();
        loop {
            let now = now_ms();
            let sha2 = sha.to_owned();
            // Clock and consumption in one step: approved means this command takes its use.
            let (cur, t) = self
                .store
                .update(
                    id,
                    Box::new(move |r| {
                        let t = r.tick(now);
                        if r.consume(&sha2, now) {
                            return Ok(Some(Transition::Consumed));
                        }
                        Ok(t)
                    }),
                )
                .await?;
            if let Some(t) = t
                && t != Transition::Consumed
            {
                self.announce(t, &cur);
            }
            let last = || {
                cur.votes
                    .last()
                    .map(|v| {
                        format!(
                            " by {}{}",
                            v.by,
                            v.reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_default()
            };
            let done = |label, outcome, message: String| {
                trail.set(&cur, outcome);
                Ok((
                    label,
                    Outcome::Deny {
                        message,
                        review: Some(Review {
                            request: Box::new(cur.clone()),
                            outcome,
                            uses_left: None,
                        }),
                    },
                ))
            };
            match (t, cur.state) {
                (Some(Transition::Consumed), _) => {
                    tracing::info!(request = %id, "approved command released");
                    trail.set(&cur, ReviewOutcome::Approved);
                    return Ok((
                        ApprovalOutcome::Approved,
                        Outcome::Allow {
                            rule,
                            mask,
                            review: Review {
                                request: Box::new(cur),
                                outcome: ReviewOutcome::Approved,
                                uses_left: None,
                            },
                        },
                    ));
                }
                // Votes so far, for a reader that stops waiting.
                (_, State::Pending) => trail.set(&cur, ReviewOutcome::Withdrawn),
                (_, State::Denied) => {
                    return done(
                        ApprovalOutcome::Denied,
                        ReviewOutcome::Denied,
                        format!("airlock: request {id} was denied{}", last()),
                    );
                }
                (_, State::Revoked) => {
                    return done(
                        ApprovalOutcome::Cancelled,
                        ReviewOutcome::Revoked,
                        format!(
                            "airlock: request {id} was revoked{}; the command was not run",
                            last()
                        ),
                    );
                }
                (_, State::Expired) => {
                    return done(
                        if cur.escalated {
                            ApprovalOutcome::Escalated
                        } else {
                            ApprovalOutcome::TimedOut
                        },
                        ReviewOutcome::TimedOut,
                        format!(
                            "airlock: request {id} timed out without a decision{}; the command was not run",
                            if cur.escalated {
                                " (after escalation)"
                            } else {
                                ""
                            }
                        ),
                    );
                }
                (_, state) => {
                    return done(
                        ApprovalOutcome::Cancelled,
                        if state == State::Withdrawn {
                            ReviewOutcome::Withdrawn
                        } else {
                            ReviewOutcome::Denied
                        },
                        format!(
                            "airlock: request {id} is {}; the command was not run",
                            state.as_str()
                        ),
                    );
                }
            }
            let sleep = Duration::from_millis(cur.deadline_ms.saturating_sub(now_ms()));
            let deadline = tokio::time::sleep(sleep);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(StoreEvent::Changed(x)) if x == id => break,
                        Ok(StoreEvent::Changed(_)) => continue,
                        Ok(StoreEvent::Down(why)) => return Err(ApprovalError::Store(why)),
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            return Err(ApprovalError::Store("notifications ended".into()));
                        }
                    },
                    () = &mut deadline => break,
                }
            }
        }
    }
}

/// Withdraws a pending request when the held command's future is dropped (client gone).
struct Withdraw {
    svc: Option<Arc<Approvals>>,
    id: String,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(svc) = self.svc.take() else { return };
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let withdrawals = svc.withdrawals.clone();
            withdrawals.spawn_on(
                async move {
                    let now = now_ms();
                    match svc
                        .store
                        .update(&id, Box::new(move |r| Ok(r.withdraw(now))))
                        .await
                    {
                        Ok((req, Some(t))) => {
                            svc.metrics.approval_resolved(
                                &req.target,
                                ApprovalOutcome::Cancelled,
                                Duration::from_millis(now.saturating_sub(req.created_ms)),
                            );
                            svc.announce(t, &req);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(request = %id, %error, "could not withdraw request")
                        }
                    }
                },
                &rt,
            );
        }
    }
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "airlock".into());
    format!("{host}-{}", std::process::id())
}
