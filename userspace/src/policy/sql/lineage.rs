//! Data lineage of parsed SQL: for every result column, which table columns flow into it and
//! how (a plain reference, computed, or built into a row, array or JSON document); which
//! columns only choose or order rows; which are stored or sent out by another channel.
//!
//! A pure function of the parsed statements ([`analyze`]), run once per statement shape with
//! the classification and cached with it. Names are resolved the way the server resolves them
//! as far as the statement says: aliases, subqueries, CTEs (recursive ones to a fixed point),
//! joins (`USING` columns of a `FULL JOIN` are computed), `LATERAL`, correlated subqueries.
//! What the statement does not say (which of two joined tables has an unqualified column, the
//! columns of `*`) is resolved conservatively: every candidate is a source. What cannot be
//! traced at all (a function the gateway does not know, dynamic SQL, a construct not
//! analysed here) makes the statement's lineage unknown, and masked callers are refused.
//!
//! Dialect-neutral over sqlparser's AST; the protocol side asks [`redactions`] which result
//! columns to replace, given which of them the server reported an origin for.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, CopySource, CopyTarget, DataType, Distinct, Expr, FromTable, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, Insert,
    JoinConstraint, JoinOperator, NamedWindowExpr, ObjectName, ObjectNamePart, OrderBy,
    OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableAlias, TableFactor, TableObject, TableWithJoins, UpdateTableFromKind, Value, Visit,
    Visitor, WildcardAdditionalOptions, WindowType,
};

use crate::config::policy::{ComparedMasking, ComputedMasking};
use crate::model::Dialect;
use crate::model::lineage::{
    Flow, Lineage, Output, Source, StatementLineage, Stored, ValueLineage,
};

/// The lineage of parsed statements (one entry per statement), names resolved the way
/// `dialect`'s server folds them.
pub fn analyze(statements: &[Statement], dialect: Dialect) -> Lineage {
    Lineage {
        statements: statements
            .iter()
            .map(|s| analyze_statement(s, dialect))
            .collect(),
        unknown: None,
    }
}

/// The lineage of a view's definition as the catalog gives it (`pg_get_viewdef`,
/// `information_schema.VIEWS`): `None` when it does not parse into one statement whose lineage
/// can be determined (such a view cannot be traced).
pub fn view_definition(sql: &str, dialect: Dialect) -> Option<StatementLineage> {
    let mut l = super::classify(sql, dialect, &super::Limits::default()).lineage;
    (l.unknown().is_none() && l.statements.len() == 1).then(|| l.statements.remove(0))
}

/// The lineage of one parsed statement.
pub fn analyze_statement(stmt: &Statement, dialect: Dialect) -> StatementLineage {
    let mut a = Analyzer::new(dialect);
    let root = Scope::child(None);
    let cols = a.statement(stmt, &root);
    a.finish(cols)
}

// ---------------------------------------------------------------------------------------------
// Judging lineage against masking rules.

/// A column rule as lineage checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRule<'a> {
    pub name: &'a str,
    pub computed: ComputedMasking,
    pub compared: ComparedMasking,
}

/// Why a statement is refused for a masked caller: the rule, the column and how it flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub column: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "masking rule \"{}\": column {c} {}", self.rule, self.why),
            None => write!(f, "masking rule \"{}\": {}", self.rule, self.why),
        }
    }
}

/// Decides, before the statement runs, whether the masking can be kept: `rule_for` names the
/// first active column rule that may mask a source; `any_rule` is the first active column
/// rule at all (the one named when the lineage cannot be determined). `Ok` means the server
/// may run it: plain references are masked as the columns themselves, computed values that
/// rules let through are replaced whole ([`redactions`]). `hidden` tells a plain reference
/// whose origin the server will not report as the table column (MySQL and MariaDB name a
/// subquery's, CTE's or view's alias instead): one that a rule may mask is refused, as no
/// rule would recognise it in the answer.
pub fn judge<'a>(
    lineage: &Lineage,
    rule_for: impl Fn(&Source) -> Option<ColumnRule<'a>>,
    any_rule: Option<ColumnRule<'a>>,
    hidden: impl Fn(&ValueLineage) -> bool,
) -> Result<(), Refusal> {
    let Some(first) = any_rule else {
        return Ok(());
    };
    if let Some(why) = lineage.unknown() {
        return Err(Refusal {
            rule: first.name.to_owned(),
            column: None,
            why: format!(
                "the statement's data lineage cannot be determined ({why}), so its result \
                 columns cannot be masked"
            ),
        });
    }
    for stmt in &lineage.statements {
        for (i, out) in stmt.outputs.iter().enumerate() {
            let l = out.lineage();
            if l.flow == Flow::Plain && !hidden(l) {
                continue;
            }
            let Some((src, rule)) = l.sources.iter().find_map(|s| rule_for(s).map(|r| (s, r)))
            else {
                continue;
            };
            let what = match out {
                Output::One { name: Some(n), .. } => format!("result column {} (\"{n}\")", i + 1),
                _ => format!("result column {}", i + 1),
            };
            if l.flow == Flow::Plain {
                return Err(Refusal {
                    rule: rule.name.to_owned(),
                    column: Some(src.to_string()),
                    why: format!(
                        "reaches {what} through a subquery, CTE or view, which the server \
                         names instead of the column, so it cannot be masked; select the \
                         column from its table"
                    ),
                });
            }
            if l.flow == Flow::Composite {
                return Err(Refusal {
                    rule: rule.name.to_owned(),
                    column: Some(src.to_string()),
                    why: format!(
                        "flows into {what} inside a row, array or JSON value, which cannot be \
                         masked; select the column itself"
                    ),
                });
            }
            if rule.computed == ComputedMasking::Refuse {
                return Err(Refusal {
                    rule: rule.name.to_owned(),
                    column: Some(src.to_string()),
                    why: format!(
                        "flows into {what} through an expression, which the rule does not \
                         allow (computed: refuse); select the column itself"
                    ),
                });
            }
        }
        if let Some((st, rule)) = stmt
            .stored
            .iter()
            .find_map(|s| rule_for(&s.source).map(|r| (s, r)))
        {
            return Err(Refusal {
                rule: rule.name.to_owned(),
                column: Some(st.source.to_string()),
                why: format!("would be stored or sent out unmasked by {}", st.into),
            });
        }
        if let Some((src, rule)) = stmt.compared.iter().find_map(|s| {
            rule_for(s)
                .filter(|r| r.compared == ComparedMasking::Refuse)
                .map(|r| (s, r))
        }) {
            return Err(Refusal {
                rule: rule.name.to_owned(),
                column: Some(src.to_string()),
                why: "is compared (WHERE, JOIN, GROUP BY, ORDER BY), which the rule does not \
                      allow (compared: refuse)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Which result columns of one result set must be replaced whole, by which rule. `computed[i]`
/// tells whether the server reported no origin for result column `i` (a computed column:
/// PostgreSQL's table OID 0); `statement` is the index of the statement the result set
/// belongs to (the number of statements of the command completed before it).
///
/// A column is replaced when a masked source flows into it and it is not a plain reference
/// the server reported an origin for (those are masked as the column itself). When the
/// result's columns cannot be matched to the statement's outputs one by one (a command of
/// several statements, two `*` over tables in one list, a lineage that cannot be determined),
/// every computed column of the result is replaced if any masked source reaches a result:
/// over-mask rather than leak.
pub fn redactions<R: Copy>(
    lineage: &Lineage,
    statement: usize,
    computed: &[bool],
    rule_for: impl Fn(&Source) -> Option<R>,
    any_rule: Option<R>,
) -> Vec<Option<R>> {
    let n = computed.len();
    let mut out = vec![None; n];
    let Some(any) = any_rule else {
        return out;
    };
    let masked = |l: &ValueLineage| l.sources.iter().find_map(&rule_for);
    let all_computed = |out: &mut Vec<Option<R>>, rule: R| {
        for (o, &c) in out.iter_mut().zip(computed) {
            if c {
                *o = Some(rule);
            }
        }
    };
    // The statement's own lineage, when the result set is surely its: a statement that
    // returns rows at that index (otherwise the server and the parser counted differently,
    // and the union of all of them is used).
    let own = lineage
        .statements
        .get(statement)
        .filter(|s| !s.outputs.is_empty());
    let stmt = match (own, lineage.unknown()) {
        (Some(s), None) => s,
        (_, Some(_)) => {
            all_computed(&mut out, any);
            return out;
        }
        (None, None) => {
            let rule = lineage
                .statements
                .iter()
                .flat_map(|s| s.outputs.iter())
                .find_map(|o| masked(o.lineage()));
            if let Some(r) = rule {
                all_computed(&mut out, r);
            }
            return out;
        }
    };
    let ones = stmt
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::One { .. }))
        .count();
    let manys = stmt.outputs.len() - ones;
    let many_width = match manys {
        0 if n == ones => Some(0),
        1 if n >= ones => Some(n - ones),
        _ => None,
    };
    let Some(many_width) = many_width else {
        if let Some(r) = stmt.outputs.iter().find_map(|o| masked(o.lineage())) {
            all_computed(&mut out, r);
        }
        return out;
    };
    let mut at = 0;
    for o in &stmt.outputs {
        let width = match o {
            Output::One { .. } => 1,
            Output::Many { .. } => many_width,
        };
        let l = o.lineage();
        if let Some(rule) = masked(l) {
            for i in at..at + width {
                if l.flow != Flow::Plain || computed[i] {
                    out[i] = Some(rule);
                }
            }
        }
        at += width;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The analysis.

/// The lineage of one value while it is being worked out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lin {
    flow: Flow,
    sources: BTreeSet<Source>,
    /// Read through a derived relation (see [`ValueLineage::derived`]).
    derived: bool,
    /// Takes a value per row that no table column feeds (a column of `generate_series`, of a
    /// `VALUES` list, of a CTE of literals): row by row it can stand for any constant.
    generated: bool,
}

impl Lin {
    /// A value that no column feeds (a literal, a parameter).
    fn none() -> Self {
        Lin {
            flow: Flow::Computed,
            sources: BTreeSet::new(),
            derived: false,
            generated: false,
        }
    }

    fn plain(source: Source) -> Self {
        Lin {
            flow: Flow::Plain,
            sources: BTreeSet::from([source]),
            derived: false,
            generated: false,
        }
    }

    /// A plain reference to a column of a table (`column` `None`: every column).
    fn of_table(schema: Option<&str>, table: &str, column: Option<&str>, derived: bool) -> Self {
        let mut lin = Lin::plain(Source {
            schema: schema.map(Into::into),
            table: table.into(),
            column: column.map(Into::into),
        });
        lin.derived = derived;
        lin
    }

    /// Adds another candidate or input: sources unite, the riskier flow wins.
    fn absorb(&mut self, other: Lin) {
        self.flow = self.flow.max(other.flow);
        self.derived |= other.derived;
        self.generated |= other.generated;
        if self.sources.is_empty() {
            self.sources = other.sources;
        } else {
            self.sources.extend(other.sources);
        }
    }

    fn computed(mut self) -> Self {
        if self.flow == Flow::Plain {
            self.flow = Flow::Computed;
        }
        self
    }

    /// An expression node computing from its inputs: computed, whatever they were.
    fn into_computed(mut self) -> Self {
        self.flow = Flow::Computed;
        self
    }

    fn composite(mut self) -> Self {
        self.flow = Flow::Composite;
        self
    }

    fn into_value(self) -> ValueLineage {
        ValueLineage {
            flow: self.flow,
            sources: self.sources.into_iter().collect(),
            derived: self.derived,
        }
    }
}

/// One column of a relation (a query's result, a subquery, a CTE).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Col {
    /// `name`: the name the server gives it (`None`: not worked out, so any name may match).
    One { name: Option<String>, lin: Lin },
    /// The columns of a relation whose column list the statement does not show.
    Star(Rel),
}

/// A relation in a `FROM` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rel {
    /// The name it is referred to by (its alias, else the table's name).
    name: String,
    kind: RelKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RelKind {
    /// A table (or view) of the database: its columns are unknown here, each a plain column.
    /// `renamed`: a column alias list renamed some of them, so a name says nothing.
    /// `derived`: reached through a subquery or CTE (`SELECT * FROM (SELECT * FROM t) d`).
    Table {
        schema: Option<String>,
        table: String,
        renamed: bool,
        derived: bool,
    },
    /// A subquery, CTE or `VALUES` list with its columns.
    Derived(Vec<Col>),
    /// A function's result: any column, computed from `Lin`.
    Opaque(Lin),
}

/// Columns merged by `JOIN … USING` (`name`) or `NATURAL JOIN` (`None`: any common name).
#[derive(Debug, Clone)]
struct Merged {
    name: Option<String>,
    lin: Lin,
}

/// One level of name resolution: a query's `FROM` items, with the levels around it.
struct Scope<'p> {
    rels: Vec<Rel>,
    merged: Vec<Merged>,
    ctes: Vec<(String, Vec<Col>)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn child(parent: Option<&'p Scope<'p>>) -> Self {
        Scope {
            rels: Vec::new(),
            merged: Vec::new(),
            ctes: Vec::new(),
            parent,
        }
    }

    fn levels(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |s| s.parent)
    }

    fn cte(&self, name: &str) -> Option<&Vec<Col>> {
        self.levels()
            .find_map(|s| s.ctes.iter().rev().find(|(n, _)| n == name).map(|(_, c)| c))
    }

    /// The innermost relation called `name` (and in `schema`, for a table, when given).
    fn rel(&self, schema: Option<&str>, name: &str) -> Option<&Rel> {
        self.levels().find_map(|s| {
            s.rels.iter().find(|r| {
                r.name == name
                    && match (schema, &r.kind) {
                        (None, _) => true,
                        (
                            Some(want),
                            RelKind::Table {
                                schema: Some(have), ..
                            },
                        ) => want == have,
                        // An unqualified table could be in any schema.
                        (Some(_), RelKind::Table { schema: None, .. }) => true,
                        (Some(_), _) => false,
                    }
            })
        })
    }

    fn has_rels(&self) -> bool {
        self.levels().any(|s| !s.rels.is_empty())
    }
}

/// Whether a name certainly, or possibly, names a column of a relation.
enum Hit {
    Sure(Lin),
    Maybe(Lin),
}

fn find_in(rel: &Rel, col: &str) -> Option<Hit> {
    match &rel.kind {
        RelKind::Table {
            schema,
            table,
            renamed,
            derived,
        } => Some(Hit::Maybe(Lin::of_table(
            schema.as_deref(),
            table,
            (!renamed).then_some(col),
            *derived,
        ))),
        RelKind::Opaque(lin) => Some(Hit::Maybe(lin.clone().computed())),
        RelKind::Derived(cols) => find_in_cols(cols, col),
    }
}

fn find_in_cols(cols: &[Col], col: &str) -> Option<Hit> {
    let mut acc: Option<Lin> = None;
    let mut sure = false;
    let add = |l: Lin, acc: &mut Option<Lin>| match acc {
        Some(a) => a.absorb(l),
        None => *acc = Some(l),
    };
    for c in cols {
        match c {
            Col::One { name: Some(n), lin } if n == col => {
                sure = true;
                add(lin.clone(), &mut acc);
            }
            Col::One { name: None, lin } => add(lin.clone(), &mut acc),
            Col::One { .. } => {}
            Col::Star(rel) => match find_in(rel, col) {
                Some(Hit::Sure(l)) => {
                    sure = true;
                    add(l, &mut acc);
                }
                Some(Hit::Maybe(l)) => add(l, &mut acc),
                None => {}
            },
        }
    }
    acc.map(|l| if sure { Hit::Sure(l) } else { Hit::Maybe(l) })
}

/// Every column of a relation, as one value (a whole-row reference).
fn whole_row(rel: &Rel) -> Lin {
    match &rel.kind {
        RelKind::Table {
            schema,
            table,
            derived,
            ..
        } => Lin::of_table(schema.as_deref(), table, None, *derived).composite(),
        RelKind::Opaque(lin) => lin.clone().composite(),
        RelKind::Derived(cols) => cols_lin(cols).composite(),
    }
}

/// Everything that flows into any of `cols`.
fn cols_lin(cols: &[Col]) -> Lin {
    let mut l = Lin::none();
    for c in cols {
        match c {
            Col::One { lin, .. } => l.absorb(lin.clone()),
            Col::Star(rel) => {
                let mut w = whole_row(rel);
                w.flow = match &rel.kind {
                    RelKind::Table { .. } => Flow::Plain,
                    RelKind::Opaque(x) => x.flow.max(Flow::Computed),
                    RelKind::Derived(inner) => cols_lin(inner).flow,
                };
                l.absorb(w);
            }
        }
    }
    if cols.is_empty() {
        return Lin::none();
    }
    l
}

/// The columns of a subquery or CTE as a query over it reads them: each one marked as read
/// through a derived relation.
fn through(mut cols: Vec<Col>) -> Vec<Col> {
    mark_derived(&mut cols);
    cols
}

fn mark_derived(cols: &mut [Col]) {
    for c in cols {
        match c {
            Col::One { lin, .. } => lin.derived = true,
            Col::Star(rel) => match &mut rel.kind {
                RelKind::Table { derived, .. } => *derived = true,
                RelKind::Derived(inner) => mark_derived(inner),
                RelKind::Opaque(lin) => lin.derived = true,
            },
        }
    }
}

/// The columns of `rel` as `*` expands them.
fn expand(rel: &Rel) -> Vec<Col> {
    match &rel.kind {
        RelKind::Derived(cols) => cols.clone(),
        _ => vec![Col::Star(rel.clone())],
    }
}

/// Applies a column alias list (`AS t(a, b)`) to `cols`: the first columns take the new
/// names; after a `*` of unknown width, which column a name lands on is unknown.
fn rename(cols: Vec<Col>, alias: Option<&TableAlias>, d: Dialect) -> Vec<Col> {
    let Some(alias) = alias.filter(|a| !a.columns.is_empty()) else {
        return cols;
    };
    let mut names = alias.columns.iter().map(|c| ident(&c.name, d));
    let mut lost = false;
    cols.into_iter()
        .map(|c| match c {
            Col::One { name, lin } if !lost => Col::One {
                name: names.next().map(Some).unwrap_or(name),
                lin,
            },
            Col::One { lin, .. } => Col::One { name: None, lin },
            Col::Star(rel) => {
                lost = true;
                let rel = match rel.kind {
                    RelKind::Table {
                        schema,
                        table,
                        derived,
                        ..
                    } => Rel {
                        name: rel.name,
                        kind: RelKind::Table {
                            schema,
                            table,
                            renamed: true,
                            derived,
                        },
                    },
                    RelKind::Derived(inner) => Rel {
                        name: rel.name,
                        kind: RelKind::Opaque(cols_lin(&inner)),
                    },
                    k => Rel {
                        name: rel.name,
                        kind: k,
                    },
                };
                Col::Star(rel)
            }
        })
        .collect()
}

/// PostgreSQL's longest name in bytes (`NAMEDATALEN - 1`): longer ones are cut to it.
const PG_NAME_BYTES: usize = 63;

/// An identifier as the server folds it.
///
/// PostgreSQL lower-cases only the ASCII letters of an unquoted name (`É` stays `É`, and is
/// the column `"É"`), then cuts every name, quoted or not, to 63 bytes: a name told apart
/// only after that byte is the same name to the server.
///
/// MySQL and MariaDB compare column names without case, character by character; backticks
/// quote but do not make a name case-sensitive (as `classify::normalize_name`), so a masked
/// column named `` `EMAIL` `` is still seen. Table names and aliases can be case-sensitive
/// there: the analysis refuses names that differ only in case ([`Analyzer::note`]).
fn ident(id: &Ident, d: Dialect) -> String {
    fold(
        &id.value,
        id.quote_style.is_some() && id.quote_style != Some('`'),
        d,
    )
}

/// A name as the server reads it (`quoted`: in double quotes).
fn fold(name: &str, quoted: bool, d: Dialect) -> String {
    match d {
        Dialect::Postgres => {
            let mut v = if quoted {
                name.to_owned()
            } else {
                name.to_ascii_lowercase()
            };
            if v.len() > PG_NAME_BYTES {
                let mut end = PG_NAME_BYTES;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
            v
        }
        Dialect::Mysql if quoted => name.to_owned(),
        // Per character, as the server does: `str::to_lowercase` would make a final sigma `ς`.
        Dialect::Mysql => name.chars().flat_map(char::to_lowercase).collect(),
    }
}

fn name_parts(name: &ObjectName, d: Dialect) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(ident(id, d)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

fn plain_wildcard(o: &WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_alias.is_none()
}

/// The name the server gives a result column computed by `e`, when it is certain; `None`
/// otherwise (any name may then reach it). MySQL names an expression after its text, so
/// only a column reference has a name known here.
fn figure_name(e: &Expr, d: Dialect) -> Option<String> {
    match d {
        Dialect::Postgres => figure_colname(e).map(|(n, _)| n),
        Dialect::Mysql => match e {
            Expr::Identifier(id) => Some(ident(id, d)),
            Expr::CompoundIdentifier(ids) => ids.last().map(|i| ident(i, d)),
            Expr::Nested(inner) => figure_name(inner, d),
            _ => None,
        },
    }
}

/// PostgreSQL's FigureColnameInternal: the name and its strength (2: a column's or a
/// function's name; 1: a stand-in such as `case`; 0: `?column?`).
fn figure_colname(e: &Expr) -> Option<(String, u8)> {
    let d = Dialect::Postgres;
    let strong = |n: String| Some((n, 2));
    match e {
        Expr::Identifier(id) => strong(ident(id, d)),
        Expr::CompoundIdentifier(ids) => ids.last().and_then(|i| strong(ident(i, d))),
        Expr::Nested(inner) => figure_colname(inner),
        Expr::Function(f) => match f.name.0.last() {
            Some(ObjectNamePart::Identifier(id)) => strong(ident(id, d)),
            _ => None,
        },
        // A weaker name gives way to the type's as written, which is not worked out here.
        Expr::Cast { expr, .. } => figure_colname(expr).filter(|(_, s)| *s == 2),
        // Named after the ELSE branch when that has a strong name, else `case`.
        Expr::Case { else_result, .. } => match else_result.as_deref().map(figure_colname) {
            Some(None) => None,
            Some(Some((n, 2))) => Some((n, 2)),
            _ => Some(("case".into(), 1)),
        },
        Expr::Array(_) => strong("array".into()),
        Expr::Exists { .. } => strong("exists".into()),
        // `true` is `'t'::bool` to the server's grammar: named `bool`.
        Expr::Value(v) if matches!(v.value, Value::Boolean(_)) => None,
        Expr::Value(_)
        | Expr::BinaryOp { .. }
        | Expr::UnaryOp { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::InList { .. }
        | Expr::InSubquery { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. } => Some(("?column?".into(), 0)),
        _ => None,
    }
}

/// What a function does with its arguments, for lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FnKind {
    /// Returns a value computed from its arguments (and nothing else of the database's).
    Value,
    /// Returns a row, array or JSON document built from its arguments.
    Composite,
    /// Counts its arguments' rows: they are compared, not returned.
    Count,
    /// Stores its arguments, or sends them out (and may return them).
    Store(&'static str),
    /// Not known to the gateway: it may read any table, or run SQL given as text.
    Unknown,
}

/// Built-in functions by what they do with their arguments. Anything else, or a function
/// qualified with a schema other than `pg_catalog`, is [`FnKind::Unknown`].
fn function_kind(name: &ObjectName, d: Dialect) -> (FnKind, String) {
    let parts = name_parts(name, d).unwrap_or_default();
    let short = match parts.as_slice() {
        [n] => n.clone(),
        [s, n] if s == "pg_catalog" => n.clone(),
        _ => return (FnKind::Unknown, parts.join(".")),
    };
    let kind = if short.starts_with("lo_") || short == "lowrite" {
        FnKind::Store("a large object function")
    } else {
        match short.as_str() {
            "count" => FnKind::Count,
            "set_config" => FnKind::Store("set_config()"),
            "pg_notify" => FnKind::Store("pg_notify()"),
            "setval" => FnKind::Store("setval()"),
            "pg_advisory_lock"
            | "pg_advisory_xact_lock"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_xact_lock"
            | "pg_advisory_lock_shared"
            | "pg_advisory_unlock"
            | "pg_advisory_unlock_shared" => FnKind::Store("an advisory lock key"),
            // Rows, arrays and JSON.
            "row"
            | "array"
            | "to_json"
            | "to_jsonb"
            | "row_to_json"
            | "array_to_json"
            | "json_build_array"
            | "json_build_object"
            | "jsonb_build_array"
            | "jsonb_build_object"
            | "json_object"
            | "jsonb_object"
            | "json_agg"
            | "jsonb_agg"
            | "json_agg_strict"
            | "jsonb_agg_strict"
            | "json_object_agg"
            | "jsonb_object_agg"
            | "json_objectagg"
            | "json_arrayagg"
            | "json_array"
            | "json_strip_nulls"
            | "jsonb_strip_nulls"
            | "jsonb_set"
            | "jsonb_set_lax"
            | "jsonb_insert"
            | "json_extract_path"
            | "jsonb_extract_path"
            | "jsonb_path_query"
            | "jsonb_path_query_array"
            | "jsonb_path_query_first"
            | "json_array_elements"
            | "jsonb_array_elements"
            | "json_each"
            | "jsonb_each"
            | "json_populate_record"
            | "jsonb_populate_record"
            | "json_populate_recordset"
            | "jsonb_populate_recordset"
            | "json_to_record"
            | "jsonb_to_record"
            | "json_to_recordset"
            | "jsonb_to_recordset"
            | "array_agg"
            | "array_append"
            | "array_prepend"
            | "array_cat"
            | "array_remove"
            | "array_replace"
            | "array_fill"
            | "array_positions"
            | "trim_array"
            | "array_shuffle"
            | "array_sample"
            | "string_to_array"
            | "regexp_split_to_array"
            | "regexp_match"
            | "regexp_matches"
            | "xpath"
            | "xmlagg"
            | "xmlelement"
            | "xmlforest"
            | "xmlconcat"
            | "hstore" => FnKind::Composite,
            // Values computed from the arguments only.
            "ascii"
            | "bit_length"
            | "btrim"
            | "char_length"
            | "character_length"
            | "chr"
            | "concat"
            | "concat_ws"
            | "convert"
            | "convert_from"
            | "convert_to"
            | "decode"
            | "encode"
            | "format"
            | "initcap"
            | "left"
            | "length"
            | "lower"
            | "lpad"
            | "ltrim"
            | "md5"
            | "normalize"
            | "octet_length"
            | "overlay"
            | "parse_ident"
            | "position"
            | "quote_ident"
            | "quote_literal"
            | "quote_nullable"
            | "regexp_count"
            | "regexp_instr"
            | "regexp_like"
            | "regexp_replace"
            | "regexp_substr"
            | "repeat"
            | "replace"
            | "reverse"
            | "right"
            | "rpad"
            | "rtrim"
            | "split_part"
            | "starts_with"
            | "strpos"
            | "substr"
            | "substring"
            | "to_ascii"
            | "to_hex"
            | "translate"
            | "trim"
            | "unistr"
            | "upper"
            | "sha224"
            | "sha256"
            | "sha384"
            | "sha512"
            | "get_byte"
            | "get_bit"
            | "set_byte"
            | "set_bit"
            | "bit_count"
            | "string_agg"
            | "casefold"
            | "text"
            | "abs"
            | "cbrt"
            | "ceil"
            | "ceiling"
            | "degrees"
            | "div"
            | "exp"
            | "factorial"
            | "floor"
            | "gcd"
            | "lcm"
            | "ln"
            | "log"
            | "log10"
            | "min_scale"
            | "mod"
            | "pi"
            | "power"
            | "radians"
            | "round"
            | "scale"
            | "sign"
            | "sqrt"
            | "trim_scale"
            | "trunc"
            | "width_bucket"
            | "random"
            | "random_normal"
            | "acos"
            | "asin"
            | "atan"
            | "atan2"
            | "cos"
            | "cot"
            | "sin"
            | "tan"
            | "sinh"
            | "cosh"
            | "tanh"
            | "asinh"
            | "acosh"
            | "atanh"
            | "acosd"
            | "asind"
            | "atand"
            | "atan2d"
            | "cosd"
            | "cotd"
            | "sind"
            | "tand"
            | "age"
            | "clock_timestamp"
            | "current_date"
            | "current_time"
            | "current_timestamp"
            | "date_bin"
            | "date_part"
            | "date_trunc"
            | "extract"
            | "isfinite"
            | "justify_days"
            | "justify_hours"
            | "justify_interval"
            | "localtime"
            | "localtimestamp"
            | "make_date"
            | "make_interval"
            | "make_time"
            | "make_timestamp"
            | "make_timestamptz"
            | "now"
            | "statement_timestamp"
            | "timeofday"
            | "transaction_timestamp"
            | "to_timestamp"
            | "to_char"
            | "to_date"
            | "to_number"
            | "timezone"
            | "date_add"
            | "date_subtract"
            | "coalesce"
            | "nullif"
            | "greatest"
            | "least"
            | "num_nonnulls"
            | "num_nulls"
            | "pg_typeof"
            | "current_user"
            | "session_user"
            | "user"
            | "current_role"
            | "current_schema"
            | "current_schemas"
            | "current_database"
            | "current_catalog"
            | "version"
            | "current_setting"
            | "pg_backend_pid"
            | "pg_postmaster_start_time"
            | "pg_conf_load_time"
            | "pg_is_in_recovery"
            | "inet_client_addr"
            | "inet_client_port"
            | "inet_server_addr"
            | "inet_server_port"
            | "pg_column_size"
            | "pg_size_pretty"
            | "pg_size_bytes"
            | "pg_sleep"
            | "pg_sleep_for"
            | "pg_sleep_until"
            | "gen_random_uuid"
            | "uuid_generate_v4"
            | "to_regclass"
            | "to_regtype"
            | "to_regproc"
            | "to_regnamespace"
            | "to_regrole"
            | "format_type"
            | "pg_client_encoding"
            | "pg_encoding_to_char"
            | "has_table_privilege"
            | "has_column_privilege"
            | "has_schema_privilege"
            | "has_database_privilege"
            | "has_function_privilege"
            | "pg_table_is_visible"
            | "pg_relation_size"
            | "pg_total_relation_size"
            | "pg_table_size"
            | "pg_indexes_size"
            | "pg_database_size"
            | "obj_description"
            | "col_description"
            | "shobj_description"
            | "pg_get_viewdef"
            | "pg_get_functiondef"
            | "pg_get_indexdef"
            | "pg_get_constraintdef"
            | "pg_get_expr"
            | "pg_get_userbyid"
            | "pg_get_serial_sequence"
            | "txid_current"
            | "pg_current_xact_id"
            | "nextval"
            | "currval"
            | "lastval"
            | "json_typeof"
            | "jsonb_typeof"
            | "json_array_length"
            | "jsonb_array_length"
            | "json_extract_path_text"
            | "jsonb_extract_path_text"
            | "jsonb_pretty"
            | "jsonb_path_exists"
            | "jsonb_path_match"
            | "json_object_keys"
            | "jsonb_object_keys"
            | "json_array_elements_text"
            | "jsonb_array_elements_text"
            | "json_each_text"
            | "jsonb_each_text"
            | "array_length"
            | "array_lower"
            | "array_upper"
            | "array_ndims"
            | "array_dims"
            | "cardinality"
            | "array_position"
            | "array_to_string"
            | "unnest"
            | "generate_series"
            | "generate_subscripts"
            | "string_to_table"
            | "regexp_split_to_table"
            | "avg"
            | "sum"
            | "min"
            | "max"
            | "bit_and"
            | "bit_or"
            | "bit_xor"
            | "bool_and"
            | "bool_or"
            | "every"
            | "stddev"
            | "stddev_pop"
            | "stddev_samp"
            | "variance"
            | "var_pop"
            | "var_samp"
            | "corr"
            | "covar_pop"
            | "covar_samp"
            | "regr_avgx"
            | "regr_avgy"
            | "regr_count"
            | "regr_intercept"
            | "regr_r2"
            | "regr_slope"
            | "regr_sxx"
            | "regr_sxy"
            | "regr_syy"
            | "mode"
            | "percentile_cont"
            | "percentile_disc"
            | "any_value"
            | "row_number"
            | "rank"
            | "dense_rank"
            | "percent_rank"
            | "cume_dist"
            | "ntile"
            | "lag"
            | "lead"
            | "first_value"
            | "last_value"
            | "nth_value"
            | "xmlparse"
            | "xmlserialize"
            | "xmlcomment"
            | "xmltext"
            | "xml_is_well_formed"
            | "xmlexists"
            | "xpath_exists"
            | "to_tsvector"
            | "to_tsquery"
            | "plainto_tsquery"
            | "phraseto_tsquery"
            | "websearch_to_tsquery"
            | "ts_rank"
            | "ts_rank_cd"
            | "ts_headline"
            | "setweight"
            | "strip"
            | "numnode"
            | "querytree"
            | "host"
            | "hostmask"
            | "masklen"
            | "netmask"
            | "network"
            | "broadcast"
            | "family"
            | "abbrev"
            | "set_masklen"
            | "inet_same_family"
            | "inet_merge"
            | "lower_inc"
            | "upper_inc"
            | "lower_inf"
            | "upper_inf"
            | "isempty"
            | "range_merge"
            | "int4range"
            | "int8range"
            | "numrange"
            | "tsrange"
            | "tstzrange"
            | "daterange"
            | "grouping" => FnKind::Value,
            _ => FnKind::Unknown,
        }
    };
    (kind, short)
}

/// MySQL's `@v := x` anywhere in a statement keeps `x` for a later `SELECT @v`, as
/// `SELECT … INTO @v` does.
const USER_VARIABLE: &str = "a user variable (@v := …)";

const SHADOWING_PATH: &str = "a search_path that may list pg_catalog after another schema, \
     where a function could stand in for a built-in";

/// The text of a literal or a name (`SET search_path = public, 'x'`).
fn literal_text(e: &Expr, d: Dialect) -> Option<String> {
    match e {
        Expr::Identifier(id) => Some(ident(id, d)),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                Some(s.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether a search path lists `pg_catalog` after another schema: built-in function names
/// are then looked up there first, and a function of the same name would run instead of the
/// one the lineage knows. (Left out, `pg_catalog` is searched first.)
pub fn shadows_builtins(path: &str) -> bool {
    let items: Vec<String> = path
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    items
        .iter()
        .position(|s| s == "pg_catalog")
        .is_some_and(|i| i > 0)
}

/// Types whose values are rows, arrays or documents.
fn composite_type(t: &DataType, d: Dialect) -> bool {
    match t {
        DataType::JSON | DataType::JSONB | DataType::Array(_) => true,
        DataType::Custom(name, _) => name_parts(name, d).is_none_or(|p| {
            p.last()
                .is_some_and(|n| matches!(n.as_str(), "record" | "hstore" | "json" | "jsonb"))
        }),
        _ => false,
    }
}

/// Statements that move no table data: transaction control, session settings, DDL and DCL
/// that take no query, utility commands.
fn moves_no_data(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Reset(_)
            | Statement::Discard { .. }
            | Statement::Use(_)
            | Statement::Deallocate { .. }
            | Statement::Close { .. }
            | Statement::Fetch { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
            | Statement::Lock(_)
            | Statement::LockTables { .. }
            | Statement::UnlockTables
            | Statement::Truncate(_)
            | Statement::Drop { .. }
            | Statement::DropFunction(_)
            | Statement::DropProcedure { .. }
            | Statement::DropTrigger(_)
            | Statement::DropDomain(_)
            | Statement::DropPolicy(_)
            | Statement::DropExtension(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateRole(_)
            | Statement::CreateUser(_)
            | Statement::AlterRole { .. }
            | Statement::AlterUser(_)
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Deny(_)
            | Statement::Comment { .. }
            | Statement::Analyze(_)
            | Statement::Vacuum(_)
            | Statement::ExplainTable { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowCollation { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowCharset(_)
            | Statement::ShowObjects(_)
            | Statement::ShowProcessList { .. }
            | Statement::Kill { .. }
    )
}

struct Analyzer {
    dialect: Dialect,
    compared: BTreeSet<Source>,
    stored: Vec<Stored>,
    written: BTreeSet<Source>,
    unknown: Option<String>,
    /// MySQL: each relation name as folded, with the first spelling seen.
    spellings: BTreeMap<String, String>,
}

impl Analyzer {
    fn new(dialect: Dialect) -> Self {
        Analyzer {
            dialect,
            compared: BTreeSet::new(),
            stored: Vec::new(),
            written: BTreeSet::new(),
            unknown: None,
            spellings: BTreeMap::new(),
        }
    }

    fn ident(&self, id: &Ident) -> String {
        ident(id, self.dialect)
    }

    fn name_parts(&self, name: &ObjectName) -> Option<Vec<String>> {
        name_parts(name, self.dialect)
    }

    /// Records a name that refers to a relation (a table, schema, alias or CTE). MySQL and
    /// MariaDB tell table names and aliases apart by case where `lower_case_table_names` is 0
    /// (Linux), and not where it is 1; the lineage folds them. Two spellings of one name that
    /// differ only in case could then be two relations to the server and one here (`c` and
    /// `C`), so the statement cannot be traced.
    fn note(&mut self, raw: &str, quoted: bool) {
        if self.dialect != Dialect::Mysql {
            return;
        }
        let folded = fold(raw, quoted, self.dialect);
        match self.spellings.get(&folded) {
            Some(first) if first != raw => {
                let why = format!(
                    "the relation names {first} and {raw} differ only in case, which the server \
                     may tell apart"
                );
                self.unknown(why);
            }
            Some(_) => {}
            None => {
                self.spellings.insert(folded, raw.to_owned());
            }
        }
    }

    fn note_ident(&mut self, id: &Ident) {
        self.note(
            &id.value,
            id.quote_style.is_some() && id.quote_style != Some('`'),
        );
    }

    fn note_name(&mut self, name: &ObjectName) {
        for p in &name.0 {
            if let ObjectNamePart::Identifier(id) = p {
                self.note_ident(id);
            }
        }
    }

    /// The name a `FROM` item is referred to by, from its alias.
    fn alias_name(&mut self, alias: &Option<TableAlias>) -> Option<String> {
        let a = alias.as_ref()?;
        self.note_ident(&a.name);
        Some(self.ident(&a.name))
    }

    /// A table named in the statement, as a relation (see [`table_rel`]).
    fn table(&mut self, name: &ObjectName, alias: Option<String>) -> Option<Rel> {
        self.note_name(name);
        table_rel(name, alias, self.dialect)
    }

    fn unknown(&mut self, why: impl Into<String>) {
        if self.unknown.is_none() {
            self.unknown = Some(why.into());
        }
    }

    fn compare(&mut self, lin: Lin) {
        self.compared.extend(lin.sources);
    }

    /// The computed columns of a CTE or derived table: the server may compute them whether
    /// or not the outer query reads them (DISTINCT, MATERIALIZED), and a cast that fails shows
    /// its input in the error. Counted as compared: seen by the server, not returned.
    fn evaluated(&mut self, cols: &[Col]) {
        for c in cols {
            if let Col::One { lin, .. } = c
                && lin.flow != Flow::Plain
            {
                self.compared.extend(lin.sources.iter().cloned());
            }
        }
    }

    /// The tables a DML statement writes: the relations of its target.
    fn write(&mut self, rels: &[Rel]) {
        for r in rels {
            if let RelKind::Table { schema, table, .. } = &r.kind {
                self.written.insert(Source {
                    schema: schema.as_deref().map(Into::into),
                    table: table.as_str().into(),
                    column: None,
                });
            }
        }
    }

    fn store(&mut self, lin: Lin, into: &'static str) {
        self.stored.extend(
            lin.sources
                .into_iter()
                .map(|source| Stored { source, into }),
        );
    }

    fn finish(mut self, cols: Vec<Col>) -> StatementLineage {
        let mut outputs = Vec::new();
        flatten(cols, &mut outputs);
        self.stored
            .sort_by(|a, b| (&a.source, a.into).cmp(&(&b.source, b.into)));
        self.stored.dedup();
        StatementLineage {
            outputs,
            compared: self.compared.into_iter().collect(),
            stored: self.stored,
            written: self.written.into_iter().collect(),
            unknown: self.unknown.map(Into::into),
        }
    }

    // -- statements ----------------------------------------------------------------------

    fn statement(&mut self, stmt: &Statement, root: &Scope<'_>) -> Vec<Col> {
        match stmt {
            Statement::Query(q) => self.query(q, root),
            Statement::Insert(i) => self.insert(i, root),
            Statement::Update(u) => {
                let mut from: Vec<TableWithJoins> = vec![u.table.clone()];
                if let Some(UpdateTableFromKind::BeforeSet(v) | UpdateTableFromKind::AfterSet(v)) =
                    &u.from
                {
                    from.extend(v.iter().cloned());
                }
                let scope = self.scope_of_from(&from, Some(root));
                let target = self.scope_of_from(std::slice::from_ref(&u.table), None);
                self.write(&target.rels);
                for a in &u.assignments {
                    let l = self.expr(&a.value, &scope);
                    self.store(l, "an UPDATE");
                }
                if let Some(w) = &u.selection {
                    let l = self.expr(w, &scope);
                    self.compare(l);
                }
                self.order_limit(&u.order_by, u.limit.as_ref(), &scope);
                self.returning(u.returning.as_deref(), &scope)
            }
            Statement::Delete(d) => {
                let mut from: Vec<TableWithJoins> = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v.clone(),
                };
                if let Some(u) = &d.using {
                    from.extend(u.iter().cloned());
                }
                let scope = self.scope_of_from(&from, Some(root));
                for t in &d.tables {
                    if let Some(rel) = self.table(t, None) {
                        self.write(std::slice::from_ref(&rel));
                    }
                }
                if d.tables.is_empty() {
                    let target = match &d.from {
                        FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => {
                            self.scope_of_from(v, None)
                        }
                    };
                    self.write(&target.rels);
                }
                if let Some(w) = &d.selection {
                    let l = self.expr(w, &scope);
                    self.compare(l);
                }
                self.order_limit(&d.order_by, d.limit.as_ref(), &scope);
                self.returning(d.returning.as_deref(), &scope)
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                if !*to {
                    if let CopySource::Table { table_name, .. } = source
                        && let Some(rel) = self.table(table_name, None)
                    {
                        self.write(std::slice::from_ref(&rel));
                    }
                    return Vec::new();
                }
                let cols = match source {
                    CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        let Some(rel) = self.table(table_name, None) else {
                            self.unknown("a COPY of a table name not analysed");
                            return Vec::new();
                        };
                        if columns.is_empty() {
                            vec![Col::Star(rel)]
                        } else {
                            columns
                                .iter()
                                .map(|c| {
                                    let name = self.ident(c);
                                    let lin = match find_in(&rel, &name) {
                                        Some(Hit::Sure(l) | Hit::Maybe(l)) => l,
                                        None => Lin::none(),
                                    };
                                    Col::One {
                                        name: Some(name),
                                        lin,
                                    }
                                })
                                .collect()
                        }
                    }
                    CopySource::Query(q) => self.query(q, root),
                };
                match target {
                    CopyTarget::Stdout => cols,
                    _ => {
                        self.store(cols_lin(&cols), "a COPY to a file or program");
                        Vec::new()
                    }
                }
            }
            Statement::Explain { statement, .. } => {
                // The plan comes back, not the rows; what the statement stores or cannot be
                // traced counts (EXPLAIN ANALYZE runs it), and its outputs are only compared.
                let mut inner = Analyzer::new(self.dialect);
                let cols = inner.statement(statement, root);
                let l = inner.finish(cols);
                for o in l.outputs {
                    self.compared.extend(o.lineage().sources.iter().cloned());
                }
                self.compared.extend(l.compared);
                self.stored.extend(l.stored);
                self.written.extend(l.written);
                if let Some(u) = l.unknown {
                    self.unknown(u.to_string());
                }
                Vec::new()
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    match &d.for_query {
                        // FETCH returns the plain columns with their origin; computed ones
                        // cannot be traced there, so they count as stored.
                        Some(q) => {
                            let cols = self.query(q, root);
                            self.store_computed(cols, "a cursor");
                        }
                        None => self.unknown("a DECLARE without a query"),
                    }
                }
                Vec::new()
            }
            Statement::Prepare { statement, .. } => {
                let cols = self.statement(statement, root);
                self.store_computed(cols, "a prepared statement");
                Vec::new()
            }
            Statement::Execute { .. } => {
                self.unknown("EXECUTE runs a statement prepared earlier");
                Vec::new()
            }
            Statement::CreateTable(c) => {
                if let Some(q) = &c.query {
                    let cols = self.query(q, root);
                    self.store(cols_lin(&cols), "CREATE TABLE … AS");
                }
                Vec::new()
            }
            Statement::CreateView(v) => {
                let cols = self.query(&v.query, root);
                self.store(cols_lin(&cols), "a view");
                Vec::new()
            }
            Statement::Set(s) => {
                if let sqlparser::ast::Set::SingleAssignment {
                    variable, values, ..
                } = s
                    && self
                        .name_parts(variable)
                        .is_some_and(|p| p.last().is_some_and(|n| n == "search_path"))
                    && values
                        .iter()
                        .map(|v| literal_text(v, self.dialect))
                        .collect::<Option<Vec<_>>>()
                        .is_none_or(|v| shadows_builtins(&v.join(",")))
                {
                    self.unknown(SHADOWING_PATH);
                }
                let l = self.generic(s, root);
                self.store(l, "SET");
                Vec::new()
            }
            s if moves_no_data(s) => Vec::new(),
            _ => {
                self.unknown("a statement type whose data flow the gateway does not analyse");
                Vec::new()
            }
        }
    }

    /// Computed outputs of a query whose results are not seen here count as stored.
    fn store_computed(&mut self, cols: Vec<Col>, into: &'static str) {
        let mut outs = Vec::new();
        flatten(cols, &mut outs);
        for o in outs {
            let l = o.lineage();
            if l.flow != Flow::Plain {
                self.stored.extend(l.sources.iter().map(|s| Stored {
                    source: s.clone(),
                    into,
                }));
            }
        }
    }

    fn order_limit(
        &mut self,
        order_by: &[sqlparser::ast::OrderByExpr],
        limit: Option<&Expr>,
        scope: &Scope<'_>,
    ) {
        for o in order_by {
            let l = self.expr(&o.expr, scope);
            self.compare(l);
        }
        if let Some(e) = limit {
            let l = self.expr(e, scope);
            self.compare(l);
        }
    }

    fn returning(&mut self, items: Option<&[SelectItem]>, scope: &Scope<'_>) -> Vec<Col> {
        let mut cols = Vec::new();
        for item in items.unwrap_or_default() {
            self.select_item(item, scope, &mut cols);
        }
        cols
    }

    fn insert(&mut self, i: &Insert, root: &Scope<'_>) -> Vec<Col> {
        let TableObject::TableName(name) = &i.table else {
            self.unknown("an INSERT into a table function");
            return Vec::new();
        };
        let alias = i.table_alias.as_ref().map(|a| {
            self.note_ident(&a.alias);
            self.ident(&a.alias)
        });
        let Some(target) = self.table(name, alias) else {
            self.unknown("an INSERT target not analysed");
            return Vec::new();
        };
        if let Some(src) = &i.source {
            let cols = self.query(src, root);
            self.store(cols_lin(&cols), "an INSERT");
        }
        self.write(std::slice::from_ref(&target));
        let mut scope = Scope::child(Some(root));
        scope.rels.push(target.clone());
        for a in &i.assignments {
            let l = self.expr(&a.value, &scope);
            self.store(l, "an INSERT");
        }
        if let Some(on) = &i.on {
            // ON CONFLICT … DO UPDATE SET x = excluded.y: the proposed row is the target's.
            let mut excluded = target.clone();
            excluded.name = "excluded".into();
            scope.rels.push(excluded);
            let l = self.generic(on, &scope);
            self.store(l, "an INSERT … ON CONFLICT");
        }
        if i.partitioned.is_some()
            || !i.multi_table_into_clauses.is_empty()
            || !i.multi_table_when_clauses.is_empty()
        {
            self.unknown("an INSERT form not analysed");
        }
        let mut ret = Scope::child(Some(root));
        ret.rels.push(target);
        self.returning(i.returning.as_deref(), &ret)
    }

    // -- queries -------------------------------------------------------------------------

    fn query(&mut self, q: &Query, parent: &Scope<'_>) -> Vec<Col> {
        let mut scope = Scope::child(Some(parent));
        if let Some(with) = &q.with {
            // In a RECURSIVE list a CTE may name one defined after it (both servers resolve
            // it); read one at a time, that name would pass for a table of the same name.
            // One walk per CTE (a statement may hold thousands of them).
            if with.recursive {
                let position: std::collections::HashMap<String, usize> = with
                    .cte_tables
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (self.ident(&c.alias.name), i))
                    .collect();
                let names_later = with.cte_tables.iter().enumerate().any(|(i, cte)| {
                    relation_names(&cte.query, self.dialect)
                        .iter()
                        .any(|n| position.get(n).is_some_and(|&at| at > i))
                });
                if names_later {
                    self.unknown("a recursive WITH whose query names a CTE defined after it");
                }
            }
            for cte in &with.cte_tables {
                self.note_ident(&cte.alias.name);
                let name = self.ident(&cte.alias.name);
                let cols = if with.recursive && references(&cte.query, &name, self.dialect) {
                    self.recursive_cte(&cte.query, &name, Some(&cte.alias), &scope)
                } else {
                    let cols = self.cte_query(&cte.query, &scope);
                    rename(cols, Some(&cte.alias), self.dialect)
                };
                self.evaluated(&cols);
                scope.ctes.push((name, cols));
            }
        }
        let cols = self.set_expr(&q.body, &scope, q.order_by.as_ref());
        if let Some(l) = &q.limit_clause {
            let l = self.generic(l, &scope);
            self.compare(l);
        }
        if let Some(f) = &q.fetch {
            let l = self.generic(f, &scope);
            self.compare(l);
        }
        if !q.pipe_operators.is_empty()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || q.for_clause.is_some()
        {
            self.unknown("a query clause the gateway does not analyse");
        }
        cols
    }

    /// A CTE's query; a data-modifying one's `RETURNING` columns are counted as computed.
    fn cte_query(&mut self, q: &Query, scope: &Scope<'_>) -> Vec<Col> {
        let cols = self.query(q, scope);
        if matches!(
            q.body.as_ref(),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            return cols
                .into_iter()
                .map(|c| match c {
                    Col::One { name, lin } => Col::One {
                        name,
                        lin: lin.computed(),
                    },
                    Col::Star(rel) => Col::Star(Rel {
                        name: rel.name.clone(),
                        kind: RelKind::Opaque(whole_row(&rel).computed()),
                    }),
                })
                .collect();
        }
        cols
    }

    /// A recursive CTE: its columns to a fixed point, starting from columns nothing feeds.
    fn recursive_cte(
        &mut self,
        q: &Query,
        name: &str,
        alias: Option<&TableAlias>,
        scope: &Scope<'_>,
    ) -> Vec<Col> {
        let mut current = vec![Col::Star(Rel {
            name: name.to_owned(),
            kind: RelKind::Opaque(Lin::none()),
        })];
        for _ in 0..8 {
            let mut tmp = Scope::child(Some(scope));
            tmp.ctes.push((name.to_owned(), current.clone()));
            let next: Vec<Col> = rename(self.query(q, &tmp), alias, self.dialect)
                .into_iter()
                .map(|c| match c {
                    // A recursive CTE is a set operation: its columns are computed.
                    Col::One { name, lin } => Col::One {
                        name,
                        lin: lin.computed(),
                    },
                    Col::Star(rel) => Col::Star(Rel {
                        name: rel.name.clone(),
                        kind: RelKind::Opaque(whole_row(&rel).computed()),
                    }),
                })
                .collect();
            if next == current {
                return next;
            }
            current = next;
        }
        self.unknown("a recursive query whose lineage does not settle");
        current
    }

    fn set_expr(
        &mut self,
        body: &SetExpr,
        scope: &Scope<'_>,
        order_by: Option<&OrderBy>,
    ) -> Vec<Col> {
        let cols = match body {
            SetExpr::Select(s) => return self.select(s, scope, order_by),
            SetExpr::Query(q) => self.query(q, scope),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left, scope, None);
                let r = self.set_expr(right, scope, None);
                set_operation(l, r)
            }
            SetExpr::Values(v) => {
                let mut lins: Vec<Lin> = Vec::new();
                for row in &v.rows {
                    for (i, e) in row.content.iter().enumerate() {
                        let l = self.expr(e, scope).into_computed();
                        match lins.get_mut(i) {
                            Some(acc) => acc.absorb(l),
                            None => lins.push(l),
                        }
                    }
                }
                lins.into_iter()
                    .enumerate()
                    .map(|(i, lin)| Col::One {
                        name: Some(format!("column{}", i + 1)),
                        lin,
                    })
                    .collect()
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => {
                self.statement(s, scope)
            }
            SetExpr::Table(t) => {
                let Some(table) = &t.table_name else {
                    self.unknown("TABLE without a name");
                    return Vec::new();
                };
                self.note(table, false);
                if let Some(s) = &t.schema_name {
                    self.note(s, false);
                }
                let table = fold(table, false, self.dialect);
                if t.schema_name.is_none()
                    && let Some(cols) = scope.cte(&table)
                {
                    through(cols.clone())
                } else {
                    vec![Col::Star(Rel {
                        name: table.clone(),
                        kind: RelKind::Table {
                            schema: t.schema_name.as_ref().map(|s| fold(s, false, self.dialect)),
                            table,
                            renamed: false,
                            derived: false,
                        },
                    })]
                }
            }
            SetExpr::Merge(_) => {
                self.unknown("MERGE");
                Vec::new()
            }
        };
        if let Some(ob) = order_by {
            // ORDER BY after a set operation names output columns only.
            let all = cols_lin(&cols);
            match &ob.kind {
                OrderByKind::All(_) => self.compare(all),
                OrderByKind::Expressions(v) => {
                    for o in v {
                        let l = self.ordering(&o.expr, scope, &cols);
                        self.compare(l);
                    }
                }
            }
        }
        cols
    }

    fn select(&mut self, sel: &Select, parent: &Scope<'_>, order_by: Option<&OrderBy>) -> Vec<Col> {
        let scope = self.scope_of_from(&sel.from, Some(parent));
        let mut cols = Vec::new();
        for item in &sel.projection {
            self.select_item(item, &scope, &mut cols);
        }
        if let Some(Distinct::On(v)) = &sel.distinct {
            for e in v {
                let l = self.ordering(e, &scope, &cols);
                self.compare(l);
            }
        }
        for e in [&sel.selection, &sel.prewhere, &sel.having, &sel.qualify]
            .into_iter()
            .flatten()
        {
            self.condition(e, &scope);
        }
        match &sel.group_by {
            GroupByExpr::Expressions(v, mods) => {
                if !mods.is_empty() {
                    self.unknown("GROUP BY modifiers");
                }
                for e in v {
                    let l = self.ordering(e, &scope, &cols);
                    self.compare(l);
                }
            }
            GroupByExpr::All(_) => self.compare(cols_lin(&cols)),
        }
        for w in &sel.named_window {
            match &w.1 {
                NamedWindowExpr::WindowSpec(spec) => {
                    let l = self.generic(spec, &scope);
                    self.compare(l);
                }
                NamedWindowExpr::NamedWindow(_) => {}
            }
        }
        if let Some(ob) = order_by {
            match &ob.kind {
                OrderByKind::All(_) => self.compare(cols_lin(&cols)),
                OrderByKind::Expressions(v) => {
                    for o in v {
                        let l = self.ordering(&o.expr, &scope, &cols);
                        self.compare(l);
                    }
                }
            }
        }
        if sel.into.is_some() {
            self.store(cols_lin(&cols), "SELECT INTO");
        }
        if let Some(top) = &sel.top {
            let l = self.generic(top, &scope);
            self.compare(l);
        }
        if !sel.lateral_views.is_empty()
            || !sel.connect_by.is_empty()
            || !sel.cluster_by.is_empty()
            || !sel.distribute_by.is_empty()
            || !sel.sort_by.is_empty()
            || sel.exclude.is_some()
            || sel.value_table_mode.is_some()
        {
            self.unknown("a SELECT clause the gateway does not analyse");
        }
        cols
    }

    /// An `ORDER BY`, `GROUP BY` or `DISTINCT ON` item: a result column's position or name,
    /// or an expression over the `FROM` items.
    fn ordering(&mut self, e: &Expr, scope: &Scope<'_>, outputs: &[Col]) -> Lin {
        match e {
            Expr::Value(v) if matches!(v.value, Value::Number(..)) => cols_lin(outputs),
            Expr::Identifier(id) => {
                let name = self.ident(id);
                let named: Vec<&Col> = outputs
                    .iter()
                    .filter(|c| matches!(c, Col::One { name: Some(n), .. } if *n == name))
                    .collect();
                if named.is_empty() {
                    return self.expr(e, scope);
                }
                let mut l = Lin::none();
                for c in named {
                    if let Col::One { lin, .. } = c {
                        l.absorb(lin.clone());
                    }
                }
                // The name may be an input column as well.
                if let Some(input) = self.try_lookup(scope, &name) {
                    l.absorb(input);
                }
                l
            }
            _ => self.expr(e, scope),
        }
    }

    fn select_item(&mut self, item: &SelectItem, scope: &Scope<'_>, cols: &mut Vec<Col>) {
        match item {
            SelectItem::UnnamedExpr(e) => {
                let lin = self.expr(e, scope);
                cols.push(Col::One {
                    name: figure_name(e, self.dialect),
                    lin,
                });
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                let lin = self.expr(expr, scope);
                cols.push(Col::One {
                    name: Some(self.ident(alias)),
                    lin,
                });
            }
            SelectItem::QualifiedWildcard(kind, opts) => {
                if !plain_wildcard(opts) {
                    self.unknown("a wildcard with options");
                }
                match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        self.note_name(name);
                        let parts = self.name_parts(name).unwrap_or_default();
                        let rel = match parts.as_slice() {
                            [n] => scope.rel(None, n),
                            [s, n] => scope.rel(Some(s), n),
                            _ => None,
                        };
                        match rel {
                            Some(rel) => cols.extend(expand(rel)),
                            None => self.unknown(format!("{name}.* could not be traced")),
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let lin = self.expr(e, scope).computed();
                        cols.push(Col::Star(Rel {
                            name: String::new(),
                            kind: RelKind::Opaque(lin),
                        }));
                    }
                }
            }
            SelectItem::Wildcard(opts) => {
                if !plain_wildcard(opts) {
                    self.unknown("a wildcard with options");
                }
                for m in &scope.merged {
                    match &m.name {
                        Some(n) => cols.push(Col::One {
                            name: Some(n.clone()),
                            lin: m.lin.clone(),
                        }),
                        None => cols.push(Col::Star(Rel {
                            name: String::new(),
                            kind: RelKind::Opaque(m.lin.clone()),
                        })),
                    }
                }
                for rel in &scope.rels {
                    cols.extend(expand(rel));
                }
            }
            SelectItem::ExprWithAliases { .. } => {
                self.unknown("an expression with several aliases");
            }
        }
    }

    // -- FROM ----------------------------------------------------------------------------

    fn scope_of_from<'p>(
        &mut self,
        from: &[TableWithJoins],
        parent: Option<&'p Scope<'p>>,
    ) -> Scope<'p> {
        let mut scope = Scope::child(parent);
        for twj in from {
            let (rels, merged) = self.join_tree(twj, &scope);
            scope.rels.extend(rels);
            scope.merged.extend(merged);
        }
        scope
    }

    /// One `FROM` item with its joins. Each join sees the items before it (`LATERAL`).
    fn join_tree(&mut self, twj: &TableWithJoins, outer: &Scope<'_>) -> (Vec<Rel>, Vec<Merged>) {
        let mut tmp = Scope::child(Some(outer));
        let (r, m) = self.table_factor(&twj.relation, &tmp);
        tmp.rels.extend(r);
        tmp.merged.extend(m);
        for j in &twj.joins {
            let (r, m) = self.table_factor(&j.relation, &tmp);
            tmp.rels.extend(r);
            tmp.merged.extend(m);
            let (constraint, full) = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => (c, false),
                JoinOperator::FullOuter(c) => (c, true),
                _ => {
                    self.unknown("a join type the gateway does not analyse");
                    continue;
                }
            };
            match constraint {
                JoinConstraint::On(e) => self.condition(e, &tmp),
                JoinConstraint::Using(names) => {
                    for n in names {
                        let Some(col) = self.name_parts(n).and_then(|p| p.last().cloned()) else {
                            self.unknown("a USING column not analysed");
                            continue;
                        };
                        let mut lin = Lin::none();
                        lin.flow = Flow::Plain;
                        for rel in &tmp.rels {
                            if let Some(Hit::Sure(l) | Hit::Maybe(l)) = find_in(rel, &col) {
                                lin.absorb(l);
                            }
                        }
                        // A FULL JOIN's merged column is COALESCE(left, right).
                        if full {
                            lin.flow = lin.flow.max(Flow::Computed);
                        }
                        self.compare(lin.clone());
                        tmp.merged.push(Merged {
                            name: Some(col),
                            lin,
                        });
                    }
                }
                JoinConstraint::Natural => {
                    // The common column names are not known here: any column of either side.
                    let mut lin = Lin::none();
                    lin.flow = Flow::Plain;
                    for rel in &tmp.rels[..] {
                        let mut w = whole_row(rel);
                        w.flow = Flow::Plain;
                        lin.absorb(w);
                    }
                    if full {
                        lin.flow = Flow::Computed;
                    }
                    self.compare(lin.clone());
                    tmp.merged.push(Merged { name: None, lin });
                }
                JoinConstraint::None => {}
            }
        }
        (tmp.rels, tmp.merged)
    }

    fn table_factor(&mut self, tf: &TableFactor, scope: &Scope<'_>) -> (Vec<Rel>, Vec<Merged>) {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } => {
                let mut lin = Lin::none();
                for a in &args.args {
                    self.function_arg(a, scope, &mut lin);
                }
                let fname = self
                    .name_parts(name)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default();
                let lin = self.function_result(name, lin);
                let rel = Rel {
                    name: self.alias_name(alias).unwrap_or(fname),
                    kind: RelKind::Opaque(lin),
                };
                (vec![rel], Vec::new())
            }
            TableFactor::Table {
                name,
                alias,
                json_path,
                ..
            } => {
                if json_path.is_some() {
                    self.unknown("a table JSON path");
                }
                // `ONLY t` reads as a table called `only` aliased `t` (see classify.rs).
                let bare_only = matches!(name.0.as_slice(), [ObjectNamePart::Identifier(id)]
                    if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("only"));
                let (name, alias) = match (bare_only, alias) {
                    (true, Some(a)) => (ObjectName::from(vec![a.name.clone()]), &None),
                    _ => (name.clone(), alias),
                };
                self.note_name(&name);
                if let [ObjectNamePart::Identifier(id)] = name.0.as_slice()
                    && let Some(cols) = scope.cte(&self.ident(id))
                {
                    let rel = Rel {
                        name: self.alias_name(alias).unwrap_or_else(|| self.ident(id)),
                        kind: RelKind::Derived(through(rename(
                            cols.clone(),
                            alias.as_ref(),
                            self.dialect,
                        ))),
                    };
                    return (vec![rel], Vec::new());
                }
                let alias_name = self.alias_name(alias);
                match self.table(&name, alias_name) {
                    Some(rel) if holds_sampled_values(&rel, self.dialect) => {
                        self.unknown(format!(
                            "it reads {}, which holds values of any column (statistics, or statements as written)",
                            rel.name
                        ));
                        (vec![rel], Vec::new())
                    }
                    Some(mut rel) => {
                        if alias.as_ref().is_some_and(|a| !a.columns.is_empty())
                            && let RelKind::Table { renamed, .. } = &mut rel.kind
                        {
                            *renamed = true;
                        }
                        (vec![rel], Vec::new())
                    }
                    None => {
                        self.unknown(format!("the table {name} could not be traced"));
                        (Vec::new(), Vec::new())
                    }
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let cols = self.query(subquery, scope);
                self.evaluated(&cols);
                let rel = Rel {
                    name: self.alias_name(alias).unwrap_or_default(),
                    kind: RelKind::Derived(through(rename(cols, alias.as_ref(), self.dialect))),
                };
                (vec![rel], Vec::new())
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let mut lin = Lin::none();
                for a in args {
                    self.function_arg(a, scope, &mut lin);
                }
                let fname = self
                    .name_parts(name)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default();
                let lin = self.function_result(name, lin);
                let rel = Rel {
                    name: self.alias_name(alias).unwrap_or(fname),
                    kind: RelKind::Opaque(lin),
                };
                (vec![rel], Vec::new())
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let mut lin = Lin::none();
                for e in array_exprs {
                    let l = self.expr(e, scope);
                    lin.absorb(l);
                }
                let rel = Rel {
                    name: self.alias_name(alias).unwrap_or_else(|| "unnest".into()),
                    kind: RelKind::Opaque(lin.into_computed()),
                };
                (vec![rel], Vec::new())
            }
            TableFactor::TableFunction { expr, alias } => {
                let lin = self.expr(expr, scope).into_computed();
                let rel = Rel {
                    name: self.alias_name(alias).unwrap_or_default(),
                    kind: RelKind::Opaque(lin),
                };
                (vec![rel], Vec::new())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let (mut rels, merged) = self.join_tree(table_with_joins, scope);
                if let Some(a) = alias {
                    // `(a JOIN b) AS j`: j.* is every column of both.
                    let cols: Vec<Col> = rels.iter().flat_map(expand).collect();
                    self.note_ident(&a.name);
                    rels.push(Rel {
                        name: self.ident(&a.name),
                        kind: RelKind::Derived(through(rename(cols, Some(a), self.dialect))),
                    });
                }
                (rels, merged)
            }
            _ => {
                self.unknown("a FROM item the gateway does not analyse");
                (Vec::new(), Vec::new())
            }
        }
    }

    // -- expressions ---------------------------------------------------------------------

    /// Resolves an unqualified column name; `None` when nothing in scope may have it.
    fn try_lookup(&self, scope: &Scope<'_>, col: &str) -> Option<Lin> {
        let mut acc: Option<Lin> = None;
        let add = |l: Lin, acc: &mut Option<Lin>| match acc {
            Some(a) => a.absorb(l),
            None => *acc = Some(l),
        };
        for level in scope.levels() {
            let mut sure = false;
            for m in &level.merged {
                match &m.name {
                    Some(n) if n == col => {
                        sure = true;
                        add(m.lin.clone(), &mut acc);
                    }
                    None => add(m.lin.clone(), &mut acc),
                    Some(_) => {}
                }
            }
            for rel in &level.rels {
                match find_in(rel, col) {
                    Some(Hit::Sure(l)) => {
                        sure = true;
                        add(l, &mut acc);
                    }
                    Some(Hit::Maybe(l)) => add(l, &mut acc),
                    None => {}
                }
            }
            if !sure {
                // A relation's name alone is a whole-row reference when no column has it.
                for rel in level.rels.iter().filter(|r| r.name == col) {
                    add(whole_row(rel), &mut acc);
                }
            }
            if sure {
                break;
            }
        }
        acc
    }

    fn lookup(&mut self, scope: &Scope<'_>, col: &str) -> Lin {
        match self.try_lookup(scope, col) {
            Some(l) => l,
            None if scope.has_rels() => {
                self.unknown(format!("the column {col} could not be traced"));
                Lin::none()
            }
            // No FROM item anywhere: not a column (the server would reject it).
            None => Lin::none(),
        }
    }

    fn lookup_qualified(&mut self, scope: &Scope<'_>, parts: &[String]) -> Lin {
        match parts {
            [] => Lin::none(),
            [c] => self.lookup(scope, c),
            [q, c] => match scope.rel(None, q).and_then(|r| find_in(r, c)) {
                Some(Hit::Sure(l) | Hit::Maybe(l)) => l,
                None => {
                    self.unknown(format!("the column {q}.{c} could not be traced"));
                    Lin::none()
                }
            },
            [a, b, c] => {
                // schema.table.column, or table.column.field.
                let mut acc: Option<Lin> = None;
                if let Some(Hit::Sure(l) | Hit::Maybe(l)) =
                    scope.rel(Some(a), b).and_then(|r| find_in(r, c))
                {
                    acc = Some(l);
                }
                if let Some(Hit::Sure(l) | Hit::Maybe(l)) =
                    scope.rel(None, a).and_then(|r| find_in(r, b))
                {
                    let l = l.into_computed();
                    match &mut acc {
                        Some(x) => x.absorb(l),
                        None => acc = Some(l),
                    }
                }
                acc.unwrap_or_else(|| {
                    self.unknown(format!("the column {a}.{b}.{c} could not be traced"));
                    Lin::none()
                })
            }
            _ => {
                self.unknown(format!(
                    "the column {} could not be traced",
                    parts.join(".")
                ));
                Lin::none()
            }
        }
    }

    fn expr(&mut self, e: &Expr, s: &Scope<'_>) -> Lin {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                    return Lin::none();
                }
                let l = self.lookup(s, &self.ident(id));
                generated_column(l, s)
            }
            Expr::CompoundIdentifier(ids) => {
                if let [qualifiers @ .., _] = ids.as_slice() {
                    qualifiers.iter().for_each(|q| self.note_ident(q));
                }
                let parts: Vec<String> = ids.iter().map(|i| self.ident(i)).collect();
                let l = self.lookup_qualified(s, &parts);
                generated_column(l, s)
            }
            Expr::Nested(inner) => self.expr(inner, s),
            // `(c.*)::text`, `row_to_json(c.*)`: the whole row of a relation.
            Expr::QualifiedWildcard(name, _) => {
                self.note_name(name);
                let parts = self.name_parts(name).unwrap_or_default();
                let rel = match parts.as_slice() {
                    [n] => s.rel(None, n),
                    [sc, n] => s.rel(Some(sc), n),
                    _ => None,
                };
                match rel {
                    Some(r) => whole_row(r),
                    None => {
                        self.unknown(format!("{name}.* could not be traced"));
                        Lin::none()
                    }
                }
            }
            Expr::Wildcard(_) => {
                let mut l = Lin::none();
                for r in &s.rels {
                    l.absorb(whole_row(r));
                }
                l
            }
            Expr::Value(_) | Expr::TypedString(_) => Lin::none(),
            Expr::Function(f) => self.function(f, s),
            Expr::Subquery(q) => {
                let cols = self.query(q, s);
                let l = cols_lin(&cols);
                if l.flow == Flow::Composite {
                    l
                } else {
                    l.into_computed()
                }
            }
            Expr::Exists { subquery, .. } => {
                let cols = self.query(subquery, s);
                self.compare(cols_lin(&cols));
                Lin::none()
            }
            Expr::InSubquery { expr, subquery, .. } => {
                let mut l = self.expr(expr, s);
                let cols = self.query(subquery, s);
                l.absorb(cols_lin(&cols));
                l.into_computed()
            }
            Expr::Cast {
                expr, data_type, ..
            } => {
                let l = self.expr(expr, s);
                if composite_type(data_type, self.dialect) {
                    l.composite()
                } else {
                    l.into_computed()
                }
            }
            Expr::Array(a) => {
                let mut l = Lin::none();
                for x in &a.elem {
                    let y = self.expr(x, s);
                    l.absorb(y);
                }
                l.composite()
            }
            Expr::Tuple(v) => {
                let mut l = Lin::none();
                for x in v {
                    let y = self.expr(x, s);
                    l.absorb(y);
                }
                l.composite()
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                // `(c).email` is the column `email` of the relation `c`.
                let mut l = Lin::none();
                if let (Expr::Nested(inner), [AccessExpr::Dot(Expr::Identifier(f))]) =
                    (root.as_ref(), access_chain.as_slice())
                    && let Expr::Identifier(r) = inner.as_ref()
                    && let Some(rel) = s.rel(None, &self.ident(r))
                    && let Some(Hit::Sure(x) | Hit::Maybe(x)) = find_in(rel, &self.ident(f))
                {
                    l.absorb(x.computed());
                }
                let r = self.expr(root, s);
                l.absorb(r);
                for a in access_chain {
                    match a {
                        AccessExpr::Dot(Expr::Identifier(_)) => {}
                        AccessExpr::Dot(x) => {
                            let y = self.expr(x, s);
                            l.absorb(y);
                        }
                        AccessExpr::Subscript(sub) => {
                            let y = self.generic(sub, s);
                            l.absorb(y);
                        }
                    }
                }
                l.into_computed()
            }
            Expr::BinaryOp { left, op, right } => {
                use sqlparser::ast::BinaryOperator as B;
                let mut l = self.expr(left, s);
                let r = self.expr(right, s);
                if *op == B::Assignment {
                    self.store(r.clone(), USER_VARIABLE);
                }
                l.absorb(r);
                match op {
                    B::PGCustomBinaryOperator(name) => {
                        self.unknown(format!("the operator {}", name.join(".")));
                        l.into_computed()
                    }
                    B::Arrow | B::HashArrow => l.composite(),
                    _ => l.into_computed(),
                }
            }
            Expr::UnaryOp { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::Collate { expr, .. }
            | Expr::Extract { expr, .. }
            | Expr::Ceil { expr, .. }
            | Expr::Floor { expr, .. } => self.expr(expr, s).into_computed(),
            Expr::IsDistinctFrom(a, b)
            | Expr::IsNotDistinctFrom(a, b)
            | Expr::Position { expr: a, r#in: b }
            | Expr::AnyOp {
                left: a, right: b, ..
            }
            | Expr::AllOp {
                left: a, right: b, ..
            }
            | Expr::AtTimeZone {
                timestamp: a,
                time_zone: b,
            } => self.exprs([a.as_ref(), b.as_ref()], s),
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                let mut v = vec![expr.as_ref(), pattern.as_ref()];
                v.extend(escape_char.as_deref());
                self.exprs(v, s)
            }
            Expr::InList { expr, list, .. } => {
                let mut v = vec![expr.as_ref()];
                v.extend(list.iter());
                self.exprs(v, s)
            }
            Expr::Between {
                expr, low, high, ..
            } => self.exprs([expr.as_ref(), low.as_ref(), high.as_ref()], s),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut v: Vec<&Expr> = operand.as_deref().into_iter().collect();
                for c in conditions {
                    v.push(&c.condition);
                    v.push(&c.result);
                }
                v.extend(else_result.as_deref());
                self.exprs(v, s)
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut v = vec![expr.as_ref()];
                v.extend(substring_from.as_deref());
                v.extend(substring_for.as_deref());
                self.exprs(v, s)
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                let mut v = vec![expr.as_ref()];
                v.extend(trim_what.as_deref());
                v.extend(trim_characters.iter().flatten());
                self.exprs(v, s)
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                let mut v = vec![expr.as_ref(), overlay_what.as_ref(), overlay_from.as_ref()];
                v.extend(overlay_for.as_deref());
                self.exprs(v, s)
            }
            _ => self.generic(e, s),
        }
    }

    /// A value computed from `inputs`.
    fn exprs<'e>(&mut self, inputs: impl IntoIterator<Item = &'e Expr>, s: &Scope<'_>) -> Lin {
        let mut l = Lin::none();
        for x in inputs {
            let y = self.expr(x, s);
            l.absorb(y);
        }
        l.into_computed()
    }

    fn function_arg(&mut self, a: &FunctionArg, s: &Scope<'_>, acc: &mut Lin) {
        let arg = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        match arg {
            FunctionArgExpr::Expr(e) => {
                let l = self.expr(e, s);
                acc.absorb(l);
            }
            FunctionArgExpr::QualifiedWildcard(name) => {
                self.note_name(name);
                let parts = self.name_parts(name).unwrap_or_default();
                let rel = match parts.as_slice() {
                    [n] => s.rel(None, n),
                    [sc, n] => s.rel(Some(sc), n),
                    _ => None,
                };
                match rel {
                    Some(r) => acc.absorb(whole_row(r)),
                    None => self.unknown(format!("{name}.* could not be traced")),
                }
            }
            // `count(*)`: no column; anything else over `*` takes every row of the level.
            FunctionArgExpr::Wildcard => {
                for r in &s.rels {
                    let mut w = whole_row(r);
                    w.flow = Flow::Computed;
                    acc.absorb(w);
                }
            }
            FunctionArgExpr::WildcardWithOptions(_) => self.unknown("a wildcard with options"),
        }
    }

    /// What a function call returns, given what flows into its arguments.
    fn function_result(&mut self, name: &ObjectName, args: Lin) -> Lin {
        let (kind, short) = function_kind(name, self.dialect);
        match kind {
            FnKind::Value => args.into_computed(),
            FnKind::Composite => args.composite(),
            FnKind::Count => {
                self.compare(args);
                Lin::none()
            }
            FnKind::Store(into) => {
                self.store(args.clone(), into);
                args.into_computed()
            }
            FnKind::Unknown => {
                self.unknown(format!(
                    "it calls {short}(), which the gateway does not know"
                ));
                args.into_computed()
            }
        }
    }

    fn function(&mut self, f: &Function, s: &Scope<'_>) -> Lin {
        if function_kind(&f.name, self.dialect).1 == "set_config"
            && let FunctionArguments::List(list) = &f.args
        {
            let lit = |i: usize| match list.args.get(i) {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => {
                    literal_text(e, self.dialect)
                }
                _ => None,
            };
            // The setting's name not a literal could be search_path.
            match lit(0).map(|n| n.trim().to_lowercase()) {
                Some(n) if n != "search_path" => {}
                Some(_) if lit(1).is_some_and(|v| !shadows_builtins(&v)) => {}
                _ => self.unknown(SHADOWING_PATH),
            }
        }
        let mut args = Lin::none();
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                let cols = self.query(q, s);
                args.absorb(cols_lin(&cols));
            }
            FunctionArguments::List(list) => {
                for a in &list.args {
                    self.function_arg(a, s, &mut args);
                }
                for c in &list.clauses {
                    match c {
                        FunctionArgumentClause::OrderBy(v) => {
                            for o in v {
                                let l = self.expr(&o.expr, s);
                                self.compare(l);
                            }
                        }
                        FunctionArgumentClause::Where(e) => self.condition(e, s),
                        FunctionArgumentClause::Limit(e) => {
                            let l = self.expr(e, s);
                            self.compare(l);
                        }
                        FunctionArgumentClause::IgnoreOrRespectNulls(_) => {}
                        _ => self.unknown("a function argument clause"),
                    }
                }
            }
        }
        if !matches!(f.parameters, FunctionArguments::None) {
            self.unknown("function parameters");
        }
        // An aggregate's FILTER and a window's PARTITION BY / ORDER BY decide the value it
        // returns (`count(*) FILTER (WHERE email LIKE 'a%')`, `row_number() OVER (ORDER BY
        // email)`): what they read flows into the result, computed.
        let mut decides = Lin::none();
        if let Some(flt) = &f.filter {
            let l = self.expr(flt, s);
            decides.absorb(l.into_computed());
        }
        // Ordered-set aggregates return one of the ordered values (`percentile_disc`,
        // `mode`) or a value computed from them: they flow into the result.
        for o in &f.within_group {
            let l = self.expr(&o.expr, s);
            args.absorb(l);
        }
        if let Some(WindowType::WindowSpec(w)) = &f.over {
            let l = self.generic(w, s);
            self.compare(l.clone());
            decides.absorb(l);
        }
        let mut result = self.function_result(&f.name, args);
        if !decides.sources.is_empty() {
            result.absorb(decides);
        }
        result
    }

    /// A condition (WHERE, ON, HAVING, QUALIFY), one conjunct at a time. A conjunct that
    /// relates columns to generated rows makes each answer row tell a comparison of its own
    /// (`ascii(substr(email, g.i, 1)) = h.n` over two series spells the value out in one
    /// answer): those columns count as sent out, not compared.
    fn condition(&mut self, e: &Expr, s: &Scope<'_>) {
        match e {
            Expr::BinaryOp {
                left,
                op: sqlparser::ast::BinaryOperator::And,
                right,
            } => {
                self.condition(left, s);
                self.condition(right, s);
            }
            Expr::Nested(inner) => self.condition(inner, s),
            _ => {
                let l = self.expr(e, s);
                if l.generated && !l.sources.is_empty() {
                    self.store(l, "a condition relating it to other rows");
                } else {
                    self.compare(l);
                }
            }
        }
    }

    /// Any other AST node: every column reference in it is an input; a function must be
    /// known; a subquery, a table or a storing function inside cannot be traced here.
    fn generic<T: Visit>(&mut self, node: &T, s: &Scope<'_>) -> Lin {
        let mut g = Generic {
            an: self,
            scope: s,
            lin: Lin::none(),
            depth: 0,
        };
        let _ = node.visit(&mut g);
        g.lin.into_computed()
    }
}

struct Generic<'a, 's, 'p> {
    an: &'a mut Analyzer,
    scope: &'s Scope<'p>,
    lin: Lin,
    /// Inside a subquery (already reported as unknown).
    depth: usize,
}

impl Visitor for Generic<'_, '_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.an
                .unknown("a subquery inside an expression the gateway does not analyse");
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, _r: &ObjectName) -> ControlFlow<()> {
        if self.depth == 0 {
            self.an
                .unknown("a table inside an expression the gateway does not analyse");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::QualifiedWildcard(..)
            | Expr::Wildcard(_) => {
                let l = self.an.expr(e, self.scope);
                self.lin.absorb(l);
            }
            Expr::BinaryOp {
                op: sqlparser::ast::BinaryOperator::Assignment,
                right,
                ..
            } => {
                let l = self.an.expr(right, self.scope);
                self.an.store(l, USER_VARIABLE);
            }
            Expr::Function(f) => match function_kind(&f.name, self.an.dialect) {
                (FnKind::Unknown, short) => self.an.unknown(format!(
                    "it calls {short}(), which the gateway does not know"
                )),
                (FnKind::Store(into), _) => self.an.unknown(format!(
                    "{into} inside an expression the gateway does not analyse"
                )),
                _ => {}
            },
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// A table named in a statement, as a relation (`alias`: the name it is referred to by).
fn table_rel(name: &ObjectName, alias: Option<String>, d: Dialect) -> Option<Rel> {
    let parts = name_parts(name, d)?;
    let (schema, table) = match parts.as_slice() {
        [t] => (None, t.clone()),
        [s, t] => (Some(s.clone()), t.clone()),
        [_, s, t] => (Some(s.clone()), t.clone()),
        _ => return None,
    };
    Some(Rel {
        name: alias.unwrap_or_else(|| table.clone()),
        kind: RelKind::Table {
            schema,
            table,
            renamed: false,
            derived: false,
        },
    })
}

/// Catalog relations whose rows hold values of other tables' columns (planner statistics:
/// most common values, histogram bounds; MariaDB's engine-independent statistics with each
/// column's minimum and maximum, MySQL's histograms) or other sessions' statements with their
/// literals (the general and slow logs, the process list, statement history).
fn holds_sampled_values(rel: &Rel, d: Dialect) -> bool {
    let RelKind::Table { schema, table, .. } = &rel.kind else {
        return false;
    };
    let in_schema = |name: &str| schema.as_deref().is_none_or(|s| s == name);
    match d {
        Dialect::Postgres => {
            in_schema("pg_catalog")
                && matches!(
                    table.as_str(),
                    "pg_stats"
                        | "pg_statistic"
                        | "pg_stats_ext"
                        | "pg_stats_ext_exprs"
                        | "pg_statistic_ext_data"
                )
        }
        Dialect::Mysql => {
            (in_schema("mysql")
                && matches!(table.as_str(), "column_stats" | "general_log" | "slow_log"))
                || (in_schema("information_schema")
                    && matches!(table.as_str(), "column_statistics" | "processlist"))
                // Other sessions' statements as written, literals and all.
                || (in_schema("performance_schema")
                    && (table.starts_with("events_statements_")
                        || table == "threads"
                        || table == "prepared_statements_instances"))
        }
    }
}

/// A column reference's lineage, marked generated when no table column feeds it, or only
/// MariaDB's sequence tables (`seq_0_to_255`), which are series under a table's name.
fn generated_column(mut l: Lin, s: &Scope<'_>) -> Lin {
    let series = |table: &str| {
        let Some(rest) = table.strip_prefix("seq_") else {
            return false;
        };
        let numbers: Vec<&str> = rest.split(['_']).collect();
        matches!(numbers.as_slice(), [_, "to", _] | [_, "to", _, "step", _])
            && numbers
                .iter()
                .step_by(2)
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if (l.sources.is_empty() && s.has_rels())
        || (!l.sources.is_empty() && l.sources.iter().all(|src| series(&src.table)))
    {
        l.generated = true;
        l.sources.retain(|src| !series(&src.table));
    }
    l
}

/// The one-part relation names a query reads (anywhere in it).
fn relation_names(q: &Query, d: Dialect) -> BTreeSet<String> {
    struct Names(BTreeSet<String>, Dialect);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            if let Some(mut p) = name_parts(r, self.1)
                && p.len() == 1
                && let Some(n) = p.pop()
            {
                self.0.insert(n);
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(BTreeSet::new(), d);
    let _ = q.visit(&mut names);
    names.0
}

/// Whether a query names the relation `name` anywhere (a recursive CTE's self-reference).
fn references(q: &Query, name: &str, d: Dialect) -> bool {
    relation_names(q, d).contains(name)
}

/// The columns of a set operation: position by position when both sides list them, else one
/// run of unknown width fed by everything. The server reports no origin for any of them.
fn set_operation(l: Vec<Col>, r: Vec<Col>) -> Vec<Col> {
    let listed = |v: &[Col]| v.iter().all(|c| matches!(c, Col::One { .. }));
    if listed(&l) && listed(&r) && l.len() == r.len() {
        return l
            .into_iter()
            .zip(r)
            .map(|(a, b)| match (a, b) {
                (Col::One { name, lin: la }, Col::One { lin: lb, .. }) => {
                    let mut lin = la;
                    lin.absorb(lb);
                    Col::One {
                        name,
                        lin: lin.computed(),
                    }
                }
                (a, _) => a,
            })
            .collect();
    }
    let mut lin = cols_lin(&l);
    lin.absorb(cols_lin(&r));
    vec![Col::Star(Rel {
        name: String::new(),
        kind: RelKind::Opaque(lin.computed()),
    })]
}

/// Result columns as outputs: a `*` over a table or function is one run of unknown width.
fn flatten(cols: Vec<Col>, out: &mut Vec<Output>) {
    for c in cols {
        match c {
            Col::One { name, lin } => out.push(Output::One {
                name: name.map(Into::into),
                lineage: lin.into_value(),
            }),
            Col::Star(rel) => match rel.kind {
                RelKind::Derived(cols) => flatten(cols, out),
                RelKind::Table { .. } => {
                    let mut l = whole_row(&rel);
                    l.flow = Flow::Plain;
                    out.push(Output::Many {
                        lineage: l.into_value(),
                    });
                }
                RelKind::Opaque(lin) => out.push(Output::Many {
                    lineage: lin.computed().into_value(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests;
