//! `schema.table.column` globs for column rules.

use std::borrow::Cow;

use crate::config::policy::glob_match;

/// A compiled column glob: three segments, each with `*` (any run) and `?` (one character).
/// `table.column` means `*.table.column`; a bare `column` means `*.*.column`.
///
/// Names match without regard to case. MySQL and MariaDB compare column names without case
/// and, with `lower_case_table_names`, table names too, while the catalog reports each name
/// as defined (`Customers.Email`) and the statement's lineage folds it (`customers.email`):
/// a rule must match both spellings. In PostgreSQL this can only match more (a column
/// `"Email"` beside `email`), which for masking is the safe side.
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
            schema: lower(schema).into_owned(),
            table: lower(table).into_owned(),
            column: lower(column).into_owned(),
        })
    }

    /// Whether the glob matches a column whose names are all known.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        segment(&self.column, column)
            && segment(&self.table, table)
            && segment(&self.schema, schema)
    }

    /// Whether the glob may match a column named in a statement: a schema left to the search
    /// path (`None`) may be any schema, a whole-row reference (`column` `None`) any column.
    pub fn may_match(&self, schema: Option<&str>, table: &str, column: Option<&str>) -> bool {
        column.is_none_or(|c| segment(&self.column, c))
            && segment(&self.table, table)
            && schema.is_none_or(|s| segment(&self.schema, s))
    }
}

/// One glob segment (already lower case) against one name, without regard to case.
fn segment(glob: &str, name: &str) -> bool {
    glob_match(glob.as_bytes(), lower(name).as_bytes())
}

/// `s` in lower case, character by character (allocating only when something changes).
fn lower(s: &str) -> Cow<'_, str> {
    let changes = |c: char| {
        let mut l = c.to_lowercase();
        !(l.next() == Some(c) && l.next().is_none())
    };
    if s.chars().any(changes) {
        Cow::Owned(s.chars().flat_map(char::to_lowercase).collect())
    } else {
        Cow::Borrowed(s)
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
        // Case does not matter on either side (MySQL reports `Customers.Email` as defined).
        let g = ColumnGlob::parse("*.Customers.Email").expect("glob");
        assert!(g.matches("app", "customers", "email"));
        assert!(g.matches("app", "CUSTOMERS", "EMAIL"));
        assert!(g.may_match(None, "customers", Some("email")));
        let g = ColumnGlob::parse("*.customers.email").expect("glob");
        assert!(g.matches("app", "Customers", "Email"));
        assert!(g.may_match(Some("App"), "Customers", Some("EMAIL")));
        assert!(!g.matches("app", "Customers", "Emails"));
        assert!(ColumnGlob::parse("a..b").is_err());
        assert!(ColumnGlob::parse("a.b.c.d").is_err());
    }
}
