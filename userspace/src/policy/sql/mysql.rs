//! What MySQL and MariaDB run that sqlparser's `MySqlDialect` does not see, or reads more
//! kindly than the server:
//!
//! - Executable comments `/*!… */` (which the tokenizer expands) are judged only where every
//!   server runs them as the tokenizer reads them; MariaDB's `/*M!… */`, which a MySQL server
//!   skips, never (see [`comment_mismatch`]).
//! - Statements sqlparser cannot parse are `unknown`, which `deny` rules written for `admin`
//!   or `dcl` would not name: a scan of each statement's leading words adds the class the
//!   server would give it (`LOAD DATA`, `FLUSH`, `INSTALL`, replication, `CREATE USER … BY`,
//!   `SET PASSWORD`, `SET GLOBAL|PERSIST`), and `INTO OUTFILE|DUMPFILE` anywhere is `admin`
//!   (it writes a file on the server), so deny rules match whatever the parser made of it.
//! - Where the server's lexer and sqlparser's part ways, the text is `unknown`: a NUL byte
//!   (the server's lexer stops there, sqlparser's does not), and `--` before Unicode
//!   whitespace (U+00A0, …) is a comment only for sqlparser (see [`lexing_mismatch`]).
//! - `HANDLER t OPEN|READ|CLOSE` reads a table outside SELECT: a lone one is a `read` of that
//!   table (so table rules apply); anything more elaborate stays `unknown`.

use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

use super::classify::normalize_name;
use crate::model::{Class, Facts};

/// Connection character sets the gateway's lexer reads as the server does: UTF-8 and the
/// single-byte sets. In the multibyte sets where a backslash can be the second byte of a
/// character (big5, gbk, sjis, cp932, gb18030), the server would end a string where the
/// classifier sees an escaped quote.
pub const SAFE_CHARSETS: &[&str] = &[
    "utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary", "latin2", "latin5", "latin7",
    "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "koi8r", "koi8u", "greek",
    "hebrew", "armscii8", "geostd8", "swe7", "dec8", "hp8", "keybcs2", "macce", "macroman",
    "tis620", "ujis", "eucjpms", "euckr", "gb2312",
];

/// Why the server would run another text than sqlparser reads out of this one's comments, if
/// it might. sqlparser expands every `/*!` comment whatever its version, strips any run of
/// digits after the `!`, and ends the comment at the first `*/`; the servers:
///
/// - MySQL reads exactly five digits as the version (fewer: no version, the digits are SQL)
///   and skips the comment when the version is above its own; MariaDB reads five or six and
///   also skips MySQL versions 50700–99999. The classifier does not know the server's version:
///   only five-digit versions below 50700 (run by MySQL 5.7+ and every MariaDB 10) are judged.
/// - `/*M!` runs only on MariaDB (for MySQL it is a plain comment): never judged.
/// - Inside a running comment the server lexes as everywhere else, so a `#` or `-- ` comment,
///   a nested `/*` or a string can carry the first `*/` past sqlparser's end of the comment.
/// - MySQL 8's optimizer hints (`/*+ … */` after SELECT, UPDATE, …) read quoted names and
///   strings, which may hold `*/`.
///
/// Scans outside strings, quoted names and line comments as the server lexes them. A string
/// or comment left open ends the scan: sqlparser refuses to tokenize the text.
pub fn comment_mismatch(sql: &str) -> Option<&'static str> {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => i = skip_quoted(b, i, q)?,
            b'#' => i = line_end(b, i),
            b'-' if line_comment(b, i) => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let body_at = i + 2;
                let end = find(b, body_at, b"*/")?;
                let body = &b[body_at..end];
                match body.first() {
                    Some(b'!') => {
                        if let Some(why) = executable(&body[1..]) {
                            return Some(why);
                        }
                    }
                    Some(b'M') if body.get(1) == Some(&b'!') => {
                        return Some(
                            "a MariaDB /*M! comment: a MySQL server skips it, MariaDB runs it; \
                             not judged",
                        );
                    }
                    Some(b'+') if body.iter().any(|c| matches!(c, b'\'' | b'"' | b'`')) => {
                        return Some(
                            "a quote in an optimizer hint comment: MySQL may end the comment \
                             elsewhere; not judged",
                        );
                    }
                    _ => {}
                }
                i = end + 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Why the server may not run the body of a `/*!` comment (after the `!`) as sqlparser reads
/// it, if it may not.
fn executable(body: &[u8]) -> Option<&'static str> {
    let digits = body.iter().take_while(|c| c.is_ascii_digit()).count();
    let version_ok = match digits {
        0 => true,
        5 => std::str::from_utf8(&body[..5])
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v < 50700),
        _ => false,
    };
    if !version_ok {
        return Some(
            "a /*! comment whose version the server may skip or read otherwise; not judged",
        );
    }
    let inner = "a comment or a string inside a /*! comment may end it elsewhere for the \
                 server; not judged";
    let body = &body[digits..];
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            // A string must close before sqlparser's end of the comment.
            q @ (b'\'' | b'"' | b'`') => match skip_quoted(body, i, q) {
                Some(next) => i = next,
                None => return Some(inner),
            },
            b'#' => return Some(inner),
            b'-' if body.get(i + 1) == Some(&b'-') => return Some(inner),
            b'/' if body.get(i + 1) == Some(&b'*') => return Some(inner),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the string or quoted name opening at `at` (MySQL's rules: a doubled
/// quote, and a backslash escape in strings). `None`: it does not close.
fn skip_quoted(b: &[u8], at: usize, q: u8) -> Option<usize> {
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if q != b'`' => i += 2,
            c if c == q => {
                if b.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// `--` starts a comment before ASCII whitespace or a control character.
fn line_comment(b: &[u8], at: usize) -> bool {
    b.get(at + 1) == Some(&b'-')
        && b.get(at + 2)
            .is_some_and(|c| c.is_ascii_whitespace() || c.is_ascii_control())
}

/// The index of the newline ending a line comment (or the end).
fn line_end(b: &[u8], at: usize) -> usize {
    find(b, at, b"\n").unwrap_or(b.len())
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The words (upper-case) and their positions at the start of each statement.
fn leading_words(tokens: &[TokenWithSpan]) -> Vec<Vec<(usize, String)>> {
    let mut statements = Vec::new();
    let mut current: Vec<(usize, String)> = Vec::new();
    let mut started = false;
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if !current.is_empty() {
                    statements.push(std::mem::take(&mut current));
                }
                started = false;
            }
            Token::Word(w) if !started || current.len() < 3 => {
                started = true;
                if current.len() < 3 {
                    current.push((i, w.value.to_ascii_uppercase()));
                }
            }
            _ => {
                if !started {
                    started = true;
                }
                // Only the words before the first other token lead a statement.
                if current.len() < 3 {
                    current.push((i, String::new()));
                }
            }
        }
    }
    if !current.is_empty() {
        statements.push(current);
    }
    statements
}

/// Classes the server gives what these tokens hold, beyond what parsing can tell: `(kind,
/// class, why)`.
pub fn floors(tokens: &[TokenWithSpan]) -> Vec<(&'static str, Class, &'static str)> {
    let mut out = Vec::new();
    for words in leading_words(tokens) {
        let w = |i: usize| words.get(i).map(|(_, s)| s.as_str()).unwrap_or("");
        let floor = match (w(0), w(1), w(2)) {
            ("LOAD", "DATA" | "XML", _) => Some((
                "load_data",
                Class::Admin,
                "admin: LOAD DATA reads a file into a table",
            )),
            ("FLUSH", ..) => Some(("flush", Class::Admin, "admin: FLUSH")),
            ("SHUTDOWN", ..) | ("PURGE", ..) | ("BINLOG", ..) | ("RESTART", ..) => {
                Some(("other", Class::Admin, "admin: server administration"))
            }
            ("INSTALL" | "UNINSTALL", ..) => {
                Some(("install", Class::Admin, "admin: loads code into the server"))
            }
            ("CHANGE", "MASTER" | "REPLICATION", _)
            | ("START" | "STOP", "SLAVE" | "REPLICA" | "ALL", _)
            | ("RESET", "MASTER" | "SLAVE" | "REPLICA", _) => {
                Some(("other", Class::Admin, "admin: replication"))
            }
            ("KILL", ..) => Some(("kill", Class::Admin, "admin: KILL")),
            ("CREATE", "USER", _) => Some(("create_user", Class::Dcl, "dcl: accounts")),
            ("CREATE", "ROLE", _) => Some(("create_role", Class::Dcl, "dcl: accounts")),
            ("ALTER" | "RENAME", "USER", _) => Some(("alter_user", Class::Dcl, "dcl: accounts")),
            ("DROP", "USER" | "ROLE", _) => Some(("drop_role", Class::Dcl, "dcl: accounts")),
            ("GRANT", ..) => Some(("grant", Class::Dcl, "dcl: privileges")),
            ("REVOKE", ..) => Some(("revoke", Class::Dcl, "dcl: privileges")),
            ("SET", "PASSWORD", _) | ("SET", "DEFAULT", "ROLE") => Some((
                "set_privileged",
                Class::Dcl,
                "dcl: SET PASSWORD / DEFAULT ROLE change accounts",
            )),
            ("SET", "GLOBAL" | "PERSIST" | "PERSIST_ONLY", _) => Some((
                "set_privileged",
                Class::Admin,
                "admin: SET GLOBAL changes the server for every session",
            )),
            _ => None,
        };
        out.extend(floor);
    }
    let words = tokens.iter().filter_map(|t| match &t.token {
        Token::Word(w) => Some(w.value.as_str()),
        Token::Whitespace(_) => None,
        _ => Some(""),
    });
    let mut prev = "";
    for w in words {
        if prev.eq_ignore_ascii_case("into")
            && (w.eq_ignore_ascii_case("outfile") || w.eq_ignore_ascii_case("dumpfile"))
        {
            out.push((
                "into_outfile",
                Class::Admin,
                "admin: INTO OUTFILE/DUMPFILE writes a file on the server",
            ));
            break;
        }
        prev = w;
    }
    // `SET @@global.x = …` (sqlparser reads it as an ordinary variable).
    if tokens.iter().any(|t| {
        matches!(&t.token, Token::Word(w) if {
            let v = w.value.to_ascii_lowercase();
            v == "@@global" || v.starts_with("@@global.") || v.starts_with("@@persist")
        })
    }) {
        out.push((
            "set_privileged",
            Class::Admin,
            "admin: SET GLOBAL changes the server for every session",
        ));
    }
    out
}

/// Why the server would lex `sql` otherwise than these tokens say, if it would.
///
/// - The server's lexer stops at a NUL byte; sqlparser reads on (in a `--` comment, to the end
///   of the line). MariaDB 10.11 answers a syntax error; refused whatever a server makes of it.
/// - `--` starts a comment only before whitespace, and the server's whitespace is ASCII:
///   sqlparser also accepts Unicode whitespace (U+00A0, U+0085, …), which the server reads as
///   the start of a name (as sqlparser does everywhere else).
pub fn lexing_mismatch(sql: &str, tokens: &[TokenWithSpan]) -> Option<&'static str> {
    if sql.contains('\0') {
        return Some("a NUL byte: the server's lexer stops there; not judged");
    }
    tokens.iter().find_map(|t| match &t.token {
        Token::Whitespace(Whitespace::SingleLineComment { prefix, comment })
            if prefix == "--" && comment.starts_with(|c: char| !c.is_ascii()) =>
        {
            Some("`--` before non-ASCII whitespace starts no comment for the server; not judged")
        }
        _ => None,
    })
}

/// Adds the floors to what parsing found.
pub fn apply_floors(facts: &mut Facts, floors: &[(&'static str, Class, &'static str)]) {
    for &(kind, class, why) in floors {
        if facts.kinds.contains(&kind) {
            continue;
        }
        facts.kinds.push(kind);
        facts.statement_classes.push(class);
        facts.class = facts.class.max(class);
        facts.notes.push(why.to_string());
    }
}

/// A lone `HANDLER t OPEN [[AS] alias]`, `HANDLER t CLOSE`, or `HANDLER t READ …` without a
/// WHERE clause or function calls: a read of `t`. `None`: not one (classify as usual).
pub fn handler(tokens: &[TokenWithSpan]) -> Option<Facts> {
    let significant: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let word = |t: Option<&&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        _ => None,
    };
    match significant.first() {
        Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("handler") => {}
        _ => return None,
    }
    let mut parts = vec![word(significant.get(1))?];
    let mut i = 2;
    if matches!(significant.get(i), Some(Token::Period)) {
        parts.push(word(significant.get(i + 1))?);
        i += 2;
    }
    let action = word(significant.get(i))?.value.to_ascii_lowercase();
    if !["open", "read", "close"].contains(&action.as_str()) {
        return None;
    }
    let rest = &significant[i + 1..];
    let mut prev_word = false;
    for t in rest {
        match t {
            // A WHERE clause or a subquery among the key values: classify as usual.
            Token::Word(w)
                if w.quote_style.is_none()
                    && ["where", "select", "with", "values", "table"]
                        .iter()
                        .any(|k| w.value.eq_ignore_ascii_case(k)) =>
            {
                return None;
            }
            Token::LParen if prev_word => return None,
            Token::SemiColon => return None,
            _ => {}
        }
        prev_word = matches!(t, Token::Word(_));
    }
    let idents: Vec<sqlparser::ast::Ident> = parts
        .into_iter()
        .map(|w| {
            let mut id = sqlparser::ast::Ident::new(w.value);
            id.quote_style = w.quote_style;
            id
        })
        .collect();
    let object = sqlparser::ast::ObjectName::from(idents);
    Some(Facts {
        tables_read: vec![normalize_name(&object)],
        ..Facts::single("handler", Class::Read)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::Tokenizer;

    fn tokens(sql: &str) -> Vec<TokenWithSpan> {
        Tokenizer::new(&MySqlDialect {}, sql)
            .tokenize_with_location()
            .unwrap()
    }

    #[test]
    fn handler_statements() {
        for (sql, table) in [
            ("HANDLER customers OPEN", "customers"),
            ("handler `Customers` open as c", "customers"),
            ("HANDLER app.customers READ FIRST", "app.customers"),
            ("HANDLER c READ NEXT LIMIT 5", "c"),
            ("HANDLER c CLOSE", "c"),
        ] {
            let f = handler(&tokens(sql)).unwrap_or_else(|| panic!("{sql}"));
            assert_eq!(f.class, Class::Read, "{sql}");
            assert_eq!(f.tables_read, [table], "{sql}");
        }
        for sql in [
            "HANDLER c READ FIRST WHERE load_file('/x') IS NOT NULL",
            "HANDLER c READ idx = (sleep(5))",
            "HANDLER c READ idx = ((SELECT pw FROM secrets LIMIT 1))",
            "HANDLER c OPEN; DROP TABLE t",
            "HANDLER",
            "SELECT 1",
            "HANDLER c DROP",
        ] {
            assert!(handler(&tokens(sql)).is_none(), "{sql}");
        }
    }

    #[test]
    fn lexing_mismatches_are_found() {
        let m = |sql: &str| lexing_mismatch(sql, &tokens(sql));
        assert!(m("SELECT 1 --\u{a0}x FROM (SELECT 2 AS `\u{a0}x`) d; DROP TABLE t").is_some());
        assert!(m("SELECT 1 --\u{85}x; DROP TABLE t").is_some());
        // A bare U+3000 starts a name for both.
        assert!(m("SELECT 1 \u{3000}x").is_none());
        assert!(m("SELECT 1 -- x\0; DROP TABLE t").is_some());
        // Inside strings, quoted names and comments, or after an ASCII space: as the server.
        assert!(m("SELECT 'a\u{a0}b', `c\u{a0}d` -- \u{a0} note\n/* \u{3000} */").is_none());
        assert!(m("SELECT 1 -- x\n; SELECT 2").is_none());
    }

    #[test]
    fn comments_the_server_may_run_otherwise_are_found() {
        for sql in [
            // Versions the server may skip, or read with another number of digits.
            "/*!99999 EXPLAIN */ DELETE FROM customers",
            "/*!50700 EXPLAIN */ DELETE FROM customers",
            "/*!80000 EXPLAIN */ DELETE FROM customers",
            "/*!100100 EXPLAIN */ DELETE FROM customers",
            "/*!1 EXPLAIN */ DELETE FROM customers",
            "/*!5000 EXPLAIN */ DELETE FROM customers",
            "/*!4010100 SELECT 1 */",
            "SELECT /*!99999 count(*) FROM customers WHERE */ hex(email) \
             /*!99999 IS NULL OR 1 IN (SELECT 1 */ FROM customers /*!99999 ) */",
            // MariaDB's own: a MySQL server skips it.
            "SELECT 1 /*M!100100 ; DROP TABLE t */",
            "SELECT 1 /*M! , 2 */",
            // The server lexes comments and strings inside a running comment.
            "/*!50000 # */ SELECT 1 /*\nDELETE FROM customers */",
            "/*!50000 -- */ SELECT 1 /*\nDELETE FROM customers */",
            "/*!50000 SELECT '*/ DELETE FROM customers; -- ' */",
            "/*!50000 SELECT `*/ DELETE FROM customers; -- ` */",
            "/*! SELECT \"*/ DELETE FROM customers; -- \" */",
            "/*!40101 SELECT /* x */ 1 */",
            // Optimizer hints read quoted names and strings.
            "SELECT /*+ '*/' */ hex(email) FROM customers #'",
            "SELECT /*+ BKA(`*/`) */ 1",
        ] {
            assert!(comment_mismatch(sql).is_some(), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "/*!40101 SET NAMES utf8mb4 */",
            "/*!40103 SET TIME_ZONE='+00:00' */",
            "/*!50503 SET character_set_client = utf8mb4 */",
            "/*! SELECT 1 */",
            "SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1",
            "SELECT 1 /* a plain comment with ' and /*!99999 */",
            // Inside strings, quoted names and line comments: not comments at all.
            "SELECT '/*!99999 x */', \"/*M!\", `/*+ '` FROM t",
            "SELECT 'it''s /*!1', 'a\\' /*!2' -- /*!99999\n",
            "SELECT 1 # /*M! x */\n",
        ] {
            assert!(comment_mismatch(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn floors_name_what_the_parser_misses() {
        let kinds = |sql: &str| {
            floors(&tokens(sql))
                .into_iter()
                .map(|(k, c, _)| (k, c))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds("SELECT * FROM t INTO OUTFILE '/tmp/x'"),
            [("into_outfile", Class::Admin)]
        );
        assert_eq!(
            kinds("select 1 into dumpfile '/tmp/x'"),
            [("into_outfile", Class::Admin)]
        );
        assert_eq!(
            kinds("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"),
            [("load_data", Class::Admin)]
        );
        assert_eq!(
            kinds("SELECT 1; CREATE USER x IDENTIFIED BY 'y'"),
            [("create_user", Class::Dcl)]
        );
        assert_eq!(
            kinds("SET GLOBAL max_connections = 1"),
            [("set_privileged", Class::Admin)]
        );
        assert!(
            kinds("SET @@global.max_connections = 1").contains(&("set_privileged", Class::Admin))
        );
        assert_eq!(kinds("FLUSH PRIVILEGES"), [("flush", Class::Admin)]);
        assert!(kinds("SELECT 'into outfile'").is_empty());
        assert!(kinds("SELECT outfile FROM t").is_empty());
    }
}

#[cfg(test)]
mod classify_tests {
    use crate::model::{Class, Dialect};
    use crate::policy::sql::classify::{Limits, classify};

    fn class(sql: &str, dialect: Dialect) -> Class {
        classify(sql, dialect, &Limits::default()).class
    }

    #[test]
    fn executable_comments_the_server_may_skip_are_unknown() {
        for sql in [
            "/*!99999 EXPLAIN */ DELETE FROM customers",
            "/*!99999 EXPLAIN */ SET ROLE app_writer",
            "/*!50000 # */ SELECT 1 /*\nDELETE FROM customers */",
            "SELECT /*+ '*/' */ hex(email) FROM customers #'",
            "SELECT /*!99999 count(*) FROM customers WHERE */ hex(email) \
             /*!99999 IS NULL OR 1 IN (SELECT 1 */ FROM customers /*!99999 ) */",
            "SELECT 1 /*M!100100 , 2 */",
        ] {
            assert_eq!(class(sql, Dialect::Mysql), Class::Unknown, "{sql}");
        }
        // What every server runs is still judged.
        assert_eq!(
            class("/*!40101 SET NAMES utf8mb4 */", Dialect::Mysql),
            Class::Session
        );
        assert_eq!(
            class("SELECT 1 /*!50000 ; DELETE FROM t */", Dialect::Mysql),
            Class::Write
        );
    }

    #[test]
    fn mysql_explain_of_a_statement_is_judged_as_it() {
        for (sql, want) in [
            ("EXPLAIN DELETE FROM customers", Class::Write),
            ("DESCRIBE UPDATE t SET a = 1", Class::Write),
            ("EXPLAIN INSERT INTO t VALUES (1)", Class::Write),
            ("EXPLAIN SELECT * FROM customers", Class::Read),
            ("DESCRIBE customers", Class::Read),
        ] {
            assert_eq!(class(sql, Dialect::Mysql), want, "{sql}");
        }
        let f = classify(
            "EXPLAIN DELETE FROM customers",
            Dialect::Mysql,
            &Limits::default(),
        );
        assert_eq!(f.tables_written, ["customers"]);
        // PostgreSQL's EXPLAIN without ANALYZE runs nothing, and it has no executable comments.
        assert_eq!(
            class("EXPLAIN DELETE FROM customers", Dialect::Postgres),
            Class::Read
        );
    }

    #[test]
    fn mysql_show_of_the_servers_state_is_admin() {
        for sql in [
            "SHOW ENGINE INNODB STATUS",
            "SHOW ENGINE INNODB MUTEX",
            "SHOW BINLOG EVENTS",
            "SHOW RELAYLOG EVENTS",
            "SHOW SLAVE STATUS",
            "SHOW REPLICA STATUS",
            "SHOW MASTER STATUS",
            "SHOW BINARY LOGS",
            "SHOW EXPLAIN FOR 1",
            "SHOW anything at all",
        ] {
            let f = classify(sql, Dialect::Mysql, &Limits::default());
            assert!(
                f.class >= Class::Admin,
                "{sql}: {:?} {:?}",
                f.class,
                f.kinds
            );
        }
        for (sql, kind) in [
            ("SHOW WARNINGS", "show_warnings"),
            ("SHOW ERRORS LIMIT 5", "show_warnings"),
            ("SHOW COUNT(*) WARNINGS", "show_warnings"),
            ("SHOW TABLES", "show"),
            ("SHOW DATABASES", "show"),
            ("SHOW VARIABLES LIKE 'x'", "show"),
            ("SHOW SESSION STATUS LIKE 'Ssl_version'", "show"),
            ("SHOW COLUMNS FROM customers", "show"),
            ("SHOW CREATE TABLE customers", "show"),
            ("SHOW INDEX FROM customers", "show"),
            ("SHOW TABLE STATUS LIKE 'customers'", "show"),
            ("SHOW GRANTS", "show"),
            ("SHOW ENGINES", "show"),
        ] {
            let f = classify(sql, Dialect::Mysql, &Limits::default());
            assert_eq!(
                (f.class, f.kinds.as_slice()),
                (Class::Read, &[kind][..]),
                "{sql}"
            );
        }
        // The tokens sqlparser drops may hold a query.
        assert_eq!(
            class(
                "SHOW TABLE STATUS WHERE Name = (SELECT pw FROM secrets)",
                Dialect::Mysql
            ),
            Class::Unknown
        );
        // PostgreSQL's SHOW reads a setting.
        assert_eq!(class("SHOW search_path", Dialect::Postgres), Class::Read);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod role_tests {
    use crate::model::{Class, Dialect};
    use crate::policy::sql::classify::{Limits, classify};

    #[test]
    fn statements_that_change_the_role_are_never_session_settings() {
        // A role the gateway set (least privilege) stays unless a rule for admin or unknown
        // commands lets the client change it.
        for sql in [
            "SET ROLE app_writer",
            "set role 'app_writer'",
            "SET ROLE NONE",
            "SET ROLE DEFAULT",
            "SET ROLE `app_writer`",
            "SET DEFAULT ROLE app_writer",
            "SET DEFAULT ROLE NONE FOR gw",
            "SET DEFAULT ROLE app_writer FOR 'gw'@'%'",
            "SELECT 1; SET ROLE app_writer",
            "/*!SET ROLE app_writer*/",
            "SET @@role = 'x'",
            "SET STATEMENT max_statement_time=1 FOR SET ROLE app_writer",
            "PREPARE s FROM 'SET ROLE app_writer'",
        ] {
            let f = classify(sql, Dialect::Mysql, &Limits::default());
            assert!(f.class >= Class::Dcl, "{sql}: {:?} {:?}", f.class, f.kinds);
        }
    }
}
