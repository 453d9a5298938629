//! The dry run of a held PostgreSQL write: what the statement would change, shown to its
//! reviewers before they decide.
//!
//! Only for one `INSERT`, `UPDATE` or `DELETE` whose effects all stay inside a transaction:
//! [`rewrite`] refuses anything else with the reason (sequence functions, functions not on
//! the allow list of [`PURE_FUNCTIONS`], several statements, `WITH`, DDL, …), and [`run`]
//! refuses tables whose triggers, rules or sequence defaults could act outside it. The run
//! happens on a connection of its own, opened with the target's credentials for this one dry
//! run: `BEGIN`, `SET LOCAL statement_timeout`/`lock_timeout` (and `SET LOCAL ROLE` to the
//! role the approved statement would run as), a bounded sample of the rows the statement
//! selects, `EXPLAIN`, the statement with `RETURNING` its table's columns, then always
//! `ROLLBACK`; on any error the connection is dropped, which rolls back too. Bound parameters
//! go to the server exactly as the client sent them (type, format, bytes). Samples pass
//! through the masking rules that would apply to the answer.
//!
//! Called only from the reviewer's preview, which runs only for a held command: a statement
//! that is not held never waits for any of this.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, Ident, ObjectName, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UpdateTableFromKind, Value, WildcardAdditionalOptions, visit_expressions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend_auth;
use super::codec::{self, HEADER_LEN, Reader};
use super::origin::{Field, data_row_values, parse_row_description};
use super::tls::MaybeTls;
use super::types::value_kind;
use crate::approval::DryRun;
use crate::config::PostgresTarget;
use crate::mask::{ColumnRef, MaskOutcome, Masker, ValueFormat};
use crate::model::{Class, Facts, Param, ParamFormat};

/// Rows of each sample (before, after).
pub const SAMPLE_ROWS: usize = 10;
/// The dry run's `statement_timeout` (each statement of it).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Its `lock_timeout`: rows another session holds fail the dry run rather than wait.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Logging in to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole dry run, end to end (a server that stops answering).
const TOTAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the plan kept.
const PLAN_LINES: usize = 40;
/// Characters of one sampled value shown (after masking).
const VALUE_CHARS: usize = 200;

/// Functions known to act on nothing but their arguments and the transaction's own view:
/// a statement calling any other function gets no dry run.
pub const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_append",
    "array_length",
    "array_remove",
    "avg",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_date",
    "current_timestamp",
    "date_part",
    "date_trunc",
    "floor",
    "format",
    "gen_random_uuid",
    "greatest",
    "initcap",
    "json_build_object",
    "jsonb_build_object",
    "jsonb_set",
    "least",
    "left",
    "length",
    "localtimestamp",
    "lower",
    "lpad",
    "ltrim",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "position",
    "power",
    "random",
    "regexp_replace",
    "replace",
    "right",
    "round",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_jsonb",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "upper",
];

/// Functions whose effect survives a rollback, named as such in the reason.
const SEQUENCE_FUNCTIONS: &[&str] = &["nextval", "setval"];

/// What the statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Update,
    Delete,
}

/// Which columns the statement fills from their defaults (a sequence default would then be
/// called).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defaults {
    /// None (`DELETE`, an `UPDATE` without `DEFAULT`).
    None,
    /// Every column but these (an `INSERT` naming its columns, no `DEFAULT` in it).
    AllBut(Vec<String>),
    /// Possibly any column.
    Any,
}

/// A held statement rewritten for its dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub kind: Kind,
    /// The table written, as the statement names it.
    pub table: String,
    /// `UPDATE`: the rows it selects, before (`SELECT t.* FROM … WHERE … LIMIT n`).
    pub before: Option<String>,
    /// The statement with `RETURNING` the table's columns (instead of any `RETURNING` it
    /// had).
    pub run: String,
    /// `EXPLAIN` of the statement.
    pub explain: String,
    pub defaults: Defaults,
}

/// Rewrites a held statement for its dry run, or says why it gets none. `facts` are the
/// classifier's; `sample` the row cap of the before sample.
pub fn rewrite(sql: &str, facts: &Facts, sample: usize) -> Result<Rewritten, String> {
    if let Some(reason) = refusal(facts) {
        return Err(reason);
    }
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| format!("the statement does not parse for a dry run: {e}"))?;
    if stmts.len() != 1 {
        return Err(format!(
            "only a single statement gets a dry run; this command has {}",
            stmts.len()
        ));
    }
    let mut stmt = stmts.remove(0);
    let explain = format!("EXPLAIN {stmt}");
    match &mut stmt {
        Statement::Update(u) => {
            if !u.order_by.is_empty() || u.limit.is_some() || u.or.is_some() {
                return Err("this form of UPDATE gets no dry run".into());
            }
            let (table, qual) = target(&u.table)?;
            let mut from = vec![u.table.to_string()];
            if let Some(UpdateTableFromKind::AfterSet(f) | UpdateTableFromKind::BeforeSet(f)) =
                &u.from
            {
                from.extend(f.iter().map(ToString::to_string));
            }
            let mut before = format!("SELECT {qual}.* FROM {}", from.join(", "));
            if let Some(w) = &u.selection {
                before.push_str(&format!(" WHERE {w}"));
            }
            before.push_str(&format!(" LIMIT {sample}"));
            let defaults = if u.assignments.iter().any(|a| is_default(&a.value)) {
                Defaults::Any
            } else {
                Defaults::None
            };
            u.returning = Some(vec![all_of(&qual)]);
            Ok(Rewritten {
                kind: Kind::Update,
                table,
                before: Some(before),
                run: stmt.to_string(),
                explain,
                defaults,
            })
        }
        Statement::Delete(d) => {
            if !d.tables.is_empty() || !d.order_by.is_empty() || d.limit.is_some() {
                return Err("this form of DELETE gets no dry run".into());
            }
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            let [first] = from.as_slice() else {
                return Err("a DELETE from several tables gets no dry run".into());
            };
            let (table, qual) = target(first)?;
            d.returning = Some(vec![all_of(&qual)]);
            Ok(Rewritten {
                kind: Kind::Delete,
                table,
                before: None,
                run: stmt.to_string(),
                explain,
                defaults: Defaults::None,
            })
        }
        Statement::Insert(i) => {
            let TableObject::TableName(name) = &i.table else {
                return Err("an INSERT into a table function gets no dry run".into());
            };
            if i.replace_into || i.ignore || !i.assignments.is_empty() || i.or.is_some() {
                return Err("this form of INSERT gets no dry run".into());
            }
            let table = name.to_string();
            let qual = i
                .table_alias
                .as_ref()
                .map_or_else(|| table.clone(), |a| a.alias.to_string());
            let mut has_default = i.source.is_none();
            if let Some(src) = &i.source {
                let _ = visit_expressions(src, |e| {
                    if is_default(e) {
                        has_default = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
            }
            let defaults = if has_default || i.columns.is_empty() {
                Defaults::Any
            } else {
                Defaults::AllBut(i.columns.iter().map(last_part).collect())
            };
            i.returning = Some(vec![all_of(&qual)]);
            Ok(Rewritten {
                kind: Kind::Insert,
                table,
                before: None,
                run: stmt.to_string(),
                explain,
                defaults,
            })
        }
        Statement::Query(_) => Err(
            "a statement with WITH gets no dry run (a data-modifying part could act twice)".into(),
        ),
        _ => Err("only INSERT, UPDATE and DELETE get a dry run".into()),
    }
}

/// Why the classifier's facts rule a dry run out, if they do.
fn refusal(facts: &Facts) -> Option<String> {
    let write = facts.class == Class::Write
        && facts.statement_classes.iter().all(|c| *c == Class::Write)
        && facts.limit.is_none();
    if !write {
        return Some(format!(
            "only data changes (INSERT, UPDATE, DELETE) get a dry run; this command is {}",
            facts.class
        ));
    }
    if let [kind] = facts.kinds.as_slice()
        && !matches!(*kind, "insert" | "update" | "delete")
    {
        return Some(format!("a {kind} statement gets no dry run"));
    }
    for f in &facts.functions {
        let (schema, name) = f.rsplit_once('.').unwrap_or(("", f));
        if SEQUENCE_FUNCTIONS.contains(&name) {
            return Some(format!("calls {name}, whose effect survives a rollback"));
        }
        if !matches!(schema, "" | "pg_catalog") || !PURE_FUNCTIONS.contains(&name) {
            return Some(format!(
                "calls {f}, which is not known to be free of effects outside the transaction"
            ));
        }
    }
    None
}

/// The table a statement writes (as written) and the name its columns are qualified with
/// (its alias, else the name).
fn target(t: &TableWithJoins) -> Result<(String, String), String> {
    if !t.joins.is_empty() {
        return Err("a write to a joined table gets no dry run".into());
    }
    match &t.relation {
        TableFactor::Table { name, alias, .. } => Ok((
            name.to_string(),
            alias
                .as_ref()
                .map_or_else(|| name.to_string(), |a| a.name.to_string()),
        )),
        _ => Err("the statement writes no plain table".into()),
    }
}

/// `qual.*`.
fn all_of(qual: &str) -> SelectItem {
    // Re-parsed rather than built, so a quoted name keeps its quotes.
    let name = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(qual)
        .and_then(|mut p| p.parse_object_name(false))
        .unwrap_or_else(|_| ObjectName::from(vec![Ident::new(qual)]));
    SelectItem::QualifiedWildcard(
        SelectItemQualifiedWildcardKind::ObjectName(name),
        WildcardAdditionalOptions::default(),
    )
}

fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

fn last_part(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map_or_else(|| name.to_string(), |i| i.value.clone())
}

/// The column each bound parameter is written to or compared with, where the statement says
/// so plainly (`SET col = $1`, `col = $2` in a `WHERE`, `INSERT (a, b) VALUES ($1, $2)`):
/// parameter number → (table as written, column).
pub fn param_columns(sql: &str) -> BTreeMap<u32, (String, String)> {
    let mut out = BTreeMap::new();
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return out;
    };
    let [stmt] = stmts.as_slice() else {
        return out;
    };
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    let add_table = |t: &TableWithJoins, aliases: &mut BTreeMap<String, String>| {
        if let Ok((table, qual)) = target(t) {
            aliases.insert(qual, table.clone());
            aliases.insert(table.clone(), table);
        }
    };
    let (table, selection) = match stmt {
        Statement::Update(u) => {
            add_table(&u.table, &mut aliases);
            let Ok((table, _)) = target(&u.table) else {
                return out;
            };
            for a in &u.assignments {
                if let (AssignmentTarget::ColumnName(c), Some(n)) =
                    (&a.target, placeholder(&a.value))
                {
                    out.insert(n, (table.clone(), last_part(c)));
                }
            }
            (table, u.selection.as_ref())
        }
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            let Some(first) = from.first() else {
                return out;
            };
            add_table(first, &mut aliases);
            let Ok((table, _)) = target(first) else {
                return out;
            };
            (table, d.selection.as_ref())
        }
        Statement::Insert(i) => {
            let TableObject::TableName(name) = &i.table else {
                return out;
            };
            let table = name.to_string();
            if let Some(src) = &i.source
                && let SetExpr::Values(v) = src.body.as_ref()
            {
                for row in &v.rows {
                    for (c, e) in i.columns.iter().zip(&row.content) {
                        if let Some(n) = placeholder(e) {
                            out.insert(n, (table.clone(), last_part(c)));
                        }
                    }
                }
            }
            return out;
        }
        _ => return out,
    };
    if let Some(w) = selection {
        let _ = visit_expressions(w, |e| {
            if let Expr::BinaryOp { left, op, right } = e
                && matches!(
                    op,
                    BinaryOperator::Eq
                        | BinaryOperator::NotEq
                        | BinaryOperator::Lt
                        | BinaryOperator::LtEq
                        | BinaryOperator::Gt
                        | BinaryOperator::GtEq
                )
            {
                for (col, val) in [(left, right), (right, left)] {
                    if let (Some((t, c)), Some(n)) =
                        (column_of(col, &table, &aliases), placeholder(val))
                    {
                        out.insert(n, (t, c));
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    out
}

/// `$n` (through casts and parentheses).
fn placeholder(e: &Expr) -> Option<u32> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => placeholder(expr),
        _ => None,
    }
}

/// The (table, column) a column reference names: unqualified ones are the written table's.
fn column_of(
    e: &Expr,
    table: &str,
    aliases: &BTreeMap<String, String>,
) -> Option<(String, String)> {
    match e {
        Expr::Identifier(c) => Some((table.to_owned(), c.value.clone())),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let col = parts[parts.len() - 1].value.clone();
            let qual = parts[..parts.len() - 1]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(".");
            Some((aliases.get(&qual).cloned().unwrap_or(qual), col))
        }
        Expr::Cast { expr, .. } | Expr::Nested(expr) => column_of(expr, table, aliases),
        _ => None,
    }
}

/// Where the dry run connects: the target's server, with the gateway's credentials.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub pg: PostgresTarget,
    pub addr: SocketAddr,
    pub database: String,
}

/// Everything one dry run needs.
#[derive(Debug)]
pub struct Job<'a> {
    pub upstream: &'a Upstream,
    pub sql: &'a str,
    pub facts: &'a Facts,
    pub params: &'a [Param<'a>],
    /// The role the approved statement would run as (`None`: the login role).
    pub role: Option<&'a str>,
    pub masker: &'a Masker,
    /// The masking rules the answer would pass through.
    pub mask: &'a [String],
}

/// Runs the dry run of a held statement: `skipped` with the reason when it gets none,
/// `failed` when it did not complete, else `done` with what it showed.
pub async fn run(job: Job<'_>) -> DryRun {
    let rw = match rewrite(job.sql, job.facts, SAMPLE_ROWS) {
        Ok(rw) => rw,
        Err(reason) => return DryRun::skipped(reason),
    };
    let started = Instant::now();
    let mut dry = match tokio::time::timeout(TOTAL_TIMEOUT, execute(&job, &rw)).await {
        Ok(Ok(d)) => d,
        Ok(Err(Fail::Skip(reason))) => DryRun::skipped(reason),
        Ok(Err(Fail::Error(reason))) => DryRun::failed(reason),
        Err(_) => DryRun::failed(format!(
            "the dry run did not finish within {} s",
            TOTAL_TIMEOUT.as_secs()
        )),
    };
    dry.took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        table = %rw.table,
        status = %dry.status,
        rows = dry.rows_affected,
        took_ms = dry.took_ms,
        "dry run"
    );
    dry
}

#[derive(Debug)]
enum Fail {
    /// No dry run, and why (found on the server: triggers, sequence defaults, …).
    Skip(String),
    Error(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Error(s)
    }
}

async fn execute(job: &Job<'_>, rw: &Rewritten) -> Result<DryRun, Fail> {
    let mut c = Conn::open(job.upstream).await?;
    let r = steps(&mut c, job, rw).await;
    // Whatever happened, nothing of it is kept: ROLLBACK on a healthy connection, and the
    // connection is closed either way (closing it rolls back too).
    if r.is_ok() || matches!(r, Err(Fail::Skip(_))) {
        c.simple("ROLLBACK").await?;
    }
    c.terminate().await;
    r
}

async fn steps(c: &mut Conn, job: &Job<'_>, rw: &Rewritten) -> Result<DryRun, Fail> {
    let mut setup = format!(
        "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        STATEMENT_TIMEOUT.as_millis(),
        LOCK_TIMEOUT.as_millis()
    );
    if let Some(role) = job.role {
        setup.push_str(&format!("; SET LOCAL ROLE {}", quote_ident(role)));
    }
    c.simple(&setup).await?;
    let (schema, relname) = check_table(c, rw).await?;
    check_reads(c, &job.facts.tables_read).await?;
    // The parameter types as the server resolves them for the statement itself, so the
    // sample and EXPLAIN take each value exactly as the statement would.
    let declared: Vec<u32> = job.params.iter().map(|p| p.type_id).collect();
    let types = c.describe_params(&rw.run, &declared).await?;
    let mut dry = DryRun {
        status: "done".into(),
        table: Some(format!("{schema}.{relname}")),
        sample_limit: SAMPLE_ROWS as u32,
        ..DryRun::default()
    };
    let masking = Masking {
        masker: job.masker,
        mask: job.mask,
        schema: &schema,
        table: &relname,
    };
    if let Some(before) = &rw.before {
        let a = c.extended(before, &types, job.params, SAMPLE_ROWS).await?;
        dry.columns = a.fields.iter().map(|f| f.name.clone()).collect();
        dry.before = masking.rows(&a.fields, &a.rows)?;
    }
    let plan = c
        .extended(&rw.explain, &types, job.params, PLAN_LINES)
        .await?;
    dry.plan = plan
        .rows
        .iter()
        .filter_map(|r| r.first().cloned().flatten())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .collect();
    let ran = c.extended(&rw.run, &types, job.params, SAMPLE_ROWS).await?;
    dry.columns = ran.fields.iter().map(|f| f.name.clone()).collect();
    let rows = masking.rows(&ran.fields, &ran.rows)?;
    match rw.kind {
        Kind::Delete => dry.before = rows,
        Kind::Update | Kind::Insert => dry.after = rows,
    }
    dry.rows_affected = ran
        .tag
        .as_deref()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .or(Some(ran.count));
    dry.truncated = ran.count > SAMPLE_ROWS as u64;
    dry.command_tag = ran.tag;
    Ok(dry)
}

/// What the catalog says about the written table, checked inside the dry run's transaction:
/// its schema and name, or why it gets no dry run.
async fn check_table(c: &mut Conn, rw: &Rewritten) -> Result<(String, String), Fail> {
    const Q: &str = "SELECT c.relkind::text, n.nspname::text, c.relname::text, \
        (SELECT string_agg(DISTINCT t.tgname || ' on ' || t.tgrelid::regclass::text, ', ') \
           FROM pg_trigger t WHERE NOT t.tgisinternal AND (t.tgrelid = c.oid \
             OR t.tgrelid IN (SELECT relid FROM pg_partition_tree(c.oid)) \
             OR t.tgrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = c.oid) \
             OR t.tgrelid IN (SELECT conrelid FROM pg_constraint WHERE contype = 'f' AND confrelid = c.oid))), \
        (SELECT string_agg(r.rulename::text, ', ') FROM pg_rewrite r \
           WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'), \
        (SELECT string_agg(a.attname::text, ',') FROM pg_attribute a \
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) ILIKE '%nextval(%')), \
        (SELECT string_agg(DISTINCT p.oid::regprocedure::text, ', ') FROM pg_depend dep \
           JOIN pg_proc p ON p.oid = dep.refobjid AND dep.refclassid = 'pg_proc'::regclass \
           WHERE (dep.classid = 'pg_attrdef'::regclass \
                  AND dep.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = c.oid)) \
              OR (dep.classid = 'pg_constraint'::regclass \
                  AND dep.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = c.oid \
                    OR contypid IN (SELECT atttypid FROM pg_attribute WHERE attrelid = c.oid)))) \
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.oid = $1::regclass";
    let name = Param {
        type_id: super::types::oid::TEXT,
        format: ParamFormat::Text,
        value: Some(std::borrow::Cow::Borrowed(rw.table.as_bytes())),
    };
    let a = c
        .extended(
            Q,
            &[super::types::oid::TEXT],
            std::slice::from_ref(&name),
            1,
        )
        .await?;
    let row = a
        .rows
        .first()
        .ok_or_else(|| Fail::Error(format!("table {} not found", rw.table)))?;
    let text = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let relkind = text(0).unwrap_or_default();
    let (schema, relname) = (text(1).unwrap_or_default(), text(2).unwrap_or_default());
    if !matches!(relkind.as_str(), "r" | "p") {
        return Err(Fail::Skip(format!(
            "{schema}.{relname} is not a table (a view or foreign table may act outside the transaction)"
        )));
    }
    if let Some(t) = text(3) {
        return Err(Fail::Skip(format!(
            "trigger {t} may have effects outside the transaction"
        )));
    }
    if let Some(r) = text(4) {
        return Err(Fail::Skip(format!(
            "{schema}.{relname} has rewrite rule {r}; the statement may run something else"
        )));
    }
    // Built-in functions are not recorded in pg_depend: these are the database's own, which
    // a default, a generated column or a CHECK (of the table or its domains) would run.
    if let Some(f) = text(6) {
        return Err(Fail::Skip(format!(
            "{schema}.{relname} runs function {f} in a default or check, which may have effects outside the transaction"
        )));
    }
    if let Some(cols) = text(5) {
        let from_sequence: Vec<&str> = cols
            .split(',')
            .filter(|c| match &rw.defaults {
                Defaults::None => false,
                Defaults::Any => true,
                Defaults::AllBut(listed) => !listed.iter().any(|l| l == c),
            })
            .collect();
        if !from_sequence.is_empty() {
            return Err(Fail::Skip(format!(
                "column {} takes its default from a sequence (nextval), whose effect survives a rollback",
                from_sequence.join(", ")
            )));
        }
    }
    Ok((schema, relname))
}

/// The relations the statement reads must be tables too: a view or foreign table read in a
/// subquery may call functions that act outside the transaction.
async fn check_reads(c: &mut Conn, names: &[String]) -> Result<(), Fail> {
    if names.is_empty() {
        return Ok(());
    }
    // Each name part quoted as the lineage kept it (case and all); one that resolves to no
    // relation counts against the dry run too.
    const Q: &str = "SELECT string_agg(x, ', ') FROM json_array_elements_text($1::json) x \
        WHERE COALESCE((SELECT relkind FROM pg_class WHERE oid = to_regclass(x)), '?') \
          NOT IN ('r', 'p')";
    let quoted: Vec<String> = names
        .iter()
        .map(|n| {
            n.split('.')
                .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    let list = serde_json::to_string(&quoted).map_err(|e| Fail::Error(e.to_string()))?;
    let param = Param {
        type_id: super::types::oid::TEXT,
        format: ParamFormat::Text,
        value: Some(std::borrow::Cow::Borrowed(list.as_bytes())),
    };
    let a = c
        .extended(
            Q,
            &[super::types::oid::TEXT],
            std::slice::from_ref(&param),
            1,
        )
        .await?;
    match a.rows.first().and_then(|r| r.first().cloned().flatten()) {
        Some(v) => Err(Fail::Skip(format!(
            "it reads {}, which is not a table (a view or foreign table may act outside the transaction)",
            String::from_utf8_lossy(&v)
        ))),
        None => Ok(()),
    }
}

/// Masks sampled rows as the answer would be masked.
struct Masking<'a> {
    masker: &'a Masker,
    mask: &'a [String],
    schema: &'a str,
    table: &'a str,
}

impl Masking<'_> {
    fn rows(
        &self,
        fields: &[Field],
        rows: &[Vec<Option<Vec<u8>>>],
    ) -> Result<Vec<Vec<Option<String>>>, Fail> {
        let cols: Vec<ColumnRef<'_>> = fields
            .iter()
            .map(|f| ColumnRef {
                schema: self.schema,
                table: self.table,
                column: &f.name,
                kind: value_kind(f.type_oid),
                type_id: f.type_oid,
                format: ValueFormat::Text,
            })
            .collect();
        let mut plan = self
            .masker
            .plan(&cols, self.mask)
            .map_err(|e| Fail::Error(format!("the samples cannot be masked: {e}")))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut buf = BytesMut::new();
        for row in rows {
            let mut shown = Vec::with_capacity(row.len());
            for (i, v) in row.iter().enumerate() {
                let Some(v) = v else {
                    shown.push(None);
                    continue;
                };
                buf.clear();
                let text = match plan
                    .mask_value(i, v, &mut buf)
                    .map_err(|e| Fail::Error(format!("the samples cannot be masked: {e}")))?
                {
                    MaskOutcome::Unchanged => String::from_utf8_lossy(v).into_owned(),
                    MaskOutcome::Replaced { .. } => String::from_utf8_lossy(&buf).into_owned(),
                    MaskOutcome::Null { .. } => {
                        shown.push(None);
                        continue;
                    }
                };
                shown.push(Some(clip(text)));
            }
            out.push(shown);
        }
        Ok(out)
    }
}

fn clip(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(VALUE_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// `"name"`, doubled quotes inside.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One extended-protocol answer: the columns, up to `keep` rows, how many rows there were and
/// the command tag.
#[derive(Debug, Default)]
struct Answer {
    fields: Vec<Field>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
    count: u64,
    tag: Option<String>,
    param_types: Vec<u32>,
}

/// The dry run's own connection.
struct Conn {
    stream: MaybeTls,
    buf: BytesMut,
}

impl Conn {
    async fn open(up: &Upstream) -> Result<Self, Fail> {
        let params = [
            ("user", up.pg.user.as_str()),
            ("database", up.database.as_str()),
            ("application_name", "airlock-dry-run"),
        ];
        let b = tokio::time::timeout(
            CONNECT_TIMEOUT,
            backend_auth::connect(&up.pg, up.addr, &params),
        )
        .await
        .map_err(|_| Fail::Error("the dry run's connection timed out".into()))?
        .map_err(|e| Fail::Error(format!("the dry run's connection: {e}")))?;
        Ok(Self {
            stream: b.stream,
            buf: b.buffer,
        })
    }

    async fn simple(&mut self, sql: &str) -> Result<(), Fail> {
        let mut out = BytesMut::new();
        codec::put_message(&mut out, b'Q', |o| codec::put_cstr(o, sql.as_bytes()));
        self.exchange(&out, 0).await.map(|_| ())
    }

    /// The parameter types the server resolves for `sql` given the `declared` ones.
    async fn describe_params(&mut self, sql: &str, declared: &[u32]) -> Result<Vec<u32>, Fail> {
        let mut out = BytesMut::new();
        put_parse(&mut out, sql, declared);
        codec::put_message(&mut out, b'D', |o| {
            o.put_u8(b'S');
            codec::put_cstr(o, b"");
        });
        codec::put_message(&mut out, b'S', |_| {});
        Ok(self.exchange(&out, 0).await?.param_types)
    }

    /// Parse, Bind (the values as the client sent them; text results), Describe, Execute,
    /// Sync.
    async fn extended(
        &mut self,
        sql: &str,
        types: &[u32],
        params: &[Param<'_>],
        keep: usize,
    ) -> Result<Answer, Fail> {
        let mut out = BytesMut::new();
        put_parse(&mut out, sql, types);
        codec::put_message(&mut out, b'B', |o| {
            codec::put_cstr(o, b"");
            codec::put_cstr(o, b"");
            o.put_i16(params.len() as i16);
            for p in params {
                o.put_i16(match p.format {
                    ParamFormat::Text => 0,
                    ParamFormat::Binary => 1,
                });
            }
            o.put_i16(params.len() as i16);
            for p in params {
                match &p.value {
                    None => o.put_i32(-1),
                    Some(v) => {
                        o.put_i32(v.len() as i32);
                        o.put_slice(v);
                    }
                }
            }
            o.put_i16(0);
        });
        codec::put_message(&mut out, b'D', |o| {
            o.put_u8(b'P');
            codec::put_cstr(o, b"");
        });
        codec::put_message(&mut out, b'E', |o| {
            codec::put_cstr(o, b"");
            o.put_i32(0);
        });
        codec::put_message(&mut out, b'S', |_| {});
        self.exchange(&out, keep).await
    }

    /// Sends `out` and reads up to ReadyForQuery, keeping `keep` rows. The first
    /// ErrorResponse is the error.
    async fn exchange(&mut self, out: &[u8], keep: usize) -> Result<Answer, Fail> {
        let io = |e: std::io::Error| Fail::Error(format!("the dry run's connection: {e}"));
        self.stream.write_all(out).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut a = Answer::default();
        let mut error = None;
        loop {
            while let Some(h) = codec::peek_header(&self.buf).map_err(|e| e.to_string())? {
                if self.buf.len() < h.total {
                    break;
                }
                let body = &self.buf[HEADER_LEN..h.total];
                match h.tag {
                    b'Z' => {
                        self.buf.advance(h.total);
                        return match error {
                            Some(e) => Err(Fail::Error(format!("the server answered: {e}"))),
                            None => Ok(a),
                        };
                    }
                    b'E' if error.is_none() => {
                        error = Some(
                            codec::parse_error(body)
                                .map(|e| e.message.to_string())
                                .unwrap_or_else(|_| "malformed error".into()),
                        );
                    }
                    b'T' => a.fields = parse_row_description(body).map_err(|e| e.to_string())?,
                    b't' => a.param_types = parameter_types(body)?,
                    b'D' => {
                        a.count += 1;
                        if a.rows.len() < keep {
                            let row = data_row_values(body).map_err(|e| e.to_string())?;
                            a.rows
                                .push(row.into_iter().map(|v| v.map(<[u8]>::to_vec)).collect());
                        }
                    }
                    b'C' => {
                        let tag = body.strip_suffix(&[0]).unwrap_or(body);
                        a.tag = Some(String::from_utf8_lossy(tag).into_owned());
                    }
                    _ => {}
                }
                self.buf.advance(h.total);
            }
            if self.stream.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                return Err(Fail::Error(
                    "the server closed the dry run's connection".into(),
                ));
            }
        }
    }

    async fn terminate(mut self) {
        let mut out = BytesMut::new();
        codec::put_message(&mut out, b'X', |_| {});
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

fn put_parse(out: &mut BytesMut, sql: &str, types: &[u32]) {
    codec::put_message(out, b'P', |o| {
        codec::put_cstr(o, b"");
        codec::put_cstr(o, sql.as_bytes());
        o.put_i16(types.len() as i16);
        for t in types {
            o.put_u32(*t);
        }
    });
}

fn parameter_types(body: &[u8]) -> Result<Vec<u32>, Fail> {
    let mut r = Reader::new(body, "ParameterDescription");
    let n = r.i16().map_err(|e| e.to_string())?;
    (0..n)
        .map(|_| {
            r.i32()
                .map(|t| t as u32)
                .map_err(|e| Fail::Error(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Dialect;
    use crate::policy::sql::{Limits, classify};

    fn rw(sql: &str) -> Result<Rewritten, String> {
        let facts = classify(sql, Dialect::Postgres, &Limits::default());
        rewrite(sql, &facts, 10)
    }

    #[test]
    fn update_gets_a_sample_and_returning() {
        let r = rw("UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND region = 'eu'")
            .unwrap();
        assert_eq!(r.kind, Kind::Update);
        assert_eq!(r.table, "accounts");
        assert_eq!(
            r.before.as_deref(),
            Some("SELECT accounts.* FROM accounts WHERE id = $2 AND region = 'eu' LIMIT 10")
        );
        assert_eq!(
            r.run,
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND region = 'eu' RETURNING accounts.*"
        );
        assert_eq!(
            r.explain,
            "EXPLAIN UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND region = 'eu'"
        );
        assert_eq!(r.defaults, Defaults::None);
        // An alias and a FROM: the sample joins the same tables, and only the written table's
        // columns come back; a RETURNING of the client's is replaced.
        let r = rw(
            "UPDATE public.accounts AS a SET balance = 0 FROM owners o WHERE o.id = a.owner RETURNING o.name",
        )
        .unwrap();
        assert_eq!(r.table, "public.accounts");
        assert_eq!(
            r.before.as_deref(),
            Some("SELECT a.* FROM public.accounts AS a, owners o WHERE o.id = a.owner LIMIT 10")
        );
        assert!(r.run.ends_with("RETURNING a.*"), "{}", r.run);
        // No WHERE: every row, sampled.
        let r = rw("UPDATE t SET x = DEFAULT").unwrap();
        assert_eq!(r.before.as_deref(), Some("SELECT t.* FROM t LIMIT 10"));
        assert_eq!(r.defaults, Defaults::Any);
    }

    #[test]
    fn delete_and_insert() {
        let r = rw("DELETE FROM \"Orders\" WHERE id IN (1, 2)").unwrap();
        assert_eq!(r.kind, Kind::Delete);
        assert_eq!(r.before, None);
        assert_eq!(
            r.run,
            "DELETE FROM \"Orders\" WHERE id IN (1, 2) RETURNING \"Orders\".*"
        );
        let r = rw("INSERT INTO orders (id, note) VALUES ($1, 'x') ON CONFLICT (id) DO NOTHING")
            .unwrap();
        assert_eq!(r.kind, Kind::Insert);
        assert!(r.run.ends_with("RETURNING orders.*"), "{}", r.run);
        assert_eq!(
            r.defaults,
            Defaults::AllBut(vec!["id".into(), "note".into()])
        );
        assert_eq!(
            rw("INSERT INTO orders VALUES (1)").unwrap().defaults,
            Defaults::Any
        );
        assert_eq!(
            rw("INSERT INTO orders (id) VALUES (DEFAULT)")
                .unwrap()
                .defaults,
            Defaults::Any
        );
    }

    #[test]
    fn refusals_say_why() {
        let why = |sql: &str| rw(sql).unwrap_err();
        assert_eq!(
            why("INSERT INTO orders (id) VALUES (nextval('orders_id_seq'))"),
            "calls nextval, whose effect survives a rollback"
        );
        assert_eq!(
            why("UPDATE t SET x = pg_catalog.setval('s', 1)"),
            "calls setval, whose effect survives a rollback"
        );
        assert!(why("UPDATE t SET x = my_func(x)").contains("calls my_func, which is not known"));
        assert!(why("SELECT 1").contains("only data changes"));
        assert!(
            why("NOTIFY chan").contains("notify statement gets no dry run"),
            "{}",
            why("NOTIFY chan")
        );
        assert!(why("DROP TABLE t").contains("this command is ddl"));
        assert!(why("UPDATE t SET x = 1; UPDATE t SET x = 2").contains("single statement"));
        assert!(
            why("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d")
                .contains("WITH")
        );
        assert!(
            why("COPY t FROM STDIN").contains("copy_from statement gets no dry run"),
            "{}",
            why("COPY t FROM STDIN")
        );
        // Known-pure functions pass.
        assert!(rw("UPDATE t SET x = lower(x), at = now() WHERE id = 1").is_ok());
    }

    #[test]
    fn params_bind_to_columns() {
        let m =
            param_columns("UPDATE public.customers c SET email = $1 WHERE c.id = $2 AND $3 < card");
        assert_eq!(m[&1], ("public.customers".into(), "email".into()));
        assert_eq!(m[&2], ("public.customers".into(), "id".into()));
        assert_eq!(m[&3], ("public.customers".into(), "card".into()));
        let m = param_columns("INSERT INTO customers (id, email) VALUES ($1, $2::text)");
        assert_eq!(m[&2], ("customers".into(), "email".into()));
        let m = param_columns("DELETE FROM customers WHERE email = $1");
        assert_eq!(m[&1], ("customers".into(), "email".into()));
        assert!(param_columns("SELECT $1").is_empty());
    }
}
