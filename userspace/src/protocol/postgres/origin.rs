//! Where result columns come from, for masking: RowDescription parsing and the gateway's own
//! catalog connection.
//!
//! RowDescription names each field's table OID and attribute number; column rules match on
//! `schema.table.column`, so the gateway looks the OIDs up in `pg_catalog` and caches them per
//! session ([`CatalogCache`]). The lookup runs on a **side connection** the gateway opens with
//! the target's own credentials (lazily, the first time a masked result names a table not yet
//! cached, then kept for the session), never inline on the client's connection: the lookup is
//! needed exactly when the client's connection is busy (a RowDescription has arrived and the
//! rows are on their way), injecting a query there would mean holding the whole result, and a
//! query of ours inside the client's transaction could be cancelled, time out, or fail with
//! the transaction and change what the client sees. The side connection sees committed
//! catalog state only: a table created in the client's open transaction is not found there,
//! and masking then refuses the result (fail closed) rather than guess.
//!
//! COPY OUT carries no RowDescription; its columns are resolved by describing the equivalent
//! `SELECT` on the side connection ([`copy_spec`]).

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend_auth;
use super::catalog::CatalogCache;
use super::codec::{self, HEADER_LEN, Reader};
use super::rows::CsvOptions;
use super::tls::MaybeTls;
use crate::config::PostgresTarget;

/// One RowDescription field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table: u32,
    pub attnum: i16,
    pub type_oid: u32,
    /// Offset of the type OID in the RowDescription body (to announce a masked column as text).
    pub type_at: usize,
    pub format: i16,
}

/// Parses a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, codec::FrameError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    let mut fields = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let name = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
        let table = r.i32()? as u32;
        let attnum = r.i16()?;
        let type_at = body.len() - r.rest().len();
        let type_oid = r.i32()? as u32;
        let _typlen = r.i16()?;
        let _typmod = r.i32()?;
        let format = r.i16()?;
        fields.push(Field {
            name,
            table,
            attnum,
            type_oid,
            type_at,
            format,
        });
    }
    Ok(fields)
}

/// How a `COPY … TO STDOUT` writes its rows, and the `SELECT` that has its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// A query returning the same columns, to describe on the side connection.
    pub select: String,
    /// `Some` for CSV.
    pub csv: Option<CsvOptions>,
    /// The first CopyData is a header line.
    pub header: bool,
    pub binary: bool,
}

/// The `index`-th `COPY … TO STDOUT` statement of `text` (a Query may hold several).
pub fn copy_spec(text: &str, index: usize) -> Result<CopySpec, String> {
    let stmts = sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, text)
        .map_err(|e| format!("cannot parse the COPY statement: {e}"))?;
    let copy = stmts
        .into_iter()
        .filter(|s| matches!(s, Statement::Copy { to: true, .. }))
        .nth(index)
        .ok_or_else(|| "no COPY TO statement for this COPY OUT".to_string())?;
    let Statement::Copy {
        source,
        options,
        legacy_options,
        ..
    } = copy
    else {
        return Err("not a COPY statement".into());
    };
    let select = match source {
        CopySource::Query(q) => q.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let cols = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("SELECT {cols} FROM ONLY {table_name}")
        }
    };
    let mut spec = CopySpec {
        select,
        csv: None,
        header: false,
        binary: false,
    };
    let mut csv = CsvOptions::default();
    let mut escape_set = false;
    let mut delimiter_set = false;
    let mut is_csv = false;
    let ascii = |c: char| u8::try_from(c).map_err(|_| format!("COPY option {c:?} is not ASCII"));
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => is_csv = true,
                "binary" => spec.binary = true,
                "text" => {}
                other => return Err(format!("unknown COPY format {other}")),
            },
            CopyOption::Header(h) => spec.header = h,
            CopyOption::Delimiter(c) => {
                csv.delimiter = ascii(c)?;
                delimiter_set = true;
            }
            CopyOption::Quote(c) => csv.quote = ascii(c)?,
            CopyOption::Escape(c) => {
                csv.escape = ascii(c)?;
                escape_set = true;
            }
            // In SJIS, BIG5, GBK and the like a character's second byte can be `\` or `|`,
            // which the server skips over as part of the character and the masker, reading
            // bytes, would take for an escape or a quote: fields would not line up.
            CopyOption::Encoding(e) => {
                let name = e.to_ascii_uppercase().replace(['-', '_'], "");
                if !matches!(name.as_str(), "UTF8" | "UNICODE" | "SQLASCII") {
                    return Err(format!(
                        "COPY ENCODING '{e}': only UTF8 output is read by the masker"
                    ));
                }
            }
            _ => {}
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Binary => spec.binary = true,
            CopyLegacyOption::Delimiter(c) => {
                csv.delimiter = ascii(c)?;
                delimiter_set = true;
            }
            CopyLegacyOption::Header => spec.header = true,
            CopyLegacyOption::Csv(opts) => {
                is_csv = true;
                for o in opts {
                    match o {
                        CopyLegacyCsvOption::Header => spec.header = true,
                        CopyLegacyCsvOption::Quote(c) => csv.quote = ascii(c)?,
                        CopyLegacyCsvOption::Escape(c) => {
                            csv.escape = ascii(c)?;
                            escape_set = true;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if is_csv {
        if !escape_set {
            csv.escape = csv.quote;
        }
        spec.csv = Some(csv);
    } else if delimiter_set && csv.delimiter != b'\t' {
        // Text format with a custom delimiter: the masker only splits on tabs.
        return Err("text COPY with a custom delimiter cannot be masked; use CSV".into());
    }
    Ok(spec)
}

/// Errors of the side connection, as text for the client's ErrorResponse.
pub type LookupError = String;

/// The gateway's own catalog connection for one session.
#[derive(Debug)]
pub struct SideConn {
    pg: PostgresTarget,
    upstream: SocketAddr,
    database: String,
    conn: Option<(MaybeTls, BytesMut)>,
}

impl SideConn {
    /// Nothing is opened until the first lookup.
    pub fn new(pg: PostgresTarget, upstream: SocketAddr, database: String) -> Self {
        Self {
            pg,
            upstream,
            database,
            conn: None,
        }
    }

    async fn conn(&mut self) -> Result<&mut (MaybeTls, BytesMut), LookupError> {
        if self.conn.is_none() {
            let params = [
                ("user", self.pg.user.as_str()),
                ("database", self.database.as_str()),
                ("application_name", "airlock-catalog"),
            ];
            let b = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                backend_auth::connect(&self.pg, self.upstream, &params),
            )
            .await
            .map_err(|_| "catalog connection timed out".to_string())?
            .map_err(|e| format!("catalog connection: {e}"))?;
            tracing::debug!(upstream = %self.upstream, "catalog side connection opened");
            self.conn = Some((b.stream, b.buffer));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "catalog connection".to_string())
    }

    /// Sends `out`, then collects messages up to ReadyForQuery. The first ErrorResponse is
    /// returned as `Err`. On I/O failure the connection is dropped (reopened next time).
    async fn exchange(&mut self, out: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, LookupError> {
        let r = self.exchange_inner(out).await;
        if matches!(r, Err(Fail::Io(_))) {
            self.conn = None;
        }
        match r {
            Ok(m) => Ok(m),
            Err(Fail::Io(e)) => Err(format!("catalog connection: {e}")),
            Err(Fail::Server(e)) => Err(format!("catalog lookup failed: {e}")),
        }
    }

    async fn exchange_inner(&mut self, out: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, Fail> {
        let (stream, buf) = self.conn().await.map_err(Fail::Io)?;
        stream
            .write_all(out)
            .await
            .map_err(|e| Fail::Io(e.to_string()))?;
        stream.flush().await.map_err(|e| Fail::Io(e.to_string()))?;
        let mut msgs = Vec::new();
        let mut error = None;
        loop {
            while let Some(h) = codec::peek_header(buf).map_err(|e| Fail::Io(e.to_string()))? {
                if buf.len() < h.total {
                    break;
                }
                let body = buf[HEADER_LEN..h.total].to_vec();
                buf.advance(h.total);
                match h.tag {
                    b'Z' => {
                        return match error {
                            Some(e) => Err(Fail::Server(e)),
                            None => Ok(msgs),
                        };
                    }
                    b'E' if error.is_none() => {
                        error = Some(
                            codec::parse_error(&body)
                                .map(|e| e.message.to_string())
                                .unwrap_or_else(|_| "malformed error".into()),
                        );
                    }
                    _ => msgs.push((h.tag, body)),
                }
            }
            if stream
                .read_buf(buf)
                .await
                .map_err(|e| Fail::Io(e.to_string()))?
                == 0
            {
                return Err(Fail::Io("the server closed the catalog connection".into()));
            }
        }
    }

    /// Loads the names of every column of `tables` into `cache`, and for views their
    /// definitions (through views on views, at most [`MAX_VIEW_DEPTH`](crate::model::lineage::MAX_VIEW_DEPTH) deep). Tables the catalog does not know stay unloaded, so
    /// resolving their columns fails (closed).
    pub async fn lookup(
        &mut self,
        cache: &mut CatalogCache,
        tables: &[u32],
    ) -> Result<(), LookupError> {
        let mut tables = tables.to_vec();
        for _ in 0..=crate::model::lineage::MAX_VIEW_DEPTH {
            if !tables.is_empty() {
                for row in self.rows(&CatalogCache::query(&tables)).await? {
                    let row = data_row_values(&row).map_err(|e| e.to_string())?;
                    cache.insert_row(&row).map_err(|e| e.to_string())?;
                }
            }
            // A view's definition traces its columns, through the relations it names.
            let undefined = cache.views_without_defs();
            if undefined.is_empty() {
                break;
            }
            for row in self.rows(&CatalogCache::defs_query(&undefined)).await? {
                let row = data_row_values(&row).map_err(|e| e.to_string())?;
                cache.insert_def_row(&row).map_err(|e| e.to_string())?;
            }
            cache.mark_defs_loaded(&undefined);
            let names = cache.missing_def_names();
            if !names.is_empty() {
                self.resolve_only(cache, &names).await?;
            }
            let named: Vec<(u32, i16)> = names
                .iter()
                .flat_map(|(s, n)| cache.name_oids(s.as_deref(), n).iter().map(|&o| (o, 1)))
                .collect();
            tables = cache.missing_tables(named);
        }
        Ok(())
    }

    /// Resolves names to OIDs without loading the relations.
    async fn resolve_only(
        &mut self,
        cache: &mut CatalogCache,
        names: &[(Option<String>, String)],
    ) -> Result<(), LookupError> {
        let rows = self.rows(&CatalogCache::names_query(names)).await?;
        let row = rows
            .first()
            .map(|r| data_row_values(r))
            .transpose()
            .map_err(|e| e.to_string())?;
        cache.insert_names(names, row.as_deref().unwrap_or(&[]));
        Ok(())
    }

    /// Resolves relation names (as a statement writes them) to OIDs and loads those
    /// relations (see [`SideConn::lookup`]).
    pub async fn resolve(
        &mut self,
        cache: &mut CatalogCache,
        names: &[(Option<String>, String)],
    ) -> Result<(), LookupError> {
        if names.is_empty() {
            return Ok(());
        }
        self.resolve_only(cache, names).await?;
        let oids: Vec<(u32, i16)> = names
            .iter()
            .flat_map(|(s, n)| cache.name_oids(s.as_deref(), n).iter().map(|&o| (o, 1)))
            .collect();
        let missing = cache.missing_tables(oids);
        self.lookup(cache, &missing).await
    }

    /// The DataRow bodies of a simple query.
    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        let mut out = BytesMut::new();
        codec::put_message(&mut out, b'Q', |o| {
            codec::put_cstr(o, sql.as_bytes());
        });
        Ok(self
            .exchange(&out)
            .await?
            .into_iter()
            .filter(|(tag, _)| *tag == b'D')
            .map(|(_, body)| body)
            .collect())
    }

    /// The RowDescription of `sql` (Parse + Describe on the unnamed statement).
    pub async fn describe(&mut self, sql: &str) -> Result<Vec<Field>, LookupError> {
        let mut out = BytesMut::new();
        codec::put_message(&mut out, b'P', |o| {
            codec::put_cstr(o, b"");
            codec::put_cstr(o, sql.as_bytes());
            o.put_i16(0);
        });
        codec::put_message(&mut out, b'D', |o| {
            o.put_u8(b'S');
            codec::put_cstr(o, b"");
        });
        codec::put_message(&mut out, b'S', |_| {});
        let msgs = self.exchange(&out).await?;
        match msgs.iter().find(|(t, _)| *t == b'T' || *t == b'n') {
            Some((b'T', body)) => parse_row_description(body).map_err(|e| e.to_string()),
            _ => Err("the COPY query returns no columns".into()),
        }
    }
}

enum Fail {
    Io(String),
    Server(String),
}

/// The values of a DataRow body (`None` for NULL).
pub fn data_row_values(body: &[u8]) -> Result<Vec<Option<&[u8]>>, codec::FrameError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let mut v = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            v.push(None);
        } else {
            v.push(Some(r.bytes(len as usize)?));
        }
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copy_specs() {
        let s = copy_spec("COPY customers TO STDOUT", 0).unwrap();
        assert_eq!(s.select, "SELECT * FROM ONLY customers");
        assert!(s.csv.is_none() && !s.header && !s.binary);
        let s = copy_spec(
            "select 1; COPY public.customers (email, card) TO STDOUT WITH (FORMAT csv, HEADER)",
            0,
        )
        .unwrap();
        assert_eq!(s.select, "SELECT email, card FROM ONLY public.customers");
        assert_eq!(s.csv, Some(CsvOptions::default()));
        assert!(s.header);
        let s = copy_spec(
            "COPY (SELECT email FROM customers) TO STDOUT (FORMAT binary)",
            0,
        )
        .unwrap();
        assert!(s.binary);
        assert_eq!(s.select, "SELECT email FROM customers");
        let s = copy_spec("COPY customers TO STDOUT WITH CSV HEADER QUOTE '|'", 0).unwrap();
        assert_eq!(s.csv.unwrap().quote, b'|');
        assert_eq!(s.csv.unwrap().escape, b'|');
        assert!(copy_spec("COPY customers TO STDOUT (DELIMITER '|')", 0).is_err());
        // A multibyte encoding whose second bytes can be `\`: fields would not line up.
        assert!(
            copy_spec(
                "COPY customers TO STDOUT (FORMAT csv, ESCAPE '\\', ENCODING 'SJIS')",
                0
            )
            .is_err()
        );
        assert!(copy_spec("COPY customers TO STDOUT (FORMAT csv, ENCODING 'UTF8')", 0).is_ok());
        assert!(copy_spec("SELECT 1", 0).is_err());
    }

    #[test]
    fn row_description_fields() {
        let mut b = BytesMut::new();
        b.put_i16(1);
        codec::put_cstr(&mut b, b"email");
        b.put_i32(16384);
        b.put_i16(2);
        b.put_i32(25);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(1);
        let f = parse_row_description(&b).unwrap();
        assert_eq!(f[0].name, "email");
        assert_eq!(
            (f[0].table, f[0].attnum, f[0].type_oid, f[0].format),
            (16384, 2, 25, 1)
        );
        assert_eq!(&b[f[0].type_at..f[0].type_at + 4], &25i32.to_be_bytes());
    }
}
