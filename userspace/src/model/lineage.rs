//! Data lineage of a SQL command: for each result column, which table columns flow into it
//! and how; which columns only decide which rows come back; which are stored or sent out by
//! another channel than the result. Protocol-neutral: PostgreSQL and MySQL report a result
//! column's origin for a plain column reference only (RowDescription's table OID and attribute
//! number, the column definition's `org_table`/`org_name`), so masking by column needs to know
//! everything else from the statement itself.

use std::fmt;

/// A table column as a statement names it: `schema` as written (`None`: found through the
/// search path), `table` and `column` normalized the way the server folds names, `column`
/// `None` for every column of the table (a whole-row reference, `*` inside an expression).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub schema: Option<Box<str>>,
    pub table: Box<str>,
    pub column: Option<Box<str>>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}.")?;
        }
        match &self.column {
            Some(c) => write!(f, "{}.{c}", self.table),
            None => write!(f, "{}.*", self.table),
        }
    }
}

/// How the values of an output get there from their sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flow {
    /// A plain reference to a column (through subqueries and CTEs): the server reports the
    /// column as the output's origin, and column rules mask it as the column itself.
    #[default]
    Plain,
    /// Computed from the sources (an expression, cast, function, aggregate, set operation,
    /// scalar subquery): one value that can only be masked by replacing it whole.
    Computed,
    /// A row, array or JSON document built from the sources: masking by value replacement
    /// would hide the document, not the values in it, so such an output is refused.
    Composite,
}

/// Where one value comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueLineage {
    pub flow: Flow,
    /// Sorted, unique.
    pub sources: Vec<Source>,
    /// Read through a subquery, CTE or `VALUES` list. PostgreSQL still reports a plain
    /// reference's table column as its origin; MySQL and MariaDB report the derived table's
    /// alias, which no column rule names.
    pub derived: bool,
}

/// One result column, or a run of them whose number the statement does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One column, with the name the server gives it when the statement says (`None`: not
    /// worked out).
    One {
        name: Option<Box<str>>,
        lineage: ValueLineage,
    },
    /// `*` over a table or a function result: as many columns as it has, each with a flow no
    /// riskier than `lineage.flow`, all fed from `lineage.sources`.
    Many { lineage: ValueLineage },
}

impl Output {
    /// The output's lineage.
    pub fn lineage(&self) -> &ValueLineage {
        match self {
            Output::One { lineage, .. } | Output::Many { lineage } => lineage,
        }
    }
}

/// A column whose value is stored, or leaves by another channel than the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub source: Source,
    /// Where to, for messages (`an INSERT`, `set_config()`, …).
    pub into: &'static str,
}

/// The lineage of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementLineage {
    /// Result columns in order (empty: the statement returns no rows, or returns no table
    /// data: `SHOW`, `EXPLAIN`).
    pub outputs: Vec<Output>,
    /// Columns that only decide which rows come back or in what order (`WHERE`, `JOIN … ON`,
    /// `GROUP BY`, `HAVING`, `ORDER BY`, window partitions, `count()`, `EXISTS`): each
    /// answer reveals one comparison. Sorted, unique.
    pub compared: Vec<Source>,
    /// Columns whose values are stored (`INSERT`, `UPDATE … SET`, `CREATE TABLE AS`, a
    /// cursor's computed columns) or sent out by another channel (`set_config`,
    /// `pg_notify`).
    pub stored: Vec<Stored>,
    /// Tables the statement writes (whole rows): their values do not reach the result, but
    /// an error about a written row quotes it.
    pub written: Vec<Source>,
    /// Why the lineage cannot be determined (a function the gateway does not know, dynamic
    /// SQL, a construct it does not analyse); `None` when it can.
    pub unknown: Option<Box<str>>,
}

impl StatementLineage {
    /// Every column the statement names, in any role.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.outputs
            .iter()
            .flat_map(|o| o.lineage().sources.iter())
            .chain(self.compared.iter())
            .chain(self.stored.iter().map(|s| &s.source))
            .chain(self.written.iter())
    }

    /// Whether any output is more than a plain column reference.
    pub fn has_computed_outputs(&self) -> bool {
        self.outputs.iter().any(|o| o.lineage().flow != Flow::Plain)
    }

    /// Whether any output is read through a subquery, CTE or `VALUES` list.
    pub fn has_derived_outputs(&self) -> bool {
        self.outputs.iter().any(|o| o.lineage().derived)
    }
}

/// The lineage of a SQL command (one entry per statement, in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    pub statements: Vec<StatementLineage>,
    /// Set when the command as a whole could not be analysed (it did not parse).
    pub unknown: Option<Box<str>>,
}

impl Lineage {
    /// The lineage of a command that was not parsed.
    pub fn not_parsed() -> Self {
        Lineage {
            statements: Vec::new(),
            unknown: Some("the command was not parsed".into()),
        }
    }

    /// Why some part of the command cannot be traced, if any.
    pub fn unknown(&self) -> Option<&str> {
        self.unknown
            .as_deref()
            .or_else(|| self.statements.iter().find_map(|s| s.unknown.as_deref()))
    }

    /// Every column the command names, in any role.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.statements.iter().flat_map(StatementLineage::sources)
    }
}

/// Most levels of views on views a catalog follows; deeper nesting cannot be traced (and
/// counts as masked).
pub const MAX_VIEW_DEPTH: usize = 8;

/// What a relation named in a statement stands for, as the target's catalog says: a view's
/// columns are other tables' columns under new names, which masking rules (written against
/// the tables) would not recognise by name.
pub trait Relations {
    /// The table columns `source` reads when its relation is a view (through views on
    /// views); `None` when it is not a view (or not known to be one). `Some(Err(()))`: a view
    /// whose columns cannot be traced.
    fn expand(&self, source: &Source) -> Option<Result<Vec<Source>, ()>>;
}

/// No catalog: every name is what it says.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRelations;

impl Relations for NoRelations {
    fn expand(&self, _: &Source) -> Option<Result<Vec<Source>, ()>> {
        None
    }
}
