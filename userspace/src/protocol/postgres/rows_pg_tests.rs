//! The masking engine against a real PostgreSQL: initdb into a temp dir, a server on a random
//! loopback port (stopped by PID), a table loaded through psql, and real RowDescription,
//! DataRow (text and binary) and COPY OUT bytes read with a minimal protocol client. Raw values
//! must not appear in any masked message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use super::catalog::CatalogCache;
use super::rows::*;
use super::types::oid;
use crate::config::policy::{Detector, MaskRuleSpec, MaskStyle};
use crate::mask::*;

const KEY: &[u8] = b"pg-test-masking-key-0123456789";

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stop our own postmaster by PID (SIGTERM: smart shutdown), then reap it.
        // SAFETY: kill(2) on the PID of a child this test spawned.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut found: Vec<PathBuf> = dirs
        .filter_map(|d| d.ok())
        .map(|d| d.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs a command as the `postgres` user when we are root (initdb refuses root).
fn as_pg(bin: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn start_server() -> Server {
    let initdb = pg_bin("initdb").expect("PostgreSQL server binaries (apt-get install postgresql)");
    let postgres = pg_bin("postgres").expect("postgres binary");
    let dir = std::env::temp_dir().join(format!(
        "airlock-mask-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(st.success());
    }
    let data = dir.join("data");
    let out = as_pg(&initdb)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = as_pg(&postgres)
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ])
        .arg("-k")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres");
    let server = Server { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect(port)
            && c.simple("SELECT 1").is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "postgres did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn psql(port: u16, sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One backend message: type byte and body.
type Msg = (u8, Vec<u8>);

struct Client {
    s: TcpStream,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Self> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i32(196_608);
        for kv in ["user", "postgres", "database", "postgres"] {
            b.put_slice(kv.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        let len = b.len() as i32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&b)?;
        let mut c = Self { s };
        loop {
            let (t, body) = c.read()?;
            match t {
                b'R' if body[..4] != [0, 0, 0, 0] => {
                    return Err(std::io::Error::other("auth required"));
                }
                b'E' => {
                    return Err(std::io::Error::other(
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                }
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    fn read(&mut self) -> std::io::Result<Msg> {
        let mut h = [0u8; 5];
        self.s.read_exact(&mut h)?;
        let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.s.read_exact(&mut body)?;
        Ok((h[0], body))
    }

    fn send(&mut self, t: u8, body: &[u8]) {
        let mut b = BytesMut::new();
        b.put_u8(t);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
        self.s.write_all(&b).expect("send");
    }

    /// All messages up to ReadyForQuery.
    fn until_ready(&mut self) -> std::io::Result<Vec<Msg>> {
        let mut msgs = Vec::new();
        loop {
            let m = self.read()?;
            if m.0 == b'Z' {
                return Ok(msgs);
            }
            msgs.push(m);
        }
    }

    fn simple(&mut self, sql: &str) -> std::io::Result<Vec<Msg>> {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(b'Q', &q);
        let msgs = self.until_ready()?;
        if let Some((_, e)) = msgs.iter().find(|m| m.0 == b'E') {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(e).into_owned(),
            ));
        }
        Ok(msgs)
    }

    /// Extended protocol with every result column in binary.
    fn binary(&mut self, sql: &str) -> Vec<Msg> {
        let mut p = vec![0u8];
        p.extend_from_slice(sql.as_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        self.send(b'P', &p);
        let mut b = BytesMut::new();
        b.put_slice(b"\0\0");
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(1);
        b.put_i16(1);
        self.send(b'B', &b);
        self.send(b'D', b"P\0");
        self.send(b'E', b"\0\0\0\0\0");
        self.send(b'S', b"");
        self.until_ready().expect("binary query")
    }
}

/// A RowDescription field: name, table OID, attnum, type OID, format.
struct Field {
    name: String,
    table: u32,
    attnum: i16,
    type_oid: u32,
    format: i16,
}

fn row_description(body: &[u8]) -> Vec<Field> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut fields = Vec::new();
    for _ in 0..n {
        let end = pos + body[pos..].iter().position(|&b| b == 0).expect("name");
        let name = String::from_utf8(body[pos..end].to_vec()).expect("utf8");
        pos = end + 1;
        let u32_at = |p: usize| u32::from_be_bytes(body[p..p + 4].try_into().expect("u32"));
        let table = u32_at(pos);
        let attnum = i16::from_be_bytes([body[pos + 4], body[pos + 5]]);
        let type_oid = u32_at(pos + 6);
        let format = i16::from_be_bytes([body[pos + 16], body[pos + 17]]);
        pos += 18;
        fields.push(Field {
            name,
            table,
            attnum,
            type_oid,
            format,
        });
    }
    fields
}

/// Text DataRow columns, as the catalog query returns them.
fn text_columns(body: &[u8]) -> Vec<Option<&[u8]>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let l = i32::from_be_bytes(body[pos..pos + 4].try_into().expect("len"));
        pos += 4;
        if l < 0 {
            cols.push(None);
        } else {
            cols.push(Some(&body[pos..pos + l as usize]));
            pos += l as usize;
        }
    }
    cols
}

/// Resolves RowDescription fields through the catalog, as the protocol layer will.
fn resolve(client: &mut Client, cache: &mut CatalogCache, fields: &[Field]) {
    let missing = cache.missing_tables(fields.iter().map(|f| (f.table, f.attnum)));
    if missing.is_empty() {
        return;
    }
    for (t, body) in client
        .simple(&CatalogCache::query(&missing))
        .expect("catalog query")
    {
        if t == b'D' {
            cache.insert_row(&text_columns(&body)).expect("catalog row");
        }
    }
    cache.mark_loaded(&missing);
}

fn spec(name: &str, columns: &[&str], detectors: &[Detector], style: MaskStyle) -> MaskRuleSpec {
    MaskRuleSpec {
        name: name.into(),
        columns: columns.iter().map(|s| s.to_string()).collect(),
        json_paths: Vec::new(),
        detectors: detectors.to_vec(),
        style,
        except_groups: vec![],
        computed: Default::default(),
        compared: Default::default(),
    }
}

const RAW: &[&str] = &[
    "alice@example.com",
    "bob.jones@example.org",
    "4111111111111111",
    "5555555555554444",
    "AKIAIOSFODNN7EXAMPLE",
    "123-45-6789",
    "10.20.30.40",
    "GB82 WEST 1234 5698 7654 32",
];

fn assert_no_raw(bytes: &[u8], what: &str) {
    for raw in RAW {
        assert!(
            memchr::memmem::find(bytes, raw.as_bytes()).is_none(),
            "{raw} leaked in {what}"
        );
    }
}

#[test]
fn masks_real_postgres_results_text_binary_and_copy() {
    let server = start_server();
    psql(
        server.port,
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card varchar(19), notes text, meta jsonb);
         INSERT INTO customers VALUES
          (1, 'Alice Smith', 'alice@example.com', '4111111111111111', 'key AKIAIOSFODNN7EXAMPLE, ssn 123-45-6789', '{\"ip\": \"10.20.30.40\"}'),
          (2, 'Bob Jones', 'bob.jones@example.org', '5555555555554444', E'pays to GB82 WEST 1234 5698 7654 32\\tthanks', NULL),
          (3, 'Carol', NULL, NULL, 'nothing to see', '{}');",
    );
    let masker = Masker::new(
        &[
            spec("email", &["public.customers.email"], &[], MaskStyle::Hash),
            spec("card", &["customers.card"], &[], MaskStyle::Partial),
            spec(
                "secrets",
                &[],
                &[
                    Detector::AwsKey,
                    Detector::Ssn,
                    Detector::Ip,
                    Detector::Iban,
                ],
                MaskStyle::Redact,
            ),
        ],
        KEY,
    )
    .expect("masker");
    let active: Vec<String> = ["email", "card", "secrets"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut client = Client::connect(server.port).expect("connect");
    let mut cache = CatalogCache::new();

    // Text results; `email AS contact` must still be masked: the rule follows the catalog.
    let msgs = client
        .simple("SELECT id, name, email AS contact, card, notes, meta FROM customers ORDER BY id")
        .expect("select");
    let fields = row_description(&msgs[0].1);
    resolve(&mut client, &mut cache, &fields);
    let cols: Vec<ColumnRef<'_>> = fields
        .iter()
        .map(|f| {
            cache
                .column_ref(
                    &f.name,
                    f.table,
                    f.attnum,
                    f.type_oid,
                    ValueFormat::from_code(f.format).expect("fmt"),
                )
                .expect("resolved")
        })
        .collect();
    assert_eq!(
        cols[2].column, "email",
        "alias resolved to the catalog name"
    );
    let mut plan = masker.plan(&cols, &active).expect("plan");
    let mut sent = BytesMut::new();
    let mut rows = Vec::new();
    for (t, body) in msgs.iter().filter(|m| m.0 == b'D') {
        let mut out = BytesMut::new();
        let r = mask_data_row(&mut plan, body, &mut out).expect("mask");
        let msg = if r.rewritten {
            out.to_vec()
        } else {
            [&[*t][..], &(body.len() as i32 + 4).to_be_bytes(), body].concat()
        };
        assert_eq!(
            i32::from_be_bytes(msg[1..5].try_into().expect("len")) as usize,
            msg.len() - 1
        );
        rows.push(
            text_columns(&msg[5..])
                .iter()
                .map(|c| c.map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect::<Vec<_>>(),
        );
        sent.put_slice(&msg);
    }
    assert_no_raw(&sent, "text DataRows");
    assert_eq!(rows[0][3].as_deref(), Some("************1111"));
    assert_eq!(
        rows[0][4].as_deref(),
        Some("key [REDACTED], ssn [REDACTED]")
    );
    assert_eq!(rows[0][5].as_deref(), Some("{\"ip\": \"[REDACTED]\"}"));
    assert_eq!(rows[1][4].as_deref(), Some("pays to [REDACTED]\tthanks"));
    assert_eq!(rows[2][2], None, "NULL stays NULL");
    assert_eq!(rows[2][4].as_deref(), Some("nothing to see"));
    let hashed = rows[0][2].clone().expect("hash");
    assert_eq!(hashed.len(), HASH_HEX_LEN);
    let counts = plan.take_counts();
    assert_eq!(counts.get(RuleId(0)), 2);
    assert_eq!(counts.get(RuleId(1)), 2);
    assert_eq!(counts.get(RuleId(2)), 3, "three values held secrets");

    // Binary results: text-like columns are masked in place, the hash equals the text one.
    let msgs = client.binary("SELECT name, email, card, notes FROM customers ORDER BY id");
    let desc = msgs.iter().find(|m| m.0 == b'T').expect("RowDescription");
    let fields = row_description(&desc.1);
    let cols: Vec<ColumnRef<'_>> = fields
        .iter()
        .map(|f| {
            cache
                .column_ref(&f.name, f.table, f.attnum, f.type_oid, ValueFormat::Binary)
                .expect("resolved")
        })
        .collect();
    let mut plan = masker.plan(&cols, &active).expect("plan");
    let mut sent = BytesMut::new();
    let mut first = None;
    for (_, body) in msgs.iter().filter(|m| m.0 == b'D') {
        let mut out = BytesMut::new();
        let r = plan.mask_data_row(body, &mut out).expect("mask");
        assert!(r.rewritten || body.windows(5).any(|w| w == b"Carol"));
        if r.rewritten {
            first.get_or_insert_with(|| text_columns(&out[5..])[1].map(<[u8]>::to_vec));
            sent.put_slice(&out);
        }
    }
    assert_no_raw(&sent, "binary DataRows");
    assert_eq!(
        first.flatten().as_deref(),
        Some(hashed.as_bytes()),
        "hash joins across formats"
    );

    // A binary int column under a column rule is refused, not leaked.
    let id_rule = Masker::new(
        &[spec("ids", &["customers.id"], &[], MaskStyle::Redact)],
        b"",
    )
    .expect("masker");
    let msgs = client.binary("SELECT id FROM customers");
    let fields = row_description(&msgs.iter().find(|m| m.0 == b'T').expect("T").1);
    let f = &fields[0];
    let col = cache
        .column_ref(&f.name, f.table, f.attnum, f.type_oid, ValueFormat::Binary)
        .expect("resolved");
    assert_eq!(
        id_rule.plan(&[col], &["ids".to_string()]).err(),
        Some(MaskError::BinaryUnsupported {
            column: "public.customers.id".into(),
            type_id: oid::INT4
        })
    );

    // COPY OUT text: the table's columns in order (the protocol layer knows them from the
    // catalog, since CopyOutResponse carries only formats).
    let msgs = client.simple("COPY customers TO STDOUT").expect("copy");
    assert!(msgs.iter().any(|m| m.0 == b'H'), "CopyOutResponse");
    let table_oid = fields[0].table;
    let copy_cols: Vec<ColumnRef<'_>> = (1..=6)
        .map(|attnum| {
            let o = cache.lookup(table_oid, attnum).expect("column");
            ColumnRef {
                schema: &o.schema,
                table: &o.table,
                column: &o.column,
                kind: ValueKind::Text,
                type_id: oid::TEXT,
                format: ValueFormat::Text,
            }
        })
        .collect();
    let mut plan = masker.plan(&copy_cols, &active).expect("plan");
    let mut sent = BytesMut::new();
    let mut lines = Vec::new();
    for (t, body) in msgs.iter().filter(|m| m.0 == b'd') {
        let mut out = BytesMut::new();
        let r = plan.mask_copy_data(body, &mut out).expect("copy mask");
        let msg = if r.rewritten {
            out.to_vec()
        } else {
            [&[*t][..], &(body.len() as i32 + 4).to_be_bytes(), body].concat()
        };
        assert_eq!(
            i32::from_be_bytes(msg[1..5].try_into().expect("len")) as usize,
            msg.len() - 1
        );
        lines.push(String::from_utf8(msg[5..].to_vec()).expect("utf8"));
        sent.put_slice(&msg);
    }
    assert_no_raw(&sent, "COPY data");
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].contains("pays to [REDACTED]\\tthanks"),
        "{}",
        lines[1]
    );
    assert!(
        lines[0].contains(&format!("\t{hashed}\t")),
        "COPY hash equals DataRow hash: {}",
        lines[0]
    );
    assert!(lines[2].contains("\t\\N\t\\N\t"), "{}", lines[2]);

    // COPY OUT in CSV: quoted JSON, NULLs as empty fields.
    let msgs = client
        .simple("COPY customers TO STDOUT WITH (FORMAT csv)")
        .expect("copy csv");
    let mut plan = masker.plan(&copy_cols, &active).expect("plan");
    let mut sent = BytesMut::new();
    let mut lines = Vec::new();
    for (t, body) in msgs.iter().filter(|m| m.0 == b'd') {
        let mut out = BytesMut::new();
        let r = plan
            .mask_copy_csv(body, CsvOptions::default(), &mut out)
            .expect("csv mask");
        let msg = if r.rewritten {
            out.to_vec()
        } else {
            [&[*t][..], &(body.len() as i32 + 4).to_be_bytes(), body].concat()
        };
        lines.push(String::from_utf8(msg[5..].to_vec()).expect("utf8"));
        sent.put_slice(&msg);
    }
    assert_no_raw(&sent, "CSV COPY data");
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with(&format!("1,Alice Smith,\"{hashed}\",\"************1111\",")),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(",\"{\"\"ip\"\": \"\"[REDACTED]\"\"}\"\n"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[2], "3,Carol,,,nothing to see,{}\n");
    drop(server);
}
