//! The policy engine: classify a command, then decide allow, deny or review, and what to mask.
//! A pure library: no wire bytes here. Protocol handlers call [`Engine::decide`] (or
//! [`Engine::evaluate`] for the classification and shadow outcomes too) once per command before
//! the server sees it.
//!
//! Fail-closed throughout: SQL that does not parse or trips a pre-parse limit is `unknown`,
//! which only a rule that names `unknown` can allow; a rule over several statements allows only
//! when it covers every one of them; no match means the default (deny unless set); a panic
//! anywhere in evaluation is a deny.

pub mod cache;
pub mod classify;
pub mod cli;
pub mod normalize;
pub mod spec;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, Protocol};
use crate::identity::{Identity, Workload};

pub use cache::{CacheStats, ClassCache};
pub use classify::{Class, ClassSet, Classification, Dialect, Limits, classify};
pub use spec::Action;
use spec::{DefaultAction, Glob, IdentitySpec, Requirement, RuleSpec, TimeWindow, WorkloadMatcher};

/// Entries in a new engine's classification cache.
pub const DEFAULT_CACHE_ENTRIES: usize = 8192;

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

/// A shadow rule that matched: what it would have done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowHit {
    pub rule: String,
    pub action: Action,
}

/// A decision with what it was based on, for the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// The command's classification (shared with the cache; cloning is a refcount).
    pub classification: Arc<Classification>,
    /// Shadow rules that matched before the deciding rule, in order.
    pub shadow: Vec<ShadowHit>,
}

/// Verified token claims, as the identity layer hands them to [`Engine::identify`]. One type
/// for the crate: the OIDC verifier's output.
pub use crate::identity::oidc::TokenClaims;

/// Errors building an engine.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why a rule did not match (for `policy explain`).
type Mismatch = &'static str;

#[derive(Debug)]
struct Rule {
    name: String,
    subjects: Vec<Glob>,
    groups: Vec<String>,
    /// From `identities:` and the inline `workload:`; empty = any caller.
    workloads: Vec<WorkloadMatcher>,
    targets: Vec<String>,
    protocols: Vec<Protocol>,
    classes: Option<ClassSet>,
    kinds: Vec<String>,
    tables: Vec<Glob>,
    functions: Vec<Glob>,
    time: Vec<TimeWindow>,
    /// `require: [token]`: only callers who presented a verified token.
    require_token: bool,
    /// `require: [workload]`: only intercepted callers (the kernel reported the process).
    require_workload: bool,
    /// Token claim globs (`repository: "org/*"`); every one must match, so a token is needed.
    claims: Vec<(String, Glob)>,
    action: Action,
    review: Option<spec::ReviewSpec>,
    /// Indices into `Engine::masking`.
    mask: Vec<usize>,
    reason: Option<String>,
    shadow: bool,
}

#[derive(Debug)]
struct MaskEntry {
    name: String,
    except_groups: Vec<String>,
}

/// The compiled policy. Build one per configuration and swap it in whole (`ArcSwap`): a bad
/// file fails in [`Engine::new`] and the running engine stays.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    default: DefaultAction,
    masking: Vec<MaskEntry>,
    identities: Vec<IdentitySpec>,
    limits: Limits,
    cache: Arc<ClassCache>,
    non_sql: Arc<Classification>,
}

impl Default for Engine {
    /// An engine with no rules: denies everything.
    fn default() -> Self {
        Engine {
            rules: Vec::new(),
            default: DefaultAction::Deny,
            masking: Vec::new(),
            identities: Vec::new(),
            limits: Limits::default(),
            cache: Arc::new(ClassCache::new(DEFAULT_CACHE_ENTRIES)),
            non_sql: Arc::new(non_sql_classification()),
        }
    }
}

fn non_sql_classification() -> Classification {
    Classification {
        kinds: vec!["tcp"],
        statement_classes: vec![Class::Unknown],
        class: Class::Unknown,
        notes: vec!["not a SQL protocol: command not classified".into()],
        ..Default::default()
    }
}

impl Engine {
    /// Builds the engine from a configuration (validated again here, so an engine never
    /// exists for a bad policy).
    pub fn new(config: &Config) -> Result<Engine, PolicyError> {
        Self::with_cache(config, Arc::new(ClassCache::new(DEFAULT_CACHE_ENTRIES)))
    }

    /// Loads and validates a file and builds the engine (for the daemon's reload).
    pub fn load(path: &Path) -> Result<Engine, PolicyError> {
        let config = Config::load(path)?;
        Self::new(&config)
    }

    /// Builds a new engine for `config` that shares this engine's classification cache (for
    /// hot reload: classifications do not depend on rules).
    pub fn rebuild(&self, config: &Config) -> Result<Engine, PolicyError> {
        Self::with_cache(config, Arc::clone(&self.cache))
    }

    /// Builds the engine with a given cache.
    pub fn with_cache(config: &Config, cache: Arc<ClassCache>) -> Result<Engine, PolicyError> {
        spec::validate(config)
            .map_err(|(field, message)| PolicyError::Invalid { field, message })?;
        let masking: Vec<MaskEntry> = config
            .masking
            .iter()
            .map(|m| MaskEntry {
                name: m.name.clone(),
                except_groups: m.except_groups.clone(),
            })
            .collect();
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r, config, &masking))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Engine {
            rules,
            default: config.default.clone(),
            masking,
            identities: config.identities.clone(),
            limits: Limits::default(),
            cache,
            non_sql: Arc::new(non_sql_classification()),
        })
    }

    /// Replaces the pre-parse limits (tests and benchmarks). Starts a fresh cache, since
    /// cached classifications were made under the old limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.cache = Arc::new(ClassCache::new(self.cache.capacity()));
        self
    }

    /// The classification cache's statistics.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Classifies a command as this engine would (cached).
    pub fn classify(&self, protocol: Protocol, command: &str) -> Arc<Classification> {
        match dialect_of(protocol) {
            Some(d) => self.cache.classify(d, command, &self.limits),
            None => Arc::clone(&self.non_sql),
        }
    }

    /// Decides one command. Never blocks, never fails: anything unexpected is a deny.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.evaluate(req).decision
    }

    /// Decides one command and returns the classification and shadow outcomes with it.
    pub fn evaluate(&self, req: &Request<'_>) -> Verdict {
        self.evaluate_at(req, SystemTime::now())
    }

    /// [`Engine::evaluate`] at a given time (time windows).
    pub fn evaluate_at(&self, req: &Request<'_>, now: SystemTime) -> Verdict {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.evaluate_inner(req, now, None)
        }));
        match run {
            Ok(v) => v,
            Err(_) => {
                tracing::error!(target = req.target, "policy evaluation panicked; denying");
                Verdict {
                    decision: Decision::Deny {
                        rule: "default".into(),
                        reason: "internal error in policy evaluation".into(),
                    },
                    classification: Arc::new(Classification::default()),
                    shadow: Vec::new(),
                }
            }
        }
    }

    fn evaluate_inner(
        &self,
        req: &Request<'_>,
        now: SystemTime,
        mut trace: Option<&mut Vec<TraceStep>>,
    ) -> Verdict {
        let cls = self.classify(req.protocol, req.command);
        let sql = dialect_of(req.protocol).is_some();
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut shadow = Vec::new();
        for rule in &self.rules {
            let m = self.mismatch(rule, req, &cls, sql, now_secs);
            if let Some(t) = trace.as_deref_mut() {
                t.push(TraceStep {
                    rule: rule.name.clone(),
                    shadow: rule.shadow,
                    result: match m {
                        None => "matched".into(),
                        Some(why) => format!("no match: {why}"),
                    },
                });
            }
            if m.is_some() {
                continue;
            }
            if rule.shadow {
                tracing::info!(
                    rule = %rule.name,
                    would = rule.action.as_str(),
                    target = req.target,
                    subject = %req.identity.subject,
                    "shadow rule matched (not enforced)"
                );
                shadow.push(ShadowHit {
                    rule: rule.name.clone(),
                    action: rule.action,
                });
                continue;
            }
            let decision = self.apply(rule, req.identity, &cls);
            tracing::debug!(
                rule = %rule.name,
                action = decision.action(),
                class = cls.class.as_str(),
                target = req.target,
                "policy decision"
            );
            return Verdict {
                decision,
                classification: cls,
                shadow,
            };
        }
        let decision = match self.default {
            DefaultAction::Allow if !(sql && cls.classes().contains(Class::Unknown)) => {
                Decision::Allow {
                    rule: "default".into(),
                    mask: self.masks(None, req.identity),
                }
            }
            _ => Decision::Deny {
                rule: "default".into(),
                reason: with_notes(
                    format!("no rule matched ({}); default deny", describe(&cls)),
                    &cls,
                ),
            },
        };
        Verdict {
            decision,
            classification: cls,
            shadow,
        }
    }

    fn apply(&self, rule: &Rule, identity: &Identity, cls: &Classification) -> Decision {
        match rule.action {
            Action::Allow => Decision::Allow {
                rule: rule.name.clone(),
                mask: self.masks(Some(rule), identity),
            },
            Action::Deny => Decision::Deny {
                rule: rule.name.clone(),
                reason: with_notes(
                    rule.reason.clone().unwrap_or_else(|| {
                        format!("denied by rule {} ({})", rule.name, describe(cls))
                    }),
                    cls,
                ),
            },
            Action::Review => match &rule.review {
                Some(r) => Decision::Review {
                    rule: rule.name.clone(),
                    approvers: r.approvers.clone(),
                    quorum: r.quorum,
                    ttl: r.ttl.0,
                    timeout: r.timeout.0,
                    on_timeout: r.on_timeout,
                    escalate_to: r.escalate_to.clone(),
                    mode: r.mode,
                    mask: self.masks(Some(rule), identity),
                },
                // Validation guarantees a review block; deny if that ever fails to hold.
                None => Decision::Deny {
                    rule: rule.name.clone(),
                    reason: "review rule without reviewers".into(),
                },
            },
        }
    }

    /// Masking rules for an answer: the rule's list (or all), minus those the caller's groups
    /// are exempt from.
    fn masks(&self, rule: Option<&Rule>, identity: &Identity) -> Vec<String> {
        let exempt = |m: &MaskEntry| m.except_groups.iter().any(|g| identity.groups.contains(g));
        let list: Box<dyn Iterator<Item = &MaskEntry>> = match rule {
            Some(r) => Box::new(r.mask.iter().filter_map(|i| self.masking.get(*i))),
            None => Box::new(self.masking.iter()),
        };
        list.filter(|m| !exempt(m))
            .map(|m| m.name.clone())
            .collect()
    }

    fn mismatch(
        &self,
        rule: &Rule,
        req: &Request<'_>,
        cls: &Classification,
        sql: bool,
        now_secs: i64,
    ) -> Option<Mismatch> {
        let permissive = rule.action != Action::Deny;
        if !rule.targets.is_empty() && !rule.targets.iter().any(|t| t == req.target) {
            return Some("target");
        }
        if !rule.protocols.is_empty() && !rule.protocols.contains(&req.protocol) {
            return Some("protocol");
        }
        let id = req.identity;
        if rule.require_token && id.token.is_none() {
            return Some("require (no token presented)");
        }
        if rule.require_workload && id.workload.is_none() {
            return Some("require (no workload: connection not intercepted)");
        }
        if !rule.claims.is_empty() {
            let ok = id.token.as_ref().is_some_and(|t| {
                rule.claims
                    .iter()
                    .all(|(k, g)| t.claims.get(k).is_some_and(|v| g.matches(v)))
            });
            if !ok {
                return Some("claims");
            }
        }
        if !rule.subjects.is_empty() && !rule.subjects.iter().any(|g| g.matches(&id.subject)) {
            return Some("subject");
        }
        if !rule.groups.is_empty() && !rule.groups.iter().any(|g| id.groups.contains(g)) {
            return Some("groups");
        }
        if !rule.workloads.is_empty() {
            let ok = id
                .workload
                .as_ref()
                .is_some_and(|w| rule.workloads.iter().any(|m| workload_matches(m, w)));
            if !ok {
                return Some("workload");
            }
        }
        if !rule.time.is_empty() && !rule.time.iter().any(|t| t.contains(now_secs)) {
            return Some("time");
        }
        let classes = cls.classes();
        let unknown = sql && classes.contains(Class::Unknown);
        match rule.classes {
            None if permissive && unknown => return Some("classes (unknown must be named)"),
            None => {}
            Some(rc) => {
                let ok = if permissive {
                    classes.is_subset(rc)
                } else {
                    classes.intersects(rc)
                };
                if !ok {
                    return Some("classes");
                }
            }
        }
        if !rule.kinds.is_empty() {
            let has = |k: &&str| rule.kinds.iter().any(|rk| rk == k);
            let ok = if permissive {
                cls.kinds.iter().all(has)
            } else {
                cls.kinds.iter().any(has)
            };
            if !ok {
                return Some("kinds");
            }
        }
        if !rule.tables.is_empty() {
            let ok = if permissive {
                !unknown
                    && cls
                        .tables()
                        .all(|t| rule.tables.iter().any(|g| table_matches(g, t, false)))
            } else {
                unknown
                    || cls
                        .tables()
                        .any(|t| rule.tables.iter().any(|g| table_matches(g, t, true)))
            };
            if !ok {
                return Some("tables");
            }
        }
        if !rule.functions.is_empty() {
            // A function matches by its full name or by its name without schema.
            let m = |f: &String| {
                let short = f.rsplit('.').next().unwrap_or(f);
                rule.functions
                    .iter()
                    .any(|g| g.matches(f) || g.matches(short))
            };
            let ok = if permissive {
                !unknown && cls.functions.iter().all(m)
            } else {
                unknown || cls.functions.iter().any(m)
            };
            if !ok {
                return Some("functions");
            }
        }
        None
    }

    /// Resolves who a caller is: the token's subject and groups if there is a token, else
    /// `unix:<user>` (or `uid:<n>`); plus the groups of every `identities:` entry that matches:
    /// its OIDC part, if set, is the entry that accepted the token (by name, so two entries
    /// sharing an issuer with different audiences do not grant each other's groups), and its
    /// workload matcher, if set, matches the caller.
    pub fn identify(&self, workload: &Workload, token_claims: Option<&TokenClaims>) -> Identity {
        let subject = match (token_claims, &workload.user) {
            (Some(c), _) => c.subject.clone(),
            (None, Some(u)) => format!("unix:{u}"),
            (None, None) => format!("uid:{}", workload.uid),
        };
        let mut groups: Vec<String> = Vec::new();
        let mut add = |g: &String| {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        };
        if let Some(c) = token_claims {
            c.groups.iter().for_each(&mut add);
        }
        for spec in &self.identities {
            if spec.oidc.is_none() && spec.workload.is_none() {
                continue;
            }
            let oidc_ok = match (&spec.oidc, token_claims) {
                (None, _) => true,
                (Some(_), Some(c)) => c.identity == spec.name,
                (Some(_), None) => false,
            };
            let wl_ok = spec
                .workload
                .as_ref()
                .is_none_or(|m| workload_matches(m, workload));
            if oidc_ok && wl_ok {
                spec.groups.iter().for_each(&mut add);
            }
        }
        Identity {
            subject,
            groups,
            workload: Some(workload.clone()),
            token: token_claims.cloned(),
        }
    }

    /// Explains a decision: classification, every rule tried and why it did or did not
    /// match, and the outcome (the `policy explain` contract).
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        self.explain_at(req, SystemTime::now())
    }

    /// [`Engine::explain`] at a given time.
    pub fn explain_at(&self, req: &Request<'_>, now: SystemTime) -> Explanation {
        let mut trace = Vec::new();
        let v = self.evaluate_inner(req, now, Some(&mut trace));
        let c = &v.classification;
        let (reason, mask, review) = match &v.decision {
            Decision::Allow { mask, .. } => (None, mask.clone(), None),
            Decision::Deny { reason, .. } => (Some(reason.clone()), Vec::new(), None),
            Decision::Review {
                approvers,
                quorum,
                ttl,
                timeout,
                on_timeout,
                escalate_to,
                mode,
                mask,
                ..
            } => (
                None,
                mask.clone(),
                Some(ReviewInfo {
                    approvers: approvers.clone(),
                    quorum: *quorum,
                    ttl_seconds: ttl.as_secs_f64(),
                    timeout_seconds: timeout.as_secs_f64(),
                    on_timeout: *on_timeout,
                    escalate_to: escalate_to.clone(),
                    mode: *mode,
                }),
            ),
        };
        Explanation {
            action: v.decision.action(),
            rule: v.decision.rule().to_string(),
            reason,
            target: req.target.to_string(),
            subject: req.identity.subject.clone(),
            groups: req.identity.groups.clone(),
            class: c.class,
            classes: c.classes().iter().collect(),
            kinds: c.kinds.clone(),
            tables_read: c.tables_read.clone(),
            tables_written: c.tables_written.clone(),
            functions: c.functions.clone(),
            mask,
            review,
            shadow: v.shadow,
            limit: c.limit.clone(),
            notes: c.notes.clone(),
            trace,
        }
    }
}

/// `policy explain` output (also `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `allow`, `deny` or `review`.
    pub action: &'static str,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub target: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// The riskiest class.
    pub class: Class,
    /// Every class present.
    pub classes: Vec<Class>,
    pub kinds: Vec<&'static str>,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    pub functions: Vec<String>,
    pub mask: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewInfo>,
    pub shadow: Vec<ShadowHit>,
    /// Set when a pre-parse limit stopped classification.
    pub limit: Option<String>,
    pub notes: Vec<String>,
    /// Every rule tried, in order.
    pub trace: Vec<TraceStep>,
}

/// The review part of an [`Explanation`].
#[derive(Debug, Clone, Serialize)]
pub struct ReviewInfo {
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub ttl_seconds: f64,
    pub timeout_seconds: f64,
    pub on_timeout: OnTimeout,
    pub escalate_to: Vec<String>,
    pub mode: ReviewMode,
}

/// One rule tried by `explain`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceStep {
    pub rule: String,
    pub shadow: bool,
    /// `matched` or `no match: <filter>`.
    pub result: String,
}

fn describe(cls: &Classification) -> String {
    let classes: Vec<&str> = cls.classes().iter().map(Class::as_str).collect();
    format!("class {}, kind {}", classes.join("+"), cls.kinds.join("+"))
}

fn with_notes(mut reason: String, cls: &Classification) -> String {
    if let Some(limit) = &cls.limit {
        reason.push_str("; not parsed: ");
        reason.push_str(limit);
    } else if cls.class == Class::Unknown
        && let Some(n) = cls.notes.first()
    {
        reason.push_str("; ");
        reason.push_str(n);
    }
    reason
}

/// The SQL dialect of a protocol, `None` for protocols without SQL commands.
pub fn dialect_of(protocol: Protocol) -> Option<Dialect> {
    match protocol.as_str() {
        "postgres" => Some(Dialect::Postgres),
        "mysql" => Some(Dialect::Mysql),
        _ => None,
    }
}

fn compile_rule(
    i: usize,
    r: &RuleSpec,
    config: &Config,
    masking: &[MaskEntry],
) -> Result<Rule, PolicyError> {
    let invalid = |field: &str, message: String| PolicyError::Invalid {
        field: format!("rules[{i}] ({}).{field}", r.name),
        message,
    };
    let mut workloads = Vec::new();
    for n in &r.identities {
        let w = config
            .identities
            .iter()
            .find(|x| &x.name == n)
            .and_then(|x| x.workload.clone())
            .ok_or_else(|| invalid("identities", format!("`{n}` has no workload matcher")))?;
        workloads.push(w);
    }
    if let Some(w) = &r.workload {
        workloads.push(w.clone());
    }
    let mask = match &r.mask {
        None => (0..masking.len()).collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                masking
                    .iter()
                    .position(|m| &m.name == n)
                    .ok_or_else(|| invalid("mask", format!("no masking rule named `{n}`")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Rule {
        name: r.name.clone(),
        subjects: r.subjects.clone(),
        groups: r.groups.clone(),
        workloads,
        targets: r.targets.clone(),
        protocols: r.protocols.clone(),
        classes: if r.classes.is_empty() {
            None
        } else {
            Some(r.classes.iter().copied().collect())
        },
        kinds: r.kinds.clone(),
        tables: r.tables.clone(),
        functions: r.functions.clone(),
        time: r.time.clone(),
        require_token: r.require.contains(&Requirement::Token),
        require_workload: r.require.contains(&Requirement::Workload),
        claims: r
            .claims
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect(),
        action: r.action,
        review: r.review.clone(),
        mask,
        reason: r.reason.clone(),
        shadow: r.shadow,
    })
}

/// Whether a table named in a command matches a rule's glob. A glob without a dot names a
/// table in any schema. An unqualified table in the command matches a schema-qualified glob
/// only when `lenient` (deny rules): the search path decides its schema, and we cannot see it.
pub fn table_matches(glob: &Glob, table: &str, lenient: bool) -> bool {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    if !glob.0.contains('.') {
        return spec::glob_match(glob.0.as_bytes(), last(table).as_bytes());
    }
    if table.contains('.') {
        return glob.matches(table);
    }
    lenient && spec::glob_match(last(&glob.0).as_bytes(), table.as_bytes())
}

/// Whether a workload matcher matches a caller: every field that is set must match.
pub fn workload_matches(m: &WorkloadMatcher, w: &Workload) -> bool {
    let any_glob = |globs: &[String], s: &str| {
        globs
            .iter()
            .any(|g| spec::glob_match(g.as_bytes(), s.as_bytes()))
    };
    if m.is_empty() {
        // An empty matcher would match every caller; validation refuses it, and here it
        // matches nobody.
        return false;
    }
    if !m.users.is_empty() && !w.user.as_deref().is_some_and(|u| any_glob(&m.users, u)) {
        return false;
    }
    if !m.uids.is_empty() && !m.uids.contains(&w.uid) {
        return false;
    }
    if !m.cgroups.is_empty() {
        let ok = w.cgroup_path.as_deref().is_some_and(|p| {
            let p = if p.starts_with('/') {
                std::borrow::Cow::Borrowed(p)
            } else {
                std::borrow::Cow::Owned(format!("/{p}"))
            };
            any_glob(&m.cgroups, &p)
        });
        if !ok {
            return false;
        }
    }
    if !m.pods.is_empty() {
        let ok = w
            .cgroup_path
            .as_deref()
            .and_then(pod_uid)
            .is_some_and(|uid| any_glob(&m.pods, &uid));
        if !ok {
            return false;
        }
    }
    if !m.comms.is_empty() && !any_glob(&m.comms, &w.comm) {
        return false;
    }
    true
}

/// The Kubernetes pod UID in a cgroup path (`…/kubepods-burstable-pod<uid>.slice/…` with
/// underscores for the systemd driver, or `…/pod<uid>/…` for cgroupfs).
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|seg| {
        let i = seg.rfind("pod")?;
        let rest = &seg[i + 3..];
        let rest = rest.strip_suffix(".slice").unwrap_or(rest);
        let uid = rest.replace('_', "-");
        let ok = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        ok.then_some(uid)
    })
}

#[cfg(test)]
mod tests;
