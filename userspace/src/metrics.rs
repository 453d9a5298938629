//! Prometheus metrics, served as text at `GET /metrics` by the web server, beside the daemon's
//! health: `GET /healthz` (the process serves) and `GET /readyz` ([`Health`]).
//!
//! Every label is bounded: `target` and `rule` come from the configuration (never from a
//! client), `protocol` from [`Protocol`], and `action`, `outcome`, `reason` from the fixed enums
//! below. Raw SQL, user names or token claims never become label values.
//!
//! The hot path uses pre-resolved handles: a protocol handler takes a [`TargetMetrics`] once per
//! session ([`Metrics::target`]) and then every count is a single atomic add, with no lock, hash
//! or allocation. The `Metrics::…(target, …)` shortcuts resolve the label set on each call and
//! suit rare events.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{Action, Protocol};

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus prefers).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant,)+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }

            fn index(self) -> usize {
                self as usize
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_enum! {
    /// How an approval request ended (`airlock_approval_requests_total{outcome}`).
    ApprovalOutcome {
        /// Reviewers approved (quorum reached).
        Approved => "approved",
        /// A reviewer denied.
        Denied => "denied",
        /// Nobody decided in time; `on_timeout: deny`.
        TimedOut => "timeout",
        /// Nobody decided in time; `on_timeout: escalate`.
        Escalated => "escalated",
        /// An earlier approval (a grant within its TTL) covered the command.
        Granted => "granted",
        /// The client went away or the request was revoked before a decision.
        Cancelled => "cancelled",
    }
}

label_enum! {
    /// Why a connection was refused before any command ran
    /// (`airlock_denied_connections_total{reason}`).
    DenyReason {
        /// No interception record: the connection did not come through the kernel redirect.
        Unintercepted => "unintercepted",
        /// The kernel refused a connect: no proxy listener is reachable from the caller's
        /// network namespace (no node address configured).
        Unroutable => "unroutable",
        /// The kernel refused a bind to a proxy listener port by another process.
        BindRefused => "bind_refused",
        /// The original destination is not a configured target.
        UnknownTarget => "unknown_target",
        /// A token was required and none was presented.
        Unauthenticated => "unauthenticated",
        /// A token was presented and refused (expired, wrong audience, bad signature, …).
        InvalidToken => "invalid_token",
        /// No identity or workload rule admits the caller.
        Policy => "policy",
        /// The client spoke something the protocol handler refused (e.g. no TLS downgrade).
        Protocol => "protocol",
        /// The target could not be reached.
        Upstream => "upstream",
        /// An internal error; the connection was closed rather than let through.
        Internal => "internal",
    }
}

/// What policy decided for a command (`airlock_commands_total{action}`): the policy's own
/// [`Action`].
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ActionLabel(Action);

impl EncodeLabelValue for ActionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    target: String,
    protocol: &'static str,
    action: ActionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApprovalLabels {
    target: String,
    outcome: ApprovalOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    target: String,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: DenyReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

type IntGauge = Gauge<i64, AtomicI64>;

/// All airlock metrics and their registry. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    approvals: Family<ApprovalLabels, Counter>,
    approval_latency: Histogram,
    approvals_pending: IntGauge,
    sessions: Family<SessionLabels, IntGauge>,
    intercepted: Family<TargetLabel, Counter>,
    denied: Vec<Counter>,
    masked: Family<RuleLabel, Counter>,
    policy_eval: Histogram,
    /// What `/healthz` and `/readyz` answer.
    pub health: Health,
}

/// The daemon's readiness for `/readyz`: set once it accepts on every listener, cleared when
/// it drains or hands over to a new daemon. `/healthz` answers whenever the endpoint does.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric. Label-free series and every `reason` start at zero, so a scrape
    /// shows them before the first event.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let commands = Family::<CommandLabels, Counter>::default();
        let approvals = Family::<ApprovalLabels, Counter>::default();
        // Human approvals: from sub-second (grants, quick reviewers) to hours.
        let approval_latency = Histogram::new([
            0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
        ]);
        let approvals_pending = IntGauge::default();
        let sessions = Family::<SessionLabels, IntGauge>::default();
        let intercepted = Family::<TargetLabel, Counter>::default();
        let denied_family = Family::<ReasonLabel, Counter>::default();
        let masked = Family::<RuleLabel, Counter>::default();
        // Policy evaluation takes microseconds: 1 µs to ~16 ms.
        let policy_eval = Histogram::new(exponential_buckets(1e-6, 2.0, 15));

        // Counters get their `_total` suffix from the library.
        registry.register(
            "airlock_commands",
            "Commands seen by the proxy, by policy action",
            commands.clone(),
        );
        registry.register(
            "airlock_approval_requests",
            "Approval requests, by how they ended",
            approvals.clone(),
        );
        registry.register(
            "airlock_approval_decision_latency_seconds",
            "Time from an approval request to its decision",
            approval_latency.clone(),
        );
        registry.register(
            "airlock_approvals_pending",
            "Approval requests waiting for a decision",
            approvals_pending.clone(),
        );
        registry.register(
            "airlock_sessions_active",
            "Client sessions currently open",
            sessions.clone(),
        );
        registry.register(
            "airlock_intercepted_connections",
            "Connections redirected to the proxy",
            intercepted.clone(),
        );
        registry.register(
            "airlock_denied_connections",
            "Connections refused before any command ran, by reason",
            denied_family.clone(),
        );
        registry.register(
            "airlock_masked_values",
            "Values masked in answers, by masking rule",
            masked.clone(),
        );
        registry.register(
            "airlock_policy_eval_seconds",
            "Time to evaluate policy for one command",
            policy_eval.clone(),
        );
        let denied = DenyReason::ALL
            .iter()
            .map(|&reason| denied_family.get_or_create_owned(&ReasonLabel { reason }))
            .collect();
        Self {
            registry,
            commands,
            approvals,
            approval_latency,
            approvals_pending,
            sessions,
            intercepted,
            denied,
            masked,
            policy_eval,
            health: Health::default(),
        }
    }

    /// Pre-resolved handles for one target, to take once per session. Creating it also makes
    /// the target's series visible (at zero) in the next scrape.
    pub fn target(&self, target: &str, protocol: Protocol) -> TargetMetrics {
        let protocol = protocol.as_str();
        let commands = std::array::from_fn(|i| {
            self.commands.get_or_create_owned(&CommandLabels {
                target: target.to_string(),
                protocol,
                action: ActionLabel(Action::ALL[i]),
            })
        });
        let approvals = std::array::from_fn(|i| {
            self.approvals.get_or_create_owned(&ApprovalLabels {
                target: target.to_string(),
                outcome: ApprovalOutcome::ALL[i],
            })
        });
        TargetMetrics {
            commands,
            approvals,
            sessions: self.sessions.get_or_create_owned(&SessionLabels {
                target: target.to_string(),
                protocol,
            }),
            intercepted: self.intercepted.get_or_create_owned(&TargetLabel {
                target: target.to_string(),
            }),
            approval_latency: self.approval_latency.clone(),
            approvals_pending: self.approvals_pending.clone(),
        }
    }

    /// Counts one command. Prefer [`TargetMetrics::command`] on a per-command path.
    pub fn command(&self, target: &str, protocol: Protocol, action: Action) {
        self.commands
            .get_or_create(&CommandLabels {
                target: target.to_string(),
                protocol: protocol.as_str(),
                action: ActionLabel(action),
            })
            .inc();
    }

    /// A new approval request is waiting.
    pub fn approval_requested(&self) {
        self.approvals_pending.inc();
    }

    /// An approval request ended after `latency`; counts the outcome and releases the pending
    /// slot taken by [`Metrics::approval_requested`].
    pub fn approval_resolved(&self, target: &str, outcome: ApprovalOutcome, latency: Duration) {
        self.approvals
            .get_or_create(&ApprovalLabels {
                target: target.to_string(),
                outcome,
            })
            .inc();
        self.approval_latency.observe(latency.as_secs_f64());
        self.approvals_pending.dec();
    }

    /// A command was covered by an existing grant: counted as outcome `granted`, with no
    /// pending slot and no latency sample.
    pub fn approval_granted(&self, target: &str) {
        self.approvals
            .get_or_create(&ApprovalLabels {
                target: target.to_string(),
                outcome: ApprovalOutcome::Granted,
            })
            .inc();
    }

    /// Sets the pending count outright (e.g. after loading the approval store at start).
    pub fn set_approvals_pending(&self, n: i64) {
        self.approvals_pending.set(n);
    }

    /// A session opened; the gauge goes down when the guard drops.
    pub fn session_started(&self, target: &str, protocol: Protocol) -> SessionGuard {
        let gauge = self.sessions.get_or_create_owned(&SessionLabels {
            target: target.to_string(),
            protocol: protocol.as_str(),
        });
        gauge.inc();
        SessionGuard { gauge }
    }

    /// A connection to `target` was redirected to the proxy.
    pub fn intercepted(&self, target: &str) {
        self.intercepted
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .inc();
    }

    /// A connection was refused before any command ran. Lock-free.
    pub fn denied_connection(&self, reason: DenyReason) {
        if let Some(c) = self.denied.get(reason.index()) {
            c.inc();
        }
    }

    /// `n` values were masked by masking rule `rule` (a name from the config).
    pub fn masked(&self, rule: &str, n: u64) {
        self.masked
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc_by(n);
    }

    /// A pre-resolved counter for masking rule `rule`, for the per-row path.
    pub fn mask_rule(&self, rule: &str) -> Counter {
        self.masked.get_or_create_owned(&RuleLabel {
            rule: rule.to_string(),
        })
    }

    /// One policy evaluation took `elapsed`. Lock-free.
    pub fn policy_eval(&self, elapsed: Duration) {
        self.policy_eval.observe(elapsed.as_secs_f64());
    }

    /// The whole registry in OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Pre-resolved metric handles for one (target, protocol); every method is an atomic add.
#[derive(Debug, Clone)]
pub struct TargetMetrics {
    commands: [Counter; 3],
    approvals: [Counter; 6],
    sessions: IntGauge,
    intercepted: Counter,
    approval_latency: Histogram,
    approvals_pending: IntGauge,
}

impl TargetMetrics {
    /// Counts one command.
    pub fn command(&self, action: Action) {
        self.commands[action as usize].inc();
    }

    /// Counts one connection redirected to this target.
    pub fn intercepted(&self) {
        self.intercepted.inc();
    }

    /// A session opened; the gauge goes down when the guard drops.
    pub fn session_started(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard {
            gauge: self.sessions.clone(),
        }
    }

    /// A new approval request is waiting.
    pub fn approval_requested(&self) {
        self.approvals_pending.inc();
    }

    /// An approval request ended (see [`Metrics::approval_resolved`]).
    pub fn approval_resolved(&self, outcome: ApprovalOutcome, latency: Duration) {
        self.approvals[outcome.index()].inc();
        self.approval_latency.observe(latency.as_secs_f64());
        self.approvals_pending.dec();
    }

    /// A command was covered by an existing grant.
    pub fn approval_granted(&self) {
        self.approvals[ApprovalOutcome::Granted.index()].inc();
    }
}

/// Keeps `airlock_sessions_active` up while a session lives.
#[derive(Debug)]
pub struct SessionGuard {
    gauge: IntGauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// Parses the text format into `series (name{labels}) -> value`, checking each line's
    /// shape on the way.
    pub(crate) fn parse(text: &str) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("numeric value");
            out.insert(series.to_string(), value);
        }
        out
    }

    #[test]
    fn labels_are_fixed_words() {
        assert_eq!(Action::ALL.len(), 3);
        assert_eq!(ApprovalOutcome::TimedOut.as_str(), "timeout");
        assert_eq!(
            DenyReason::ALL[DenyReason::Internal.index()],
            DenyReason::Internal
        );
        let d = crate::model::Decision::Deny {
            rule: "r".into(),
            reason: "x".into(),
        };
        assert_eq!(d.action(), Action::Deny);
        assert!(
            Action::ALL
                .iter()
                .enumerate()
                .all(|(i, a)| *a as usize == i)
        );
    }

    #[test]
    fn encode_shows_every_metric() {
        let m = Arc::new(Metrics::new());
        let db = m.target("demo-db", Protocol::Postgres);
        db.intercepted();
        let session = db.session_started();
        let other = m.session_started("demo-db", Protocol::Postgres);
        db.command(Action::Allow);
        db.command(Action::Allow);
        m.command("demo-db", Protocol::Postgres, Action::Deny);
        db.command(Action::Review);
        db.approval_requested();
        m.approval_requested();
        db.approval_resolved(ApprovalOutcome::Approved, Duration::from_secs(7));
        db.approval_granted();
        m.denied_connection(DenyReason::InvalidToken);
        m.masked("email", 3);
        m.mask_rule("email").inc();
        m.policy_eval(Duration::from_micros(3));
        m.policy_eval(Duration::from_micros(40));
        drop(other);

        let text = m.encode();
        let body = text.as_str();
        assert!(body.ends_with("# EOF\n"));

        let v = parse(body);
        let get = |k: &str| *v.get(k).unwrap_or_else(|| panic!("missing {k} in\n{body}"));
        let t = r#"target="demo-db",protocol="postgres""#;
        assert_eq!(
            get(&format!(r#"airlock_commands_total{{{t},action="allow"}}"#)),
            2.0
        );
        assert_eq!(
            get(&format!(r#"airlock_commands_total{{{t},action="deny"}}"#)),
            1.0
        );
        assert_eq!(
            get(&format!(r#"airlock_commands_total{{{t},action="review"}}"#)),
            1.0
        );
        assert_eq!(
            get(r#"airlock_approval_requests_total{target="demo-db",outcome="approved"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_approval_requests_total{target="demo-db",outcome="granted"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_approval_requests_total{target="demo-db",outcome="timeout"}"#),
            0.0
        );
        assert_eq!(get("airlock_approval_decision_latency_seconds_count"), 1.0);
        assert_eq!(get("airlock_approval_decision_latency_seconds_sum"), 7.0);
        assert_eq!(
            get(r#"airlock_approval_decision_latency_seconds_bucket{le="15.0"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_approval_decision_latency_seconds_bucket{le="5.0"}"#),
            0.0
        );
        assert_eq!(get("airlock_approvals_pending"), 1.0);
        assert_eq!(get(&format!("airlock_sessions_active{{{t}}}")), 1.0);
        assert_eq!(
            get(r#"airlock_intercepted_connections_total{target="demo-db"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_denied_connections_total{reason="invalid_token"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_denied_connections_total{reason="unintercepted"}"#),
            0.0
        );
        assert_eq!(get(r#"airlock_masked_values_total{rule="email"}"#), 4.0);
        assert_eq!(get("airlock_policy_eval_seconds_count"), 2.0);
        // 3 µs falls in the 4 µs bucket, 40 µs in the 64 µs one.
        assert_eq!(
            get(r#"airlock_policy_eval_seconds_bucket{le="0.000004"}"#),
            1.0
        );
        assert_eq!(
            get(r#"airlock_policy_eval_seconds_bucket{le="0.000064"}"#),
            2.0
        );

        drop(session);
        assert!(parse(&m.encode())[&format!("airlock_sessions_active{{{t}}}")] == 0.0);
    }
}
