//! The policy engine: classify a command, then decide allow, deny or review, and what to mask.
//! A pure library: no wire bytes here. The gate calls [`Engine::evaluate`] once per command
//! before the server sees it.
//!
//! Rules have one shared "who" part (subjects, groups, workloads, tokens, time windows,
//! targets, protocols), matched here, and at most one per-protocol "what" part, matched by its
//! module: [`sql`], [`exec`] (command lines; also a Kubernetes exec's argv), [`files`] (file
//! operations by path), [`http`], [`kube`], and the filterless `shell` and `connect`. A rule for one kind of command never
//! matches another kind.
//!
//! Fail-closed throughout: SQL that does not parse or trips a pre-parse limit is `unknown`, as
//! is a command line that cannot be split and an HTTP method or Kubernetes verb not modelled;
//! only an `sql` rule that names `unknown` can allow them. A rule over several statements or
//! programs allows only when it covers every one of them; no match means the default (deny
//! unless set); a panic anywhere in evaluation is a deny.

pub mod cli;
pub mod exec;
pub mod files;
pub mod http;
pub mod kube;
pub mod sql;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::policy::{
    ComparedMasking, ComputedMasking, DefaultAction, ExecSpec, FilesSpec, Glob, HttpSpec,
    IdentitySpec, KubeSpec, Requirement, RuleSpec, TimeWindow, WorkloadMatcher,
};
use crate::config::{Config, ConfigError};
use crate::mask::ColumnGlob;
use crate::model::lineage::{NoRelations, Relations, Source, ValueLineage};
use crate::model::{
    Action, Class, ClassSet, Command, Decision, Dialect, Facts, Identity, OnTimeout, Protocol,
    ReviewMode, TokenClaims, Workload,
};
use sql::lineage::ColumnRule;

pub use sql::{CacheStats, ClassCache, Limits, classify};

/// Entries in a new engine's classification cache.
pub const DEFAULT_CACHE_ENTRIES: usize = 8192;

/// One command as the gate hands it to policy.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    /// Target name from the config.
    pub target: &'a str,
    pub protocol: Protocol,
    pub command: &'a Command<'a>,
}

/// A shadow rule that matched: what it would have done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowHit {
    pub rule: String,
    pub action: Action,
}

/// A decision with what it was based on, for the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub decision: Decision,
    /// The command's classification (shared with the cache; cloning is a refcount).
    pub classification: Arc<Facts>,
    /// Shadow rules that matched before the deciding rule, in order.
    pub shadow: Vec<ShadowHit>,
    /// The command was let through column masking by judging the lineage of names no rule
    /// matches: if one of them is a view over a masked column, judging it
    /// [through](Engine::evaluate_through) the catalog may refuse it. For MySQL also set
    /// for plain column references (its answers name the view, not the table column).
    pub views_matter: bool,
    /// The deciding rule asks for the exchange's bodies to be recorded (`record_bodies`):
    /// the masking rules to apply to them first. Its `mask` list (or every masking rule),
    /// not reduced by `except_groups`: the audit log's readers are not the caller. `None`
    /// when the rule does not ask (or no rule decided).
    pub record_bodies: Option<Vec<String>>,
}

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
    what: What,
    time: Vec<TimeWindow>,
    /// `require: [token]`: only callers who presented a verified token.
    require_token: bool,
    /// `require: [workload]`: only intercepted callers (the kernel reported the process).
    require_workload: bool,
    /// Token claim globs (`repository: "org/*"`); every one must match, so a token is needed.
    claims: Vec<(String, Glob)>,
    action: Action,
    review: Option<crate::config::policy::ReviewSpec>,
    /// Indices into `Engine::masking`.
    mask: Vec<usize>,
    reason: Option<String>,
    shadow: bool,
    /// PostgreSQL role the allowed or approved commands run as.
    run_as: Option<String>,
    /// PostgreSQL role an approved command runs as, for that command only.
    approved_run_as: Option<String>,
    /// HTTP and Kubernetes: record the exchange's bodies, masked with `mask`.
    record_bodies: bool,
}

/// The per-protocol part of a rule.
#[derive(Debug)]
enum What {
    /// No "what" block: every kind of command (never an `unknown` one, unless denying).
    Any,
    Sql(SqlWhat),
    Exec(ExecSpec),
    Shell,
    Files(FilesSpec),
    Http(HttpSpec),
    Kube(KubeSpec),
    Connect,
}

impl What {
    /// Why this rule does not cover a command of another kind.
    fn other_kind(&self) -> &'static str {
        match self {
            What::Any => "kind",
            What::Sql(_) => "kind (an sql rule)",
            What::Exec(_) => "kind (an exec rule)",
            What::Shell => "kind (a shell rule)",
            What::Files(_) => "kind (a files rule)",
            What::Http(_) => "kind (an http rule)",
            What::Kube(_) => "kind (a kube rule)",
            What::Connect => "kind (a connect rule)",
        }
    }
}

/// A rule's `sql` block, compiled.
#[derive(Debug)]
struct SqlWhat {
    classes: Option<ClassSet>,
    kinds: Vec<String>,
    tables: Vec<Glob>,
    functions: Vec<Glob>,
}

#[derive(Debug)]
struct MaskEntry {
    name: String,
    except_groups: Vec<String>,
    /// Column globs (empty: a detector or JSON-path rule, which lineage does not concern).
    columns: Vec<ColumnGlob>,
    computed: ComputedMasking,
    compared: ComparedMasking,
}

impl MaskEntry {
    fn may_mask(&self, src: &Source) -> bool {
        self.columns
            .iter()
            .any(|g| g.may_match(src.schema.as_deref(), &src.table, src.column.as_deref()))
    }

    fn view(&self) -> ColumnRule<'_> {
        ColumnRule {
            name: &self.name,
            computed: self.computed,
            compared: self.compared,
        }
    }
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
    /// Facts of the commands that carry nothing to classify.
    shell: Arc<Facts>,
    connect: Arc<Facts>,
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
            shell: Arc::new(shell_facts()),
            connect: Arc::new(connect_facts()),
        }
    }
}

fn shell_facts() -> Facts {
    Facts {
        notes: vec![
            "an interactive shell: its commands are recorded, not judged one by one".into(),
        ],
        ..Facts::single("shell", Class::Admin)
    }
}

fn connect_facts() -> Facts {
    Facts {
        notes: vec!["an opaque TCP connection: its content is relayed, not inspected".into()],
        ..Facts::single("connect", Class::Admin)
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
        crate::config::policy::validate(config)
            .map_err(|(field, message)| PolicyError::Invalid { field, message })?;
        let masking: Vec<MaskEntry> = config
            .masking
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let columns = m
                    .columns
                    .iter()
                    .map(|g| ColumnGlob::parse(g))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| PolicyError::Invalid {
                        field: format!("masking[{i}] ({}).columns", m.name),
                        message,
                    })?;
                Ok(MaskEntry {
                    name: m.name.clone(),
                    except_groups: m.except_groups.clone(),
                    columns,
                    computed: m.computed,
                    compared: m.compared,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
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
            shell: Arc::new(shell_facts()),
            connect: Arc::new(connect_facts()),
        })
    }

    /// The pre-parse limits (the PostgreSQL handler caps Query and Parse messages by their
    /// `max_bytes`).
    pub fn limits(&self) -> &Limits {
        &self.limits
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

    /// Classifies a command as this engine would (SQL through the cache).
    pub fn classify(&self, command: &Command<'_>) -> Arc<Facts> {
        match command {
            Command::Sql { dialect, text, .. } => self.cache.classify(*dialect, text, &self.limits),
            Command::Exec { line } => Arc::new(exec::classify(line)),
            Command::Shell => Arc::clone(&self.shell),
            Command::File { op, path, to } => Arc::new(files::classify(*op, path, to.as_deref())),
            Command::Connect => Arc::clone(&self.connect),
            Command::Http(h) => Arc::new(http::classify(h)),
            Command::Kube(k) => Arc::new(kube::classify(k)),
        }
    }

    /// Decides one command. Never blocks, never fails: anything unexpected is a deny.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.evaluate(req).decision
    }

    /// Decides one command and returns the classification and shadow outcomes with it.
    pub fn evaluate(&self, req: &Request<'_>) -> Evaluation {
        self.evaluate_at(req, SystemTime::now())
    }

    /// [`Engine::evaluate`] with what the target's catalog says the statement's relation
    /// names stand for: a masked column read through a view is judged as the column itself.
    pub fn evaluate_through(&self, req: &Request<'_>, relations: &dyn Relations) -> Evaluation {
        self.evaluate_guarded(req, SystemTime::now(), relations)
    }

    /// [`Engine::evaluate`] at a given time (time windows).
    pub fn evaluate_at(&self, req: &Request<'_>, now: SystemTime) -> Evaluation {
        self.evaluate_guarded(req, now, &NoRelations)
    }

    fn evaluate_guarded(
        &self,
        req: &Request<'_>,
        now: SystemTime,
        relations: &dyn Relations,
    ) -> Evaluation {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.evaluate_inner(req, now, None, relations)
        }));
        match run {
            Ok(v) => v,
            Err(_) => {
                tracing::error!(target = req.target, "policy evaluation panicked; denying");
                Evaluation {
                    decision: Decision::Deny {
                        rule: "default".into(),
                        reason: "internal error in policy evaluation".into(),
                    },
                    classification: Arc::new(Facts::default()),
                    shadow: Vec::new(),
                    views_matter: false,
                    record_bodies: None,
                }
            }
        }
    }

    fn evaluate_inner(
        &self,
        req: &Request<'_>,
        now: SystemTime,
        mut trace: Option<&mut Vec<TraceStep>>,
        relations: &dyn Relations,
    ) -> Evaluation {
        let cls = self.classify(req.command);
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut shadow = Vec::new();
        for rule in &self.rules {
            let m = self.mismatch(rule, req, &cls, now_secs);
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
            let (decision, views_matter) =
                self.keep_masking(decision, Some(rule), req, &cls, relations);
            tracing::debug!(
                rule = %rule.name,
                action = decision.action().as_str(),
                class = cls.class.as_str(),
                target = req.target,
                "policy decision"
            );
            // Every one of the rule's masking rules: no caller is exempt from the audit log's.
            let record_bodies = rule
                .record_bodies
                .then(|| self.rule_masks(rule).map(|m| m.name.clone()).collect());
            return Evaluation {
                decision,
                classification: cls,
                shadow,
                views_matter,
                record_bodies,
            };
        }
        let (decision, views_matter) = match self.default {
            DefaultAction::Allow if !cls.classes().contains(Class::Unknown) => self.keep_masking(
                Decision::Allow {
                    rule: "default".into(),
                    mask: self.masks(None, req.identity),
                    run_as: None,
                },
                None,
                req,
                &cls,
                relations,
            ),
            _ => (
                Decision::Deny {
                    rule: "default".into(),
                    reason: with_notes(
                        format!("no rule matched ({}); default deny", describe(&cls)),
                        &cls,
                    ),
                },
                false,
            ),
        };
        Evaluation {
            decision,
            classification: cls,
            shadow,
            views_matter,
            record_bodies: None,
        }
    }

    fn apply(&self, rule: &Rule, identity: &Identity, cls: &Facts) -> Decision {
        match rule.action {
            Action::Allow => Decision::Allow {
                rule: rule.name.clone(),
                mask: self.masks(Some(rule), identity),
                run_as: rule.run_as.clone(),
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
                    run_as: rule.run_as.clone(),
                    approved_run_as: rule.approved_run_as.clone(),
                    dry_run: r.dry_run,
                },
                // Validation guarantees a review block; deny if that ever fails to hold.
                None => Decision::Deny {
                    rule: rule.name.clone(),
                    reason: "review rule without reviewers".into(),
                },
            },
        }
    }

    /// A SQL command that would be allowed (or reviewed) with column masking whose lineage
    /// the masking cannot keep (a masked column computed into a result, stored, compared
    /// against a rule's wish, or a statement that cannot be traced) is denied instead, naming
    /// the masking rule and the column: decided here, before the server sees it.
    fn keep_masking(
        &self,
        decision: Decision,
        rule: Option<&Rule>,
        req: &Request<'_>,
        cls: &Facts,
        relations: &dyn Relations,
    ) -> (Decision, bool) {
        if !matches!(req.command, Command::Sql { .. })
            || !matches!(decision, Decision::Allow { .. } | Decision::Review { .. })
        {
            return (decision, false);
        }
        let lineage = &cls.lineage;
        let exempt = |m: &MaskEntry| {
            m.except_groups
                .iter()
                .any(|g| req.identity.groups.contains(g))
        };
        let pick = |i: usize| {
            self.masking
                .get(i)
                .filter(|m| !m.columns.is_empty() && !exempt(m))
        };
        let all = 0..self.masking.len();
        let indices = || -> Vec<usize> {
            match rule {
                Some(r) => r.mask.clone(),
                None => all.clone().collect(),
            }
        };
        // Only the PostgreSQL answer path replaces a computed value whole; elsewhere
        // `computed: redact` would let the value through, so it is judged as `refuse`. And
        // only PostgreSQL reports a table column as the origin of a value read through a
        // subquery or CTE; MySQL names the alias, which no column rule matches.
        let postgres = matches!(
            req.command,
            Command::Sql {
                dialect: Dialect::Postgres,
                ..
            }
        );
        // A plain reference MySQL will not report as the table column: read through a
        // subquery, CTE or view (one with the column, or one that cannot be traced).
        let hidden = |l: &ValueLineage| {
            !postgres
                && (l.derived
                    || l.sources.iter().any(|s| match relations.expand(s) {
                        None => false,
                        Some(Ok(bases)) => !bases.is_empty(),
                        Some(Err(())) => true,
                    }))
        };
        // The common case costs a scan of flags, without allocating: plain columns, and
        // comparisons that every active rule allows.
        let plain = lineage.unknown().is_none()
            && lineage.statements.iter().all(|s| {
                s.stored.is_empty()
                    && !s.has_computed_outputs()
                    && !s.outputs.iter().any(|o| hidden(o.lineage()))
            });
        let mut first = None;
        let mut compared_refused = false;
        let mut visit = |i: usize| {
            if let Some(m) = pick(i) {
                first.get_or_insert(m);
                compared_refused |= m.compared == ComparedMasking::Refuse;
            }
        };
        match rule {
            Some(r) => r.mask.iter().for_each(|&i| visit(i)),
            None => all.clone().for_each(visit),
        }
        let Some(first) = first else {
            return (decision, false);
        };
        if plain && !compared_refused {
            // MySQL names a view, not its table, as a column's origin: any name may be one.
            return (decision, !postgres);
        }
        let active: Vec<&MaskEntry> = indices().into_iter().filter_map(pick).collect();
        let view = |m| view_for(m, postgres);
        // A view's column stands for the table columns it reads; one that cannot be traced
        // counts as masked by the first active rule.
        let rule_for = |src: &Source| {
            let direct = active.iter().find(|m| m.may_mask(src));
            match direct {
                Some(m) => Some(view(m)),
                None => match relations.expand(src) {
                    None => None,
                    Some(Err(())) => Some(view(first)),
                    Some(Ok(bases)) => bases
                        .iter()
                        .find_map(|b| active.iter().find(|m| m.may_mask(b)))
                        .map(|m| view(m)),
                },
            }
        };
        match sql::lineage::judge(lineage, rule_for, Some(view(first)), hidden) {
            Ok(()) => (decision, true),
            Err(refusal) => {
                tracing::info!(
                    rule = decision.rule(),
                    masking_rule = %refusal.rule,
                    "statement refused: its lineage defeats masking"
                );
                (
                    Decision::Deny {
                        rule: decision.rule().to_owned(),
                        reason: refusal.to_string(),
                    },
                    false,
                )
            }
        }
    }

    /// Masking rules for an answer: the rule's list (or all), minus those the caller's groups
    /// are exempt from.
    fn masks(&self, rule: Option<&Rule>, identity: &Identity) -> Vec<String> {
        let exempt = |m: &MaskEntry| m.except_groups.iter().any(|g| identity.groups.contains(g));
        let list: Box<dyn Iterator<Item = &MaskEntry>> = match rule {
            Some(r) => Box::new(self.rule_masks(r)),
            None => Box::new(self.masking.iter()),
        };
        list.filter(|m| !exempt(m))
            .map(|m| m.name.clone())
            .collect()
    }

    /// A rule's masking rules (its list, or all of them when it names none).
    fn rule_masks<'a>(&'a self, rule: &'a Rule) -> impl Iterator<Item = &'a MaskEntry> {
        rule.mask.iter().filter_map(|i| self.masking.get(*i))
    }

    fn mismatch(
        &self,
        rule: &Rule,
        req: &Request<'_>,
        cls: &Facts,
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
        match (&rule.what, req.command) {
            (What::Any, _) => (permissive && cls.classes().contains(Class::Unknown))
                .then_some("kind (unknown commands must be named by a rule's what block)"),
            (What::Sql(w), Command::Sql { .. }) => sql_mismatch(w, cls, permissive),
            (What::Exec(spec), Command::Exec { .. }) => exec::mismatch(spec, cls, permissive),
            (What::Shell, Command::Shell) | (What::Connect, Command::Connect) => None,
            (What::Files(spec), Command::File { op, .. }) => {
                files::mismatch(spec, *op, cls, permissive)
            }
            (What::Http(spec), Command::Http(h)) => {
                http::mismatch(spec, h, permissive, rule.action == Action::Allow)
            }
            (What::Kube(spec), Command::Kube(k)) => kube::mismatch(spec, k, cls, permissive),
            (what, _) => Some(what.other_kind()),
        }
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
        let v = self.evaluate_inner(req, now, Some(&mut trace), &NoRelations);
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
        let (run_as, approved_run_as) = match &v.decision {
            Decision::Allow { run_as, .. } => (run_as.clone(), None),
            Decision::Review {
                run_as,
                approved_run_as,
                ..
            } => (run_as.clone(), approved_run_as.clone()),
            Decision::Deny { .. } => (None, None),
        };
        Explanation {
            action: v.decision.action().as_str(),
            run_as,
            approved_run_as,
            protocol: req.protocol,
            command_kind: req.command.kind(),
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
            programs: c.programs.clone(),
            objects: c.objects.clone(),
            mask,
            review,
            record_bodies: v.record_bodies,
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
    /// The protocol the command was judged for.
    pub protocol: Protocol,
    /// `sql`, `exec`, `shell`, `file`, `http`, `kube` or `connect`.
    pub command_kind: &'static str,
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
    /// Programs a command line runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// What a non-SQL command touches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    pub mask: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewInfo>,
    /// The exchange's bodies go to the audit record, masked with these rules (the rule's
    /// `record_bodies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_bodies: Option<Vec<String>>,
    /// The database role the command runs as (the rule's `run_as`; none: the target's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// The role an approved command runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_run_as: Option<String>,
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

fn describe(cls: &Facts) -> String {
    let classes: Vec<&str> = cls.classes().iter().map(Class::as_str).collect();
    format!("class {}, kind {}", classes.join("+"), cls.kinds.join("+"))
}

fn with_notes(mut reason: String, cls: &Facts) -> String {
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
    let what = if let Some(sql) = r.sql_spec() {
        What::Sql(SqlWhat {
            classes: if sql.classes.is_empty() {
                None
            } else {
                Some(sql.classes.iter().copied().collect())
            },
            kinds: sql.kinds,
            tables: sql.tables,
            functions: sql.functions,
        })
    } else if let Some(e) = &r.exec {
        What::Exec(e.clone())
    } else if r.shell.is_some() {
        What::Shell
    } else if let Some(f) = &r.files {
        What::Files(f.clone())
    } else if let Some(h) = &r.http {
        What::Http(h.clone())
    } else if let Some(k) = &r.kube {
        What::Kube(k.clone())
    } else if r.connect.is_some() {
        What::Connect
    } else {
        What::Any
    };
    Ok(Rule {
        name: r.name.clone(),
        subjects: r.subjects.clone(),
        groups: r.groups.clone(),
        workloads,
        targets: r.targets.clone(),
        protocols: r.protocols.clone(),
        what,
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
        run_as: r.run_as.clone(),
        approved_run_as: r.approved_run_as.clone(),
        record_bodies: r.record_bodies,
    })
}

/// Why an `sql` block does not match a classified SQL command (`None`: it matches).
fn sql_mismatch(w: &SqlWhat, cls: &Facts, permissive: bool) -> Option<Mismatch> {
    let classes = cls.classes();
    let unknown = classes.contains(Class::Unknown);
    match w.classes {
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
    if !w.kinds.is_empty() {
        let has = |k: &&str| w.kinds.iter().any(|rk| rk == k);
        let ok = if permissive {
            cls.kinds.iter().all(has)
        } else {
            cls.kinds.iter().any(has)
        };
        if !ok {
            return Some("kinds");
        }
    }
    if !w.tables.is_empty() {
        let ok = if permissive {
            // A command that touches no table is not "on" the listed tables: without this, a
            // rule allowing `tables: [orders]` also allowed `CREATE ROLE … SUPERUSER`, `COPY
            // (SELECT 1) TO PROGRAM …` or `SET ROLE`, vacuously.
            !unknown
                && cls.tables().next().is_some()
                && cls
                    .tables()
                    .all(|t| w.tables.iter().any(|g| table_matches(g, t, false)))
        } else {
            unknown
                || cls
                    .tables()
                    .any(|t| w.tables.iter().any(|g| table_matches(g, t, true)))
        };
        if !ok {
            return Some("tables");
        }
    }
    if !w.functions.is_empty() {
        // A function matches by its full name or by its name without schema.
        let m = |f: &String| {
            let short = f.rsplit('.').next().unwrap_or(f);
            w.functions.iter().any(|g| g.matches(f) || g.matches(short))
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

/// Whether a table named in a command matches a rule's glob. A glob without a dot names a
/// table in any schema. An unqualified table in the command matches a schema-qualified glob
/// only when `lenient` (deny rules): the search path decides its schema, and we cannot see it.
pub fn table_matches(glob: &Glob, table: &str, lenient: bool) -> bool {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    if !glob.0.contains('.') {
        return crate::config::policy::glob_match(glob.0.as_bytes(), last(table).as_bytes());
    }
    if table.contains('.') {
        return glob.matches(table);
    }
    lenient && crate::config::policy::glob_match(last(&glob.0).as_bytes(), table.as_bytes())
}

/// Whether a workload matcher matches a caller: every field that is set must match.
pub fn workload_matches(m: &WorkloadMatcher, w: &Workload) -> bool {
    let any_glob = |globs: &[String], s: &str| {
        globs
            .iter()
            .any(|g| crate::config::policy::glob_match(g.as_bytes(), s.as_bytes()))
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

/// The Kubernetes pod UID of a cgroup path ([`crate::identity::workload::pod_uid`]).
pub fn pod_uid(path: &str) -> Option<String> {
    crate::identity::workload::pod_uid(path)
}

/// A column rule as the lineage judges it: `computed: redact` only where the protocol's
/// answer path replaces a computed value whole (`redacts`), else `refuse`.
fn view_for(m: &MaskEntry, redacts: bool) -> sql::lineage::ColumnRule<'_> {
    let mut v = m.view();
    if !redacts {
        v.computed = ComputedMasking::Refuse;
    }
    v
}

#[cfg(test)]
mod tests;
