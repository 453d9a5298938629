//! The pure part of resolving RowDescription columns to `schema.table.column`.
//!
//! RowDescription gives each field its table OID and attribute number (0 for computed
//! columns). The protocol layer asks [`CatalogCache::missing_tables`] which tables it has not
//! seen, runs [`CatalogCache::query`] for them on its own upstream connection, and feeds the
//! text-format result rows to [`CatalogCache::insert_row`]. Entries are per table OID; call
//! [`CatalogCache::invalidate`] after DDL (a rename would otherwise keep the old name).

use std::collections::{HashMap, HashSet};

use super::{ColumnRef, MaskError, ValueFormat};

/// Where a result column comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOrigin {
    pub schema: String,
    pub table: String,
    pub column: String,
}

/// Cache of table OID + attribute number → names.
#[derive(Debug, Default, Clone)]
pub struct CatalogCache {
    columns: HashMap<(u32, i16), ColumnOrigin>,
    loaded: HashSet<u32>,
}

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
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid = ANY('{{{list}}}'::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped"
        )
    }

    /// Adds one text-format row of [`CatalogCache::query`]: `[oid, nspname, relname, attnum,
    /// attname]`.
    pub fn insert_row(&mut self, row: &[Option<&[u8]>]) -> Result<(), MaskError> {
        let [
            Some(oid),
            Some(schema),
            Some(table),
            Some(attnum),
            Some(column),
        ] = row
        else {
            return Err(MaskError::Catalog("expected 5 non-NULL columns"));
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
        Some(match self.lookup(table, attnum) {
            Some(o) => ColumnRef {
                schema: &o.schema,
                table: &o.table,
                column: &o.column,
                type_oid,
                format,
            },
            None => ColumnRef::computed(field_name, type_oid, format),
        })
    }

    /// Forgets everything (after DDL).
    pub fn invalidate(&mut self) {
        self.columns.clear();
        self.loaded.clear();
    }
}
