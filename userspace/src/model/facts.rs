//! What classification derives from a command: its class, kinds, the objects it touches, and
//! why it was judged the way it was.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a command does, from least to most risky (the order is the "riskiest part" order).
///
/// SQL statements get every class; other protocols map onto the same scale (an HTTP `GET` or
/// a Kubernetes `list` is a `read`, a `DELETE` a `write`, running a program on a host
/// `admin`), so audit records, approvals and `policy explain` read the same everywhere.
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

/// What classification found in one command (a SQL string of possibly several statements, a
/// command line of possibly several programs, one request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// Kinds in order: SQL statement kinds (`select`, `insert`, `create_table`, …), `exec`,
    /// `shell`, the HTTP method, the Kubernetes verb, `connect`.
    pub kinds: Vec<&'static str>,
    /// The class of each part, in order (after escalation by functions and nested statements).
    pub statement_classes: Vec<Class>,
    /// Riskiest class over all parts.
    pub class: Class,
    /// Tables read, normalized (`schema.table` or `table`), sorted, unique.
    pub tables_read: Vec<String>,
    /// Tables written (or created, altered, dropped).
    pub tables_written: Vec<String>,
    /// SQL functions called, lower-case, sorted, unique.
    pub functions: Vec<String>,
    /// Programs a command line runs (each part's first word), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// What a non-SQL command touches: an HTTP request's `host/path`, a Kubernetes request's
    /// `group/resource[/subresource]` with its namespace and name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// Each part's words of a command line (program first), after quote removal: `commands`
    /// globs pair their words with these.
    #[serde(skip)]
    pub words: Vec<Vec<String>>,
    /// Files a command line writes by redirecting output (`> file`), as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_written: Vec<String>,
    /// Why the command is `unknown` or escalated, for the decision and the audit record.
    pub notes: Vec<String>,
    /// Set when a pre-parse limit was exceeded (the command was not parsed).
    pub limit: Option<String>,
    /// SQL: where each result column's values come from (masking by column needs it for
    /// anything but a plain column reference). Empty for other commands.
    #[serde(skip)]
    pub lineage: super::lineage::Lineage,
}

impl Facts {
    /// The set of all part classes.
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

    /// Facts of one part of kind `kind` and class `class`.
    pub fn single(kind: &'static str, class: Class) -> Self {
        Facts {
            kinds: vec![kind],
            statement_classes: vec![class],
            class,
            ..Default::default()
        }
    }

    /// An `unknown` command of kind `kind`, with the reason.
    pub fn unknown(kind: &'static str, note: String) -> Self {
        Facts {
            notes: vec![note],
            lineage: super::lineage::Lineage::not_parsed(),
            ..Facts::single(kind, Class::Unknown)
        }
    }
}

/// Every SQL statement kind the classifier reports (an `sql` rule's `kinds` may only name
/// these).
pub const SQL_KINDS: &[&str] = &[
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
    "flush",
    "grant",
    "handler",
    "insert",
    "install",
    "into_outfile",
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
    "show_warnings",
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
];
