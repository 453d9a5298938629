//! Views, for masking. MySQL and MariaDB report a view's own name and column as a result
//! column's origin, never the table column the view reads, so a column rule written against
//! the table would not recognise it in the answer. Before a statement is judged for a caller
//! with column rules, the relation names it uses that the session has not seen are looked up
//! in `information_schema` on the session's own server connection (between commands, while it
//! is idle), and each view's definition is analysed for lineage. The gate then sees through
//! the views: a masked column read through one is refused, like one read through a subquery
//! or CTE, and the rest goes on.
//!
//! An unqualified name is taken as every relation of that name in any schema (the client can
//! change its default database within the very command being judged). A name found nowhere
//! is not remembered (it may be created later). What a session looked up is forgotten when a
//! statement that may create, change or drop views goes through the gateway in any session,
//! and after a while, which bounds how long a view redefined outside the gateway is judged by
//! its old definition ([`freshness`](crate::protocol::freshness)). A statement judged just
//! before a redefinition and run just after it is a race no lookup can close; the detectors
//! still see every string value of the answer.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{self, command as com};
use super::wire;
use crate::model::Dialect;
use crate::model::lineage::{Lineage, MAX_VIEW_DEPTH, Output, Relations, Source, StatementLineage};
use crate::policy::sql::lineage::view_definition;
use crate::protocol::freshness::Freshness;

/// A relation name as a statement writes it: schema (if any) and name, folded to lower case.
pub type RelName = (Option<String>, String);

/// Names kept per session before the cache starts over (names come from the client).
const MAX_NAMES: usize = 4096;

/// Most catalog rows read for one lookup (more: the names fail, and count as untraceable).
const MAX_ROWS: usize = 1024;

/// Largest catalog answer packet (a view's definition can be long).
const MAX_PACKET: usize = codec::MAX_PAYLOAD;

/// Why a lookup failed; its names are then judged as views that cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("server connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("framing: {0}")]
    Frame(#[from] codec::FrameError),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server refused the catalog query ({code}): {message}")]
    Refused { code: u16, message: String },
    #[error("unexpected catalog answer: {0}")]
    Malformed(&'static str),
}

/// The relation names of a session's statements: which are views, and what each reads.
#[derive(Debug, Default)]
pub struct Views {
    /// Table name → schema and what it is, for every relation of that name the catalog
    /// listed.
    relations: HashMap<String, Vec<(String, Relation)>>,
    /// Names asked for (and found), by table name: the schemas they were written with
    /// (`None`: unqualified, any schema).
    asked: NameSet,
    /// Names whose lookup failed: judged as views that cannot be traced.
    failed: NameSet,
    /// Whether the lookups may be stale.
    freshness: Freshness,
}

/// A relation the catalog listed.
#[derive(Debug)]
enum Relation {
    Table,
    /// A view, with its definition's lineage (`None`: it cannot be traced).
    View(Option<StatementLineage>),
}

/// Relation names by table name, looked up without allocating.
#[derive(Debug, Default)]
struct NameSet(HashMap<String, Vec<Option<String>>>);

impl NameSet {
    fn contains(&self, schema: Option<&str>, table: &str) -> bool {
        self.0
            .get(table)
            .is_some_and(|v| v.iter().any(|s| s.as_deref() == schema))
    }

    fn insert(&mut self, (schema, table): RelName) {
        let v = self.0.entry(table).or_default();
        if !v.contains(&schema) {
            v.push(schema);
        }
    }

    fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl Views {
    /// Names `lineage` uses that were not looked up yet (allocates only for those).
    pub fn unresolved(&self, lineage: &Lineage) -> Vec<RelName> {
        let mut out: Vec<RelName> = Vec::new();
        for s in lineage.sources() {
            let (schema, table) = (s.schema.as_deref(), &*s.table);
            if self.asked.contains(schema, table) || self.failed.contains(schema, table) {
                continue;
            }
            let key = (schema.map(str::to_owned), table.to_owned());
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }

    /// Forgets everything (after DDL, a change of user, or too many names).
    pub fn invalidate(&mut self) {
        self.relations.clear();
        self.asked.clear();
        self.failed.clear();
        self.freshness.reset();
    }

    /// Forgets everything when it may be stale ([`Freshness`]). Called before each
    /// statement is judged.
    pub fn refresh(&mut self) {
        if self.freshness.expired() {
            self.invalidate();
        }
    }

    /// The catalog query for `names`: every relation so named in any schema, its type and,
    /// for a view, its definition in hex.
    ///
    /// It runs on the client's connection, under whatever the client set there, so nothing
    /// in it may depend on the session: names go as hex literals with an explicit collation
    /// (no `sql_mode`, connection collation or `character_set_collations` changes how they
    /// compare), every column comes back as binary (no `character_set_results` re-encodes
    /// it), and an explicit `LIMIT` overrides `sql_select_limit` (which would otherwise cut
    /// the answer short, down to no rows at all, and leave views unseen).
    pub fn query(names: &[RelName]) -> String {
        let mut list = String::new();
        for (i, (_, name)) in names.iter().enumerate() {
            if i > 0 {
                list.push_str(", ");
            }
            list.push_str("CONVERT(X'");
            list.push_str(&hex::encode(name.as_bytes()));
            list.push_str("' USING utf8mb4) COLLATE utf8mb4_general_ci");
        }
        format!(
            "SELECT CAST(t.TABLE_SCHEMA AS BINARY), CAST(t.TABLE_NAME AS BINARY), \
             CAST(IF(t.TABLE_TYPE = 'VIEW', '1', '0') AS BINARY), \
             CAST(HEX(v.VIEW_DEFINITION) AS BINARY) \
             FROM information_schema.TABLES t LEFT JOIN information_schema.VIEWS v \
             ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME \
             WHERE t.TABLE_NAME IN ({list}) LIMIT {}",
            MAX_ROWS + 1
        )
    }

    /// Records the catalog's rows for `names` ([`Views::query`]'s columns).
    pub fn insert(&mut self, names: &[RelName], rows: &[[Option<Vec<u8>>; 4]]) {
        if self.asked.len() + names.len() > MAX_NAMES {
            self.invalidate();
        }
        self.freshness.loaded();
        let mut found: HashSet<String> = HashSet::new();
        for [schema, name, is_view, def] in rows {
            let (Some(schema), Some(name)) = (schema, name) else {
                continue;
            };
            let (schema, name) = (
                String::from_utf8_lossy(schema).to_lowercase(),
                String::from_utf8_lossy(name).to_lowercase(),
            );
            let entry = if is_view.as_deref() != Some(b"1") {
                Relation::Table
            } else {
                Relation::View(
                    def.as_deref()
                        .and_then(|h| hex::decode(h).ok())
                        .and_then(|d| String::from_utf8(d).ok())
                        .filter(|d| !d.is_empty())
                        .and_then(|d| view_definition(&d, Dialect::Mysql)),
                )
            };
            let list = self.relations.entry(name.clone()).or_default();
            if !list.iter().any(|(s, _)| *s == schema) {
                list.push((schema, entry));
            }
            found.insert(name);
        }
        for key in names {
            // A name found nowhere may be created later: asked again next time.
            if found.contains(&key.1) {
                self.asked.insert(key.clone());
            }
        }
    }

    /// Records that `names` could not be looked up.
    pub fn fail(&mut self, names: Vec<RelName>) {
        self.freshness.loaded();
        for n in names {
            self.failed.insert(n);
        }
    }

    /// Looks `names` up on the server connection (`buf`: what was read from `r` and not yet
    /// consumed, empty between commands). Whatever could not be looked up is failed.
    pub async fn resolve<R, W>(
        &mut self,
        r: &mut R,
        w: &mut W,
        buf: &mut BytesMut,
        deprecate_eof: bool,
        names: Vec<RelName>,
    ) -> Result<(), LookupError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match fetch(r, w, buf, deprecate_eof, &Self::query(&names)).await {
            Ok(rows) => {
                self.insert(&names, &rows);
                Ok(())
            }
            Err(e) => {
                self.fail(names);
                Err(e)
            }
        }
    }

    fn expand_at(&self, src: &Source, depth: usize) -> Option<Result<Vec<Source>, ()>> {
        if self.failed.contains(src.schema.as_deref(), &src.table) {
            return Some(Err(()));
        }
        let list = self.relations.get(&*src.table)?;
        let views: Vec<&Option<StatementLineage>> = list
            .iter()
            .filter(|(schema, _)| src.schema.as_deref().is_none_or(|s| s == schema))
            .filter_map(|(_, r)| match r {
                Relation::View(def) => Some(def),
                Relation::Table => None,
            })
            .collect();
        if views.is_empty() {
            return None;
        }
        if depth >= MAX_VIEW_DEPTH {
            return Some(Err(()));
        }
        let mut read = Vec::new();
        for def in views {
            let Some(def) = def else {
                return Some(Err(()));
            };
            for out in &def.outputs {
                match out {
                    Output::One {
                        name: Some(n),
                        lineage,
                    } => {
                        if src.column.as_deref().is_none_or(|c| c == &**n) {
                            read.extend(lineage.sources.iter().cloned());
                        }
                    }
                    // A column whose name is not known could be the one asked for.
                    _ => return Some(Err(())),
                }
            }
        }
        let mut bases = Vec::new();
        for s in read {
            match self.expand_at(&s, depth + 1) {
                None => bases.push(s),
                Some(Ok(b)) => bases.extend(b),
                Some(Err(())) => return Some(Err(())),
            }
        }
        Some(Ok(bases))
    }
}

impl Relations for Views {
    fn expand(&self, src: &Source) -> Option<Result<Vec<Source>, ()>> {
        self.expand_at(src, 0)
    }
}

/// Runs a query of the gateway's own and reads its text result set: four columns per row.
async fn fetch<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    deprecate_eof: bool,
    sql: &str,
) -> Result<Vec<[Option<Vec<u8>>; 4]>, LookupError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wire::send_own(w, com::QUERY, sql.as_bytes()).await?;
    let first = next(r, buf).await?;
    match first.first() {
        Some(0xff) => return Err(refused(&first)),
        Some(0x00) | None => return Err(LookupError::Malformed("no result set")),
        _ => {}
    }
    let (columns, _) = codec::read_lenenc(&first).ok_or(LookupError::Malformed("column count"))?;
    if columns != 4 {
        return Err(LookupError::Malformed("column count"));
    }
    for _ in 0..columns {
        next(r, buf).await?;
    }
    if !deprecate_eof {
        next(r, buf).await?;
    }
    let mut rows = Vec::new();
    loop {
        let p = next(r, buf).await?;
        match p.first() {
            Some(0xff) => return Err(refused(&p)),
            Some(&f) if codec::is_terminator(f, p.len(), deprecate_eof) => return Ok(rows),
            _ => {}
        }
        if rows.len() >= MAX_ROWS {
            return Err(LookupError::Malformed("too many catalog rows"));
        }
        let cells = codec::text_row_cells(&p).ok_or(LookupError::Malformed("row"))?;
        let [a, b, c, d] = cells[..] else {
            return Err(LookupError::Malformed("row"));
        };
        rows.push([a, b, c, d].map(|cell| cell.map(<[u8]>::to_vec)));
    }
}

fn refused(payload: &[u8]) -> LookupError {
    match codec::parse_err(payload) {
        Some(e) => LookupError::Refused {
            code: e.code,
            message: e.message,
        },
        None => LookupError::Malformed("error packet"),
    }
}

/// The next packet's payload, consumed from `buf`.
async fn next<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<Vec<u8>, LookupError> {
    wire::next_own::<_, LookupError>(r, buf, MAX_PACKET, "catalog answer")
        .await?
        .ok_or(LookupError::Closed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lineage(sql: &str) -> Lineage {
        crate::policy::sql::classify(sql, Dialect::Mysql, &crate::policy::sql::Limits::default())
            .lineage
    }

    fn row(schema: &str, name: &str, def: Option<&str>) -> [Option<Vec<u8>>; 4] {
        [
            Some(schema.into()),
            Some(name.into()),
            Some(if def.is_some() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            }),
            def.map(|d| hex::encode_upper(d).into_bytes()),
        ]
    }

    fn src(schema: Option<&str>, table: &str, column: Option<&str>) -> Source {
        Source {
            schema: schema.map(Into::into),
            table: table.into(),
            column: column.map(Into::into),
        }
    }

    #[test]
    fn views_are_traced_to_their_tables_through_views_on_views() {
        let mut v = Views::default();
        let names = v.unresolved(&lineage("SELECT email FROM v2 JOIN app.users u ON 1"));
        assert_eq!(
            names,
            [(None, "v2".into()), (Some("app".into()), "users".into())]
        );
        assert!(Views::query(&names).contains("CONVERT(X'7632' USING utf8mb4)"));
        v.insert(
            &names,
            &[
                row(
                    "app",
                    "v2",
                    Some("select `v`.`email` AS `email`,`v`.`s2` AS `s2` from `app`.`v`"),
                ),
                row("app", "users", None),
                row("performance_schema", "users", None),
            ],
        );
        assert!(
            v.unresolved(&lineage("SELECT * FROM v2, app.users"))
                .is_empty()
        );
        // v itself is not known yet: v2 reads it as a table.
        assert_eq!(
            v.expand(&src(None, "v2", Some("email"))),
            Some(Ok(vec![src(Some("app"), "v", Some("email"))]))
        );
        let more = v.unresolved(&lineage("SELECT * FROM app.v"));
        v.insert(
            &more,
            &[row(
                "app",
                "v",
                Some(
                    "select `app`.`users`.`email` AS `email`,concat(`app`.`users`.`ssn`,'x') \
                     AS `s2` from `app`.`users`",
                ),
            )],
        );
        assert_eq!(
            v.expand(&src(None, "v2", Some("s2"))),
            Some(Ok(vec![src(Some("app"), "users", Some("ssn"))]))
        );
        // A column the view does not have reads nothing; a whole row reads everything.
        assert_eq!(v.expand(&src(None, "v2", Some("id"))), Some(Ok(vec![])));
        assert_eq!(v.expand(&src(None, "v2", None)).unwrap().unwrap().len(), 2);
        // Tables are not expanded; in another schema, v2 is not this view.
        assert_eq!(v.expand(&src(Some("app"), "users", Some("email"))), None);
        assert_eq!(v.expand(&src(Some("other"), "v2", Some("email"))), None);
    }

    #[test]
    fn a_catalog_change_through_the_gateway_starts_every_cache_over() {
        let mut v = Views::default();
        v.refresh();
        let names = vec![(None, "hidden".to_string())];
        v.insert(&names, &[row("app", "hidden", Some(""))]);
        v.refresh();
        assert!(v.unresolved(&lineage("SELECT x FROM hidden")).is_empty());
        crate::protocol::freshness::catalog_changed();
        v.refresh();
        assert_eq!(
            v.unresolved(&lineage("SELECT x FROM hidden")),
            names,
            "looked up again"
        );
        assert_eq!(v.expand(&src(None, "hidden", Some("x"))), None);
    }

    #[test]
    fn untraceable_views_and_failed_lookups_fail_closed() {
        let mut v = Views::default();
        let names = vec![(None, "hidden".to_string()), (None, "gone".to_string())];
        // A view whose definition the gateway's account may not see; a name found nowhere.
        v.insert(&names, &[row("app", "hidden", Some(""))]);
        assert_eq!(v.expand(&src(None, "hidden", Some("x"))), Some(Err(())));
        assert_eq!(v.expand(&src(None, "gone", Some("x"))), None);
        assert_eq!(
            v.unresolved(&lineage("SELECT x FROM gone")),
            [(None, "gone".to_string())],
            "a name found nowhere is asked again"
        );
        v.fail(vec![(None, "gone".to_string())]);
        assert_eq!(v.expand(&src(None, "gone", Some("x"))), Some(Err(())));
        v.invalidate();
        assert_eq!(v.expand(&src(None, "hidden", Some("x"))), None);
    }
}
