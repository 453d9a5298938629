//! What policy decides for one command: the one `Decision` type of every protocol.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a rule does with the commands it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Review,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 3] = [Action::Allow, Action::Deny, Action::Review];

    /// `allow`, `deny` or `review`, as in the policy file, metric labels and `policy explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Review => "review",
        }
    }
}

/// What a review does when nobody decides in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Deny,
    Escalate,
}

/// How the client experiences a review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewMode {
    /// The command waits until approved, denied or timed out.
    #[default]
    Hold,
    /// The command is refused now with the request id; the same command from the same
    /// identity passes once approved (within `ttl`).
    Retry,
}

/// The verdict of policy for one command. Every protocol uses this one type.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        rule: String,
        /// Names of the masking rules that apply to the answer.
        mask: Vec<String>,
        /// The database role the command runs as (`None`: the target's default).
        run_as: Option<String>,
    },
    Deny {
        rule: String,
        reason: String,
    },
    Review {
        rule: String,
        /// Groups whose members may approve.
        approvers: Vec<String>,
        quorum: u32,
        /// How long an approval stays valid for the same command.
        ttl: Duration,
        /// How long to wait for a decision.
        timeout: Duration,
        on_timeout: OnTimeout,
        /// Groups asked when `on_timeout` is `Escalate`.
        escalate_to: Vec<String>,
        mode: ReviewMode,
        /// Masking rules for the answer once approved.
        mask: Vec<String>,
        /// The database role the command runs as (`None`: the target's default).
        run_as: Option<String>,
        /// The role the approved command runs as, for that one command.
        approved_run_as: Option<String>,
        /// Show reviewers the effect: run the command in a transaction that is rolled back
        /// and attach what it changed (where the protocol and the command allow it).
        dry_run: bool,
    },
}

impl Decision {
    /// The rule that produced this decision (`default` when none matched).
    pub fn rule(&self) -> &str {
        match self {
            Decision::Allow { rule, .. }
            | Decision::Deny { rule, .. }
            | Decision::Review { rule, .. } => rule,
        }
    }

    /// The decision as it stands when the gateway itself refused a command policy let
    /// through (the server refused the role it must run as): a denial by the same rule.
    pub fn refused(self, reason: String) -> Decision {
        match self {
            Decision::Allow { rule, .. } | Decision::Review { rule, .. } => {
                Decision::Deny { rule, reason }
            }
            deny @ Decision::Deny { .. } => deny,
        }
    }

    /// What kind of decision this is.
    pub fn action(&self) -> Action {
        match self {
            Decision::Allow { .. } => Action::Allow,
            Decision::Deny { .. } => Action::Deny,
            Decision::Review { .. } => Action::Review,
        }
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
