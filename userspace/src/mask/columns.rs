//! The columns entry point: database result sets, one plan per result description.

use bytes::{BufMut, BytesMut};

use super::detect::Match;
use super::{Active, MaskCounts, MaskError, MaskOutcome, Masker, RuleId, RuleSet};
use crate::config::policy::{Detector, MaskStyle};

/// Wire format of a result column (a format code: PostgreSQL's RowDescription / Bind, MySQL's
/// text vs binary protocol).
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

/// What a column's values are, as far as masking cares; each protocol maps its own types onto
/// these (PostgreSQL type OIDs, MySQL column types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text whose binary form is the same text bytes (text, varchar, char, name, xml).
    Text,
    /// JSON text. In binary format `binary_prefix` bytes (a version byte, for PostgreSQL's
    /// jsonb) come before it.
    Json { binary_prefix: u8 },
    /// Raw bytes: the binary form is the bytes themselves (bytea, blob).
    Bytes,
    /// Fixed formats no detector can match (numbers, booleans, dates and times, UUIDs): text
    /// is not scanned.
    Plain,
    /// An IP address or network: its binary form is not text.
    Address,
    /// Anything else: text is scanned; a binary value cannot be masked.
    Other,
    /// Text in an encoding whose ASCII characters are not single bytes (UCS-2, UTF-16,
    /// UTF-32: MySQL's `charset`): a column rule replaces it whole, in UTF-8 (the protocol
    /// layer announces the column as such); detectors cannot read it, so a result that needs
    /// them is refused.
    WideText { charset: &'static str },
}

impl ValueKind {
    fn binary_is_text(self) -> bool {
        matches!(self, ValueKind::Text | ValueKind::Bytes)
            || self == (ValueKind::Json { binary_prefix: 0 })
    }

    fn is_json(self) -> bool {
        matches!(self, ValueKind::Json { .. })
    }
}

/// One result column as the protocol layer resolved it. For a column that comes from a table
/// (PostgreSQL's table OID and attribute number, MySQL's org_table and org_name), `schema`,
/// `table` and `column` are the catalog names (not the alias the query gave it). For a computed
/// column they are empty except `column`, the field name: column rules then only match through
/// a `*.*.name` glob, and detectors still apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRef<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub column: &'a str,
    pub kind: ValueKind,
    /// The protocol's own type id, for messages.
    pub type_id: u32,
    pub format: ValueFormat,
}

impl<'a> ColumnRef<'a> {
    /// A column whose origin is unknown (computed).
    pub fn computed(name: &'a str, kind: ValueKind, type_id: u32, format: ValueFormat) -> Self {
        Self {
            schema: "",
            table: "",
            column: name,
            kind,
            type_id,
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

impl Masker {
    /// Builds the plan for one result set. `active` are the rule names the policy decision
    /// listed (an unknown name is an error: fail closed). A column takes the first active rule
    /// (in configuration order) whose globs match it; each detector belongs to the first active
    /// rule that lists it.
    pub fn plan(
        &self,
        columns: &[ColumnRef<'_>],
        active: &[String],
    ) -> Result<ColumnPlan, MaskError> {
        self.plan_with(columns, active, &[])
    }

    /// [`Masker::plan`], with some columns replaced whole whatever they hold: `replace[i]`
    /// names the rule that replaces column `i` (a masked column computed into it; see
    /// `policy::sql::lineage::redactions`). Such a value becomes `[REDACTED]` whatever the
    /// rule's style (a partial or hashed piece of a computed value could still be read),
    /// NULL under `style: null`.
    pub fn plan_with(
        &self,
        columns: &[ColumnRef<'_>],
        active: &[String],
        replace: &[Option<RuleId>],
    ) -> Result<ColumnPlan, MaskError> {
        let active = self.active(active)?;
        let mut cols = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let forced = replace.get(i).copied().flatten();
            cols.push(self.column_action(col, &active, forced)?);
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
            "masking plan"
        );
        Ok(ColumnPlan {
            masker: self.clone(),
            cols,
            active,
            passthrough,
            matches: Vec::new(),
            scratch: BytesMut::new(),
            unescaped: Vec::new(),
            totals: MaskCounts::default(),
        })
    }

    /// The column rules among `active`, in configuration order (an unknown name is an error).
    pub fn column_rules(&self, active: &[String]) -> Result<Vec<RuleId>, MaskError> {
        let active = self.active(active)?;
        Ok(active
            .rules
            .iter()
            .filter(|r| !self.inner.rules[usize::from(r.0)].globs.is_empty())
            .collect())
    }

    /// Whether `rule`'s column globs may match a column as a statement names it (`schema`
    /// `None`: any schema; `column` `None`: any column of the table).
    pub fn rule_may_mask(
        &self,
        rule: RuleId,
        schema: Option<&str>,
        table: &str,
        column: Option<&str>,
    ) -> bool {
        self.inner
            .rules
            .get(usize::from(rule.0))
            .is_some_and(|r| r.globs.iter().any(|g| g.may_match(schema, table, column)))
    }

    fn column_action(
        &self,
        col: &ColumnRef<'_>,
        active: &Active,
        forced: Option<RuleId>,
    ) -> Result<Action, MaskError> {
        let rules = &self.inner.rules;
        let redact = forced.is_some();
        let column_rule = match forced {
            Some(id) => rules.get(usize::from(id.0)).map(|r| (usize::from(id.0), r)),
            None => rules.iter().enumerate().find(|(idx, r)| {
                active.rules.contains(RuleId(*idx as u8))
                    && r.globs
                        .iter()
                        .any(|g| g.matches(col.schema, col.table, col.column))
            }),
        };
        let binary = col.format == ValueFormat::Binary;
        let json = col.kind.is_json();
        let unsupported = || MaskError::BinaryUnsupported {
            column: col.qualified(),
            type_id: col.type_id,
        };
        if let Some((idx, rule)) = column_rule {
            let rule_id = idx as u8;
            if !binary {
                return Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json,
                    redact,
                });
            }
            // NULL needs no type-specific encoding, so every binary type can be nulled.
            if rule.style == MaskStyle::Null {
                return Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json: false,
                    redact,
                });
            }
            return match col.kind {
                ValueKind::Json { binary_prefix } => Ok(Action::Whole {
                    rule: rule_id,
                    skip: usize::from(binary_prefix),
                    json: true,
                    redact,
                }),
                k if k.binary_is_text() => Ok(Action::Whole {
                    rule: rule_id,
                    skip: 0,
                    json,
                    redact,
                }),
                _ => Err(unsupported()),
            };
        }
        if active.detectors.is_empty() {
            return Ok(Action::Pass);
        }
        if let ValueKind::WideText { charset } = col.kind {
            return Err(MaskError::Unreadable {
                column: col.qualified(),
                charset,
            });
        }
        if !binary {
            if col.kind == ValueKind::Plain {
                return Ok(Action::Pass);
            }
            return Ok(Action::Scan { skip: 0, json });
        }
        match col.kind {
            ValueKind::Json { binary_prefix } => Ok(Action::Scan {
                skip: usize::from(binary_prefix),
                json: true,
            }),
            k if k.binary_is_text() => Ok(Action::Scan { skip: 0, json }),
            // A binary address is always an address, which the ip detector would hide in text.
            ValueKind::Address if active.detectors.has(Detector::Ip) => {
                let rule = active.det_rule[Detector::Ip as usize];
                if self.style(rule) == MaskStyle::Null {
                    Ok(Action::Whole {
                        rule,
                        skip: 0,
                        json: false,
                        redact: false,
                    })
                } else {
                    Err(unsupported())
                }
            }
            _ => Ok(Action::Pass),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Forward as is.
    Pass,
    /// A column rule: replace the whole value. `skip` leading bytes are kept (the jsonb
    /// version byte); `json` wraps the replacement as a JSON string.
    Whole {
        rule: u8,
        skip: usize,
        json: bool,
        /// A computed value: `[REDACTED]` whatever the rule's style (NULL stays NULL).
        redact: bool,
    },
    /// Run the active detectors over the value after `skip` bytes.
    Scan { skip: usize, json: bool },
}

/// The masking plan for one result set, with its scratch buffers. One per connection at a
/// time; not shared across threads.
pub struct ColumnPlan {
    masker: Masker,
    cols: Vec<Action>,
    active: Active,
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
            .field("detectors", &self.active.detectors)
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

    /// Whether values of column `col` always pass unchanged (a row codec skips them without
    /// decoding). Out of range counts as not passing.
    pub fn passes(&self, col: usize) -> bool {
        matches!(self.cols.get(col), Some(Action::Pass))
    }

    /// Two reusable buffers for a row codec (an unescaped value, a masked value), taken so that
    /// the codec can call [`mask_value`](Self::mask_value) while it holds them; give them back
    /// with [`put_scratch`](Self::put_scratch) to keep their capacity.
    pub fn take_scratch(&mut self) -> (Vec<u8>, BytesMut) {
        (
            std::mem::take(&mut self.unescaped),
            std::mem::take(&mut self.scratch),
        )
    }

    /// Returns the buffers [`take_scratch`](Self::take_scratch) lent.
    pub fn put_scratch(&mut self, unescaped: Vec<u8>, scratch: BytesMut) {
        self.unescaped = unescaped;
        self.scratch = scratch;
    }

    /// Whether column `col` is masked whole by a column rule (not `null` style) in a type
    /// whose text the client will parse (not text-like): the protocol layer may then announce
    /// the column as text so drivers accept the replacement string.
    pub fn masked_as_text(&self, col: usize, kind: ValueKind) -> bool {
        match self.cols.get(col) {
            Some(Action::Whole {
                rule, json: false, ..
            }) => self.masker.style(*rule) != MaskStyle::Null && !kind.binary_is_text(),
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
            Action::Whole {
                rule,
                skip,
                json,
                redact,
            } => self.whole(rule, skip, json, redact, value, out),
            Action::Scan { skip, json } => {
                let skip = skip.min(value.len());
                let (prefix, body) = value.split_at(skip);
                let mut matches = std::mem::take(&mut self.matches);
                let o = self
                    .masker
                    .scan_into(&self.active, prefix, body, json, &mut matches, out);
                self.matches = matches;
                o
            }
        };
        match outcome {
            MaskOutcome::Unchanged => {}
            MaskOutcome::Replaced { rules } => self.totals.add(rules),
            MaskOutcome::Null { rule } => self.totals.add(RuleSet::one(rule)),
        }
        Ok(outcome)
    }

    fn whole(
        &mut self,
        rule: u8,
        skip: usize,
        json: bool,
        redact: bool,
        value: &[u8],
        out: &mut BytesMut,
    ) -> MaskOutcome {
        let style = match self.masker.style(rule) {
            MaskStyle::Null => return MaskOutcome::Null { rule: RuleId(rule) },
            _ if redact => MaskStyle::Redact,
            s => s,
        };
        let skip = skip.min(value.len());
        let (prefix, body) = value.split_at(skip);
        out.put_slice(prefix);
        if json {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            self.masker.write_style(style, body, &mut scratch);
            super::style::write_json_string(&scratch, out);
            self.scratch = scratch;
        } else {
            self.masker.write_style(style, body, out);
        }
        MaskOutcome::Replaced {
            rules: RuleSet::one(RuleId(rule)),
        }
    }
}
