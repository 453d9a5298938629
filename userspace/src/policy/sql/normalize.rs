//! Literal normalisation for the classification cache key.
//!
//! In the simple query protocol every statement carries its own literals
//! (`… WHERE aid = 48213`), so a cache keyed by exact text misses every time and each
//! statement is parsed again. This module rewrites a statement into its *shape*: numeric
//! literals and plain single-quoted strings become placeholder bytes, everything else is kept
//! verbatim, so statements that differ only in literal values share one cache entry.
//!
//! The lexer is deliberately strict and small. It accepts only a subset of PostgreSQL's lexical
//! grammar it fully understands and returns `None` for anything else (the caller then keys on
//! the exact text, as before): dollar quotes, `E''`/`U&''`/`B''`/`X''`/`N''` strings,
//! backslashes, nested or unterminated comments, unterminated quotes, numbers with exponents,
//! underscores, hex or more than [`MAX_DIGITS`] digits, non-ASCII outside strings, quoted
//! identifiers and comments, control characters (which include the placeholder bytes, so a
//! shape can never be forged by the input).
//!
//! A shape alone does not prove that the classification is literal-independent: the cache also
//! checks, once per shape, that the SQL parser saw exactly these literals as literal values (see
//! `classify::classify_with_literals`), and never caches a shape whose classification looked
//! at a literal's value.

/// Placeholder for an integer literal (`42`).
pub const INTEGER: char = '\u{1}';
/// Placeholder for a decimal literal (`4.2`).
pub const DECIMAL: char = '\u{2}';
/// Placeholder for a plain single-quoted string (`'x'`, `'it''s'`).
pub const STRING: char = '\u{3}';

/// Longest digit run replaced (each side of a decimal point): a literal of up to nine digits
/// fits every integer type the parser converts to, so no literal value can make a parse fail.
pub const MAX_DIGITS: usize = 9;

/// The kind of a replaced literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiteralKind {
    Integer,
    Decimal,
    String,
}

/// One replaced literal: where it starts (line and column as the SQL tokenizer counts them,
/// both from 1, columns in characters), its kind and its value (strings unescaped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LiteralSite {
    pub line: u64,
    pub column: u64,
    pub kind: LiteralKind,
    pub value: String,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// Bytes after which a single-quoted string may start. A letter, digit or `&` before a quote
/// makes it a prefixed string (`E'…'`, `U&'…'`, `B'…'`), which is not accepted.
fn may_precede_string(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\r'
            | b'('
            | b','
            | b'='
            | b'<'
            | b'>'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'|'
            | b';'
            | b'['
    )
}

/// Counts lines and columns like sqlparser's tokenizer (a new line at each `\n`; columns in
/// characters), advancing lazily to the next literal.
struct Position {
    at: usize,
    line: u64,
    column: u64,
}

impl Position {
    fn advance(&mut self, text: &[u8], to: usize) -> (u64, u64) {
        for &b in &text[self.at..to] {
            if b == b'\n' {
                self.line += 1;
                self.column = 1;
            } else if b & 0xC0 != 0x80 {
                // Not a UTF-8 continuation byte: a new character.
                self.column += 1;
            }
        }
        self.at = to;
        (self.line, self.column)
    }
}

/// Writes the shape of `sql` into `out` (cleared first) and returns how many literals were
/// replaced, or `None` when the text is outside the accepted subset (`out` is then
/// unspecified). With `sites`, also records every replaced literal (used once per shape, on a
/// cache miss).
pub fn normalize(
    sql: &str,
    out: &mut String,
    mut sites: Option<&mut Vec<LiteralSite>>,
) -> Option<usize> {
    out.clear();
    let b = sql.as_bytes();
    let len = b.len();
    let mut pos = Position {
        at: 0,
        line: 1,
        column: 1,
    };
    let mut copied = 0; // `sql[copied..i]` is still to be copied verbatim
    let mut replaced = 0;
    let mut i = 0;
    while i < len {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                // A keyword or identifier, digits and `$` included (`t1`, `x$2`), kept whole.
                i += 1;
                while i < len && is_ident(b[i]) {
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                // An identifier run is consumed whole above, so a digit here starts a token;
                // a `.` before it would make it `.5` or `a.1`, which are not accepted.
                if i > 0 && (b[i - 1] == b'.' || is_ident(b[i - 1])) {
                    return None;
                }
                let start = i;
                while i < len && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i - start > MAX_DIGITS {
                    return None;
                }
                let mut kind = LiteralKind::Integer;
                if i < len && b[i] == b'.' {
                    let frac = i + 1;
                    let mut j = frac;
                    while j < len && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    if j == frac || j - frac > MAX_DIGITS {
                        return None;
                    }
                    i = j;
                    kind = LiteralKind::Decimal;
                }
                // `1e5`, `1_000`, `0x1f`, `1.2.3`, `1'x'`: not a plain number.
                if i < len && (is_ident(b[i]) || matches!(b[i], b'.' | b'\'' | b'"')) {
                    return None;
                }
                out.push_str(&sql[copied..start]);
                out.push(match kind {
                    LiteralKind::Integer => INTEGER,
                    _ => DECIMAL,
                });
                copied = i;
                replaced += 1;
                if let Some(s) = sites.as_deref_mut() {
                    let (line, column) = pos.advance(b, start);
                    s.push(LiteralSite {
                        line,
                        column,
                        kind,
                        value: sql[start..i].to_string(),
                    });
                }
            }
            b'\'' => {
                if i > 0 && !may_precede_string(b[i - 1]) {
                    return None;
                }
                let start = i;
                i += 1;
                let mut escapes = false;
                loop {
                    match b.get(i) {
                        None | Some(b'\\') => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                            escapes = true;
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                if i < len && (is_ident(b[i]) || b[i] == b'"') {
                    return None;
                }
                out.push_str(&sql[copied..start]);
                out.push(STRING);
                copied = i;
                replaced += 1;
                if let Some(s) = sites.as_deref_mut() {
                    let (line, column) = pos.advance(b, start);
                    let body = &sql[start + 1..i - 1];
                    s.push(LiteralSite {
                        line,
                        column,
                        kind: LiteralKind::String,
                        value: if escapes {
                            body.replace("''", "'")
                        } else {
                            body.to_string()
                        },
                    });
                }
            }
            b'"' => {
                // A quoted identifier, kept verbatim; `U&"…"` and `x"…"` are not accepted.
                if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'&') {
                    return None;
                }
                i += 1;
                loop {
                    match b.get(i) {
                        None | Some(b'\\') => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                if i < len && (is_ident(b[i]) || b[i] == b'\'') {
                    return None;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                // To the end of the line; PostgreSQL (and sqlparser) end it at `\n` or `\r`.
                i += 2;
                while i < len && b[i] != b'\n' && b[i] != b'\r' {
                    if b[i] < 0x20 && b[i] != b'\t' {
                        return None;
                    }
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Kept verbatim; a nested `/*` (PostgreSQL nests comments) is not accepted.
                i += 2;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) | (Some(b'/'), Some(b'*')) => return None,
                        (Some(b'*'), Some(b'/')) => {
                            i += 2;
                            break;
                        }
                        (Some(&x), _) if x < 0x20 && !matches!(x, b'\t' | b'\n' | b'\r') => {
                            return None;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'$' => {
                // `$1` (a parameter) is kept; anything else is a dollar quote.
                let start = i;
                i += 1;
                while i < len && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start + 1 || (i < len && (is_ident(b[i]) || b[i] == b'\'')) {
                    return None;
                }
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            // `#-` is an operator in PostgreSQL; `#--` lexes differently in different lexers.
            b'#' if b.get(i + 1) == Some(&b'-') => return None,
            b'`' | b'\\' => return None,
            0x21..=0x7e => i += 1,
            // Control characters (the placeholders among them), DEL and non-ASCII.
            _ => return None,
        }
    }
    out.push_str(&sql[copied..]);
    Some(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Option<String> {
        let mut out = String::new();
        normalize(sql, &mut out, None).map(|_| out)
    }

    fn show(sql: &str) -> String {
        shape(sql)
            .unwrap_or_else(|| panic!("{sql:?} must normalise"))
            .replace(INTEGER, "<i>")
            .replace(DECIMAL, "<d>")
            .replace(STRING, "<s>")
    }

    #[test]
    fn literals_are_replaced() {
        assert_eq!(
            show("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = <i>;"
        );
        assert_eq!(
            show("UPDATE t SET a = a + -1234, b = 'x', c = 1.50 WHERE id IN (1,2, 3)"),
            "UPDATE t SET a = a + -<i>, b = <s>, c = <d> WHERE id IN (<i>,<i>, <i>)"
        );
        assert_eq!(show("SELECT ''"), "SELECT <s>");
        assert_eq!(show("SELECT 'naïve €'"), "SELECT <s>");
        assert_eq!(show("SELECT 1"), "SELECT <i>");
        assert_eq!(show("SELECT 0.5::numeric"), "SELECT <d>::numeric");
        assert_eq!(show("SELECT a[1]"), "SELECT a[<i>]");
    }

    #[test]
    fn doubled_quotes_stay_inside_the_string() {
        assert_eq!(show("SELECT 'it''s', 'a'''"), "SELECT <s>, <s>");
        // The `''` hides the quote: everything up to the last quote is one string.
        assert_eq!(show("SELECT 'a''; DROP TABLE x; --'"), "SELECT <s>");
        // Without it the DROP is code and stays in the shape.
        assert_eq!(
            show("SELECT 'a' ; DROP TABLE x; --'"),
            "SELECT <s> ; DROP TABLE x; --'"
        );
    }

    #[test]
    fn identifiers_keywords_and_parameters_are_not_literals() {
        assert_eq!(show("SELECT t1.c2 FROM t1"), "SELECT t1.c2 FROM t1");
        assert_eq!(
            show("SELECT \"x 1\", \"a\"\"2\" FROM t"),
            "SELECT \"x 1\", \"a\"\"2\" FROM t"
        );
        assert_eq!(
            show("SELECT $1, $12 FROM t WHERE a = $2"),
            "SELECT $1, $12 FROM t WHERE a = $2"
        );
        assert_eq!(show("SELECT 1::int, x::int4"), "SELECT <i>::int, x::int4");
        assert_eq!(show("SELECT x$1 FROM t"), "SELECT x$1 FROM t");
        assert_eq!(show("SELECT a->>'k', b#>'{a}'"), "SELECT a->><s>, b#><s>");
    }

    #[test]
    fn comments_are_kept_verbatim() {
        assert_eq!(
            show("SELECT 1 -- 2 'x'\nFROM t /* 3 'y' */ WHERE a = 4"),
            "SELECT <i> -- 2 'x'\nFROM t /* 3 'y' */ WHERE a = <i>"
        );
        // PostgreSQL ends a line comment at `\r` too: what follows is code.
        assert_eq!(show("SELECT 1 --x\r'y'"), "SELECT <i> --x\r<s>");
        assert_eq!(show("SELECT 1 -- naïve"), "SELECT <i> -- naïve");
    }

    #[test]
    fn statements_never_collapse_into_a_harmless_shape() {
        let one = shape("SELECT 1").unwrap();
        for other in [
            "SELECT 1; DROP TABLE x",
            "SELECT 1;DROP TABLE x",
            "SELECT 1 ; DROP TABLE x --",
            "SELECT 1 /* */; DROP TABLE x",
            "SELECT '1'",
        ] {
            assert_ne!(shape(other).unwrap(), one, "{other}");
        }
        assert_ne!(shape("SELECT '1'").unwrap(), shape("SELECT 1").unwrap());
        assert_ne!(shape("SELECT 1.5").unwrap(), shape("SELECT 1").unwrap());
    }

    #[test]
    fn unaccepted_text_falls_back() {
        for sql in [
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT E'a\\nb'",
            "SELECT e'x'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"d\\0061t\"",
            "SELECT B'101'",
            "SELECT X'ff'",
            "SELECT N'x'",
            "SELECT 'a\\'",
            "SELECT 'a\\' OR 1=1 --'",
            "SELECT \"a\\\"",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 1 /* unterminated",
            "SELECT 1 /* outer /* inner */ still comment */",
            "SELECT 1e5",
            "SELECT 1E5",
            "SELECT 1_000",
            "SELECT 0x1f",
            "SELECT 1.",
            "SELECT .5",
            "SELECT 1.2.3",
            "SELECT 1..2",
            "SELECT 1234567890",
            "SELECT 1.1234567890",
            "SELECT 1abc",
            "SELECT 'a'b",
            "SELECT 'a''b'c",
            "SELECT 1'a'",
            "SELECT \"a\"'b'",
            "SELECT a #-- 1\n",
            "SELECT `a`",
            "SELECT \\x",
            "SELECT café FROM t",
            "SELECT 1\u{1}",
            "SELECT \u{3}",
            "SELECT 1\u{0}",
            "SELECT 1 -- a\u{1}\n",
            "SELECT 1\u{b}",
            "SELECT $",
            "SELECT $1a",
        ] {
            assert_eq!(shape(sql), None, "{sql:?} must fall back");
        }
    }

    #[test]
    fn sites_record_positions_like_the_tokenizer() {
        let mut out = String::new();
        let mut sites = Vec::new();
        let n = normalize(
            "SELECT 'é', 12\n  , 'a''b', 3.5",
            &mut out,
            Some(&mut sites),
        );
        assert_eq!(n, Some(4));
        let got: Vec<_> = sites
            .iter()
            .map(|s| (s.line, s.column, s.kind, s.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 8, LiteralKind::String, "é"),
                (1, 13, LiteralKind::Integer, "12"),
                (2, 5, LiteralKind::String, "a'b"),
                (2, 13, LiteralKind::Decimal, "3.5"),
            ]
        );
    }

    #[test]
    fn output_buffer_is_reused() {
        let mut out = String::with_capacity(64);
        let ptr = out.as_ptr();
        for i in 0..100 {
            let sql = format!("SELECT c FROM t WHERE id = {i}");
            assert_eq!(normalize(&sql, &mut out, None), Some(1));
        }
        assert_eq!(out.as_ptr(), ptr, "no reallocation for short statements");
    }
}
