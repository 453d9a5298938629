//! SQL classification: what a command string does, judged so that it fails closed.
//!
//! The text is first tokenized (sqlparser's tokenizer is iterative, so it is safe on any input)
//! and checked against size and nesting limits; only then is it parsed, because the parser and
//! the AST walk recurse. Anything that does not parse, that trips a limit, or that the parser
//! only half consumed is [`Class::Unknown`], which no rule written for `read` ever allows.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    CopySource, CopyTarget, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName,
    ObjectNamePart, Query, Set, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UtilityOption, Value, ValueWithSpan, Visit, Visitor,
};
use sqlparser::dialect::{Dialect as SqlDialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::normalize::{LiteralKind, LiteralSite};

/// The SQL dialect a command is parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// What a statement does, from least to most risky (the order is the "riskiest part" order).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Read,
    Session,
    Transaction,
    Write,
    Ddl,
    Dcl,
    Admin,
    #[default]
    Unknown,
}

impl Class {
    /// Every class, least risky first.
    pub const ALL: [Class; 8] = [
        Class::Read,
        Class::Session,
        Class::Transaction,
        Class::Write,
        Class::Ddl,
        Class::Dcl,
        Class::Admin,
        Class::Unknown,
    ];

    /// Lower-case name, as in the policy file and `policy explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Session => "session",
            Class::Transaction => "transaction",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Admin => "admin",
            Class::Unknown => "unknown",
        }
    }

    /// This class as a bit in a [`ClassSet`].
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of classes, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClassSet(pub u8);

impl ClassSet {
    pub fn insert(&mut self, c: Class) {
        self.0 |= c.bit();
    }
    pub fn contains(self, c: Class) -> bool {
        self.0 & c.bit() != 0
    }
    /// Whether every class of `self` is in `other`.
    pub fn is_subset(self, other: ClassSet) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn intersects(self, other: ClassSet) -> bool {
        self.0 & other.0 != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Class> {
        Class::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Class> for ClassSet {
    fn from_iter<I: IntoIterator<Item = Class>>(iter: I) -> Self {
        let mut s = ClassSet::default();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

/// Every statement kind the classifier reports (rules may only name these; `tcp` is a
/// command on a non-SQL protocol).
pub const KINDS: &[&str] = &[
    "alter_function",
    "alter_index",
    "alter_policy",
    "alter_role",
    "alter_schema",
    "alter_table",
    "alter_type",
    "alter_user",
    "alter_view",
    "analyze",
    "attach_database",
    "begin",
    "call",
    "close_cursor",
    "comment",
    "commit",
    "copy",
    "copy_file",
    "copy_from",
    "copy_program",
    "copy_to",
    "create_database",
    "create_domain",
    "create_extension",
    "create_function",
    "create_index",
    "create_policy",
    "create_procedure",
    "create_role",
    "create_schema",
    "create_sequence",
    "create_server",
    "create_table",
    "create_trigger",
    "create_type",
    "create_user",
    "create_view",
    "deallocate",
    "declare_cursor",
    "delete",
    "deny",
    "describe",
    "discard",
    "drop",
    "drop_database",
    "drop_domain",
    "drop_extension",
    "drop_function",
    "drop_policy",
    "drop_procedure",
    "drop_role",
    "drop_trigger",
    "empty",
    "execute",
    "explain",
    "explain_analyze",
    "fetch",
    "grant",
    "insert",
    "install",
    "kill",
    "listen",
    "load",
    "load_data",
    "lock",
    "lock_tables",
    "merge",
    "notify",
    "other",
    "pragma",
    "prepare",
    "release_savepoint",
    "rename_table",
    "reset",
    "revoke",
    "rollback",
    "savepoint",
    "select",
    "set",
    "set_privileged",
    "set_role",
    "set_session_authorization",
    "set_transaction",
    "show",
    "show_processlist",
    "table",
    "too_complex",
    "too_long",
    "truncate",
    "unlisten",
    "unlock_tables",
    "unparsed",
    "update",
    "use",
    "vacuum",
    "values",
    "tcp",
];

/// Limits checked before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest command text in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of brackets.
    pub max_depth: usize,
    /// Most tokens between two commas at one nesting level: a long operator chain
    /// (`1+1+1+…`) builds an AST as deep as it is long, and walking or dropping that recurses.
    pub max_run: usize,
    /// The parser's own recursion limit.
    pub parser_recursion: usize,
    /// Most statements in one command string.
    pub max_statements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 48,
            max_run: 4000,
            parser_recursion: 48,
            max_statements: 1000,
        }
    }
}

/// The classification of one command string (possibly several statements).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// Statement kinds in order (`select`, `insert`, `create_table`, …).
    pub kinds: Vec<&'static str>,
    /// The class of each statement, in order (after escalation by functions and nested
    /// statements).
    pub statement_classes: Vec<Class>,
    /// Riskiest class over all statements.
    pub class: Class,
    /// Tables read, normalized (`schema.table` or `table`), sorted, unique.
    pub tables_read: Vec<String>,
    /// Tables written (or created, altered, dropped).
    pub tables_written: Vec<String>,
    /// Functions called, lower-case, sorted, unique.
    pub functions: Vec<String>,
    /// Why the command is `unknown` or escalated, for the decision and the audit record.
    pub notes: Vec<String>,
    /// Set when a pre-parse limit was exceeded (the command was not parsed).
    pub limit: Option<String>,
}

impl Classification {
    /// The set of all statement classes.
    pub fn classes(&self) -> ClassSet {
        let mut s: ClassSet = self.statement_classes.iter().copied().collect();
        s.insert(self.class);
        s
    }

    /// All tables, read or written.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables_read
            .iter()
            .chain(self.tables_written.iter())
            .map(String::as_str)
    }

    fn unknown(kind: &'static str, note: String) -> Self {
        Classification {
            kinds: vec![kind],
            statement_classes: vec![Class::Unknown],
            class: Class::Unknown,
            notes: vec![note],
            ..Default::default()
        }
    }
}

/// Classifies a command string. Never panics: a panic inside the parser is caught and the
/// command is `unknown`.
pub fn classify(sql: &str, dialect: Dialect, limits: &Limits) -> Classification {
    classify_with_literals(sql, dialect, limits, false).0
}

/// Classifies a command string and, with `want_literals`, also reports every integer, decimal
/// and plain string literal the parser kept as a literal value, with its position and value.
/// The list is `None` when the command did not parse or when its classification looked at a
/// literal's value (`EXPLAIN` options, `set_config`'s setting name): such a classification
/// must not be shared between statements that differ only in literals.
pub fn classify_with_literals(
    sql: &str,
    dialect: Dialect,
    limits: &Limits,
    want_literals: bool,
) -> (Classification, Option<Vec<LiteralSite>>) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        classify_inner(sql, dialect, limits, want_literals)
    })) {
        Ok(c) => c,
        Err(_) => (
            Classification::unknown("unparsed", "the SQL parser failed on this command".into()),
            None,
        ),
    }
}

/// Collects the literal values of a parsed command (see [`classify_with_literals`]).
#[derive(Default)]
struct Literals(Vec<LiteralSite>);

impl Visitor for Literals {
    type Break = ();

    fn pre_visit_value(&mut self, v: &ValueWithSpan) -> ControlFlow<()> {
        let (kind, value) = match &v.value {
            Value::Number(n, false) => {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                match n.split_once('.') {
                    None if digits(n) => (LiteralKind::Integer, n.to_string()),
                    Some((a, b)) if digits(a) && digits(b) => (LiteralKind::Decimal, n.to_string()),
                    // Not a number the normaliser replaces: recorded so that it cannot match.
                    _ => (LiteralKind::Decimal, format!("\u{0}{n}")),
                }
            }
            Value::Number(n, true) => (LiteralKind::Decimal, format!("\u{0}{n}")),
            Value::SingleQuotedString(s) => (LiteralKind::String, s.clone()),
            // Booleans, NULL, `$1` and the like come from keywords and verbatim text.
            _ => return ControlFlow::Continue(()),
        };
        self.0.push(LiteralSite {
            line: v.span.start.line,
            column: v.span.start.column,
            kind,
            value,
        });
        ControlFlow::Continue(())
    }
}

fn classify_inner(
    sql: &str,
    dialect: Dialect,
    limits: &Limits,
    want_literals: bool,
) -> (Classification, Option<Vec<LiteralSite>>) {
    if sql.len() > limits.max_bytes {
        let msg = format!(
            "command is {} bytes, over the {}-byte limit checked before parsing",
            sql.len(),
            limits.max_bytes
        );
        let mut c = Classification::unknown("too_long", msg.clone());
        c.limit = Some(msg);
        return (c, None);
    }
    let pg = PostgreSqlDialect {};
    let my = MySqlDialect {};
    let d: &dyn SqlDialect = match dialect {
        Dialect::Postgres => &pg,
        Dialect::Mysql => &my,
    };
    let tokens = match Tokenizer::new(d, sql).tokenize_with_location() {
        Ok(t) => t,
        Err(e) => {
            let c = Classification::unknown("unparsed", format!("does not tokenize: {e}"));
            return (c, None);
        }
    };
    if let Some(msg) = check_shape(&tokens, limits) {
        let mut c = Classification::unknown("too_complex", msg.clone());
        c.limit = Some(msg);
        return (c, None);
    }
    let mut parser = Parser::new(d)
        .with_recursion_limit(limits.parser_recursion)
        .with_tokens_with_locations(tokens);
    let statements = match parser.parse_statements() {
        Ok(s) => s,
        Err(e) => {
            let c = Classification::unknown("unparsed", format!("does not parse: {e}"));
            return (c, None);
        }
    };
    // sqlparser stops at a bare END after a statement; the server would not. Anything left over
    // means we did not see the whole command.
    if parser.peek_token_ref().token != Token::EOF {
        let c = Classification::unknown(
            "unparsed",
            "text after the last statement was not parsed".into(),
        );
        return (c, None);
    }
    let literals = want_literals.then(|| {
        let mut l = Literals::default();
        for stmt in &statements {
            let _ = stmt.visit(&mut l);
        }
        l.0
    });
    if statements.is_empty() {
        let c = Classification {
            kinds: vec!["empty"],
            statement_classes: vec![],
            class: Class::Read,
            ..Default::default()
        };
        return (c, literals);
    }
    let mut acc = Acc::default();
    let mut out = Classification {
        class: Class::Read,
        ..Default::default()
    };
    for stmt in &statements {
        let (kind, class) = classify_statement(stmt, &mut acc);
        out.kinds.push(kind);
        out.statement_classes.push(class);
        out.class = out.class.max(class);
    }
    for w in &acc.written {
        acc.read.remove(w);
    }
    for name in acc.ctes.iter().chain(acc.table_functions.iter()) {
        acc.read.remove(name);
    }
    if acc.only_keyword {
        acc.read.remove("only");
        acc.written.remove("only");
    }
    out.tables_read = acc.read.into_iter().collect();
    out.tables_written = acc.written.into_iter().collect();
    out.functions = acc.functions.into_iter().collect();
    out.notes = acc.notes;
    let literals = if acc.literal_sensitive {
        None
    } else {
        literals
    };
    (out, literals)
}

/// Bracket depth, expression-chain length and statement count, measured on tokens (strings,
/// comments and dollar quotes are already single tokens, so their content does not count).
fn check_shape(tokens: &[sqlparser::tokenizer::TokenWithSpan], limits: &Limits) -> Option<String> {
    // Tokens since the last comma/semicolon at each open nesting level. A bracketed group
    // counts as one token of the level around it, so `(1)+(1)+…` is as long as `1+1+…`.
    let mut runs: Vec<usize> = Vec::with_capacity(16);
    let mut run = 0usize;
    let mut statements = 1usize;
    let too_long = |limits: &Limits| {
        Some(format!(
            "more than {} tokens in one expression (checked before parsing)",
            limits.max_run
        ))
    };
    for t in tokens {
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                if runs.len() >= limits.max_depth {
                    return Some(format!(
                        "brackets nest deeper than {} (checked before parsing)",
                        limits.max_depth
                    ));
                }
                runs.push(run + 1);
                run = 0;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                run = runs.pop().unwrap_or(0);
                if run > limits.max_run {
                    return too_long(limits);
                }
            }
            Token::Comma => run = 0,
            Token::SemiColon => {
                run = 0;
                statements += 1;
                if statements > limits.max_statements {
                    return Some(format!(
                        "more than {} statements in one command (checked before parsing)",
                        limits.max_statements
                    ));
                }
            }
            Token::Whitespace(_) => {}
            _ => {
                run += 1;
                if run > limits.max_run {
                    return too_long(limits);
                }
            }
        }
    }
    None
}

#[derive(Default)]
struct Acc {
    read: BTreeSet<String>,
    written: BTreeSet<String>,
    ctes: BTreeSet<String>,
    table_functions: BTreeSet<String>,
    /// `ONLY t` was seen (sqlparser reports a relation `only`, which is removed).
    only_keyword: bool,
    functions: BTreeSet<String>,
    notes: Vec<String>,
    /// The classification looked at a literal's value (an `EXPLAIN` option, `set_config`'s
    /// setting name): it must not be shared with other literals.
    literal_sensitive: bool,
}

/// Normalizes an object name the way the server resolves it: unquoted parts fold to lower case
/// (PostgreSQL; MySQL table names are case-sensitive on most file systems, but folding only
/// makes globs match more, which is the safe side for deny rules and is documented for allow).
pub fn normalize_name(name: &ObjectName) -> String {
    let mut s = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) => {
                if id.quote_style.is_some() {
                    s.push_str(&id.value);
                } else {
                    s.push_str(&id.value.to_lowercase());
                }
            }
            ObjectNamePart::Function(f) => s.push_str(&f.to_string().to_lowercase()),
        }
    }
    s
}

fn last_part_lower(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => id.value.to_lowercase(),
        Some(ObjectNamePart::Function(f)) => f.to_string().to_lowercase(),
        None => String::new(),
    }
}

/// Functions that change data or state; a statement calling one is at least `write`.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "txid_current",
    "pg_current_xact_id",
];

/// Functions that reach outside the database, run arbitrary SQL, or administer the server; a
/// statement calling one is `admin`. `lo_*` and `dblink*` are matched by prefix.
const ADMIN_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_emit_message",
    "pg_replication_slot_advance",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // Run SQL given as a string: dynamic SQL the classifier cannot see.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    // MySQL.
    "load_file",
    "sys_exec",
    "sys_eval",
    "sleep",
    "benchmark",
];

/// Session settings that change how later commands are lexed or whose privileges they run
/// with; setting them is `admin`, never `session`.
const PRIVILEGED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session authorization",
    "standard_conforming_strings",
    "backslash_quote",
    "escape_string_warning",
    "session_replication_role",
    "allow_system_table_mods",
    "sql_mode",
];

fn function_class(name: &str) -> Option<Class> {
    if name.starts_with("lo_") || name == "lowrite" || name == "loread" {
        return Some(Class::Write);
    }
    if name.starts_with("dblink") {
        return Some(Class::Admin);
    }
    if WRITE_FUNCTIONS.contains(&name) {
        return Some(Class::Write);
    }
    if ADMIN_FUNCTIONS.contains(&name) {
        return Some(Class::Admin);
    }
    None
}

/// Collects tables, functions and nested statements below one top-level statement.
struct Walker<'a> {
    acc: &'a mut Acc,
    class: Class,
    root: *const Statement,
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.acc.read.insert(normalize_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Function { name, .. } => self.function(name, None),
            TableFactor::Table {
                name,
                alias: Some(_),
                args: None,
                ..
            } if is_bare_only(name) => {
                if let Some(real) = table_factor_name(tf) {
                    self.acc.read.insert(real);
                }
                self.acc.only_keyword = true;
            }
            // `FROM f(args)` is a set-returning function, not a table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.function(name, None);
                self.acc.table_functions.insert(normalize_name(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.acc.ctes.insert(cte.alias.name.value.to_lowercase());
                self.acc.ctes.insert(cte.alias.name.value.clone());
            }
        }
        if !q.locks.is_empty() {
            self.escalate(Class::Write, "row locks (FOR UPDATE/SHARE) are a write");
        }
        if let SetExpr::Select(s) = q.body.as_ref()
            && let Some(into) = &s.into
        {
            for t in &into.targets {
                match t {
                    Expr::Identifier(id) => {
                        self.acc
                            .written
                            .insert(normalize_name(&ObjectName::from(id.clone())));
                    }
                    Expr::CompoundIdentifier(ids) => {
                        self.acc
                            .written
                            .insert(normalize_name(&ObjectName::from(ids.clone())));
                    }
                    _ => {}
                }
            }
            self.escalate(Class::Ddl, "SELECT INTO creates a table");
        }
        if let SetExpr::Table(t) = q.body.as_ref()
            && let Some(name) = &t.table_name
        {
            let full = match &t.schema_name {
                Some(s) => format!("{}.{}", s.to_lowercase(), name.to_lowercase()),
                None => name.to_lowercase(),
            };
            self.acc.read.insert(full);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.function(&f.name, Some(&f.args));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if std::ptr::eq(s, self.root) {
            return ControlFlow::Continue(());
        }
        let (kind, class) = statement_shape(s, self.acc);
        if class > Class::Read {
            let why = format!("nested {kind}");
            self.escalate(class, &why);
        }
        ControlFlow::Continue(())
    }
}

impl Walker<'_> {
    fn escalate(&mut self, class: Class, why: &str) {
        if class > self.class {
            self.class = class;
            self.acc.notes.push(format!("{class}: {why}"));
        }
    }

    fn function(&mut self, name: &ObjectName, args: Option<&FunctionArguments>) {
        let short = last_part_lower(name);
        let class = if short == "set_config" {
            self.acc.literal_sensitive = true;
            Some(set_config_class(args))
        } else {
            function_class(&short)
        };
        if let Some(c) = class {
            let why = format!("calls {short}()");
            self.escalate(c, &why);
        }
        self.acc.functions.insert(normalize_name(name));
    }
}

/// `set_config('search_path', …)` is an ordinary session setting; `set_config('role', …)` is
/// `SET ROLE`; a setting name that is not a literal could be anything.
fn set_config_class(args: Option<&FunctionArguments>) -> Class {
    let first = match args {
        Some(FunctionArguments::List(l)) => l.args.first(),
        _ => None,
    };
    let lit = match first {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                Some(s.to_lowercase())
            }
            _ => None,
        },
        _ => None,
    };
    match lit {
        Some(name) if !PRIVILEGED_SETTINGS.contains(&name.trim()) => Class::Session,
        _ => Class::Admin,
    }
}

fn classify_statement(stmt: &Statement, acc: &mut Acc) -> (&'static str, Class) {
    let (kind, base) = statement_shape(stmt, acc);
    // EXPLAIN without ANALYZE plans but does not run: tables count as read, functions do not
    // run, nested writes do not happen.
    if let Statement::Explain {
        statement,
        analyze,
        options,
        ..
    } = stmt
        && !explain_runs(*analyze, options.as_deref())
    {
        let mut inner = Acc::default();
        let mut w = Walker {
            acc: &mut inner,
            class: Class::Read,
            root: std::ptr::null(),
        };
        let _ = statement.visit(&mut w);
        acc.read.extend(inner.read);
        acc.read.extend(inner.written);
        acc.ctes.extend(inner.ctes);
        return (kind, Class::Read);
    }
    let mut w = Walker {
        acc,
        class: base,
        root: stmt as *const Statement,
    };
    let _ = stmt.visit(&mut w);
    let class = w.class;
    let kind = if let Statement::Explain { .. } = stmt {
        "explain_analyze"
    } else {
        kind
    };
    (kind, class)
}

/// Whether an EXPLAIN executes its statement. Any `analyze` option not explicitly false counts.
fn explain_runs(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    if analyze {
        return true;
    }
    options.into_iter().flatten().any(|o| {
        let name = o.name.value.to_lowercase();
        if name != "analyze" && name != "analyse" {
            return false;
        }
        match &o.arg {
            None => true,
            Some(arg) => {
                let v = arg.to_string().to_lowercase();
                !matches!(v.trim_matches('\''), "false" | "off" | "0" | "no")
            }
        }
    })
}

fn add_written(acc: &mut Acc, name: &ObjectName) {
    acc.written.insert(normalize_name(name));
}

fn add_written_twj(acc: &mut Acc, t: &TableWithJoins) {
    for tf in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
        if let Some(name) = table_factor_name(tf) {
            acc.written.insert(name);
        }
    }
}

/// The table a `FROM`/`UPDATE` item names. sqlparser reads PostgreSQL's `ONLY t` as a table
/// called `only` with alias `t`; the server reads it as table `t` (without inheritance
/// children). A real table called `only` must be quoted, so an unquoted `only` with an alias
/// is that syntax.
fn table_factor_name(tf: &TableFactor) -> Option<String> {
    match tf {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => match (is_bare_only(name), alias) {
            (true, Some(a)) => Some(normalize_name(&ObjectName::from(a.name.clone()))),
            _ => Some(normalize_name(name)),
        },
        _ => None,
    }
}

fn is_bare_only(name: &ObjectName) -> bool {
    matches!(name.0.as_slice(), [ObjectNamePart::Identifier(id)]
        if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("only"))
}

/// Kind and base class of one statement, and the tables it writes. Statements not listed are
/// `unknown`: a new statement type is denied until someone classifies it.
fn statement_shape(stmt: &Statement, acc: &mut Acc) -> (&'static str, Class) {
    use Class::*;
    match stmt {
        Statement::Query(q) => query_shape(q),
        Statement::Insert(i) => {
            if let TableObject::TableName(n) = &i.table {
                add_written(acc, n);
            }
            ("insert", Write)
        }
        Statement::Update(u) => {
            add_written_twj(acc, &u.table);
            ("update", Write)
        }
        Statement::Delete(d) => {
            for n in &d.tables {
                add_written(acc, n);
            }
            if d.tables.is_empty() {
                let from = match &d.from {
                    sqlparser::ast::FromTable::WithFromKeyword(t)
                    | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
                };
                for t in from {
                    add_written_twj(acc, t);
                }
            }
            ("delete", Write)
        }
        Statement::Merge(m) => {
            if let TableFactor::Table { name, .. } = &m.table {
                add_written(acc, name);
            }
            ("merge", Write)
        }
        Statement::Copy {
            source, to, target, ..
        } => {
            if let CopySource::Table { table_name, .. } = source {
                if *to {
                    acc.read.insert(normalize_name(table_name));
                } else {
                    add_written(acc, table_name);
                }
            }
            match target {
                CopyTarget::Program { .. } => {
                    acc.notes
                        .push("admin: COPY … PROGRAM runs a shell command".into());
                    ("copy_program", Admin)
                }
                CopyTarget::File { .. } => {
                    acc.notes
                        .push("admin: COPY to or from a server file".into());
                    ("copy_file", Admin)
                }
                CopyTarget::Stdout if *to => ("copy_to", Read),
                CopyTarget::Stdin if !*to => ("copy_from", Write),
                _ => ("copy", Unknown),
            }
        }
        Statement::Truncate(t) => {
            for n in &t.table_names {
                add_written(acc, &n.name);
            }
            ("truncate", Ddl)
        }
        Statement::Explain { statement, .. } => {
            // The inner statement is walked as a nested one when ANALYZE runs it.
            let _ = statement;
            // Whether it runs depends on option values (`ANALYZE 0`, `ANALYZE 'off'`).
            acc.literal_sensitive = true;
            ("explain", Read)
        }
        Statement::ExplainTable { .. } => ("describe", Read),
        Statement::ShowVariable { .. }
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
        | Statement::ShowObjects(_) => ("show", Read),
        Statement::ShowProcessList { .. } => ("show_processlist", Admin),
        Statement::Declare { .. } => ("declare_cursor", Read),
        Statement::Fetch { .. } => ("fetch", Read),
        Statement::Close { .. } => ("close_cursor", Session),
        Statement::StartTransaction { .. } => ("begin", Transaction),
        Statement::Commit { .. } => ("commit", Transaction),
        Statement::Rollback { .. } => ("rollback", Transaction),
        Statement::Savepoint { .. } => ("savepoint", Transaction),
        Statement::ReleaseSavepoint { .. } => ("release_savepoint", Transaction),
        Statement::Set(s) => set_shape(s, acc),
        Statement::Reset(_) => ("reset", Session),
        Statement::Discard { .. } => ("discard", Session),
        Statement::Use(_) => ("use", Session),
        Statement::Deallocate { .. } => ("deallocate", Session),
        Statement::LISTEN { .. } => ("listen", Session),
        Statement::UNLISTEN { .. } => ("unlisten", Session),
        Statement::NOTIFY { .. } => ("notify", Write),
        Statement::Prepare { .. } => ("prepare", Read),
        Statement::Execute { .. } => {
            acc.notes.push(
                "unknown: EXECUTE runs a statement prepared earlier, not visible here".into(),
            );
            ("execute", Unknown)
        }
        Statement::Call(_) => {
            acc.notes.push("admin: CALL runs a procedure".into());
            ("call", Admin)
        }
        Statement::Lock(l) => {
            for t in &l.tables {
                add_written(acc, &t.name);
            }
            ("lock", Write)
        }
        Statement::LockTables { .. } => ("lock_tables", Write),
        Statement::UnlockTables => ("unlock_tables", Session),
        Statement::LoadData { table_name, .. } => {
            add_written(acc, table_name);
            ("load_data", Admin)
        }
        Statement::CreateTable(c) => {
            add_written(acc, &c.name);
            ("create_table", Ddl)
        }
        Statement::CreateView(v) => {
            add_written(acc, &v.name);
            ("create_view", Ddl)
        }
        Statement::CreateIndex(i) => {
            add_written(acc, &i.table_name);
            ("create_index", Ddl)
        }
        Statement::AlterTable(a) => {
            add_written(acc, &a.name);
            ("alter_table", Ddl)
        }
        Statement::Drop {
            names, object_type, ..
        } => {
            for n in names {
                add_written(acc, n);
            }
            match object_type {
                sqlparser::ast::ObjectType::Role | sqlparser::ast::ObjectType::User => {
                    ("drop_role", Dcl)
                }
                sqlparser::ast::ObjectType::Database => ("drop_database", Ddl),
                _ => ("drop", Ddl),
            }
        }
        Statement::RenameTable(_) => ("rename_table", Ddl),
        Statement::CreateSchema { .. } => ("create_schema", Ddl),
        Statement::CreateDatabase { .. } => ("create_database", Ddl),
        Statement::CreateSequence { .. } => ("create_sequence", Ddl),
        Statement::CreateType { .. } => ("create_type", Ddl),
        Statement::CreateDomain(_) => ("create_domain", Ddl),
        Statement::CreateFunction(_) => ("create_function", Ddl),
        Statement::CreateProcedure { .. } => ("create_procedure", Ddl),
        Statement::CreateTrigger(_) => ("create_trigger", Ddl),
        Statement::DropTrigger(_) => ("drop_trigger", Ddl),
        Statement::DropFunction(_) => ("drop_function", Ddl),
        Statement::DropProcedure { .. } => ("drop_procedure", Ddl),
        Statement::DropDomain(_) => ("drop_domain", Ddl),
        Statement::AlterIndex { .. } => ("alter_index", Ddl),
        Statement::AlterView { .. } => ("alter_view", Ddl),
        Statement::AlterSchema(_) => ("alter_schema", Ddl),
        Statement::AlterType(_) => ("alter_type", Ddl),
        Statement::AlterFunction(_) => ("alter_function", Ddl),
        Statement::Comment { .. } => ("comment", Ddl),
        Statement::CreateExtension(_) => ("create_extension", Admin),
        Statement::DropExtension(_) => ("drop_extension", Admin),
        Statement::CreateServer(_) => ("create_server", Admin),
        Statement::Grant(_) => ("grant", Dcl),
        Statement::Revoke(_) => ("revoke", Dcl),
        Statement::Deny(_) => ("deny", Dcl),
        Statement::CreateRole(_) => ("create_role", Dcl),
        Statement::AlterRole { .. } => ("alter_role", Dcl),
        Statement::CreateUser(_) => ("create_user", Dcl),
        Statement::AlterUser(_) => ("alter_user", Dcl),
        Statement::CreatePolicy(_) => ("create_policy", Dcl),
        Statement::AlterPolicy(_) => ("alter_policy", Dcl),
        Statement::DropPolicy(_) => ("drop_policy", Dcl),
        Statement::Analyze(_) => ("analyze", Admin),
        Statement::Vacuum(_) => ("vacuum", Admin),
        Statement::Kill { .. } => ("kill", Admin),
        Statement::Install { .. } => ("install", Admin),
        Statement::Load { .. } => ("load", Admin),
        Statement::AttachDatabase { .. } => ("attach_database", Admin),
        Statement::Pragma { .. } => ("pragma", Admin),
        _ => {
            acc.notes
                .push("unknown: statement type not classified (denied until it is)".into());
            ("other", Unknown)
        }
    }
}

fn query_shape(q: &Query) -> (&'static str, Class) {
    match q.body.as_ref() {
        SetExpr::Insert(_) => ("insert", Class::Read),
        SetExpr::Update(_) => ("update", Class::Read),
        SetExpr::Delete(_) => ("delete", Class::Read),
        SetExpr::Merge(_) => ("merge", Class::Read),
        SetExpr::Values(_) => ("values", Class::Read),
        SetExpr::Table(_) => ("table", Class::Read),
        _ => ("select", Class::Read),
    }
}

fn set_shape(s: &Set, acc: &mut Acc) -> (&'static str, Class) {
    match s {
        Set::SetRole { .. } => {
            acc.notes.push("admin: SET ROLE changes privileges".into());
            ("set_role", Class::Admin)
        }
        Set::SetSessionAuthorization(_) => {
            acc.notes
                .push("admin: SET SESSION AUTHORIZATION changes privileges".into());
            ("set_session_authorization", Class::Admin)
        }
        Set::SetTransaction { .. } => ("set_transaction", Class::Transaction),
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => {
            ("set", Class::Session)
        }
        Set::SingleAssignment { variable, .. } => set_var(std::slice::from_ref(variable), acc),
        Set::ParenthesizedAssignments { variables, .. } => set_var(variables, acc),
        Set::MultipleAssignments { assignments } => {
            let names: Vec<ObjectName> = assignments.iter().map(|a| a.name.clone()).collect();
            set_var(&names, acc)
        }
        Set::SetSessionParam(_) => ("set", Class::Session),
    }
}

fn set_var(names: &[ObjectName], acc: &mut Acc) -> (&'static str, Class) {
    for n in names {
        // Setting names are case-insensitive even when quoted (`SET "ROLE" = …` is SET ROLE).
        let v = normalize_name(n).to_lowercase();
        let v = v.rsplit('.').next().unwrap_or(&v).to_string();
        if PRIVILEGED_SETTINGS.contains(&v.as_str()) {
            acc.notes.push(format!("admin: SET {v} is privileged"));
            return ("set_privileged", Class::Admin);
        }
    }
    ("set", Class::Session)
}
