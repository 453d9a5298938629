//! The pure part of resolving RowDescription columns to `schema.table.column`.
//!
//! RowDescription gives each field its table OID and attribute number (0 for computed
//! columns). The protocol layer asks [`CatalogCache::missing_tables`] which tables it has not
//! seen, runs [`CatalogCache::query`] for them on its own upstream connection, and feeds the
//! text-format result rows to [`CatalogCache::insert_row`]. Entries are per table OID; call
//! [`CatalogCache::invalidate`] after DDL (a rename would otherwise keep the old name), and
//! [`CatalogCache::expire_stale`] before using it: another session's DDL, or time, may have
//! made it stale ([`freshness`](crate::protocol::freshness)).

use std::collections::{HashMap, HashSet};

use super::types::value_kind;
use crate::mask::{ColumnRef, MaskError, ValueFormat};
use crate::model::Dialect;
use crate::model::lineage::{
    Flow, Lineage, MAX_VIEW_DEPTH, Output, Relations, Source, StatementLineage,
};
use crate::policy::sql::lineage::view_definition;
use crate::protocol::freshness::Freshness;

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOrigin {
    pub schema: String,
    pub table: String,
    pub column: String,
}

/// Cache of table OID + attribute number → names, with what masking needs to see through
/// views: which relations are views and which table columns each one reads, and which OID a
/// name in a statement resolves to.
#[derive(Debug, Default, Clone)]
pub struct CatalogCache {
    columns: HashMap<(u32, i16), ColumnOrigin>,
    loaded: HashSet<u32>,
    /// Views and materialized views among the loaded relations.
    views: HashSet<u32>,
    /// Each view's definition, as lineage (`None`: it could not be traced).
    view_defs: HashMap<u32, Option<StatementLineage>>,
    /// Relation names as a statement writes them (`schema` or not, `name`) → the OIDs of
    /// every relation of that name (in any schema when the name is unqualified: the client's
    /// search path is not the catalog connection's, and can be changed by the client).
    names: HashMap<(Option<String>, String), Vec<u32>>,
    /// Whether the entries may be stale.
    freshness: Freshness,
}

/// Relation names kept per session before the cache starts over: names come from the
/// client, and one that does not exist is remembered too.
pub const MAX_NAMES: usize = 4096;

impl CatalogCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Table OIDs among `fields` (table OID, attribute number) that are neither cached nor
    /// computed (OID 0), each once.
    pub fn missing_tables(&self, fields: impl IntoIterator<Item = (u32, i16)>) -> Vec<u32> {
        let mut missing = Vec::new();
        for (table, _) in fields {
            if table != 0 && !self.loaded.contains(&table) && !missing.contains(&table) {
                missing.push(table);
            }
        }
        missing
    }

    /// The simple-protocol query that returns the rows [`CatalogCache::insert_row`] takes:
    /// `oid, nspname, relname, attnum, attname` for every live column of the given tables.
    pub fn query(tables: &[u32]) -> String {
        let list = tables
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, c.relkind \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid = ANY('{{{list}}}'::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped"
        )
    }

    /// Adds one text-format row of [`CatalogCache::query`]: `[oid, nspname, relname, attnum,
    /// attname, relkind]` (`relkind` may be left out).
    pub fn insert_row(&mut self, row: &[Option<&[u8]>]) -> Result<(), MaskError> {
        self.freshness.loaded();
        let (oid, schema, table, attnum, column, kind) = match row {
            [
                Some(oid),
                Some(schema),
                Some(table),
                Some(attnum),
                Some(column),
            ] => (oid, schema, table, attnum, column, None),
            [
                Some(oid),
                Some(schema),
                Some(table),
                Some(attnum),
                Some(column),
                Some(kind),
            ] => (oid, schema, table, attnum, column, Some(kind)),
            _ => return Err(MaskError::Catalog("expected 5 or 6 non-NULL columns")),
        };
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| MaskError::Catalog("name is not UTF-8"))
        };
        let oid: u32 = text(oid)?
            .parse()
            .map_err(|_| MaskError::Catalog("bad oid"))?;
        let attnum: i16 = text(attnum)?
            .parse()
            .map_err(|_| MaskError::Catalog("bad attnum"))?;
        self.loaded.insert(oid);
        if kind.is_some_and(|k| matches!(k, [b'v'] | [b'm'])) {
            self.views.insert(oid);
        }
        self.columns.insert(
            (oid, attnum),
            ColumnOrigin {
                schema: text(schema)?,
                table: text(table)?,
                column: text(column)?,
            },
        );
        Ok(())
    }

    /// Marks tables as looked up even if the query returned no row for them (a dropped table),
    /// so they are not asked for again.
    pub fn mark_loaded(&mut self, tables: &[u32]) {
        self.loaded.extend(tables.iter().copied());
    }

    /// The origin of a column, if cached.
    pub fn lookup(&self, table: u32, attnum: i16) -> Option<&ColumnOrigin> {
        self.columns.get(&(table, attnum))
    }

    /// Resolves one RowDescription field into a [`ColumnRef`]: catalog names when the origin
    /// is cached, a computed column named `field_name` for table OID 0. `None` when the table
    /// has not been looked up yet: resolve it first, since guessing would let a column rule
    /// miss (fail closed).
    pub fn column_ref<'a>(
        &'a self,
        field_name: &'a str,
        table: u32,
        attnum: i16,
        type_oid: u32,
        format: ValueFormat,
    ) -> Option<ColumnRef<'a>> {
        if table != 0 && !self.loaded.contains(&table) {
            return None;
        }
        // A view's column that is a plain reference to one table column is that column.
        let (table, attnum) = match self.view_column(table, attnum) {
            Some((Flow::Plain, cols)) if cols.len() == 1 => cols[0],
            _ => (table, attnum),
        };
        Some(match self.lookup(table, attnum) {
            Some(o) => ColumnRef {
                schema: &o.schema,
                table: &o.table,
                column: &o.column,
                kind: value_kind(type_oid),
                type_id: type_oid,
                format,
            },
            None => ColumnRef::computed(field_name, value_kind(type_oid), type_oid, format),
        })
    }

    /// Forgets everything (after DDL).
    pub fn invalidate(&mut self) {
        self.columns.clear();
        self.loaded.clear();
        self.views.clear();
        self.view_defs.clear();
        self.names.clear();
        self.freshness.reset();
    }

    /// Forgets everything when it may be stale (DDL through the gateway in any session, or
    /// entries past their time); `true` when it did.
    pub fn expire_stale(&mut self) -> bool {
        let expired = self.freshness.expired();
        if expired {
            self.invalidate();
        }
        expired
    }

    /// Loaded views whose definitions are not loaded yet.
    pub fn views_without_defs(&self) -> Vec<u32> {
        self.views
            .iter()
            .filter(|v| !self.view_defs.contains_key(v))
            .copied()
            .collect()
    }

    /// The query returning `[oid, definition]` of views.
    pub fn defs_query(views: &[u32]) -> String {
        let list = views
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c \
             WHERE c.oid = ANY('{{{list}}}'::pg_catalog.oid[])"
        )
    }

    /// Adds one row of [`CatalogCache::defs_query`]: the definition is analysed for lineage
    /// like any statement (and is untraceable when it does not parse).
    pub fn insert_def_row(&mut self, row: &[Option<&[u8]>]) -> Result<(), MaskError> {
        self.freshness.loaded();
        let [Some(oid), def] = row else {
            return Err(MaskError::Catalog("expected a view oid and definition"));
        };
        let oid = std::str::from_utf8(oid)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or(MaskError::Catalog("bad oid"))?;
        let lineage = def
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| view_definition(d, Dialect::Postgres));
        self.view_defs.insert(oid, lineage);
        Ok(())
    }

    /// Marks views' definitions as loaded (untraceable unless a row came for them).
    pub fn mark_defs_loaded(&mut self, views: &[u32]) {
        for v in views {
            self.view_defs.entry(*v).or_insert(None);
        }
    }

    /// Relation names the loaded view definitions use that are not resolved yet.
    pub fn missing_def_names(&self) -> Vec<(Option<String>, String)> {
        self.missing_names(
            self.view_defs
                .values()
                .flatten()
                .flat_map(StatementLineage::sources)
                .map(|s| (s.schema.as_deref(), &*s.table)),
        )
    }

    /// What flows into column `attnum` of `view`: the table columns (relation OID, attribute
    /// number) and how (`Plain`: exactly one, referenced as it is). `None`: not a view, or
    /// it cannot be traced (a definition that does not parse, a name not resolved, views
    /// nested deeper than [`MAX_VIEW_DEPTH`]).
    pub fn view_column(&self, view: u32, attnum: i16) -> Option<(Flow, Vec<(u32, i16)>)> {
        self.trace_view(view, attnum, 0)
    }

    fn trace_view(&self, view: u32, attnum: i16, depth: usize) -> Option<(Flow, Vec<(u32, i16)>)> {
        if depth >= MAX_VIEW_DEPTH || !self.views.contains(&view) {
            return None;
        }
        let def = self.view_defs.get(&view)?.as_ref()?;
        let index = usize::try_from(attnum).ok()?.checked_sub(1)?;
        let Output::One { lineage, .. } = def.outputs.get(index)? else {
            return None;
        };
        let mut flow = lineage.flow;
        let mut cols = Vec::new();
        for src in &lineage.sources {
            let (f, c) = self.trace(src, depth + 1)?;
            flow = flow.max(f);
            cols.extend(c);
        }
        if flow == Flow::Plain && cols.len() != 1 {
            flow = Flow::Computed;
        }
        Some((flow, cols))
    }

    /// The table columns a column named in a statement (or a view definition) stands for,
    /// through views, over every relation the name may be. `None`: it cannot be traced.
    pub fn trace(&self, src: &Source, depth: usize) -> Option<(Flow, Vec<(u32, i16)>)> {
        let oids = self.names.get(&(
            src.schema.as_deref().map(str::to_owned),
            src.table.to_string(),
        ))?;
        let mut flow = Flow::Plain;
        let mut cols = Vec::new();
        for &oid in oids {
            let (f, c) = self.trace_oid(oid, src.column.as_deref(), depth)?;
            flow = flow.max(f);
            cols.extend(c);
        }
        if oids.len() > 1 && flow == Flow::Plain {
            flow = Flow::Computed;
        }
        Some((flow, cols))
    }

    fn trace_oid(
        &self,
        oid: u32,
        column: Option<&str>,
        depth: usize,
    ) -> Option<(Flow, Vec<(u32, i16)>)> {
        if !self.loaded.contains(&oid) {
            return None;
        }
        // A relation without the column is not where the column comes from (the lineage
        // names every candidate of an unqualified column).
        let atts: Vec<i16> = match column {
            Some(c) => self.attnum(oid, c).into_iter().collect(),
            None => self.attnums(oid),
        };
        if !self.views.contains(&oid) {
            return Some((Flow::Plain, atts.into_iter().map(|a| (oid, a)).collect()));
        }
        let mut flow = if column.is_none() {
            Flow::Composite
        } else {
            Flow::Plain
        };
        let mut cols = Vec::new();
        for a in atts {
            let (f, c) = self.trace_view(oid, a, depth + 1)?;
            flow = flow.max(f);
            cols.extend(c);
        }
        Some((flow, cols))
    }

    fn attnum(&self, oid: u32, column: &str) -> Option<i16> {
        self.columns
            .iter()
            .find(|((o, _), c)| *o == oid && c.column == column)
            .map(|((_, a), _)| *a)
    }

    fn attnums(&self, oid: u32) -> Vec<i16> {
        let mut v: Vec<i16> = self
            .columns
            .keys()
            .filter(|(o, _)| *o == oid)
            .map(|(_, a)| *a)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether a loaded relation is a view or materialized view.
    pub fn is_view(&self, oid: u32) -> bool {
        self.views.contains(&oid)
    }

    /// Whether the cache holds more names than [`MAX_NAMES`] (time to start over).
    pub fn names_full(&self) -> bool {
        self.names.len() > MAX_NAMES
    }

    /// Names not resolved yet, of those given.
    pub fn missing_names<'n>(
        &self,
        names: impl IntoIterator<Item = (Option<&'n str>, &'n str)>,
    ) -> Vec<(Option<String>, String)> {
        let mut out: Vec<(Option<String>, String)> = Vec::new();
        for (s, n) in names {
            let key = (s.map(str::to_owned), n.to_owned());
            if !self.names.contains_key(&key) && !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }

    /// A one-row query resolving `names` (as normalized in lineage) to the OIDs of every
    /// relation so named, one column each (`oid,oid,…`): in the schema given, or in any
    /// schema.
    pub fn names_query(names: &[(Option<String>, String)]) -> String {
        let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let cols: Vec<String> = names
            .iter()
            .map(|(schema, name)| {
                let in_schema = match schema {
                    Some(s) => format!(" AND n.nspname = {}", literal(s)),
                    None => String::new(),
                };
                format!(
                    "pg_catalog.array_to_string(ARRAY(SELECT c.oid FROM pg_catalog.pg_class c \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relname = {}{in_schema} ORDER BY c.oid), ',')",
                    literal(name)
                )
            })
            .collect();
        format!("SELECT {}", cols.join(", "))
    }

    /// Records the row [`CatalogCache::names_query`] returned for `names`.
    pub fn insert_names(&mut self, names: &[(Option<String>, String)], row: &[Option<&[u8]>]) {
        self.freshness.loaded();
        for (i, key) in names.iter().enumerate() {
            let Some(list) = row
                .get(i)
                .copied()
                .flatten()
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                // Not answered: left unresolved (and untraceable).
                continue;
            };
            let oids = list
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse::<u32>().ok())
                .collect();
            self.names.insert(key.clone(), oids);
        }
    }

    /// The OIDs a name resolved to (empty: not resolved, or no such relation).
    pub fn name_oids(&self, schema: Option<&str>, name: &str) -> &[u32] {
        self.names
            .get(&(schema.map(str::to_owned), name.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether a name stands for a view (one of the relations it may be).
    pub fn names_view(&self, schema: Option<&str>, name: &str) -> bool {
        self.name_oids(schema, name)
            .iter()
            .any(|o| self.views.contains(o))
    }
}

/// A relation name as a statement writes it: schema (if any) and name.
pub type RelName = (Option<String>, String);

/// The relation names of a session's commands, resolved on the catalog connection of the
/// client side, so that the gate can judge a statement through the views it reads before it
/// runs (the answer side keeps its own cache for the columns the server reports).
#[derive(Debug, Default)]
pub struct Views {
    pub cache: CatalogCache,
    /// Names whose resolution failed: judged as views that cannot be traced.
    failed: HashSet<RelName>,
}

impl Views {
    /// Names `lineage` uses that are neither resolved nor failed.
    pub fn unresolved(&self, lineage: &Lineage) -> Vec<RelName> {
        let mut names = self
            .cache
            .missing_names(lineage.sources().map(|s| (s.schema.as_deref(), &*s.table)));
        names.retain(|n| !self.failed.contains(n));
        names
    }

    /// Records that `names` could not be resolved.
    pub fn fail(&mut self, names: Vec<RelName>) {
        self.failed.extend(names);
    }

    /// Forgets everything (after DDL).
    pub fn invalidate(&mut self) {
        self.cache.invalidate();
        self.failed.clear();
    }

    /// Forgets everything when it may be stale ([`CatalogCache::expire_stale`]). Called
    /// before each statement is judged.
    pub fn refresh(&mut self) {
        if self.cache.expire_stale() {
            self.failed.clear();
        }
    }
}

fn origin_source(o: &ColumnOrigin) -> Source {
    Source {
        schema: Some(o.schema.as_str().into()),
        table: o.table.as_str().into(),
        column: Some(o.column.as_str().into()),
    }
}

impl Relations for Views {
    fn expand(&self, src: &Source) -> Option<Result<Vec<Source>, ()>> {
        let key = (
            src.schema.as_deref().map(str::to_owned),
            src.table.to_string(),
        );
        if self.failed.contains(&key) {
            return Some(Err(()));
        }
        let c = &self.cache;
        if !c.names_view(src.schema.as_deref(), &src.table) {
            return None;
        }
        // The definition traces the view's columns. One that cannot be traced (a function the
        // gateway does not know may read any table, which the view's dependencies do not
        // show) is untraceable.
        let Some((_, cols)) = c.trace(src, 0) else {
            return Some(Err(()));
        };
        Some(
            cols.into_iter()
                .map(|(rel, att)| c.lookup(rel, att).map(origin_source).ok_or(()))
                .collect(),
        )
    }
}
