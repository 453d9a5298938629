//! Inline masking of sensitive values in answers: one engine, three entry points.
//!
//! Compile the configured rules once ([`Masker::new`]). Then, for the answer to one command,
//! with the rules the policy decision made active:
//!
//! - **columns** (database results): [`Masker::plan`] builds a [`ColumnPlan`] from the result's
//!   columns as the protocol resolved them ([`ColumnRef`]: table origin, a protocol-neutral
//!   [`ValueKind`], the wire format); feed it values with [`ColumnPlan::mask_value`]. The
//!   protocols' own row and COPY framing lives with them (PostgreSQL's in
//!   `protocol/postgres/rows.rs`).
//! - **text streams** (SSH and exec output, logs): [`Masker::text`] gives a [`TextMasker`] fed
//!   chunk by chunk; a value split across two chunks is still masked.
//! - **JSON documents** (HTTP and Kubernetes bodies): [`Masker::json`] gives a [`JsonMasker`]
//!   that rewrites a document fed chunk by chunk, masking values at the rules' JSON paths whole
//!   and every string through the detectors.
//!
//! Nothing is written and nothing allocated for a value that nothing matched: the caller
//! forwards the original bytes. Raw values are never logged; callers get per-rule counts for
//! `airlock_masked_values_total{rule}` and the audit log.
//!
//! Column (and path) rules mask a whole value whatever it holds. Detector rules scan text and
//! replace the matched span, or null the whole value for the `null` style. A value the engine
//! cannot replace safely (a binary value of a non-text type under a column rule) is refused
//! with [`MaskError::BinaryUnsupported`]: refuse rather than leak.

pub mod columns;
mod detect;
mod glob;
pub mod json;
mod json_lex;
mod style;
pub mod text;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::config::policy::{MaskRuleSpec, MaskStyle};

pub use columns::{ColumnPlan, ColumnRef, ValueFormat, ValueKind};
pub use json::{JsonMasker, JsonPath};
pub use style::{HASH_HEX_LEN, MIN_KEY_LEN, REDACTED, REDACTED_TEXT};
pub use text::TextMasker;

use detect::{DETECTOR_COUNT, DetectorSet, Match};

pub use glob::ColumnGlob;
use style::Hasher;

/// Most masking rules one configuration may hold (rule sets are 64-bit masks).
pub const MAX_RULES: usize = 64;

/// Errors of the masking layer. The protocol layer turns the per-result-set ones into an
/// ErrorResponse and stops the result: nothing unmasked is sent after a failure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    #[error("masking rule {rule:?}: {reason}")]
    InvalidRule { rule: String, reason: String },
    #[error("{count} masking rules configured; at most {MAX_RULES} are supported")]
    TooManyRules { count: usize },
    #[error("masking key is {len} bytes; the hash style needs at least {MIN_KEY_LEN}")]
    WeakKey { len: usize },
    #[error("masking rule {0:?} is not defined in the configuration")]
    UnknownRule(String),
    #[error(
        "column {column} (type {type_id}) is masked but cannot be masked in binary format; \
         request it in text format"
    )]
    BinaryUnsupported { column: String, type_id: u32 },
    #[error(
        "column {column} comes in {charset}, which the detectors cannot read; \
         ask for results in UTF-8 (character_set_results)"
    )]
    Unreadable {
        column: String,
        charset: &'static str,
    },
    #[error("unknown format code {0} (expected 0 for text or 1 for binary)")]
    FormatCode(i16),
    #[error("column index {index} is out of range (the result has {len} columns)")]
    ColumnIndex { index: usize, len: usize },
    #[error("row has {got} columns; the result description has {expected}")]
    RowShape { got: usize, expected: usize },
    #[error("malformed DataRow: {0}")]
    MalformedRow(&'static str),
    #[error("malformed COPY data: {0}")]
    MalformedCopy(&'static str),
    #[error("malformed catalog row: {0}")]
    Catalog(&'static str),
    #[error("JSON document refused: {0}")]
    Json(String),
}

/// Index of a masking rule in configuration order; name it with [`Masker::rule_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u8);

/// A set of rules (bit `i` = [`RuleId`] `i`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleSet(pub u64);

impl RuleSet {
    /// The set holding one rule.
    pub fn one(rule: RuleId) -> Self {
        Self(1 << rule.0)
    }
    /// Adds a rule.
    pub fn insert(&mut self, rule: RuleId) {
        self.0 |= 1 << rule.0;
    }
    /// Whether the rule is in the set.
    pub fn contains(self, rule: RuleId) -> bool {
        self.0 & (1 << rule.0) != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The rules, lowest id first.
    pub fn iter(self) -> impl Iterator<Item = RuleId> {
        (0..64u8)
            .filter(move |&i| self.0 & (1 << i) != 0)
            .map(RuleId)
    }
}

/// Masked-value counts per rule (a value counts once per rule that changed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskCounts([u32; MAX_RULES]);

impl Default for MaskCounts {
    fn default() -> Self {
        Self([0; MAX_RULES])
    }
}

impl MaskCounts {
    /// Counts one masked value for every rule in `rules`.
    pub fn add(&mut self, rules: RuleSet) {
        let mut bits = rules.0;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            self.0[i] = self.0[i].saturating_add(1);
            bits &= bits - 1;
        }
    }
    /// Adds another set of counts.
    pub fn merge(&mut self, other: &MaskCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }
    /// The count for one rule.
    pub fn get(&self, rule: RuleId) -> u32 {
        self.0[usize::from(rule.0)]
    }
    /// Sum over all rules.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|&c| u64::from(c)).sum()
    }
    /// Non-zero counts, by rule.
    pub fn iter(&self) -> impl Iterator<Item = (RuleId, u32)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (RuleId(i as u8), c))
    }
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&c| c == 0)
    }
}

/// What [`ColumnPlan::mask_value`] did with one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskOutcome {
    /// Nothing matched; nothing was written to `out`; forward the original bytes.
    Unchanged,
    /// The masked value was appended to `out`; `rules` changed it.
    Replaced { rules: RuleSet },
    /// The value must be sent as SQL NULL; nothing was written.
    Null { rule: RuleId },
}

/// What a row-level helper did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowOutcome {
    /// `false`: nothing was written; forward the original message unchanged.
    /// `true`: a complete replacement message (type byte, length, body) was appended to `out`.
    pub rewritten: bool,
    /// Masked values in this row, by rule.
    pub counts: MaskCounts,
}

#[derive(Debug)]
struct Rule {
    name: String,
    globs: Vec<ColumnGlob>,
    /// JSON paths, compiled against [`Inner::json_keys`].
    paths: Vec<json::Compiled>,
    detectors: DetectorSet,
    style: MaskStyle,
    except_groups: Vec<String>,
}

struct Inner {
    rules: Vec<Rule>,
    /// Every key the rules' JSON paths name, once: a document's key is looked up here where
    /// it is read, and paths and steps hold its index.
    json_keys: Vec<Box<[u8]>>,
    hasher: Hasher,
}

/// The compiled masking rules. Cheap to clone (shared); build one per configuration load.
#[derive(Clone)]
pub struct Masker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("Masker")
            .field("rules", &self.inner.rules)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// Compiles the `masking:` rules. `key` keys the hash style (HMAC-SHA256); it may be empty
    /// only when no rule uses `style: hash`, and must otherwise be at least [`MIN_KEY_LEN`]
    /// bytes.
    pub fn new(specs: &[MaskRuleSpec], key: &[u8]) -> Result<Self, MaskError> {
        if specs.len() > MAX_RULES {
            return Err(MaskError::TooManyRules { count: specs.len() });
        }
        let hasher = Hasher::new(key)?;
        let mut rules: Vec<Rule> = Vec::with_capacity(specs.len());
        let mut json_keys = Vec::new();
        for spec in specs {
            let invalid = |reason: String| MaskError::InvalidRule {
                rule: spec.name.clone(),
                reason,
            };
            if spec.name.trim().is_empty() {
                return Err(invalid("the name is empty".into()));
            }
            if rules.iter().any(|r| r.name == spec.name) {
                return Err(invalid("the name is used by another rule".into()));
            }
            if spec.columns.is_empty() && spec.detectors.is_empty() && spec.json_paths.is_empty() {
                return Err(invalid(
                    "it has neither columns, json_paths nor detectors".into(),
                ));
            }
            if spec.style == MaskStyle::Hash && !hasher.is_keyed() {
                return Err(invalid("style hash needs a masking key".into()));
            }
            let globs = spec
                .columns
                .iter()
                .map(|g| ColumnGlob::parse(g))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let paths = spec
                .json_paths
                .iter()
                .map(|p| JsonPath::parse(p).map(|p| json::Compiled::new(&p, &mut json_keys)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let mut detectors = DetectorSet::default();
            for &d in &spec.detectors {
                detectors.insert(d);
            }
            rules.push(Rule {
                name: spec.name.clone(),
                globs,
                paths,
                detectors,
                style: spec.style,
                except_groups: spec.except_groups.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                rules,
                json_keys,
                hasher,
            }),
        })
    }

    /// The name of a rule (for metrics labels and audit records).
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.inner
            .rules
            .get(usize::from(rule.0))
            .map_or("unknown", |r| r.name.as_str())
    }

    /// Whether any of the named rules masks by JSON path: those read only a JSON document,
    /// so an answer in another form (XML, CSV, HTML) would pass them unmasked.
    pub fn has_json_paths(&self, names: &[String]) -> bool {
        self.inner
            .rules
            .iter()
            .any(|r| !r.paths.is_empty() && names.contains(&r.name))
    }

    /// All rule names, in configuration order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.inner.rules.iter().map(|r| r.name.as_str())
    }

    /// The rules of `names` that apply to a caller in `groups`: a rule whose `except_groups`
    /// names one of the caller's groups is dropped. Unknown names are kept, so that
    /// [`Masker::plan`] refuses them.
    pub fn applicable(&self, names: &[String], groups: &[String]) -> Vec<String> {
        names
            .iter()
            .filter(|n| {
                self.inner
                    .rules
                    .iter()
                    .find(|r| &r.name == *n)
                    .is_none_or(|r| !r.except_groups.iter().any(|g| groups.contains(g)))
            })
            .cloned()
            .collect()
    }

    /// The style of a rule.
    fn style(&self, rule: u8) -> MaskStyle {
        self.inner.rules[usize::from(rule)].style
    }

    /// Writes the replacement of `span` in `style`.
    fn write_style(&self, style: MaskStyle, span: &[u8], out: &mut BytesMut) {
        match style {
            MaskStyle::Redact | MaskStyle::Null => out.put_slice(REDACTED),
            MaskStyle::Partial => style::write_partial(span, out),
            MaskStyle::Hash => self.inner.hasher.write(span, out),
        }
    }

    /// The detectors of the `active` rules, each owned by the first active rule that lists it
    /// (an unknown name is an error: fail closed).
    fn active(&self, active: &[String]) -> Result<Active, MaskError> {
        let rules = &self.inner.rules;
        let mut set = RuleSet::default();
        for name in active {
            let idx = rules
                .iter()
                .position(|r| &r.name == name)
                .ok_or_else(|| MaskError::UnknownRule(name.clone()))?;
            set.insert(RuleId(idx as u8));
        }
        let mut det_rule = [NO_RULE; DETECTOR_COUNT];
        let mut detectors = DetectorSet::default();
        for (idx, rule) in rules.iter().enumerate() {
            if !set.contains(RuleId(idx as u8)) {
                continue;
            }
            for d in detect::ALL_DETECTORS {
                if rule.detectors.has(d) && det_rule[d as usize] == NO_RULE {
                    det_rule[d as usize] = idx as u8;
                    detectors.insert(d);
                }
            }
        }
        Ok(Active {
            rules: set,
            detectors,
            det_rule,
        })
    }

    /// Replaces every detector match in `body` (after `prefix`, copied as is) into `out`.
    /// `json`: the value is JSON text, so a partial mask never keeps a quote or escape.
    /// Nothing is written when nothing matched.
    fn scan_into(
        &self,
        active: &Active,
        prefix: &[u8],
        body: &[u8],
        json: bool,
        matches: &mut Vec<Match>,
        out: &mut BytesMut,
    ) -> MaskOutcome {
        matches.clear();
        detect::scan(body, active.detectors, matches);
        if matches.is_empty() {
            return MaskOutcome::Unchanged;
        }
        if let Some(m) = matches
            .iter()
            .find(|m| self.style(active.det_rule[m.detector as usize]) == MaskStyle::Null)
        {
            return MaskOutcome::Null {
                rule: RuleId(active.det_rule[m.detector as usize]),
            };
        }
        out.put_slice(prefix);
        let rules = self.replace(active, body, json, matches, out);
        MaskOutcome::Replaced { rules }
    }

    /// Writes `body` with the spans of `matches` (found in `body`) replaced in their rules'
    /// styles (`null` is written as redacted: a span has no NULL).
    fn replace(
        &self,
        active: &Active,
        body: &[u8],
        json: bool,
        matches: &mut [Match],
        out: &mut BytesMut,
    ) -> RuleSet {
        let mut set = RuleSet::default();
        let mut pos = 0;
        // The scanner yields ordered, disjoint spans; sort and clip anyway, so that a scanner
        // bug can only over-mask, never let matched bytes through.
        if !matches.is_sorted_by_key(|m| m.start) {
            matches.sort_unstable_by_key(|m| m.start);
        }
        for m in matches.iter() {
            if m.end <= pos {
                continue;
            }
            let start = m.start.max(pos);
            let rule = active.det_rule[m.detector as usize];
            let mut style = self.style(rule);
            let span = &body[start..m.end];
            if json && style == MaskStyle::Partial && span.iter().any(|&b| b == b'\\' || b == b'"')
            {
                // Keeping punctuation could break a JSON escape; hide the span whole.
                style = MaskStyle::Redact;
            }
            out.put_slice(&body[pos..start]);
            self.write_style(style, span, out);
            set.insert(RuleId(rule));
            pos = m.end;
        }
        out.put_slice(&body[pos..]);
        set
    }
}

/// The active rules of one answer, and which rule owns each detector.
#[derive(Debug, Clone, Copy)]
struct Active {
    rules: RuleSet,
    detectors: DetectorSet,
    det_rule: [u8; DETECTOR_COUNT],
}

const NO_RULE: u8 = u8::MAX;

#[cfg(test)]
pub(crate) mod tests;
