//! The approval request and its state machine. Pure: no I/O, no clock (callers pass `now` in
//! milliseconds since the Unix epoch), so every store applies exactly the same rules inside its
//! own transaction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApprovalError;
use crate::policy::{OnTimeout, ReviewMode};

/// What a request asks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One command held (or refused, in retry mode) on the data path.
    Command,
    /// A list of commands submitted ahead of time for a task.
    Plan,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for decisions (possibly escalated).
    Pending,
    /// Quorum reached; the grant is valid until `expires_ms` for its remaining uses.
    Approved,
    Denied,
    /// Nobody decided in time, or the grant's TTL passed unused.
    Expired,
    /// Withdrawn by an approver; a held command was aborted.
    Revoked,
    /// Every use of the grant was consumed.
    Used,
    /// The client went away before a decision.
    Withdrawn,
}

impl State {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Revoked => "revoked",
            State::Used => "used",
            State::Withdrawn => "withdrawn",
        }
    }
}

/// One command of a request, with the uses its approval still grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEntry {
    /// The exact text, as the client sent it.
    pub text: String,
    /// Lower-case hex SHA-256 of `text`.
    pub sha256: String,
    /// Runs left once approved.
    pub uses_left: u32,
}

impl CommandEntry {
    /// An entry for `text` allowing `uses` runs.
    pub fn new(text: &str, uses: u32) -> Self {
        Self {
            text: text.to_owned(),
            sha256: sha256_hex(text),
            uses_left: uses,
        }
    }
}

/// Lower-case hex SHA-256 of a command text.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What a reviewer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
    Revoke,
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Who decided (token subject, or `admin` for the local admin token).
    pub by: String,
    /// How they authenticated: `admin-token` or `oidc:<issuer>`.
    pub via: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub at_ms: u64,
}

/// The caller's process, as far as the kernel told us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub cgroup: Option<String>,
}

/// An authenticated reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub groups: Vec<String>,
    /// The local admin token: may decide for any approver group.
    pub admin: bool,
    /// `admin-token` or `oidc:<issuer>`.
    pub via: String,
}

impl Principal {
    /// The holder of the local admin token.
    pub fn admin() -> Self {
        Self {
            subject: "admin".into(),
            groups: Vec::new(),
            admin: true,
            via: "admin-token".into(),
        }
    }
}

/// An approval request: what was asked, by whom, and what was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub kind: Kind,
    pub state: State,
    pub commands: Vec<CommandEntry>,
    /// Command classes (`write`, …), statement kinds and tables written, from classification.
    pub classes: Vec<String>,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    /// The identity the commands run as; it may never approve its own request.
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: Option<WorkloadInfo>,
    pub target: String,
    /// Session id on the instance holding the command (`None` for plans).
    pub session: Option<u64>,
    /// The airlock instance that created the request.
    pub instance: String,
    /// Rule(s) that asked for review.
    pub rule: String,
    /// Who submitted a plan (`None` for held commands: the subject itself).
    pub requested_by: Option<String>,
    /// Task description of a plan.
    pub task: Option<String>,
    pub approvers: Vec<String>,
    pub escalate_to: Vec<String>,
    pub escalated: bool,
    pub quorum: u32,
    pub ttl_ms: u64,
    pub timeout_ms: u64,
    pub on_timeout: OnTimeout,
    pub mode: ReviewMode,
    /// Masking rules that apply to the answer once approved.
    pub mask: Vec<String>,
    pub created_ms: u64,
    /// When the current review round ends (timeout, or the escalated round's).
    pub deadline_ms: u64,
    pub decided_ms: Option<u64>,
    /// End of the grant's validity (set on approval).
    pub expires_ms: Option<u64>,
    pub votes: Vec<Vote>,
    /// Why it ended (last reason given, or the timeout).
    pub reason: Option<String>,
}

/// What a state change means for notifications and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A vote was recorded; quorum not reached yet.
    Voted,
    Approved,
    Denied,
    Revoked,
    TimedOut,
    Escalated,
    /// A grant's TTL passed.
    GrantExpired,
    Withdrawn,
    /// One use of the grant was taken.
    Consumed,
}

impl Transition {
    /// Event name for webhooks.
    pub fn event(self) -> &'static str {
        match self {
            Transition::Voted => "voted",
            Transition::Approved => "approved",
            Transition::Denied => "denied",
            Transition::Revoked => "revoked",
            Transition::TimedOut => "timed_out",
            Transition::Escalated => "escalated",
            Transition::GrantExpired => "expired",
            Transition::Withdrawn => "withdrawn",
            Transition::Consumed => "used",
        }
    }
}

impl ApprovalRequest {
    /// Whether the request still waits for a decision.
    pub fn is_pending(&self) -> bool {
        self.state == State::Pending
    }

    /// Applies the clock: a pending request past its deadline escalates (once, when the rule
    /// says so) or expires; an approved grant past its TTL expires.
    pub fn tick(&mut self, now: u64) -> Option<Transition> {
        match self.state {
            State::Pending if now >= self.deadline_ms => {
                if self.on_timeout == OnTimeout::Escalate
                    && !self.escalated
                    && !self.escalate_to.is_empty()
                {
                    self.escalated = true;
                    self.deadline_ms = now.saturating_add(self.timeout_ms);
                    Some(Transition::Escalated)
                } else {
                    self.state = State::Expired;
                    self.decided_ms = Some(now);
                    self.reason = Some("nobody decided in time".into());
                    Some(Transition::TimedOut)
                }
            }
            State::Approved if self.expires_ms.is_some_and(|e| now >= e) => {
                self.state = State::Expired;
                self.reason = Some("the approval's TTL passed".into());
                Some(Transition::GrantExpired)
            }
            _ => None,
        }
    }

    /// Groups whose members may decide now: the approvers, plus the fallback approvers once
    /// escalated.
    pub fn eligible_groups(&self) -> impl Iterator<Item = &String> {
        let extra = if self.escalated {
            &self.escalate_to[..]
        } else {
            &[]
        };
        self.approvers.iter().chain(extra)
    }

    fn check_eligible(&self, who: &Principal) -> Result<(), ApprovalError> {
        if who.subject == self.subject {
            return Err(ApprovalError::OwnRequest);
        }
        if who.admin {
            return Ok(());
        }
        if self.eligible_groups().any(|g| who.groups.contains(g)) {
            return Ok(());
        }
        Err(ApprovalError::NotApprover {
            groups: self
                .eligible_groups()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Records `who`'s decision at `now`. Approvals count toward the quorum (one per subject);
    /// a deny ends the request; a revoke ends a pending request or an unused grant.
    pub fn decide(
        &mut self,
        who: &Principal,
        verdict: Verdict,
        reason: Option<String>,
        now: u64,
    ) -> Result<Transition, ApprovalError> {
        self.tick(now);
        let allowed = match verdict {
            Verdict::Approve | Verdict::Deny => self.state == State::Pending,
            Verdict::Revoke => matches!(self.state, State::Pending | State::Approved),
        };
        if !allowed {
            return Err(ApprovalError::Conflict {
                id: self.id.clone(),
                state: self.state.as_str(),
            });
        }
        self.check_eligible(who)?;
        if verdict == Verdict::Approve
            && self
                .votes
                .iter()
                .any(|v| v.by == who.subject && v.verdict == Verdict::Approve)
        {
            return Err(ApprovalError::AlreadyVoted);
        }
        self.votes.push(Vote {
            by: who.subject.clone(),
            via: who.via.clone(),
            verdict,
            reason: reason.clone(),
            at_ms: now,
        });
        let t = match verdict {
            Verdict::Approve => {
                let approvals = self
                    .votes
                    .iter()
                    .filter(|v| v.verdict == Verdict::Approve)
                    .count();
                if approvals < self.quorum as usize {
                    return Ok(Transition::Voted);
                }
                self.state = State::Approved;
                self.expires_ms = Some(now.saturating_add(self.ttl_ms));
                Transition::Approved
            }
            Verdict::Deny => {
                self.state = State::Denied;
                Transition::Denied
            }
            Verdict::Revoke => {
                self.state = State::Revoked;
                Transition::Revoked
            }
        };
        self.decided_ms.get_or_insert(now);
        if reason.is_some() {
            self.reason = reason;
        }
        Ok(t)
    }

    /// Takes one use of the approved command with this hash. `false` when the grant does not
    /// cover it (not approved, expired, used up, revoked).
    pub fn consume(&mut self, sha256: &str, now: u64) -> bool {
        self.tick(now);
        if self.state != State::Approved {
            return false;
        }
        let Some(c) = self
            .commands
            .iter_mut()
            .find(|c| c.sha256 == sha256 && c.uses_left > 0)
        else {
            return false;
        };
        c.uses_left -= 1;
        if self.commands.iter().all(|c| c.uses_left == 0) {
            self.state = State::Used;
        }
        true
    }

    /// The client holding the command went away: a pending request is withdrawn.
    pub fn withdraw(&mut self, now: u64) -> Option<Transition> {
        (self.state == State::Pending).then(|| {
            self.state = State::Withdrawn;
            self.decided_ms = Some(now);
            self.reason = Some("the client disconnected".into());
            Transition::Withdrawn
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> ApprovalRequest {
        ApprovalRequest {
            id: "r1".into(),
            kind: Kind::Command,
            state: State::Pending,
            commands: vec![CommandEntry::new("UPDATE t SET a = 1", 1)],
            classes: vec!["write".into()],
            kinds: vec!["update".into()],
            tables: vec!["t".into()],
            subject: "unix:agent".into(),
            groups: vec!["agents".into()],
            workload: None,
            target: "db".into(),
            session: Some(1),
            instance: "i".into(),
            rule: "r".into(),
            requested_by: None,
            task: None,
            approvers: vec!["dba".into()],
            escalate_to: vec!["oncall".into()],
            escalated: false,
            quorum: 2,
            ttl_ms: 1000,
            timeout_ms: 100,
            on_timeout: OnTimeout::Escalate,
            mode: ReviewMode::Hold,
            mask: vec![],
            created_ms: 0,
            deadline_ms: 100,
            decided_ms: None,
            expires_ms: None,
            votes: vec![],
            reason: None,
        }
    }

    fn who(s: &str, g: &str) -> Principal {
        Principal {
            subject: s.into(),
            groups: vec![g.into()],
            admin: false,
            via: "oidc:x".into(),
        }
    }

    #[test]
    fn quorum_of_distinct_approvers() {
        let mut r = sample();
        let a = who("alice", "dba");
        assert_eq!(
            r.decide(&a, Verdict::Approve, None, 1).unwrap(),
            Transition::Voted
        );
        assert!(matches!(
            r.decide(&a, Verdict::Approve, None, 2),
            Err(ApprovalError::AlreadyVoted)
        ));
        assert!(matches!(
            r.decide(&who("eve", "dev"), Verdict::Approve, None, 2),
            Err(ApprovalError::NotApprover { .. })
        ));
        assert!(matches!(
            r.decide(&who("unix:agent", "dba"), Verdict::Approve, None, 2),
            Err(ApprovalError::OwnRequest)
        ));
        let t = r
            .decide(&who("bob", "dba"), Verdict::Approve, Some("ok".into()), 3)
            .unwrap();
        assert_eq!(t, Transition::Approved);
        assert_eq!(r.expires_ms, Some(1003));
        let sha = r.commands[0].sha256.clone();
        assert!(!r.consume("nope", 4));
        assert!(r.consume(&sha, 4));
        assert_eq!(r.state, State::Used);
        assert!(!r.consume(&sha, 5));
    }

    #[test]
    fn escalation_then_timeout() {
        let mut r = sample();
        assert!(matches!(
            r.decide(&who("carol", "oncall"), Verdict::Approve, None, 10),
            Err(ApprovalError::NotApprover { .. })
        ));
        assert_eq!(r.tick(100), Some(Transition::Escalated));
        assert_eq!(r.deadline_ms, 200);
        assert_eq!(
            r.decide(&who("carol", "oncall"), Verdict::Approve, None, 150)
                .unwrap(),
            Transition::Voted
        );
        assert_eq!(r.tick(200), Some(Transition::TimedOut));
        assert_eq!(r.state, State::Expired);
    }

    #[test]
    fn grant_expires_and_revoke() {
        let mut r = sample();
        r.quorum = 1;
        r.decide(&Principal::admin(), Verdict::Approve, None, 10)
            .unwrap();
        let sha = r.commands[0].sha256.clone();
        assert!(!r.consume(&sha, 2000));
        assert_eq!(r.state, State::Expired);
        let mut r = sample();
        r.decide(&Principal::admin(), Verdict::Revoke, Some("no".into()), 5)
            .unwrap();
        assert_eq!(r.state, State::Revoked);
        assert!(
            r.decide(&Principal::admin(), Verdict::Approve, None, 6)
                .is_err()
        );
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
