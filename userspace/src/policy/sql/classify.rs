//! SQL classification: what a command string does, judged so that it fails closed.
//!
//! The text is first tokenized (sqlparser's tokenizer is iterative, so it is safe on any input)
//! and checked against size and nesting limits; only then is it parsed, because the parser and
//! the AST walk recurse. Anything that does not parse, that trips a limit, or that the parser
//! only half consumed is [`Class::Unknown`], which no rule written for `read` ever allows.

use std::collections::BTreeSet;

use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, CopyTarget, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName,
    ObjectNamePart, Query, Set, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UtilityOption, Value, ValueWithSpan, Visit, Visitor,
};
use sqlparser::dialect::{Dialect as SqlDialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer, Whitespace, Word};

use super::normalize::{LiteralKind, LiteralSite};
use crate::model::{Class, Dialect, Facts};

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

/// Classifies a command string. Never panics: a panic inside the parser is caught and the
/// command is `unknown`.
pub fn classify(sql: &str, dialect: Dialect, limits: &Limits) -> Facts {
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
) -> (Facts, Option<Vec<LiteralSite>>) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        classify_inner(sql, dialect, limits, want_literals)
    })) {
        Ok(c) => c,
        Err(_) => (
            Facts::unknown("unparsed", "the SQL parser failed on this command".into()),
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
) -> (Facts, Option<Vec<LiteralSite>>) {
    if sql.len() > limits.max_bytes {
        let msg = format!(
            "command is {} bytes, over the {}-byte limit checked before parsing",
            sql.len(),
            limits.max_bytes
        );
        let mut c = Facts::unknown("too_long", msg.clone());
        c.limit = Some(msg);
        return (c, None);
    }
    let pg = PostgreSqlDialect {};
    let my = MySqlDialect {};
    let d: &dyn SqlDialect = match dialect {
        Dialect::Postgres => &pg,
        Dialect::Mysql => &my,
    };
    // MySQL: comments the server may run otherwise than sqlparser expands them.
    if dialect == Dialect::Mysql
        && let Some(why) = super::mysql::comment_mismatch(sql)
    {
        return (Facts::unknown("unparsed", why.into()), None);
    }
    let tokens = match Tokenizer::new(d, sql).tokenize_with_location() {
        Ok(t) => t,
        Err(e) => {
            let c = Facts::unknown("unparsed", format!("does not tokenize: {e}"));
            return (c, None);
        }
    };
    if let Some(msg) = check_shape(&tokens, limits) {
        let mut c = Facts::unknown("too_complex", msg.clone());
        c.limit = Some(msg);
        return (c, None);
    }
    // MySQL: what the server runs that the parser reads more kindly (see `mysql`).
    let floors = match dialect {
        Dialect::Mysql => {
            if let Some(why) = super::mysql::lexing_mismatch(sql, &tokens) {
                return (Facts::unknown("unparsed", why.into()), None);
            }
            if let Some(f) = super::mysql::handler(&tokens) {
                return (f, None);
            }
            super::mysql::floors(&tokens)
        }
        Dialect::Postgres => Vec::new(),
    };
    let tokens = match dialect {
        Dialect::Postgres => match decode_unicode_identifiers(tokens) {
            Ok(t) => rewrite_table_queries(t),
            Err(why) => return (Facts::unknown("unparsed", why), None),
        },
        Dialect::Mysql => tokens,
    };
    let mut parser = Parser::new(d)
        .with_recursion_limit(limits.parser_recursion)
        .with_tokens_with_locations(tokens);
    let statements = match parser.parse_statements() {
        Ok(s) => s,
        Err(e) => {
            if let Some(c) = unparsed_privilege_change(sql, d) {
                return (c, None);
            }
            let mut c = Facts::unknown("unparsed", format!("does not parse: {e}"));
            super::mysql::apply_floors(&mut c, &floors);
            return (c, None);
        }
    };
    // sqlparser stops at a bare END after a statement; the server would not. Anything left over
    // means we did not see the whole command.
    if parser.peek_token_ref().token != Token::EOF {
        let c = Facts::unknown(
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
        let c = Facts {
            kinds: vec!["empty"],
            statement_classes: vec![],
            class: Class::Read,
            ..Default::default()
        };
        return (c, literals);
    }
    let mut acc = Acc {
        mysql: dialect == Dialect::Mysql,
        ..Default::default()
    };
    let mut out = Facts {
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
    out.lineage = super::lineage::analyze(&statements, dialect);
    super::mysql::apply_floors(&mut out, &floors);
    // The lineage of `SET search_path` depends on its values; MySQL floors on literals.
    let literals = if acc.literal_sensitive
        || !floors.is_empty()
        || statements.iter().any(|s| matches!(s, Statement::Set(_)))
    {
        None
    } else {
        literals
    };
    (out, literals)
}

/// PostgreSQL's `U&"d\0061t\+000061"` is the quoted identifier `data`, but sqlparser reads
/// it as `U & "d\0061t\+000061"`: an operator between two other names, which would hide the
/// column from the classifier and the lineage. Each one is decoded (with its `UESCAPE 'c'`)
/// into the quoted word the server sees. A `UESCAPE` after a `U&'…'` string (sqlparser has
/// already decoded it with `\`) or an escape the server would reject is an error.
fn decode_unicode_identifiers(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>, String> {
    let is_u = |t: &Token| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"));
    let is_uescape = |t: &Token| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("uescape"));
    let quoted = |t: &Token| matches!(t, Token::Word(w) if w.quote_style == Some('"'));
    if !tokens
        .iter()
        .any(|t| is_uescape(&t.token) || matches!(t.token, Token::Ampersand))
    {
        return Ok(tokens);
    }
    // The next token that is not whitespace (comments are whitespace tokens) from `i`.
    let next =
        |i: usize| (i..tokens.len()).find(|&j| !matches!(tokens[j].token, Token::Whitespace(_)));
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        if matches!(t.token, Token::UnicodeStringLiteral(_))
            && next(i + 1).is_some_and(|j| is_uescape(&tokens[j].token))
        {
            return Err("a U&'…' string with UESCAPE is not read as the server reads it".into());
        }
        // `U&"` only when written together: `u & "x"` is an operator between two names.
        let word = match (tokens.get(i + 1), tokens.get(i + 2)) {
            (Some(amp), Some(q))
                if is_u(&t.token) && amp.token == Token::Ampersand && quoted(&q.token) =>
            {
                match &q.token {
                    Token::Word(w) => Some(w),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(w) = word else {
            out.push(t.clone());
            i += 1;
            continue;
        };
        let mut end = i + 2;
        let mut escape = '\\';
        if let Some(k) = next(i + 3).filter(|&k| is_uescape(&tokens[k].token)) {
            let Some(Token::SingleQuotedString(c)) = next(k + 1).map(|j| &tokens[j].token) else {
                return Err("UESCAPE without a one-character string".into());
            };
            let mut chars = c.chars();
            escape = match (chars.next(), chars.next()) {
                (Some(e), None)
                    if !e.is_ascii_hexdigit()
                        && !matches!(e, '+' | '\'' | '"')
                        && !e.is_whitespace() =>
                {
                    e
                }
                _ => return Err(format!("invalid UESCAPE character {c:?}")),
            };
            end = next(k + 1).unwrap_or(k);
        }
        let value = unescape_unicode(&w.value, escape)?;
        let span = Span::new(t.span.start, tokens[end].span.end);
        out.push(TokenWithSpan::new(
            Token::Word(Word {
                value,
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            }),
            span,
        ));
        i = end + 1;
    }
    Ok(out)
}

/// The body of a `U&"…"` identifier as PostgreSQL decodes it: `escape` followed by four hex
/// digits, by `+` and six, or by itself; UTF-16 surrogate pairs combine.
fn unescape_unicode(body: &str, escape: char) -> Result<String, String> {
    let bad = || format!("invalid Unicode escape in U&\"{body}\"");
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != escape {
            if high.is_some() {
                return Err(bad());
            }
            out.push(c);
            continue;
        }
        let digits = match chars.peek() {
            Some(&e) if e == escape => {
                chars.next();
                if high.is_some() {
                    return Err(bad());
                }
                out.push(escape);
                continue;
            }
            Some('+') => {
                chars.next();
                6
            }
            _ => 4,
        };
        let mut v = 0u32;
        for _ in 0..digits {
            let d = chars.next().and_then(|d| d.to_digit(16)).ok_or_else(bad)?;
            v = v * 16 + d;
        }
        match (high.take(), v) {
            (None, 0xD800..=0xDBFF) => high = Some(v),
            (Some(h), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((h - 0xD800) << 10) + (v - 0xDC00);
                out.push(char::from_u32(c).ok_or_else(bad)?);
            }
            (None, 1..=0x10FFFF) => out.push(char::from_u32(v).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    if high.is_some() || out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// PostgreSQL's `TABLE name` is `SELECT * FROM name`, at the top level and wherever a query
/// may stand (after `(`, a set operator, `AS`, `FOR`, `EXPLAIN`); sqlparser does not parse it
/// there, so the tokens are rewritten to the `SELECT` form. A `TABLE` keyword anywhere else
/// (`CREATE TABLE`, `LOCK TABLE`, `ON TABLE`) is left alone; a rewrite in a place the server
/// reads differently can only make the text fail to parse (`unknown`).
fn rewrite_table_queries(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_table = |t: &Token| matches!(t, Token::Word(w) if w.keyword == Keyword::TABLE && w.quote_style.is_none());
    if !tokens.iter().any(|t| is_table(&t.token)) {
        return tokens;
    }
    let mut out = Vec::with_capacity(tokens.len() + 8);
    let mut query_may_start = true;
    for t in tokens {
        let significant = !matches!(t.token, Token::Whitespace(_));
        if query_may_start && is_table(&t.token) {
            let span = t.span;
            for token in [
                Token::make_keyword("SELECT"),
                Token::Whitespace(Whitespace::Space),
                Token::Mul,
                Token::Whitespace(Whitespace::Space),
                Token::make_keyword("FROM"),
            ] {
                out.push(TokenWithSpan { token, span });
            }
            query_may_start = false;
            continue;
        }
        if significant {
            query_may_start = match &t.token {
                Token::SemiColon | Token::LParen | Token::RParen => true,
                Token::Word(w) if w.quote_style.is_none() => matches!(
                    w.keyword,
                    Keyword::UNION
                        | Keyword::INTERSECT
                        | Keyword::EXCEPT
                        | Keyword::ALL
                        | Keyword::DISTINCT
                        | Keyword::AS
                        | Keyword::FOR
                        | Keyword::EXPLAIN
                        | Keyword::ANALYZE
                        | Keyword::VERBOSE
                ),
                _ => false,
            };
        }
        out.push(t);
    }
    out
}

/// A lone `SET [LOCAL|SESSION] SESSION AUTHORIZATION …` or `SET [LOCAL|SESSION] ROLE [TO|=]
/// …` in a form the SQL parser does not read: the server does, and it changes privileges, so
/// it is `admin` (not merely `unknown`). Anything after it keeps the command `unknown`.
fn unparsed_privilege_change(sql: &str, d: &dyn SqlDialect) -> Option<Facts> {
    let tokens = Tokenizer::new(d, sql).tokenize().ok()?;
    let mut words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if matches!(words.last(), Some(Token::SemiColon)) {
        words.pop();
    }
    let kw = |t: &Token, k: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let mut rest = words.as_slice();
    let [set, after @ ..] = rest else { return None };
    if !kw(set, "set") {
        return None;
    }
    rest = after;
    if let [scope, after @ ..] = rest
        && (kw(scope, "local") || kw(scope, "session"))
        && !after.first().is_some_and(|t| kw(t, "authorization"))
    {
        rest = after;
    }
    let (kind, what, rest) = match rest {
        [session, auth, after @ ..] if kw(session, "session") && kw(auth, "authorization") => (
            "set_session_authorization",
            "SET SESSION AUTHORIZATION",
            after,
        ),
        [role, to, after @ ..] if kw(role, "role") && (kw(to, "to") || **to == Token::Eq) => {
            ("set_role", "SET ROLE", after)
        }
        [role, after @ ..] if kw(role, "role") => ("set_role", "SET ROLE", after),
        _ => return None,
    };
    match rest {
        [Token::Word(_) | Token::SingleQuotedString(_)] => {
            let mut f = Facts::single(kind, Class::Admin);
            f.notes.push(format!("admin: {what} changes privileges"));
            Some(f)
        }
        _ => None,
    }
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
    /// The statements are MySQL's.
    mysql: bool,
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
                // MySQL's backticks quote, but do not make a name case-sensitive.
                if id.quote_style.is_some() && id.quote_style != Some('`') {
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
    // MySQL: the lexer's character set, the account's password, binary logging.
    "character_set_client",
    "password",
    "sql_log_bin",
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

/// `set_config('statement_timeout', …)` is an ordinary session setting; `set_config('role', …)`
/// is `SET ROLE`; `set_config('search_path', …)` is `SET search_path` (judged by its value); a
/// setting name or search path that is not a literal could be anything.
fn set_config_class(args: Option<&FunctionArguments>) -> Class {
    let literal = |arg: Option<&FunctionArg>| match arg {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                Some(s.clone())
            }
            _ => None,
        },
        _ => None,
    };
    let args = match args {
        Some(FunctionArguments::List(l)) => &l.args[..],
        _ => &[],
    };
    match literal(args.first()).map(|n| n.trim().to_lowercase()) {
        Some(name) if name == "search_path" => match literal(args.get(1)) {
            Some(value) if search_path_risk(&split_search_path(&value)).is_none() => Class::Session,
            _ => Class::Admin,
        },
        Some(name) if name == "client_encoding" => match literal(args.get(1)) {
            Some(value) if client_encoding_risk(&value).is_none() => Class::Session,
            _ => Class::Admin,
        },
        Some(name) if !PRIVILEGED_SETTINGS.contains(&name.as_str()) => Class::Session,
        _ => Class::Admin,
    }
}

/// PostgreSQL's client-only encodings, whose two-byte characters can end in an ASCII byte (a
/// backslash, a letter), by every name the server accepts for them (lower case, letters and
/// digits only, as the server compares them). The server converts a query from the client
/// encoding before it lexes it, so `E'ぁ\'; DROP TABLE t; --'` sent as SJIS ends its string
/// at the quote the classifier, reading UTF-8, sees escaped, and the DROP runs.
const LEXER_UNSAFE_ENCODINGS: &[&str] = &[
    "big5",
    "win950",
    "windows950",
    "gb18030",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "johab",
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "uhc",
    "win949",
    "windows949",
];

/// Why a PostgreSQL `client_encoding` value would make the server lex commands otherwise
/// than the classifier (`None`: harmless).
pub fn client_encoding_risk(value: &str) -> Option<String> {
    let clean: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    LEXER_UNSAFE_ENCODINGS.contains(&clean.as_str()).then(|| {
        format!(
            "client_encoding {} ends strings where the gateway's lexer does not",
            value.trim()
        )
    })
}

/// A setting's value as written: a bare name or a quoted string (`None`: anything else).
fn written_value(value: &Expr) -> Option<&str> {
    match value {
        Expr::Identifier(id) => Some(&id.value),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// `SET client_encoding`: a session setting unless the encoding is one of
/// [`LEXER_UNSAFE_ENCODINGS`] (or not a literal).
fn client_encoding_shape(values: &[Expr], acc: &mut Acc) -> (&'static str, Class) {
    acc.literal_sensitive = true;
    let value = match values {
        [v] => written_value(v),
        _ => None,
    };
    match value.map(client_encoding_risk) {
        Some(None) => ("set", Class::Session),
        Some(Some(why)) => {
            acc.notes.push(format!("admin: {why}"));
            ("set_privileged", Class::Admin)
        }
        None => {
            acc.notes
                .push("admin: SET client_encoding to a value that is not a literal".into());
            ("set_privileged", Class::Admin)
        }
    }
}

/// Schemas a client may put on its search path without review: the server's default path
/// (`"$user", public`), the catalog, and the session's own temporary schema (never searched
/// for functions). Anything else could hold functions or tables that shadow the ones policy
/// allows.
pub const SEARCH_PATH_SCHEMAS: &[&str] = &["$user", "public", "pg_catalog", "pg_temp"];

/// Why a search path (its schemas, in order, as the server will read them) could shadow
/// functions policy allows: a schema outside [`SEARCH_PATH_SCHEMAS`], or any schema before
/// `pg_catalog` (which the server otherwise searches first). `None`: harmless.
pub fn search_path_risk(schemas: &[String]) -> Option<String> {
    if let Some(s) = schemas
        .iter()
        .find(|s| !SEARCH_PATH_SCHEMAS.contains(&s.as_str()))
    {
        return Some(format!(
            "search_path names schema \"{s}\", outside {}",
            SEARCH_PATH_SCHEMAS.join(", ")
        ));
    }
    match schemas.iter().position(|s| s == "pg_catalog") {
        Some(at) if at > 0 => Some(format!(
            "search_path puts {} before pg_catalog",
            schemas[..at].join(", ")
        )),
        _ => None,
    }
}

/// Splits a search path written as one string (`set_config`'s value, a startup parameter) the
/// way the server does: comma-separated, double quotes keep case and commas, unquoted names
/// fold to lower case.
pub fn split_search_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => {
                out.push(finish_element(&cur, was_quoted));
                cur.clear();
                was_quoted = false;
            }
            c if quoted => cur.push(c),
            c => cur.extend(c.to_lowercase()),
        }
    }
    if !cur.trim().is_empty() || was_quoted || !out.is_empty() {
        out.push(finish_element(&cur, was_quoted));
    }
    out
}

fn finish_element(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_owned()
    } else {
        s.trim().to_owned()
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
        // MySQL: an EXPLAIN of anything but a query is judged as that statement: the EXPLAIN
        // may sit in an executable comment the server skips (`/*!99999 EXPLAIN */ DELETE …`).
        if acc.mysql && !matches!(**statement, Statement::Query(_)) {
            acc.notes.push(
                "EXPLAIN of a statement other than a query is judged as that statement".into(),
            );
            let (_, class) = classify_statement(statement, acc);
            return (kind, class);
        }
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

/// A MySQL `SHOW` that sqlparser parsed as a variable (it keeps the words and drops every
/// other token): the forms listed show this session's messages or the catalog; the rest show
/// the server's state (`ENGINE INNODB STATUS`, `BINLOG EVENTS`, replica status, …), which
/// holds other sessions' statements with their literals: admin.
fn mysql_show(words: &[sqlparser::ast::Ident], acc: &mut Acc) -> (&'static str, Class) {
    // `SHOW TABLE STATUS WHERE Name = (SELECT …)`: the dropped tokens may be a query.
    if words
        .iter()
        .any(|w| w.quote_style.is_none() && w.value.eq_ignore_ascii_case("where"))
    {
        acc.notes
            .push("unknown: a SHOW … WHERE the parser did not read".into());
        return ("show", Class::Unknown);
    }
    let upper: Vec<String> = words
        .iter()
        .take(2)
        .map(|w| {
            if w.quote_style.is_none() {
                w.value.to_ascii_uppercase()
            } else {
                String::new()
            }
        })
        .collect();
    let first: Vec<&str> = upper.iter().map(String::as_str).collect();
    match first.as_slice() {
        // Diagnostics: their messages quote values of earlier statements.
        ["WARNINGS" | "ERRORS", ..] | ["COUNT", "WARNINGS" | "ERRORS"] => {
            ("show_warnings", Class::Read)
        }
        [
            "ENGINES" | "PLUGINS" | "PRIVILEGES" | "GRANTS" | "TRIGGERS" | "EVENTS",
            ..,
        ]
        | ["INDEX" | "INDEXES" | "KEYS" | "PROFILE" | "PROFILES", ..]
        | ["TABLE" | "PROCEDURE" | "FUNCTION", "STATUS"]
        | ["OPEN", "TABLES"]
        | ["STORAGE", "ENGINES"] => ("show", Class::Read),
        _ => {
            acc.notes.push(
                "admin: this SHOW shows the server's state, which may quote other sessions' \
                 statements"
                    .into(),
            );
            ("show_server", Class::Admin)
        }
    }
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
        // sqlparser reads any MySQL `SHOW` it does not know as this, keeping only the words.
        Statement::ShowVariable { variable } if acc.mysql => mysql_show(variable, acc),
        // MySQL's diagnostics: their messages quote values of earlier statements.
        Statement::ShowVariable { variable }
            if variable.first().is_some_and(|v| {
                v.value.eq_ignore_ascii_case("warnings") || v.value.eq_ignore_ascii_case("errors")
            }) =>
        {
            ("show_warnings", Read)
        }
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
        Statement::Reset(r) => reset_shape(&r.reset, acc),
        Statement::Discard { object_type } => {
            if matches!(object_type, sqlparser::ast::DiscardObject::ALL) {
                acc.notes
                    .push("admin: DISCARD ALL resets the session's role and authorization".into());
                ("discard", Admin)
            } else {
                ("discard", Session)
            }
        }
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
        Statement::Flush { .. } => ("flush", Admin),
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
        Set::SetNames { charset_name, .. }
            if !super::mysql::SAFE_CHARSETS
                .contains(&charset_name.value.to_ascii_lowercase().as_str()) =>
        {
            acc.notes.push(format!(
                "admin: SET NAMES {} changes how the server lexes later commands",
                charset_name.value
            ));
            ("set_privileged", Class::Admin)
        }
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => {
            ("set", Class::Session)
        }
        Set::SingleAssignment {
            scope: Some(sqlparser::ast::ContextModifier::Global),
            ..
        } => {
            acc.notes
                .push("admin: SET GLOBAL changes the server for every session".into());
            ("set_privileged", Class::Admin)
        }
        Set::SingleAssignment {
            variable, values, ..
        } if is_search_path(variable) => search_path_shape(values, acc),
        Set::SingleAssignment {
            variable, values, ..
        } if setting_name(variable) == "client_encoding" => client_encoding_shape(values, acc),
        Set::SingleAssignment {
            variable, values, ..
        } if is_results_charset(variable) => match values.as_slice() {
            [value] => results_charset_shape(value, acc),
            _ => {
                acc.notes
                    .push("admin: SET character_set_results with several values".into());
                ("set_privileged", Class::Admin)
            }
        },
        Set::SingleAssignment { variable, .. } => set_var(std::slice::from_ref(variable), acc),
        Set::ParenthesizedAssignments { variables, .. } => set_var(variables, acc),
        Set::MultipleAssignments { assignments } => {
            for a in assignments.iter().filter(|a| is_results_charset(&a.name)) {
                if results_charset_shape(&a.value, acc).1 == Class::Admin {
                    return ("set_privileged", Class::Admin);
                }
            }
            let names: Vec<ObjectName> = assignments.iter().map(|a| a.name.clone()).collect();
            set_var(&names, acc)
        }
        Set::SetSessionParam(_) => ("set", Class::Session),
    }
}

/// `RESET ROLE`, `RESET SESSION AUTHORIZATION` and `RESET ALL` change the session's rights
/// (they undo a role the gateway set); other settings go back to their defaults.
fn reset_shape(reset: &sqlparser::ast::Reset, acc: &mut Acc) -> (&'static str, Class) {
    use sqlparser::ast::Reset;
    let why = match reset {
        Reset::ALL => "RESET ALL resets the session's role".to_string(),
        Reset::SessionAuthorization => "RESET SESSION AUTHORIZATION changes privileges".to_string(),
        Reset::ConfigurationParameter(name) => {
            let v = setting_name(name);
            if !PRIVILEGED_SETTINGS.contains(&v.as_str()) {
                return ("reset", Class::Session);
            }
            format!("RESET {v} is privileged")
        }
    };
    acc.notes.push(format!("admin: {why}"));
    ("reset", Class::Admin)
}

/// A setting's name as the server matches it: case-insensitive even when quoted, the last
/// part of a qualified name.
fn setting_name(name: &ObjectName) -> String {
    let v = normalize_name(name).to_lowercase();
    v.rsplit('.').next().unwrap_or(&v).to_string()
}

/// MySQL's `character_set_results` (also as `@@character_set_results`).
fn is_results_charset(name: &ObjectName) -> bool {
    setting_name(name).trim_start_matches("@@") == "character_set_results"
}

/// `SET character_set_results`: the encoding of every value, warning and error the server
/// sends from then on. Masking reads ASCII-compatible encodings: in UCS-2, UTF-16 or UTF-32
/// an e-mail address is not the bytes a detector looks for, and a value quoted in a warning
/// is not where the gateway cuts it. A session setting when the value names one of
/// [`SAFE_CHARSETS`](super::mysql::SAFE_CHARSETS) (or is `NULL`/`DEFAULT`: no conversion,
/// each column's own set, which masking checks per column); anything else, a variable or an
/// expression included, is admin.
fn results_charset_shape(value: &Expr, acc: &mut Acc) -> (&'static str, Class) {
    // The class depends on the value, which may be a string literal.
    acc.literal_sensitive = true;
    let name = match value {
        Expr::Value(v) if v.value == Value::Null => Some("null".to_owned()),
        v => written_value(v).map(str::to_ascii_lowercase),
    };
    match name.as_deref() {
        Some(n) if n == "null" || n == "default" || super::mysql::SAFE_CHARSETS.contains(&n) => {
            ("set", Class::Session)
        }
        _ => {
            acc.notes.push(format!(
                "admin: SET character_set_results = {value} sends answers in an encoding \
                 masking does not read"
            ));
            ("set_privileged", Class::Admin)
        }
    }
}

fn is_search_path(name: &ObjectName) -> bool {
    setting_name(name) == "search_path"
}

/// `SET search_path`: a session setting unless the path could shadow functions policy allows
/// ([`search_path_risk`]). `DEFAULT` goes back to the server's path.
fn search_path_shape(values: &[Expr], acc: &mut Acc) -> (&'static str, Class) {
    // The class depends on the schema names, which may be string literals.
    acc.literal_sensitive = true;
    if let [Expr::Identifier(id)] = values
        && id.quote_style.is_none()
        && id.value.eq_ignore_ascii_case("default")
    {
        return ("set", Class::Session);
    }
    let mut schemas = Vec::with_capacity(values.len());
    for v in values {
        let name = match v {
            Expr::Identifier(id) if id.quote_style.is_none() => id.value.to_lowercase(),
            Expr::Identifier(id) => id.value.clone(),
            Expr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(s),
                ..
            }) => s.clone(),
            _ => {
                acc.notes
                    .push("admin: search_path set to an expression".into());
                return ("set_privileged", Class::Admin);
            }
        };
        schemas.push(name);
    }
    match search_path_risk(&schemas) {
        None => ("set", Class::Session),
        Some(why) => {
            acc.notes.push(format!(
                "admin: {why}: it could shadow functions policy allows"
            ));
            ("set_privileged", Class::Admin)
        }
    }
}

fn set_var(names: &[ObjectName], acc: &mut Acc) -> (&'static str, Class) {
    for n in names {
        // Setting names are case-insensitive even when quoted (`SET "ROLE" = …` is SET ROLE).
        let v = normalize_name(n).to_lowercase();
        let v = v.rsplit('.').next().unwrap_or(&v);
        // MySQL's `@@name` is the session's system variable `name` (`@name` is a user
        // variable, harmless).
        let v = v.strip_prefix("@@").unwrap_or(v).to_string();
        if PRIVILEGED_SETTINGS.contains(&v.as_str()) {
            acc.notes.push(format!("admin: SET {v} is privileged"));
            return ("set_privileged", Class::Admin);
        }
    }
    ("set", Class::Session)
}
