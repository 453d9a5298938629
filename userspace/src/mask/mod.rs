//! Inline masking of sensitive values in query answers.
//!
//! Compile the configured rules once ([`Masker::new`]); for each result set build a
//! [`ColumnPlan`] from the resolved columns and the rules the policy decision made active
//! ([`Masker::plan`]); then feed it values ([`ColumnPlan::mask_value`]), whole DataRow bodies
//! ([`ColumnPlan::mask_data_row`]) or COPY OUT text data ([`ColumnPlan::mask_copy_data`]).
//! Nothing is written and nothing allocated for a value or row that nothing matched: the caller
//! forwards the original bytes. Raw values are never logged; callers get per-rule counts for
//! `airlock_masked_values_total{rule}` and the audit log.
//!
//! Column rules mask a whole value whatever it holds. Detector rules scan text values (text
//! format for every column whose type can hold text; binary format for text-like types) and
//! replace the matched span, or null the whole value for the `null` style. Binary values of
//! other types under a column rule are refused with [`MaskError::BinaryUnsupported`]: refuse
//! rather than leak.

mod catalog;
mod detect;
mod glob;
mod style;
mod wire;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::policy::spec::{Detector, MaskRuleSpec, MaskStyle};

pub use catalog::{CatalogCache, ColumnOrigin};
pub use style::{HASH_HEX_LEN, MIN_KEY_LEN, REDACTED};
pub use wire::{CsvOptions, escape_copy_text, unescape_copy_text, write_csv_field};

use detect::{DETECTOR_COUNT, DetectorSet, Match};
use glob::ColumnGlob;
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
        "column {column} (type oid {type_oid}) is masked but cannot be masked in binary format; \
         request it in text format"
    )]
    BinaryUnsupported { column: String, type_oid: u32 },
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

/// Wire format of a result column (RowDescription / Bind format code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    Text,
    Binary,
}

impl ValueFormat {
    /// From a protocol format code (0 text, 1 binary).
    pub fn from_code(code: i16) -> Result<Self, MaskError> {
        match code {
            0 => Ok(Self::Text),
            1 => Ok(Self::Binary),
            other => Err(MaskError::FormatCode(other)),
        }
    }
}

/// One result column as the protocol layer resolved it. For a column that comes from a table
/// (RowDescription table OID and attribute number, looked up in [`CatalogCache`]), `schema`,
/// `table` and `column` are the catalog names (not the alias the query gave it). For a computed
/// column they are empty except `column`, the field name: column rules then only match through
/// a `*.*.name` glob, and detectors still apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRef<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub column: &'a str,
    pub type_oid: u32,
    pub format: ValueFormat,
}

impl<'a> ColumnRef<'a> {
    /// A column whose origin is unknown (table OID 0 in RowDescription).
    pub fn computed(name: &'a str, type_oid: u32, format: ValueFormat) -> Self {
        Self {
            schema: "",
            table: "",
            column: name,
            type_oid,
            format,
        }
    }

    fn qualified(&self) -> String {
        if self.table.is_empty() {
            self.column.to_owned()
        } else {
            format!("{}.{}.{}", self.schema, self.table, self.column)
        }
    }
}

/// PostgreSQL type OIDs the masker treats specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Binary representation is the raw text bytes.
fn binary_is_text(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::JSON | oid::XML
    )
}

/// Text output of these types cannot hold anything a detector looks for (fixed formats, at
/// most ten digits), so scanning them would only cost time.
fn text_cannot_hold_secrets(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::BOOL
            | oid::INT2
            | oid::INT4
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::DATE
            | oid::TIME
            | oid::TIMETZ
            | oid::TIMESTAMP
            | oid::TIMESTAMPTZ
            | oid::INTERVAL
            | oid::UUID
    )
}

fn is_json(type_oid: u32) -> bool {
    matches!(type_oid, oid::JSON | oid::JSONB)
}

#[derive(Debug)]
struct Rule {
    name: String,
    globs: Vec<ColumnGlob>,
    detectors: DetectorSet,
    style: MaskStyle,
    except_groups: Vec<String>,
}

struct Inner {
    rules: Vec<Rule>,
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
            if spec.columns.is_empty() && spec.detectors.is_empty() {
                return Err(invalid("it has neither columns nor detectors".into()));
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
            let mut detectors = DetectorSet::default();
            for &d in &spec.detectors {
                detectors.insert(d);
            }
            rules.push(Rule {
                name: spec.name.clone(),
                globs,
                detectors,
                style: spec.style,
                except_groups: spec.except_groups.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner { rules, hasher }),
        })
    }

    /// The name of a rule (for metrics labels and audit records).
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.inner
            .rules
            .get(usize::from(rule.0))
            .map_or("unknown", |r| r.name.as_str())
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

    /// Builds the plan for one result set. `active` are the rule names the policy decision
    /// listed (an unknown name is an error: fail closed). A column takes the first active rule
    /// (in configuration order) whose globs match it; each detector belongs to the first active
    /// rule that lists it.
    pub fn plan(
        &self,
        columns: &[ColumnRef<'_>],
        active: &[String],
    ) -> Result<ColumnPlan, MaskError> {
        let rules = &self.inner.rules;
        let mut active_set = RuleSet::default();
        for name in active {
            let idx = rules
                .iter()
                .position(|r| &r.name == name)
                .ok_or_else(|| MaskError::UnknownRule(name.clone()))?;
            active_set.insert(RuleId(idx as u8));
        }
        let mut det_rule = [NO_RULE; DETECTOR_COUNT];
        let mut detectors = DetectorSet::default();
        for (idx, rule) in rules.iter().enumerate() {
            if !active_set.contains(RuleId(idx as u8)) {
                continue;
            }
            for d in detect::ALL_DETECTORS {
                if rule.detectors.has(d) && det_rule[d as usize] == NO_RULE {
                    det_rule[d as usize] = idx as u8;
                    detectors.insert(d);
                }
            }
        }
        let mut cols = Vec::with_capacity(columns.len());
        for col in columns {
            cols.push(self.column_action(col, active_set, detectors, &det_rule)?);
        }
        let passthrough = cols.iter().all(|a| matches!(a, Action::Pass));
        // Names and counts only: values never reach the log.
        tracing::debug!(
            columns = cols.len(),
            whole = cols
                .iter()
                .filter(|a| matches!(a, Action::Whole { .. }))
                .count(),
            scanned = cols
                .iter()
                .filter(|a| matches!(a, Action::Scan { .. }))
                .count(),
            rules = active.len(),
            "masking plan"
        );
        Ok(ColumnPlan {
            masker: self.clone(),
            cols,
            detectors,
            det_rule,
            passthrough,
            matches: Vec::new(),
            scratch: BytesMut::new(),
            unescaped: Vec::new(),
            totals: MaskCounts::default(),
        })
    }

    fn column_action(
        &self,
        col: &ColumnRef<'_>,
        active: RuleSet,
        detectors: DetectorSet,
        det_rule: &[u8; DETECTOR_COUNT],
    ) -> Result<Action, MaskError> {
        let rules = &self.inner.rules;
        let column_rule = rules.iter().enumerate().find(|(idx, r)| {
            active.contains(RuleId(*idx as u8))
                && r.globs
                    .iter()
                    .any(|g| g.matches(col.schema, col.table, col.column))
        });
        let binary = col.format == ValueFormat::Binary;
        let unsupported = || MaskError::BinaryUnsupported {
            column: col.qualified(),
            type_oid: col.type_oid,
        };
        if let Some((idx, rule)) = column_rule {
            let rule_id = idx as u8;
            let json = is_json(col.type_oid);
            if !binary {
                return Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json,
                });
            }
            // NULL needs no type-specific encoding, so every binary type can be nulled.
            if rule.style == MaskStyle::Null {
                return Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json: false,
                });
            }
            return match col.type_oid {
                oid::JSONB => Ok(Action::Whole {
                    rule: rule_id,
                    skip: 1,
                    json: true,
                }),
                t if binary_is_text(t) || t == oid::BYTEA => Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json,
                }),
                _ => Err(unsupported()),
            };
        }
        if detectors.is_empty() {
            return Ok(Action::Pass);
        }
        let json = is_json(col.type_oid);
        if !binary {
            if text_cannot_hold_secrets(col.type_oid) {
                return Ok(Action::Pass);
            }
            return Ok(Action::Scan { skip: 0, json });
        }
        match col.type_oid {
            oid::JSONB => Ok(Action::Scan {
                skip: 1,
                json: true,
            }),
            t if binary_is_text(t) || t == oid::BYTEA => Ok(Action::Scan { skip: 0, json }),
            // A binary inet is always an address, which the ip detector would hide in text.
            oid::INET | oid::CIDR if detectors.has(Detector::Ip) => {
                let rule = det_rule[Detector::Ip as usize];
                if rules[usize::from(rule)].style == MaskStyle::Null {
                    Ok(Action::Whole {
                        rule,
                        skip: 0,
                        json: false,
                    })
                } else {
                    Err(unsupported())
                }
            }
            _ => Ok(Action::Pass),
        }
    }
}

const NO_RULE: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Forward as is.
    Pass,
    /// A column rule: replace the whole value. `skip` leading bytes are kept (the jsonb
    /// version byte); `json` wraps the replacement as a JSON string.
    Whole { rule: u8, skip: usize, json: bool },
    /// Run the active detectors over the value after `skip` bytes.
    Scan { skip: usize, json: bool },
}

/// The masking plan for one result set, with its scratch buffers. One per connection at a
/// time; not shared across threads.
pub struct ColumnPlan {
    masker: Masker,
    cols: Vec<Action>,
    detectors: DetectorSet,
    det_rule: [u8; DETECTOR_COUNT],
    passthrough: bool,
    matches: Vec<Match>,
    scratch: BytesMut,
    unescaped: Vec<u8>,
    totals: MaskCounts,
}

impl std::fmt::Debug for ColumnPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnPlan")
            .field("cols", &self.cols)
            .field("detectors", &self.detectors)
            .finish_non_exhaustive()
    }
}

impl ColumnPlan {
    /// Number of columns the plan was built for.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether the plan has no columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// `true` when no value of this result can change: the protocol layer may forward rows
    /// without calling the masker at all.
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Whether column `col` is masked whole by a column rule (not `null` style) in a type
    /// whose text the client will parse (not text-like): the protocol layer may then announce
    /// the column as `text` in RowDescription so drivers accept the replacement string.
    pub fn masked_as_text(&self, col: usize, type_oid: u32) -> bool {
        match self.cols.get(col) {
            Some(Action::Whole {
                rule, json: false, ..
            }) => {
                self.masker.inner.rules[usize::from(*rule)].style != MaskStyle::Null
                    && !binary_is_text(type_oid)
                    && type_oid != oid::BYTEA
            }
            _ => false,
        }
    }

    /// The rule name of an id (same as [`Masker::rule_name`]).
    pub fn rule_name(&self, rule: RuleId) -> &str {
        self.masker.rule_name(rule)
    }

    /// Counts of everything masked through this plan so far; resets them. Call at the end of
    /// a result set to bump `airlock_masked_values_total{rule}` and record the audit counts.
    pub fn take_counts(&mut self) -> MaskCounts {
        std::mem::take(&mut self.totals)
    }

    /// Masks one non-NULL value of column `col` (`value` in the column's wire format). On
    /// [`MaskOutcome::Replaced`] the new value was appended to `out`; otherwise nothing was
    /// written.
    pub fn mask_value(
        &mut self,
        col: usize,
        value: &[u8],
        out: &mut BytesMut,
    ) -> Result<MaskOutcome, MaskError> {
        let action = *self.cols.get(col).ok_or(MaskError::ColumnIndex {
            index: col,
            len: self.cols.len(),
        })?;
        let outcome = match action {
            Action::Pass => MaskOutcome::Unchanged,
            Action::Whole { rule, skip, json } => self.whole(rule, skip, json, value, out),
            Action::Scan { skip, json } => self.scan(skip, json, value, out),
        };
        match outcome {
            MaskOutcome::Unchanged => {}
            MaskOutcome::Replaced { rules } => self.totals.add(rules),
            MaskOutcome::Null { rule } => self.totals.add(RuleSet::one(rule)),
        }
        Ok(outcome)
    }

    fn write_style(&self, style: MaskStyle, span: &[u8], out: &mut BytesMut) {
        match style {
            MaskStyle::Redact | MaskStyle::Null => out.put_slice(REDACTED),
            MaskStyle::Partial => style::write_partial(span, out),
            MaskStyle::Hash => self.masker.inner.hasher.write(span, out),
        }
    }

    fn whole(
        &mut self,
        rule: u8,
        skip: usize,
        json: bool,
        value: &[u8],
        out: &mut BytesMut,
    ) -> MaskOutcome {
        let style = self.masker.inner.rules[usize::from(rule)].style;
        if style == MaskStyle::Null {
            return MaskOutcome::Null { rule: RuleId(rule) };
        }
        let skip = skip.min(value.len());
        let (prefix, body) = value.split_at(skip);
        out.put_slice(prefix);
        if json {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            self.write_style(style, body, &mut scratch);
            style::write_json_string(&scratch, out);
            self.scratch = scratch;
        } else {
            self.write_style(style, body, out);
        }
        MaskOutcome::Replaced {
            rules: RuleSet::one(RuleId(rule)),
        }
    }

    fn scan(&mut self, skip: usize, json: bool, value: &[u8], out: &mut BytesMut) -> MaskOutcome {
        let skip = skip.min(value.len());
        let (prefix, body) = value.split_at(skip);
        self.matches.clear();
        detect::scan(body, self.detectors, &mut self.matches);
        if self.matches.is_empty() {
            return MaskOutcome::Unchanged;
        }
        let rules = &self.masker.inner.rules;
        if let Some(m) = self.matches.iter().find(|m| {
            rules[usize::from(self.det_rule[m.detector as usize])].style == MaskStyle::Null
        }) {
            return MaskOutcome::Null {
                rule: RuleId(self.det_rule[m.detector as usize]),
            };
        }
        out.put_slice(prefix);
        let mut set = RuleSet::default();
        let mut pos = 0;
        // The scanner yields ordered, disjoint spans; sort and clip anyway, so that a scanner
        // bug can only over-mask, never let matched bytes through.
        if !self.matches.is_sorted_by_key(|m| m.start) {
            self.matches.sort_unstable_by_key(|m| m.start);
        }
        for m in &self.matches {
            if m.end <= pos {
                continue;
            }
            let m = Match {
                start: m.start.max(pos),
                ..*m
            };
            let rule = self.det_rule[m.detector as usize];
            let mut style = rules[usize::from(rule)].style;
            let span = &body[m.start..m.end];
            if json && style == MaskStyle::Partial && span.iter().any(|&b| b == b'\\' || b == b'"')
            {
                // Keeping punctuation could break a JSON escape; hide the span whole.
                style = MaskStyle::Redact;
            }
            out.put_slice(&body[pos..m.start]);
            self.write_style(style, span, out);
            set.insert(RuleId(rule));
            pos = m.end;
        }
        out.put_slice(&body[pos..]);
        MaskOutcome::Replaced { rules: set }
    }
}

/// The PostgreSQL protocol loop's entry point for one DataRow: same as
/// [`ColumnPlan::mask_data_row`]. On `Ok` with `rewritten == false` forward the original
/// message; with `rewritten == true` send what was appended to `out` instead. On `Err` send an
/// ErrorResponse and drop the rest of the result: never the unmasked row.
pub fn mask_data_row(
    plan: &mut ColumnPlan,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<RowOutcome, MaskError> {
    plan.mask_data_row(body, out)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pg_tests;
