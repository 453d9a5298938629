//! The policy engine: classify a command, then decide allow, deny or review, and what to mask.
//! A pure library: no wire bytes here. Protocol handlers call [`Engine::decide`] once per
//! command before the server sees it.
//!
//! STUB: the policy issue replaces this with the real engine; keep the public shapes.

pub mod cli;
pub mod spec;

use std::time::Duration;

use crate::config::Protocol;
use crate::identity::Identity;

/// One command as a protocol handler hands it to policy.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    /// Target name from the config.
    pub target: &'a str,
    pub protocol: Protocol,
    /// The command text (SQL for PostgreSQL and MySQL).
    pub command: &'a str,
}

/// What a review does when nobody decides in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    Deny,
    Escalate,
}

/// The verdict for one command. Every protocol uses this one type.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        rule: String,
        /// Names of the masking rules that apply to the answer.
        mask: Vec<String>,
    },
    Deny {
        rule: String,
        reason: String,
    },
    Review {
        rule: String,
        approvers: Vec<String>,
        quorum: u32,
        ttl: Duration,
        timeout: Duration,
        on_timeout: OnTimeout,
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

    /// `allow`, `deny` or `review`, as in metric labels and `policy explain --json`.
    pub fn action(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Review { .. } => "review",
        }
    }
}

/// The compiled policy.
#[derive(Debug, Default)]
pub struct Engine {}

impl Engine {
    /// Builds the engine from a validated configuration.
    pub fn new(_config: &crate::config::Config) -> Self {
        Engine {}
    }

    /// Decides one command. Never blocks, never fails: anything unexpected is a deny.
    pub fn decide(&self, _req: &Request<'_>) -> Decision {
        Decision::Deny {
            rule: "default".into(),
            reason: "policy engine not built yet".into(),
        }
    }
}
