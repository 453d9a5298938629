//! `schema.table.column` globs for column rules.

use crate::config::policy::glob_match;

/// A compiled column glob: three segments, each with `*` (any run) and `?` (one character).
/// `table.column` means `*.table.column`; a bare `column` means `*.*.column`.
#[derive(Debug, Clone)]
pub struct ColumnGlob {
    schema: String,
    table: String,
    column: String,
}

impl ColumnGlob {
    /// Parses `schema.table.column`, `table.column` or `column`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("column glob {s:?} has an empty segment"));
        }
        let (schema, table, column) = match parts.as_slice() {
            [c] => ("*", "*", *c),
            [t, c] => ("*", *t, *c),
            [s, t, c] => (*s, *t, *c),
            _ => return Err(format!("column glob {s:?} has more than three segments")),
        };
        Ok(Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
            column: column.to_owned(),
        })
    }

    /// Whether the glob matches a column whose names are all known.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        glob_match(self.column.as_bytes(), column.as_bytes())
            && glob_match(self.table.as_bytes(), table.as_bytes())
            && glob_match(self.schema.as_bytes(), schema.as_bytes())
    }

    /// Whether the glob may match a column named in a statement: a schema left to the search
    /// path (`None`) may be any schema, a whole-row reference (`column` `None`) any column.
    pub fn may_match(&self, schema: Option<&str>, table: &str, column: Option<&str>) -> bool {
        column.is_none_or(|c| glob_match(self.column.as_bytes(), c.as_bytes()))
            && glob_match(self.table.as_bytes(), table.as_bytes())
            && schema.is_none_or(|s| glob_match(self.schema.as_bytes(), s.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments() {
        let g = ColumnGlob::parse("*.customers.email").expect("glob");
        assert!(g.matches("public", "customers", "email"));
        assert!(!g.matches("public", "customers", "email2"));
        assert!(!g.matches("public", "orders", "email"));
        let g = ColumnGlob::parse("customers.e*l").expect("glob");
        assert!(g.matches("sales", "customers", "email"));
        assert!(!g.matches("sales", "customers", "name"));
        let g = ColumnGlob::parse("ssn").expect("glob");
        assert!(g.matches("a", "b", "ssn"));
        let g = ColumnGlob::parse("public.*.card_?").expect("glob");
        assert!(g.matches("public", "x", "card_1"));
        assert!(!g.matches("public", "x", "card_12"));
        assert!(!g.matches("private", "x", "card_1"));
        assert!(ColumnGlob::parse("a..b").is_err());
        assert!(ColumnGlob::parse("a.b.c.d").is_err());
    }
}
