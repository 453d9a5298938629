//! The approval request and its state machine. Pure: no I/O, no clock (callers pass `now` in
//! milliseconds since the Unix epoch), so every store applies exactly the same rules inside its
//! own transaction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApprovalError;
use crate::model::{Command, OnTimeout, ParamFormat, Protocol, ReviewMode, Workload};

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
    /// Lower-case hex SHA-256 of the command: its text, and its parameter values when it was
    /// bound ([`command_sha256`]); a grant covers exactly these values.
    pub sha256: String,
    /// Runs left once approved.
    pub uses_left: u32,
    /// The values bound to its parameters, as the reviewer sees them (decoded, masked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ShownParam>,
}

impl CommandEntry {
    /// An entry for `text` allowing `uses` runs.
    pub fn new(text: &str, uses: u32) -> Self {
        Self {
            text: text.to_owned(),
            sha256: sha256_hex(text),
            uses_left: uses,
            params: Vec::new(),
        }
    }

    /// An entry for a command with its parameters shown as `params`.
    pub fn for_command(command: &Command<'_>, params: Vec<ShownParam>, uses: u32) -> Self {
        Self {
            text: command.text().into_owned(),
            sha256: command_sha256(command),
            uses_left: uses,
            params,
        }
    }
}

/// One bound parameter as a reviewer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownParam {
    /// Its position (`$1` is 1).
    pub n: u32,
    /// The type's name (`int4`, `text`), or `oid <n>` when unknown.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The protocol's type id.
    pub type_id: u32,
    pub format: ParamFormat,
    /// The value decoded for display, masked where a masking rule would mask it; `None` for
    /// SQL NULL.
    pub value: Option<String>,
    /// How `value` is written: `text` (decoded), `hex` (a binary value this gateway cannot
    /// decode, `\x…`), `hidden` (not shown: no decoder for this protocol).
    pub shown_as: String,
    /// Masking rules that changed the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
    /// The column it is compared with or written to, when the statement says
    /// (`schema.table.column`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl ShownParam {
    /// A parameter shown without its value (a protocol that gives no decoder): type, format
    /// and length only.
    pub fn hidden(n: u32, p: &crate::model::Param<'_>) -> Self {
        Self {
            n,
            type_name: format!("oid {}", p.type_id),
            type_id: p.type_id,
            format: p.format,
            value: p.value.as_ref().map(|v| format!("<{} bytes>", v.len())),
            shown_as: "hidden".into(),
            masked: Vec::new(),
            column: None,
        }
    }
}

/// What running a held command in a transaction that was rolled back showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// `done`, `skipped` (no dry run, see `reason`) or `failed`.
    pub status: String,
    /// Why there was no dry run, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows the statement affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_affected: Option<u64>,
    /// The command tag the server answered (`UPDATE 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
    /// The planner's estimate (`EXPLAIN`), one line per plan node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// The table the samples are from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Column names of the samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Up to `sample_limit` affected rows before and after the statement, masked for the
    /// reviewer (`None`: NULL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<Vec<Option<String>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Vec<Option<String>>>,
    /// The row cap of each sample.
    #[serde(default)]
    pub sample_limit: u32,
    /// More rows were affected than sampled.
    #[serde(default)]
    pub truncated: bool,
    /// How long it took.
    #[serde(default)]
    pub took_ms: u64,
}

impl DryRun {
    /// No dry run, and why.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self {
            status: "skipped".into(),
            reason: Some(reason.into()),
            ..Self::default()
        }
    }

    /// The dry run did not complete, and why.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            status: "failed".into(),
            reason: Some(reason.into()),
            ..Self::default()
        }
    }
}

/// Lower-case hex SHA-256 of a command as approvals match it: its text alone when no
/// parameters were bound (so plans and simple queries match by text), else the text followed
/// by each parameter's type, format and exact bytes (NULL distinct from empty), so that an
/// approval for one set of values never covers another.
pub fn command_sha256(command: &Command<'_>) -> String {
    let text = command.text();
    let params = command.params();
    if params.is_empty() {
        return sha256_hex(&text);
    }
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update(b"\0airlock-params\0");
    h.update((params.len() as u64).to_be_bytes());
    for p in params {
        h.update(p.type_id.to_be_bytes());
        h.update([match p.format {
            ParamFormat::Text => 0u8,
            ParamFormat::Binary => 1,
        }]);
        match &p.value {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
        }
    }
    hex(&h.finalize())
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lower-case hex SHA-256 of a command text.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// What a reviewer decided (a vote, or an approver revoking a grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ruling {
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
    pub verdict: Ruling,
    pub reason: Option<String>,
    pub at_ms: u64,
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
    /// The protocol of the commands (absent in requests stored before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Command classes (`write`, …), statement kinds and tables written, from classification.
    pub classes: Vec<String>,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    /// Tables read, functions called, other objects touched and the classifier's notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables_read: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The effect of the command, from a dry run rolled back (when the rule asks for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRun>,
    /// The identity the commands run as; it may never approve its own request.
    pub subject: String,
    pub groups: Vec<String>,
    pub workload: Option<Workload>,
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
    /// Milliseconds since it was created and until its deadline (negative: passed), as of
    /// the answer (filled by listings, never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_in_ms: Option<i64>,
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
    /// Fills the age and time-to-deadline fields as of `now`.
    pub fn with_clock(mut self, now: u64) -> Self {
        self.age_ms = Some(now.saturating_sub(self.created_ms));
        self.deadline_in_ms = Some(self.deadline_ms as i64 - now as i64);
        self
    }

    /// Approving votes so far (toward the quorum).
    pub fn approvals(&self) -> usize {
        self.votes
            .iter()
            .filter(|v| v.verdict == Ruling::Approve)
            .count()
    }

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
    /// a deny ends the request; a revoke ends a pending request or a grant, used or not (a
    /// protocol that keeps something running on a grant, an SSH command, ends it then).
    pub fn decide(
        &mut self,
        who: &Principal,
        verdict: Ruling,
        reason: Option<String>,
        now: u64,
    ) -> Result<Transition, ApprovalError> {
        self.tick(now);
        let allowed = match verdict {
            Ruling::Approve | Ruling::Deny => self.state == State::Pending,
            Ruling::Revoke => matches!(self.state, State::Pending | State::Approved | State::Used),
        };
        if !allowed {
            return Err(ApprovalError::Conflict {
                id: self.id.clone(),
                state: self.state.as_str(),
            });
        }
        self.check_eligible(who)?;
        // Whoever submitted a plan does not approve it (the admin token, a break-glass
        // credential, excepted); denying or withdrawing it is theirs to do.
        if verdict == Ruling::Approve
            && !who.admin
            && self.requested_by.as_deref() == Some(who.subject.as_str())
        {
            return Err(ApprovalError::OwnRequest);
        }
        if verdict == Ruling::Approve
            && self
                .votes
                .iter()
                .any(|v| v.by == who.subject && v.verdict == Ruling::Approve)
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
            Ruling::Approve => {
                if self.approvals() < self.quorum as usize {
                    return Ok(Transition::Voted);
                }
                self.state = State::Approved;
                self.expires_ms = Some(now.saturating_add(self.ttl_ms));
                Transition::Approved
            }
            Ruling::Deny => {
                self.state = State::Denied;
                Transition::Denied
            }
            Ruling::Revoke => {
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
            protocol: Some(Protocol::Postgres),
            classes: vec!["write".into()],
            kinds: vec!["update".into()],
            tables: vec!["t".into()],
            tables_read: vec![],
            functions: vec![],
            objects: vec![],
            notes: vec![],
            dry_run: None,
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
            age_ms: None,
            deadline_in_ms: None,
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
            r.decide(&a, Ruling::Approve, None, 1).unwrap(),
            Transition::Voted
        );
        assert!(matches!(
            r.decide(&a, Ruling::Approve, None, 2),
            Err(ApprovalError::AlreadyVoted)
        ));
        assert!(matches!(
            r.decide(&who("eve", "dev"), Ruling::Approve, None, 2),
            Err(ApprovalError::NotApprover { .. })
        ));
        assert!(matches!(
            r.decide(&who("unix:agent", "dba"), Ruling::Approve, None, 2),
            Err(ApprovalError::OwnRequest)
        ));
        let t = r
            .decide(&who("bob", "dba"), Ruling::Approve, Some("ok".into()), 3)
            .unwrap();
        assert_eq!(t, Transition::Approved);
        assert_eq!(r.expires_ms, Some(1003));
        let sha = r.commands[0].sha256.clone();
        assert!(!r.consume("nope", 4));
        assert!(r.consume(&sha, 4));
        assert_eq!(r.state, State::Used);
        assert!(!r.consume(&sha, 5));
    }

    /// A plan's submitter may not approve it, even in the approver group; denying it is theirs.
    #[test]
    fn a_plan_is_not_approved_by_its_submitter() {
        let mut r = sample();
        r.requested_by = Some("alice".into());
        assert!(matches!(
            r.decide(&who("alice", "dba"), Ruling::Approve, None, 1),
            Err(ApprovalError::OwnRequest)
        ));
        assert_eq!(
            r.decide(&who("alice", "dba"), Ruling::Deny, None, 2)
                .unwrap(),
            Transition::Denied
        );
    }

    #[test]
    fn escalation_then_timeout() {
        let mut r = sample();
        assert!(matches!(
            r.decide(&who("carol", "oncall"), Ruling::Approve, None, 10),
            Err(ApprovalError::NotApprover { .. })
        ));
        assert_eq!(r.tick(100), Some(Transition::Escalated));
        assert_eq!(r.deadline_ms, 200);
        assert_eq!(
            r.decide(&who("carol", "oncall"), Ruling::Approve, None, 150)
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
        r.decide(&Principal::admin(), Ruling::Approve, None, 10)
            .unwrap();
        let sha = r.commands[0].sha256.clone();
        assert!(!r.consume(&sha, 2000));
        assert_eq!(r.state, State::Expired);
        let mut r = sample();
        r.decide(&Principal::admin(), Ruling::Revoke, Some("no".into()), 5)
            .unwrap();
        assert_eq!(r.state, State::Revoked);
        assert!(
            r.decide(&Principal::admin(), Ruling::Approve, None, 6)
                .is_err()
        );
        // A used grant can still be revoked (what it opened is then closed); a denied request
        // cannot.
        let mut r = sample();
        r.quorum = 1;
        r.decide(&Principal::admin(), Ruling::Approve, None, 10)
            .unwrap();
        let sha = r.commands[0].sha256.clone();
        assert!(r.consume(&sha, 11));
        assert_eq!(r.state, State::Used);
        r.decide(&Principal::admin(), Ruling::Revoke, None, 12)
            .unwrap();
        assert_eq!(r.state, State::Revoked);
        let mut r = sample();
        r.decide(&Principal::admin(), Ruling::Deny, None, 5)
            .unwrap();
        assert!(
            r.decide(&Principal::admin(), Ruling::Revoke, None, 6)
                .is_err()
        );
    }

    #[test]
    fn parameters_are_part_of_the_hash() {
        use crate::model::{Dialect, Param};
        use std::borrow::Cow;
        let text = "UPDATE accounts SET balance = $1 WHERE id = $2";
        let p = |v: Option<&'static [u8]>, format| Param {
            type_id: 23,
            format,
            value: v.map(Cow::Borrowed),
        };
        let one = [
            p(Some(b"5"), ParamFormat::Text),
            p(Some(b"1"), ParamFormat::Text),
        ];
        let other = [
            p(Some(b"500"), ParamFormat::Text),
            p(Some(b"1"), ParamFormat::Text),
        ];
        let null = [p(None, ParamFormat::Text), p(Some(b"1"), ParamFormat::Text)];
        let empty = [
            p(Some(b""), ParamFormat::Text),
            p(Some(b"1"), ParamFormat::Text),
        ];
        let binary = [
            p(Some(b"5"), ParamFormat::Binary),
            p(Some(b"1"), ParamFormat::Text),
        ];
        fn h(text: &str, params: &[Param<'_>]) -> String {
            command_sha256(&Command::sql_bound(Dialect::Postgres, text, params))
        }
        let all = [
            h(text, &one),
            h(text, &other),
            h(text, &null),
            h(text, &empty),
            h(text, &binary),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(h(text, &one), h(text, &one));
        // Without parameters the hash is the text's (plans and simple queries match by text).
        assert_eq!(
            command_sha256(&Command::sql(Dialect::Postgres, text)),
            sha256_hex(text)
        );
        assert_eq!(h(text, &[]), sha256_hex(text));
        assert_ne!(h(text, &one), sha256_hex(text));
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
