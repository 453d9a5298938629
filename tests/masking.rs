//! Masking and session recording through a real PostgreSQL, with real clients (psql, psycopg in
//! text and binary formats, COPY OUT), the real policy engine and a real audit log: raw values
//! never reach the client or the log, a group in `except_groups` sees them, the log verifies,
//! and a proxy killed with SIGKILL mid-session leaves a log that still verifies.

#[path = "support/postgres.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Every sensitive value of the data set, by the detector or column rule that must hide it.
const RAW: &[(&str, &str)] = &[
    ("email column (hash)", "alice@example.com"),
    ("email column (hash)", "bob.jones@example.org"),
    ("card column (partial)", "4111111111111111"),
    ("card column (partial)", "5555555555554444"),
    ("ssn column (null)", "123-45-6789"),
    ("ssn column (null)", "078-05-1120"),
    ("phone detector (partial)", "+1 415 555 2671"),
    ("phone detector (partial)", "(555) 123-4567"),
    ("iban detector (redact)", "GB82WEST12345698765432"),
    ("iban detector (redact)", "DE89370400440532013000"),
    ("ip detector (null)", "10.20.30.40"),
    ("ip detector (null)", "192.168.1.10"),
    ("aws key detector (redact)", "AKIAIOSFODNN7EXAMPLE"),
    (
        "aws secret detector (redact)",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "cloud key detector (redact)",
        "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",
    ),
    ("jwt detector (redact)", JWT),
    ("private key detector (redact)", "MIIEpAIBAAKCAQEA7bq"),
    ("high entropy detector (redact)", "Zx9Qk2LmP4vR8sT1wY6uB3nD"),
    (
        "high entropy detector (redact)",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    ),
    ("email detector (partial)", "carol.white@example.net"),
    ("card detector (partial)", "378282246310005"),
    ("ssn detector (partial)", "219-09-9999"),
];

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

fn setup_data(pg: &PgServer) {
    let sql = format!(
        "CREATE TABLE customers (
           id int PRIMARY KEY, name text, email text,
           card varchar(19) CONSTRAINT card_len CHECK (length(card) >= 12), ssn text,
           phone text, iban text, last_ip inet, api_key text, token text, private_key text,
           notes text, signed_up date);
         INSERT INTO customers VALUES
          (1, 'Alice Smith', 'alice@example.com', '4111111111111111', '123-45-6789',
           'call +1 415 555 2671 today', 'pays from GB82WEST12345698765432', '10.20.30.40',
           'AKIAIOSFODNN7EXAMPLE', 'Bearer {JWT}',
           E'-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA7bq\\nXyZ0123==\\n-----END RSA PRIVATE KEY-----',
           'secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and token Zx9Qk2LmP4vR8sT1wY6uB3nD end',
           '2024-01-15'),
          (2, 'Bob Jones', 'bob.jones@example.org', '5555555555554444', '078-05-1120',
           '(555) 123-4567', 'DE89370400440532013000', '192.168.1.10',
           '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', 'sk_live_4eC39HqLyjWDarjtT1zdp7dc', NULL,
           E'backup contact carol.white@example.net, card 378282246310005, ssn 219-09-9999',
           '2023-06-30'),
          (3, 'Dan', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'nothing to see', NULL);
         GRANT SELECT ON customers TO {gw};
         CREATE TABLE tickets (id int PRIMARY KEY, note text);
         GRANT SELECT, INSERT, UPDATE, DELETE ON tickets TO {gw};
         GRANT UPDATE (card) ON customers TO {gw};
         CREATE FUNCTION leak(int) RETURNS text LANGUAGE sql STABLE
           AS 'SELECT email FROM customers WHERE id = $1';
         CREATE VIEW customer_contacts AS SELECT id, email AS contact FROM customers;
         CREATE VIEW contact_ids AS SELECT id FROM customer_contacts WHERE contact IS NOT NULL;
         CREATE VIEW contact_upper AS SELECT id, upper(email) AS u FROM customers;
         CREATE VIEW leaky AS SELECT id, leak(id) AS e FROM customers;
         CREATE SCHEMA \"Crm\";
         CREATE VIEW \"Crm\".\"People\" AS SELECT id, email AS \"Mail\" FROM public.customers;
         GRANT USAGE ON SCHEMA \"Crm\" TO {gw};
         GRANT SELECT ON customer_contacts, contact_ids, contact_upper, leaky, \"Crm\".\"People\"
           TO {gw};",
        gw = GATEWAY_USER.0
    );
    pg.admin_db(DATABASE, &sql);
}

/// One PostgreSQL with the data set for the tests of this file that run at the same time
/// (stopped when the last of them drops it).
fn shared_pg() -> std::sync::Arc<PgServer> {
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = Arc::new(PgServer::start(None));
    setup_data(&pg);
    *slot = Arc::downgrade(&pg);
    pg
}

fn config(state: &Path, upstream_port: u16) -> String {
    config_with(state, upstream_port, "    head_interval: 100ms\n")
}

/// The test configuration with `audit` (the `daemon.audit` section's body, 4-space indent).
fn config_with(state: &Path, upstream_port: u16, audit: &str) -> String {
    config_opts(state, upstream_port, audit, Lineage::default())
}

/// How the column rules treat masked columns beyond plain references, and whether agents
/// may write.
#[derive(Default, Clone, Copy)]
struct Lineage {
    /// `computed: redact` on every column rule (default: refuse).
    redact: bool,
    /// `compared: refuse` on the ssn rule.
    refuse_compared_ssn: bool,
    /// Agents may write (reviewed nowhere).
    writes: bool,
}

fn config_opts(state: &Path, upstream_port: u16, audit: &str, l: Lineage) -> String {
    let computed = if l.redact {
        "    computed: redact\n"
    } else {
        ""
    };
    let compared = if l.refuse_compared_ssn {
        "    compared: refuse\n"
    } else {
        ""
    };
    let write_rule = if l.writes {
        "  - name: agents-write
    targets: [demo-db]
    groups: [agents]
    classes: [read, session, transaction, write]
    action: allow
    mask: [email-hash, card-partial, ssn-null, ip-null, secrets-redact, pii-partial, date-redact]
"
    } else {
        ""
    };
    format!(
        r#"daemon:
  state_dir: {state}
  audit:
{audit}
targets:
  - name: demo-db
    protocol: postgres
    addresses: ["198.18.0.2/32"]
    ports: [{upstream_port}]
    postgres:
{section}
rules:
  - name: agents-read
    targets: [demo-db]
    groups: [agents]
    classes: [read, session, transaction]
    action: allow
    mask: [email-hash, card-partial, ssn-null, ip-null, secrets-redact, pii-partial, date-redact]
{write_rule}  - name: agents-deny-rest
    targets: [demo-db]
    groups: [agents]
    classes: [write, ddl, dcl, admin, unknown]
    action: deny
    reason: "agents only read"
default: deny
masking:
  - name: email-hash
    columns: ["*.customers.email"]
    style: hash
    except_groups: [dba]
{computed}  - name: card-partial
    columns: ["public.customers.card"]
    style: partial
    except_groups: [dba]
{computed}  - name: ssn-null
    columns: ["*.*.ssn"]
    style: "null"
    except_groups: [dba]
{computed}{compared}  - name: date-redact
    columns: ["customers.signed_up"]
    style: redact
    except_groups: [dba]
{computed}
  - name: ip-null
    detectors: [ip]
    style: "null"
    except_groups: [dba]
  - name: secrets-redact
    detectors: [aws_key, cloud_key, jwt, private_key, high_entropy, iban]
    style: redact
    except_groups: [dba]
  - name: pii-partial
    detectors: [email, card, ssn, phone]
    style: partial
    except_groups: [dba]
"#,
        state = state.display(),
        section = gateway_section(GATEWAY_USER.0, GATEWAY_USER.1)
    )
}

fn assert_no_raw(what: &str, text: &str) {
    for (rule, raw) in RAW {
        assert!(
            !text.contains(raw),
            "{rule}: {raw:?} leaked in {what}:\n{text}"
        );
    }
}

/// Every line of every audit segment.
fn audit_text(dir: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).expect("audit dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            all.push_str(&std::fs::read_to_string(&p).expect("segment"));
        }
    }
    all
}

fn verify(dir: &Path, key: &Path) -> airlock::audit::Report {
    let public = airlock::audit::load_public_key(key).expect("public key");
    airlock::audit::verify(dir, &public).expect("verify runs")
}

fn psql_ok(dsn: &str, sql: &str) -> String {
    let (ok, out, err) = psql(dsn, &["-c", sql], None);
    assert!(ok, "psql {sql}: {err}");
    out
}

const PY_ROWS: &str = r#"
import os, psycopg
COLS = "id, name, email, card, ssn, phone, iban, last_ip, api_key, token, private_key, notes"
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute(f"SELECT {COLS} FROM customers WHERE id < %s ORDER BY id", (10,))
            for row in cur.fetchall():
                print(("B" if binary else "T"), repr(row))
        # Prepared on the server: later executions reuse it (Bind/Execute only).
        for _ in range(3):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT email, notes FROM customers WHERE id = %s", (1,), prepare=True)
                print(("PB" if binary else "PT"), repr(cur.fetchone()))
    with conn.cursor() as cur:
        cur.execute("SELECT signed_up FROM customers WHERE id = %s", (1,))
        print("DATE", repr(cur.fetchone()))
    with conn.cursor(binary=True) as cur:
        try:
            cur.execute("SELECT signed_up FROM customers WHERE id = %s", (1,))
            print("NOERROR", repr(cur.fetchall()))
        except psycopg.Error as e:
            print("BINERR", str(e).splitlines()[0])
    with conn.cursor() as cur:
        cur.execute("SELECT card FROM customers WHERE id = %s", (2,))
        print("AFTER", repr(cur.fetchone()))
    # Pipeline mode: several Parse/Bind/Describe/Execute before one Sync.
    with conn.pipeline():
        curs = []
        for i in (1, 2, 3):
            c = conn.cursor(binary=(i == 2))
            c.execute("SELECT id, email, card, notes FROM customers WHERE id = %s", (i,))
            curs.append(c)
        for c in curs:
            print("PIPE", repr(c.fetchall()))
"#;

#[test]
fn masking_and_audit_through_psql_psycopg_and_copy() {
    let pg = shared_pg();
    let state = TempDir::new("airlock-mask-state");
    let proxy = GatewayProxy::start(pg.addr(), &config(state.path(), pg.port));
    let agent = dsn_as(proxy.addr, "agents");
    let dba = dsn_as(proxy.addr, "agents+dba");

    // psql, simple protocol, text.
    let q = "SELECT * FROM customers ORDER BY id";
    let out = psql_ok(&agent, q);
    assert_no_raw("psql output", &out);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0][1], "Alice Smith", "untouched column");
    assert_eq!(rows[0][3], "************1111", "card partial");
    assert_eq!(rows[0][4], "", "ssn nulled");
    assert_eq!(rows[0][7], "", "ip nulled (inet)");
    assert_eq!(
        rows[0][12], "[REDACTED]",
        "date announced as text and redacted"
    );
    let hash = rows[0][2];
    assert_eq!(
        hash.len(),
        airlock::mask::HASH_HEX_LEN,
        "email hashed: {hash}"
    );
    assert!(rows[0][11].contains("[REDACTED]"), "{}", rows[0][11]);
    assert!(rows[1][11].contains("backup contact"), "{}", rows[1][11]);
    assert_eq!(rows[2][11], "nothing to see");
    // Same input, same hash: masked values still join.
    let again = psql_ok(
        &agent,
        "SELECT email AS contact FROM customers WHERE id = 1",
    );
    assert_eq!(
        again.trim(),
        hash,
        "alias resolved through the catalog; hash stable"
    );

    // A group in except_groups sees raw values.
    let raw = psql_ok(&dba, q);
    assert!(raw.contains("alice@example.com") && raw.contains("4111111111111111"));
    assert!(raw.contains("123-45-6789") && raw.contains(JWT));

    // Multi-statement Query: each result set masked.
    let out = psql_ok(
        &agent,
        "SELECT card FROM customers WHERE id = 2; SELECT api_key, 'x' AS lit FROM customers WHERE id = 1",
    );
    assert_no_raw("multi-statement", &out);
    assert!(out.contains("************4444"), "{out}");

    // COPY OUT: text, CSV with header; binary refused.
    let out = psql_ok(&agent, "COPY customers TO STDOUT");
    assert_no_raw("COPY text", &out);
    assert!(
        out.contains("************1111") && out.contains(hash),
        "{out}"
    );
    let out = psql_ok(
        &agent,
        "COPY (SELECT id, email, notes FROM customers ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
    );
    assert_no_raw("COPY csv", &out);
    assert!(out.starts_with("id,email,notes"), "{out}");
    assert!(
        out.contains(hash),
        "hash equal across DataRow and COPY: {out}"
    );
    let (ok, out, err) = psql(
        &agent,
        &["-c", "COPY customers TO STDOUT WITH (FORMAT binary)"],
        None,
    );
    assert!(!ok && err.contains("binary COPY cannot be masked"), "{err}");
    assert_no_raw("binary COPY", &out);
    // The session is still usable after a refused result, and unmasked commands pass.
    let out = psql_ok(&agent, "SELECT count(*) FROM customers");
    assert_eq!(out.trim(), "3");

    // psycopg: extended protocol, text and binary results, prepared statements.
    let (ok, out, err) = python(&agent, PY_ROWS);
    assert!(ok, "psycopg: {err}");
    assert_no_raw("psycopg output", &out);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("T ")).count(),
        3,
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("B ")).count(),
        3,
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PB ")).count(),
        3,
        "{out}"
    );
    for line in out
        .lines()
        .filter(|l| l.starts_with("T (1,") || l.starts_with("B (1,"))
    {
        assert!(line.contains(hash), "same hash in text and binary: {line}");
        assert!(line.contains("************1111"), "{line}");
        assert!(line.contains("None"), "ssn and ip nulled: {line}");
    }
    assert!(
        out.contains("DATE ('[REDACTED]',)"),
        "date announced as text: {out}"
    );
    assert!(
        out.contains("BINERR airlock: masking: column public.customers.signed_up"),
        "binary date under a column rule is refused: {out}"
    );
    assert!(!out.contains("NOERROR"), "{out}");
    assert!(out.contains("AFTER ('************4444',)"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PIPE [(")).count(),
        3,
        "{out}"
    );
    assert!(
        out.contains(&format!("PIPE [(1, '{hash}', '************1111'")),
        "{out}"
    );
    let (ok, out, err) = python(&dba, PY_ROWS);
    assert!(ok, "psycopg dba: {err}");
    assert!(
        out.contains("alice@example.com") && out.contains("10.20.30.40"),
        "{out}"
    );

    // Denied commands are recorded too, and refused.
    let (ok, _, err) = psql(&agent, &["-c", "DELETE FROM customers"], None);
    assert!(!ok && err.contains("agents-deny-rest"), "{err}");

    // The audit log: start, command, result, masking and end records; counts, never values.
    proxy.flush_audit();
    let dir = state.path().join("audit");
    let log = audit_text(&dir);
    assert_no_raw("the audit log", &log);
    for needle in [
        "\"session_start\"",
        "\"command\"",
        "\"result\"",
        "\"masking\"",
        "\"session_end\"",
        "SELECT * FROM customers ORDER BY id",
        "email-hash",
        "secrets-redact",
        "agents-deny-rest",
        "DELETE FROM customers",
        "test:agents",
    ] {
        assert!(
            log.contains(needle),
            "{needle} missing in the audit log:\n{log}"
        );
    }
    let report = verify(&dir, &state.path().join("audit.key.pub"));
    assert!(report.ok, "verify: {:?}", report.issues);
    assert!(report.sessions >= 8, "{report:?}");

    // Metrics.
    let metrics = proxy.ctx.metrics.encode();
    assert!(
        metrics.contains("airlock_masked_values_total{rule=\"email-hash\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "airlock_commands_total{target=\"demo-db\",protocol=\"postgres\",action=\"deny\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("airlock_policy_eval_seconds_count"),
        "{metrics}"
    );
    proxy.close_audit();
}

/// Runs the proxy in a child process (this test binary, re-executed) so that it can be killed
/// with SIGKILL mid-session. Without the child's environment it is the parent's test run,
/// and there is nothing to do.
#[test]
fn child_proxy() {
    let (Ok(cfg), Ok(port)) = (
        std::env::var("AIRLOCK_CHILD_CONFIG"),
        std::env::var("AIRLOCK_CHILD_UPSTREAM"),
    ) else {
        return;
    };
    let cfg = std::fs::read_to_string(cfg).expect("config");
    let upstream = format!("127.0.0.1:{port}").parse().expect("addr");
    let proxy = GatewayProxy::start(upstream, &cfg);
    println!("LISTENING {}", proxy.addr.port());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn proxy_killed_mid_session_leaves_a_verifiable_log() {
    use std::io::{BufRead, BufReader, Write};
    let pg = shared_pg();
    let state = TempDir::new("airlock-crash-state");
    let cfg_path: PathBuf = state.path().join("airlock.yaml");
    std::fs::write(&cfg_path, config(state.path(), pg.port)).expect("config");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_proxy", "--nocapture"])
        .env("AIRLOCK_CHILD_CONFIG", &cfg_path)
        .env("AIRLOCK_CHILD_UPSTREAM", pg.port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child proxy");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port: u16 = loop {
        let line = lines.next().expect("child output").expect("line");
        if let Some(p) = line.strip_prefix("LISTENING ") {
            break p.trim().parse().expect("port");
        }
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // A psql session that is mid-way when the proxy dies: a few answered commands, then a
    // long one.
    let mut psql_child = Command::new("psql")
        .arg(dsn_as(addr, "agents"))
        .args(["-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = psql_child.stdin.take().expect("stdin");
    writeln!(stdin, "SELECT email FROM customers WHERE id = 1;").expect("write");
    writeln!(stdin, "SELECT card FROM customers WHERE id = 2;").expect("write");
    writeln!(stdin, "SELECT pg_sleep(30);").expect("write");
    stdin.flush().expect("flush");
    let dir = state.path().join("audit");
    // Wait until the sleeping command is recorded (acknowledged before it reached the server).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !audit_text_if_any(&dir).contains("pg_sleep") {
        assert!(Instant::now() < deadline, "command never recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = audit_text(&dir);
    // SIGKILL, by PID, of our own child.
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    drop(stdin);
    let _ = psql_child.wait();

    let key = state.path().join("audit.key.pub");
    let report = verify(&dir, &key);
    assert!(report.ok, "verify after kill -9: {:?}", report.issues);
    assert!(report.open_sessions >= 1, "{report:?}");
    // Nothing acknowledged was lost: every line present before the kill is still there.
    let after = audit_text(&dir);
    assert!(after.starts_with(before.trim_end_matches(|c| c != '\n')));
    assert!(after.contains("pg_sleep"));
    assert_no_raw("the audit log after a crash", &after);

    // A restart continues the chain and it still verifies.
    let proxy = GatewayProxy::start(pg.addr(), &std::fs::read_to_string(&cfg_path).expect("cfg"));
    let out = psql_ok(
        &dsn_as(proxy.addr, "agents"),
        "SELECT card FROM customers WHERE id = 1",
    );
    assert_eq!(out.trim(), "************1111");
    proxy.close_audit();
    let report = verify(&dir, &key);
    assert!(report.ok, "verify after restart: {:?}", report.issues);
}

fn audit_text_if_any(dir: &Path) -> String {
    if dir.exists() {
        audit_text(dir)
    } else {
        String::new()
    }
}

#[test]
fn sessions_are_refused_when_the_audit_log_cannot_record() {
    let pg = shared_pg();
    let state = TempDir::new("airlock-full-state");
    // More free space required than any disk has: the log counts as full.
    let cfg = config_with(
        state.path(),
        pg.port,
        "    min_free_bytes: 1000000000000000000\n",
    );
    let proxy = GatewayProxy::start(pg.addr(), &cfg);
    let (ok, _, err) = psql(&dsn_as(proxy.addr, "agents"), &["-c", "SELECT 1"], None);
    assert!(!ok, "the session must be refused");
    assert!(
        err.contains("the audit log cannot record this session"),
        "{err}"
    );
}

/// Runs each statement of `STMTS` (JSON) through psycopg three ways: simple protocol text
/// (`S`), a server-side prepared statement (`P`, extended protocol) and binary results (`B`).
/// Prints `<mode> <index> OK <rows>` or `<mode> <index> ERR <sqlstate> <message>`.
const PY_EACH: &str = r#"
import json, os, psycopg
stmts = json.loads(os.environ["STMTS"])
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    for mode in ("S", "P", "B"):
        for i, sql in enumerate(stmts):
            try:
                with conn.cursor(binary=(mode == "B")) as cur:
                    cur.execute(sql, prepare=(mode == "P"))
                    rows = cur.fetchall() if cur.description else []
                    print(mode, i, "OK", repr(rows))
            except psycopg.Error as e:
                print(mode, i, "ERR", e.sqlstate, str(e).replace("\n", " | "))
"#;

/// The three results (`S`, `P`, `B`) of each statement, by index.
fn each(dsn: &str, stmts: &[&str]) -> Vec<[String; 3]> {
    let json = serde_json::to_string(stmts).expect("json");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY_EACH)
        .env("DSN", dsn)
        .env("STMTS", json)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg: {stdout}{stderr}");
    let mut res = vec![[String::new(), String::new(), String::new()]; stmts.len()];
    for line in stdout.lines() {
        let mut f = line.splitn(3, ' ');
        let (Some(mode), Some(i), Some(rest)) = (f.next(), f.next(), f.next()) else {
            panic!("bad line {line}");
        };
        let i: usize = i.parse().expect("index");
        let m = match mode {
            "S" => 0,
            "P" => 1,
            _ => 2,
        };
        res[i][m] = rest.to_string();
    }
    res
}

/// Every raw value, also upper-cased, reversed and in base64 and hex, must be absent.
fn assert_never_raw(what: &str, text: &str) {
    use base64::Engine as _;
    let lower = text.to_lowercase();
    for (rule, raw) in RAW {
        let l = raw.to_lowercase();
        let rev: String = l.chars().rev().collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
        let hex: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
        for (form, v) in [("", &l), ("reversed ", &rev), ("hex ", &hex)] {
            assert!(
                !lower.contains(v.as_str()),
                "{rule}: {form}{raw:?} leaked in {what}:\n{text}"
            );
        }
        assert!(
            !text.contains(&b64),
            "{rule}: base64 {raw:?} leaked in {what}:\n{text}"
        );
    }
}

/// Statements through which a masked column flows into a result other than as itself, with
/// the masking rule and column the refusal must name.
const LEAKS: &[(&str, &str, &str)] = &[
    (
        "SELECT upper(email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT email::varchar(200) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT email || '' FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT coalesce(email, '-') FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT CASE WHEN id > 0 THEN email END FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT format('%s', email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    ("SELECT c FROM customers c", "email-hash", "customers.*"),
    (
        "SELECT row_to_json(c) FROM customers c",
        "email-hash",
        "customers.*",
    ),
    (
        "SELECT to_jsonb(c.*) FROM customers c",
        "email-hash",
        "customers.*",
    ),
    (
        "SELECT json_agg(email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT string_agg(email, ',') FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT array_agg(card) FROM customers",
        "card-partial",
        "customers.card",
    ),
    (
        "SELECT email FROM customers UNION SELECT 'x'",
        "email-hash",
        "customers.email",
    ),
    // Names the server reads otherwise than sqlparser alone: `U&"\0065mail"` is `email`; a
    // bare `É` stays `É` (only ASCII folds); a CASE is named after its ELSE column.
    (
        r#"SELECT U&"\0065mail" || '' FROM customers"#,
        "email-hash",
        "customers.email",
    ),
    (
        r#"SELECT É || '' FROM (SELECT email AS "É", 'decoy' AS é FROM customers) d"#,
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT x FROM (SELECT 'decoy' AS email) o, LATERAL (SELECT email || '' AS x \
         FROM (SELECT CASE WHEN false THEN NULL ELSE email END FROM customers) d) l",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT (SELECT email FROM customers WHERE id = 1)",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT encode(email::bytea, 'hex') FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT reverse(email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT translate(email, 'abc', 'bcd') FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT substr(email, 1, 4) AS a, substr(email, 5, 40) AS b FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT ssn || '' FROM customers",
        "ssn-null",
        "customers.ssn",
    ),
    (
        "SELECT signed_up + 1 FROM customers",
        "date-redact",
        "customers.signed_up",
    ),
    (
        "WITH x AS (SELECT email AS e FROM customers) SELECT lower(e) FROM x",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT e FROM customers, LATERAL upper(email) AS e",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT set_config('airlock.x', email, false) FROM customers",
        "email-hash",
        "customers.email",
    ),
    // Relatives of the classes above.
    (
        "SELECT first_value(email) OVER (ORDER BY id) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT lag(card) OVER w FROM customers WINDOW w AS (ORDER BY id)",
        "card-partial",
        "customers.card",
    ),
    (
        "SELECT max(email) FROM customers GROUP BY GROUPING SETS ((id), ())",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT email FROM customers INTERSECT SELECT email FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT x FROM (VALUES ((SELECT email FROM customers WHERE id = 1))) v(x)",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT v.n, c.x FROM (VALUES (1, 'a')) v(id, n) JOIN LATERAL (SELECT email || '' AS x FROM customers WHERE id = v.id) c ON true",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT * FROM upper((SELECT email FROM customers WHERE id = 1)) AS f",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT * FROM unnest(ARRAY(SELECT email FROM customers)) AS u",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT \"EMAIL\" FROM (SELECT lower(\"email\") AS \"EMAIL\" FROM \"public\".\"customers\") s",
        "email-hash",
        "public.customers.email",
    ),
    (
        "SELECT upper(c.card) FROM public.customers AS c",
        "card-partial",
        "public.customers.card",
    ),
    (
        "SELECT (c).email FROM customers c",
        "email-hash",
        "customers.*",
    ),
    (
        "WITH RECURSIVE r(e, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT e, n + 1 FROM r WHERE n < 2) SELECT e FROM r",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY card) FROM customers",
        "card-partial",
        "customers.card",
    ),
    (
        "SELECT (c.*)::text FROM customers c",
        "email-hash",
        "customers.*",
    ),
    (
        "SELECT UPPER(EMAIL) FROM PUBLIC.CUSTOMERS",
        "email-hash",
        "public.customers.email",
    ),
    (
        "DECLARE leak_cur CURSOR FOR SELECT upper(email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "PREPARE leak_stmt AS SELECT reverse(email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    // Comparisons multiplied by generated rows spell the value out in one answer; a window's
    // ordering and an aggregate's FILTER decide the value returned.
    (
        "SELECT c.id, g.i, h.n FROM customers c, generate_series(1, 64) g(i), generate_series(0, 255) h(n) \
         WHERE ascii(substr(c.email, g.i, 1)) = h.n",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT id, row_number() OVER (ORDER BY email) FROM customers",
        "email-hash",
        "customers.email",
    ),
    (
        "SELECT count(*) FILTER (WHERE email LIKE 'a%') FROM customers",
        "email-hash",
        "customers.email",
    ),
];

/// A view redefined outside the gateway after a session looked it up is masked by its new
/// definition within `LOOKUP_TTL` (10 s), for a statement prepared before the change too (the
/// judge and the answer's column origins both look the view up again).
#[test]
fn a_view_redefined_outside_the_gateway_is_masked_by_its_new_definition() {
    let pg = shared_pg();
    pg.admin_db(
        DATABASE,
        &format!(
            "CREATE OR REPLACE VIEW relabeled AS SELECT id, name AS label FROM customers;
             GRANT SELECT ON relabeled TO {};",
            GATEWAY_USER.0
        ),
    );
    let state = TempDir::new("airlock-view-redefined");
    let proxy = GatewayProxy::start(pg.addr(), &config(state.path(), pg.port));
    let agent = dsn_as(proxy.addr, "agents");
    let hash = psql_ok(&agent, "SELECT email FROM customers WHERE id = 1");
    let hash = hash.trim().to_owned();
    let admin = format!(
        "host={} port={} user=postgres dbname={DATABASE} sslmode=disable",
        pg.host, pg.port
    );
    let script = r#"
import os, time, psycopg
agent = psycopg.connect(os.environ["DSN"], autocommit=True)
admin = psycopg.connect(os.environ["ADMIN"], autocommit=True)
def run(tag, sql, prepare):
    try:
        with agent.cursor() as cur:
            cur.execute(sql, (1,), prepare=prepare)
            print(tag, "OK", repr(cur.fetchall()))
    except psycopg.Error as e:
        print(tag, "ERR", e.sqlstate, str(e).replace("\n", " | "))
sql = "SELECT label FROM relabeled WHERE id = %s"
run("text-before", sql, False)
run("prepared-before", sql, True)
admin.execute("CREATE OR REPLACE VIEW relabeled AS SELECT id, email AS label FROM customers")
time.sleep(10.5)
run("prepared-after", sql, True)
run("text-after", sql, False)
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("DSN", &agent)
        .env("ADMIN", &admin)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for tag in ["text-before", "prepared-before"] {
        assert!(
            stdout.contains(&format!("{tag} OK [('Alice Smith',)]")),
            "{tag}: {stdout}"
        );
    }
    for tag in ["prepared-after", "text-after"] {
        assert!(
            stdout.contains(&format!("{tag} OK [('{hash}',)]")),
            "{tag}: {stdout}{stderr}"
        );
    }
    assert_never_raw("a redefined view", &stdout);
}

/// The server lexes a query after converting it from the client encoding; in SJIS, BIG5, GBK
/// and their kin a two-byte character can end in a backslash, so `E'ぁ\'; DROP …` sent as
/// SJIS ends its string where the classifier (reading UTF-8) sees an escaped quote, and the
/// DROP runs. Such an encoding is refused at startup, in `options` and by `SET`/`set_config`
/// (admin); the same bytes in UTF-8 are one harmless SELECT.
#[test]
fn client_encodings_the_server_lexes_otherwise_are_refused() {
    let pg = shared_pg();
    pg.admin_db(
        DATABASE,
        &format!(
            "CREATE TABLE IF NOT EXISTS victim_enc (x int); ALTER TABLE victim_enc OWNER TO {}",
            GATEWAY_USER.0
        ),
    );
    let state = TempDir::new("airlock-client-encoding");
    let proxy = GatewayProxy::start(pg.addr(), &config(state.path(), pg.port));
    let agent = dsn_as(proxy.addr, "agents");
    let script = r#"
import os, psycopg
dsn = os.environ["DSN"]
for extra in ["client_encoding=SJIS", "options='-c client_encoding=big5'"]:
    try:
        psycopg.connect(dsn + " " + extra).close()
        print("connected", extra)
    except psycopg.OperationalError as e:
        print("refused", extra, str(e).replace("\n", " | "))
with psycopg.connect(dsn, autocommit=True) as conn:
    for sql in ["SET client_encoding = 'SJIS'", "SELECT set_config('client_encoding', 'Shift_JIS', false)"]:
        try:
            conn.execute(sql)
            print("ran", sql)
        except psycopg.Error as e:
            print("denied", e.sqlstate, str(e).replace("\n", " | "))
    print("encoding", conn.execute("SHOW client_encoding").fetchone()[0])
    row = conn.execute(b"SELECT E'\xe3\x81\x81\\'; DROP TABLE victim_enc; --'", prepare=False).fetchone()
    print("one select", row[0].endswith("DROP TABLE victim_enc; --"))
"#;
    let (ok, out, err) = python(&agent, script);
    assert!(ok, "{out}{err}");
    for extra in ["client_encoding=SJIS", "client_encoding=big5"] {
        assert!(
            out.lines().any(|l| l.starts_with("refused")
                && l.contains(extra)
                && l.contains("not allowed through the gateway")),
            "{extra}: {out}"
        );
    }
    assert_eq!(out.matches("denied 42501").count(), 2, "{out}");
    assert!(out.contains("encoding UTF8"), "{out}");
    assert!(out.contains("one select True"), "{out}");
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT to_regclass('victim_enc') IS NOT NULL")
            .trim(),
        "t",
        "the table is still there: {out}"
    );
}

/// Under the default (`computed: refuse`), every leak class is refused before the server
/// runs it, with a 42501 naming the masking rule and the column, in the simple protocol, as
/// a prepared statement and with binary results; plain references stay masked as before,
/// comparisons are allowed, `TABLE customers` and `pg_sleep` are reads, and values in
/// server errors are masked.
#[test]
fn computed_columns_are_refused_by_default() {
    let pg = shared_pg();
    let state = TempDir::new("airlock-lineage-refuse");
    let proxy = GatewayProxy::start(pg.addr(), &config(state.path(), pg.port));
    let agent = dsn_as(proxy.addr, "agents");

    let stmts: Vec<&str> = LEAKS.iter().map(|l| l.0).collect();
    let res = each(&agent, &stmts);
    for ((sql, rule, column), got) in LEAKS.iter().zip(&res) {
        for r in got {
            assert!(
                r.starts_with("ERR 42501 airlock: denied by rule \"agents-read\": masking rule")
                    && r.contains(&format!("masking rule \"{rule}\": column {column} ")),
                "{sql}: {r}"
            );
        }
    }
    assert_never_raw("refused statements", &format!("{res:?}"));

    // A function the gateway does not know could read anything: refused.
    let res = each(&agent, &["SELECT leak(1)"]);
    for r in &res[0] {
        assert!(
            r.starts_with("ERR 42501") && r.contains("leak()") && r.contains("email-hash"),
            "{r}"
        );
    }
    // In a RECURSIVE list a CTE may name a later one (the server resolves it): refused as
    // untraceable, not read as a table `b` that no rule covers.
    let res = each(
        &agent,
        &[
            "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT translate(email, '@.', '#,') AS e FROM customers) SELECT e FROM a",
        ],
    );
    for r in &res[0] {
        assert!(
            r.starts_with("ERR 42501") && r.contains("CTE defined after it"),
            "{r}"
        );
    }
    assert_never_raw("a later CTE", &format!("{res:?}"));

    // psql (simple protocol) gets the same 42501.
    let (ok, out, err) = psql(&agent, &["-v", "VERBOSITY=verbose", "-c", LEAKS[0].0], None);
    assert!(
        !ok && err.contains("ERROR:  42501: airlock: denied by rule"),
        "{err}"
    );
    assert!(err.contains("masking rule \"email-hash\": column customers.email flows into result column 1 (\"upper\")"), "{err}");
    assert_never_raw("psql", &format!("{out}{err}"));

    // Plain references, comparisons, TABLE and harmless functions are allowed.
    let hash = psql_ok(&agent, "SELECT email FROM customers WHERE id = 1");
    let hash = hash.trim();
    assert_eq!(hash.len(), airlock::mask::HASH_HEX_LEN, "{hash}");
    let ok_stmts = [
        "TABLE customers",
        "SELECT id FROM customers WHERE email LIKE 'alice%'",
        "SELECT count(email) FROM customers",
        "SELECT upper(name) FROM customers WHERE id = 1",
        "SELECT pg_sleep(0)",
        "SELECT c1.id FROM customers c1 JOIN customers c2 ON c1.email = c2.email ORDER BY c1.email",
        "SELECT id FROM customers GROUP BY id, card HAVING card IS NOT NULL ORDER BY id",
    ];
    let res = each(&agent, &ok_stmts);
    for (i, (sql, got)) in ok_stmts.iter().zip(&res).enumerate() {
        for (m, r) in got.iter().enumerate() {
            if i == 0 && m == 2 {
                // Binary results of the whole table: the date under a column rule cannot be
                // masked in binary (as before).
                assert!(r.starts_with("ERR 0A000") && r.contains("signed_up"), "{r}");
                continue;
            }
            assert!(r.starts_with("OK "), "{sql}: {r}");
        }
    }
    assert!(
        res[0][0].contains(hash) && res[0][0].contains("'************1111'"),
        "{:?}",
        res[0]
    );
    assert!(res[1][0].contains("[(1,)]"), "{:?}", res[1]);
    assert!(res[2][0].contains("[(2,)]"), "{:?}", res[2]);
    assert!(res[3][0].contains("ALICE SMITH"), "{:?}", res[3]);
    assert_eq!(res[5][0], "OK [(1,), (2,)]", "{:?}", res[5]);
    assert_eq!(res[6][0], "OK [(1,), (2,)]", "{:?}", res[6]);
    let out = psql_ok(&agent, "TABLE customers ORDER BY id");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_no_raw("TABLE customers", &out);

    // Values in server errors: the masked column's value is cut, other values go through the
    // detectors (notes: AWS secret and token; row 2's notes: an e-mail, a card, an SSN).
    let errors = [
        "SELECT id FROM customers WHERE email::int > 0",
        "SELECT id FROM customers WHERE card::int > 0",
        "SELECT id FROM customers WHERE notes::int > 0",
        "SELECT xmlparse(document notes) FROM customers WHERE id = 2",
        // Computed in a derived table the outer query drops: DISTINCT computes it anyway.
        "SELECT id FROM (SELECT DISTINCT id, translate(email, '@.', '#,')::int AS v FROM customers) s",
        // A character's code as an unquoted number in the message.
        "SELECT id FROM customers WHERE get_byte(decode('00', 'hex'), ascii(substr(email, 1, 1))) = 0",
    ];
    let res = each(&agent, &errors);
    for (sql, got) in errors.iter().zip(&res) {
        for r in got {
            assert!(r.starts_with("ERR "), "{sql}: {r}");
        }
    }
    assert!(
        res[0][0].contains("invalid input syntax for type integer: [REDACTED]"),
        "{:?}",
        res[0]
    );
    assert!(
        res[1][0].contains("value \"[REDACTED]\" is out of range"),
        "{:?}",
        res[1]
    );
    assert!(
        res[2][0].contains("invalid input syntax for type integer"),
        "{:?}",
        res[2]
    );
    assert!(res[3][0].contains("invalid XML"), "{:?}", res[3]);
    assert!(
        res[4][0].contains("invalid input syntax for type integer: [REDACTED]"),
        "{:?}",
        res[4]
    );
    assert!(
        res[5][0].contains("index [REDACTED] out of valid range"),
        "{:?}",
        res[5]
    );
    assert_never_raw("server errors", &format!("{res:?}"));
    let (ok, _, err) = psql(&agent, &["-c", errors[0]], None);
    assert!(
        !ok && err.contains("invalid input syntax for type integer: [REDACTED]"),
        "{err}"
    );
    assert_never_raw("psql error", &err);

    // A view that reads a masked column: the origin the server reports is the view's, so the
    // view's definition is traced (on the catalog connection): a plain reference is masked
    // as the column itself, one computed in the view replaced whole, other columns (through a
    // view on it) untouched, errors cut; what the gate refuses for the column it refuses
    // through the view (computed, composite, sent out by set_config). A view whose
    // definition cannot be traced (a function the gateway does not know) is masked whole,
    // and refused in any expression.
    let views = [
        "SELECT contact FROM customer_contacts ORDER BY id",
        "SELECT upper(contact) FROM customer_contacts WHERE id = 1",
        "SELECT id FROM customer_contacts WHERE contact::int > 0",
        "SELECT c.id FROM contact_ids c ORDER BY 1",
        "SELECT set_config('airlock.v', contact, false) FROM customer_contacts WHERE id = 1",
        "SELECT row_to_json(v) FROM customer_contacts v",
        "SELECT u FROM contact_upper WHERE id = 1",
        "SELECT e FROM leaky WHERE id = 1",
        "SELECT lower(e) FROM leaky WHERE id = 1",
        "SELECT \"Mail\" FROM \"Crm\".\"People\" WHERE id = 1",
        "SELECT reverse(p.\"Mail\") FROM \"Crm\".\"People\" p",
        "SELECT current_setting('airlock.v', true)",
        // A search path naming another schema is refused to agents; were it allowed, an
        // unqualified name would stand for every relation of that name (lib tests).
        "SET search_path = \"Crm\", public",
        "SELECT lower(\"Mail\") FROM \"People\" WHERE id = 1",
        "SELECT \"Mail\" FROM \"People\" WHERE id = 1",
        "RESET search_path",
        "TABLE customer_contacts",
    ];
    let res = each(&agent, &views);
    let refused = |r: &str, column: &str| {
        r.starts_with(
            "ERR 42501 airlock: denied by rule \"agents-read\": masking rule \"email-hash\"",
        ) && r.contains(&format!("column {column} "))
    };
    // Simple protocol, prepared, binary results.
    for (m, _mode) in ["S", "P", "B"].iter().enumerate() {
        let r = |i: usize| res[i][m].as_str();
        assert!(
            r(0).starts_with(&format!("OK [('{hash}',), ('")) && r(0).ends_with("',), (None,)]"),
            "{m}: {}",
            r(0)
        );
        assert!(refused(r(1), "customer_contacts.contact"), "{m}: {}", r(1));
        assert!(
            r(2).contains("invalid input syntax for type integer: [REDACTED]"),
            "{m}: {}",
            r(2)
        );
        assert_eq!(r(3), "OK [(1,), (2,)]", "{m}");
        assert!(refused(r(4), "customer_contacts.contact"), "{m}: {}", r(4));
        // A whole row of a view: any rule may mask one of its columns (ssn-null's `*.*.ssn`).
        assert!(
            r(5).starts_with("ERR 42501") && r(5).contains("column customer_contacts.* "),
            "{m}: {}",
            r(5)
        );
        assert_eq!(r(6), "OK [('[REDACTED]',)]", "{m}");
        assert_eq!(r(7), "OK [('[REDACTED]',)]", "{m}");
        assert!(refused(r(8), "leaky.e"), "{m}: {}", r(8));
        assert_eq!(r(9), format!("OK [('{hash}',)]"), "{m}");
        assert!(refused(r(10), "Crm.People.Mail"), "{m}: {}", r(10));
        assert!(
            r(11) == "OK [(None,)]" || r(11) == "OK [('',)]",
            "{m}: {}",
            r(11)
        );
        // A search path naming another schema is admin (it could shadow functions policy
        // allows), so the agent's stays the default: the gate still reads an unqualified
        // name as every relation of that name, and the server does not find the view.
        assert!(r(12).starts_with("ERR 42501"), "{m}: {}", r(12));
        assert!(refused(r(13), "People.Mail"), "{m}: {}", r(13));
        assert!(r(14).starts_with("ERR 42P01"), "{m}: {}", r(14));
        assert!(
            r(16).starts_with(&format!("OK [(1, '{hash}'), (2, '")),
            "{m}: {}",
            r(16)
        );
    }
    assert_never_raw("views", &format!("{res:?}"));
    // A search path with pg_catalog after another schema would let a function shadow the
    // built-in the lineage knows: refused for masked callers.
    let (ok, _, err) = psql(
        &agent,
        &["-c", "SET search_path = public, pg_catalog"],
        None,
    );
    // (Refused as admin by the classifier, or by masking's own check: either way denied.)
    assert!(!ok && err.contains("airlock: denied"), "{err}");
    psql_ok(&agent, "SET search_path = \"$user\", public");

    // Pipelined (extended protocol, one write): a statement that waits for its names to be
    // resolved lets what came before it reach the server first, in order.
    let (ok, out, err) = python(
        &agent,
        r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    with conn.pipeline() as p:
        c1 = conn.execute("SELECT email FROM customers WHERE id = %s", (1,))
        c2 = conn.execute("SELECT id FROM \"Crm\".\"People\" WHERE id = %s", (2,))
        try:
            c3 = conn.execute("SELECT md5(\"Mail\") FROM \"Crm\".\"People\" WHERE id = %s", (1,))
            p.sync()
        except psycopg.Error as e:
            print("ERR", e.sqlstate, str(e).replace("\n", " | "))
    print(c1.fetchall(), c2.fetchall())
    print(conn.execute("SELECT card FROM customers WHERE id = 1").fetchall())
"#,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("[('{hash}',)] [(2,)]"))
            && out.contains("ERR 42501")
            && out.contains("Crm.People.Mail")
            && out.contains("'************1111'"),
        "{out}"
    );
    assert_never_raw("pipeline", &format!("{out}{err}"));
    // Cursors, FETCH and EXECUTE: a plain cursor's rows are masked by their origin, a prepared
    // statement the gateway did not see run is untraceable.
    let out = psql_ok(
        &agent,
        "BEGIN; DECLARE cur CURSOR FOR SELECT email FROM customers ORDER BY id; FETCH 1 FROM cur; COMMIT",
    );
    assert!(out.contains(hash), "{out}");
    let (ok, _, err) = psql(
        &agent,
        &[
            "-c",
            "PREPARE p1 AS SELECT email FROM customers",
            "-c",
            "EXECUTE p1",
        ],
        None,
    );
    assert!(
        !ok && err.contains("airlock: denied")
            && err.contains("EXECUTE runs a statement prepared earlier"),
        "{err}"
    );
    // COPY of a computed masked column through psql: refused.
    let (ok, out, err) = psql(
        &agent,
        &["-c", "COPY (SELECT upper(email) FROM customers) TO STDOUT"],
        None,
    );
    assert!(!ok && err.contains("masking rule \"email-hash\""), "{err}");
    assert_never_raw("cursor, EXECUTE, COPY", &format!("{out}{err}"));

    // A group in except_groups is not refused and sees raw values.
    let dba = dsn_as(proxy.addr, "agents+dba");
    let raw = psql_ok(&dba, "SELECT upper(email) FROM customers WHERE id = 1");
    assert_eq!(raw.trim(), "ALICE@EXAMPLE.COM");
    proxy.close_audit();
}

/// With `computed: redact`, a masked column computed into a scalar result is replaced whole
/// (NULL under `style: null`), in text, prepared and binary results, COPY and every result
/// set of a multi-statement query; what cannot be replaced (rows, JSON, arrays, a binary
/// non-text value) is refused, never sent raw; `compared: refuse` refuses comparisons.
#[test]
fn computed_columns_are_redacted_when_the_rule_says_so() {
    let pg = shared_pg();
    let state = TempDir::new("airlock-lineage-redact");
    let cfg = config_opts(
        state.path(),
        pg.port,
        "    head_interval: 100ms\n",
        Lineage {
            redact: true,
            refuse_compared_ssn: true,
            writes: false,
        },
    );
    let proxy = GatewayProxy::start(pg.addr(), &cfg);
    let agent = dsn_as(proxy.addr, "agents");
    let stmts = [
        "SELECT upper(email), upper(name), id FROM customers ORDER BY id",
        "SELECT email || '' AS e FROM customers WHERE id = 1",
        "SELECT reverse(email), encode(email::bytea, 'base64') FROM customers WHERE id = 1",
        "SELECT ssn || '' FROM customers WHERE id = 1",
        "SELECT email FROM customers UNION ALL SELECT name FROM customers",
        "SELECT (SELECT email FROM customers WHERE id = 1) AS e",
        "SELECT *, lower(email) FROM customers WHERE id = 1",
        "SELECT length(email) FROM customers WHERE id = 1",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT array_agg(email) FROM customers",
        "SELECT leak(1)",
        "SELECT id FROM customers WHERE ssn IS NOT NULL",
        "SELECT email::int FROM customers",
    ];
    let res = each(&agent, &stmts);
    let r = |i: usize, m: usize| res[i][m].as_str();
    for m in 0..3 {
        assert_eq!(
            r(0, m),
            "OK [('[REDACTED]', 'ALICE SMITH', 1), ('[REDACTED]', 'BOB JONES', 2), (None, 'DAN', 3)]",
            "{m}"
        );
        assert_eq!(r(1, m), "OK [('[REDACTED]',)]", "{m}");
        assert_eq!(r(2, m), "OK [('[REDACTED]', '[REDACTED]')]", "{m}");
        assert_eq!(r(3, m), "OK [(None,)]", "ssn-null computed is NULL: {m}");
        assert!(
            r(4, m).starts_with("OK [('[REDACTED]',), ('[REDACTED]',), (None,), ('[REDACTED]',)"),
            "{m}: {}",
            r(4, m)
        );
        assert_eq!(r(5, m), "OK [('[REDACTED]',)]", "{m}");
        // The table's own columns masked as columns, the computed one replaced (binary: the
        // date cannot be masked in binary, as before).
        if m < 2 {
            assert!(
                r(6, m).contains("'************1111'") && r(6, m).ends_with("'[REDACTED]')]"),
                "{m}: {}",
                r(6, m)
            );
        } else {
            assert!(
                r(6, m).starts_with("ERR 0A000") && r(6, m).contains("signed_up"),
                "{}",
                r(6, m)
            );
        }
        for (i, sql) in stmts.iter().enumerate().take(12).skip(8) {
            assert!(r(i, m).starts_with("ERR 42501"), "{sql}: {m}: {}", r(i, m));
        }
        assert!(r(8, m).contains("row, array or JSON"), "{}", r(8, m));
        assert!(
            r(11, m).contains("masking rule \"ssn-null\": column customers.ssn is compared"),
            "{}",
            r(11, m)
        );
        if m < 2 {
            assert!(
                r(12, m).contains("invalid input syntax for type integer: [REDACTED]"),
                "{}",
                r(12, m)
            );
        } else {
            // Binary int4 computed from the e-mail: refused at its RowDescription, before
            // the server's error about the first row.
            assert!(
                r(12, m).starts_with("ERR 0A000") && r(12, m).contains("binary"),
                "{}",
                r(12, m)
            );
        }
    }
    // An int computed from the e-mail: text is announced as text; binary cannot be replaced.
    assert_eq!(r(7, 0), "OK [('[REDACTED]',)]");
    assert_eq!(r(7, 1), "OK [('[REDACTED]',)]");
    assert!(
        r(7, 2).starts_with("ERR 0A000 airlock: masking:") && r(7, 2).contains("binary"),
        "{}",
        r(7, 2)
    );
    assert_never_raw("redacted results", &format!("{res:?}"));

    // psql: multi-statement (every result set), COPY OUT of a computed column.
    let out = psql_ok(
        &agent,
        "SELECT 1 AS one; SELECT upper(email) FROM customers WHERE id = 1; SELECT email FROM customers WHERE id = 2",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    assert_eq!(lines[1], "[REDACTED]", "{out}");
    assert_eq!(lines[2].len(), airlock::mask::HASH_HEX_LEN, "{out}");
    // Through views: computed from a view's masked column, or from a view that cannot be
    // traced, replaced whole.
    let out = psql_ok(
        &agent,
        "SELECT upper(contact), id FROM customer_contacts WHERE id = 1; SELECT lower(e) FROM leaky WHERE id = 2",
    );
    assert_eq!(out, "[REDACTED]|1\n[REDACTED]\n", "{out}");
    let out = psql_ok(
        &agent,
        "COPY (SELECT id, upper(email), name FROM customers ORDER BY id) TO STDOUT",
    );
    assert_eq!(
        out, "1\t[REDACTED]\tAlice Smith\n2\t[REDACTED]\tBob Jones\n3\t\\N\tDan\n",
        "{out}"
    );
    assert_never_raw("psql", &out);
    proxy.close_audit();
}

/// The audit log never holds a value: after a mixed workload (reads, refused computed
/// columns, server errors that quote values, writes, a write error quoting the
/// whole row, COPY both ways, prepared statements in text and binary), no seeded secret is
/// anywhere in the log, in any case, reversed or encoded.
#[test]
fn the_audit_log_holds_no_seeded_secret() {
    let pg = shared_pg();
    let state = TempDir::new("airlock-lineage-audit");
    let cfg = config_opts(
        state.path(),
        pg.port,
        "    head_interval: 100ms\n",
        Lineage {
            redact: false,
            refuse_compared_ssn: false,
            writes: true,
        },
    );
    let proxy = GatewayProxy::start(pg.addr(), &cfg);
    let agent = dsn_as(proxy.addr, "agents");
    let mut client_output = String::new();
    for sql in [
        "SELECT * FROM customers ORDER BY id",
        "TABLE customers",
        "SELECT upper(email), reverse(card) FROM customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT email::int FROM customers",
        "SELECT id FROM customers WHERE email::int > 0",
        "SELECT id FROM customers WHERE card::int > 0",
        "SELECT id FROM customers WHERE ssn::int > 0",
        "SELECT private_key::int FROM customers WHERE id = 1",
        "SELECT api_key::int, token::int FROM customers WHERE id = 1",
        "SELECT token::json FROM customers WHERE id = 1",
        "SELECT iban::int FROM customers WHERE id = 2",
        "SELECT phone::int FROM customers WHERE id = 2",
        "SELECT last_ip::text::int FROM customers WHERE id = 1",
        "SELECT xmlparse(document notes) FROM customers WHERE id = 2",
        "SELECT id FROM customer_contacts WHERE contact::int > 0",
        "SELECT contact, upper(contact) FROM customer_contacts",
        "SELECT e::int FROM leaky",
        "SELECT u FROM contact_upper",
        "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
        "INSERT INTO tickets VALUES (1, 'first')",
        "UPDATE tickets SET note = 'second' WHERE id = 1",
        "UPDATE customers SET card = 'x' WHERE id = 1",
        "INSERT INTO tickets SELECT id + 10, email FROM customers",
        "INSERT INTO tickets SELECT id + 20, contact FROM customer_contacts",
        "UPDATE customers SET card = card WHERE id = 1 RETURNING upper(email)",
        "WITH u AS (UPDATE customers SET card = card WHERE id = 2 RETURNING email) SELECT lower(email) AS low FROM u",
        "DELETE FROM tickets WHERE id = 0 RETURNING (SELECT reverse(email) FROM customers WHERE id = 1) AS gone",
        "DELETE FROM tickets WHERE id = 1",
        "COPY customers TO STDOUT",
        "COPY (SELECT id, upper(email), notes FROM customers) TO STDOUT WITH (FORMAT csv)",
    ] {
        let (_, out, err) = psql(&agent, &["-c", sql], None);
        client_output.push_str(&out);
        client_output.push_str(&err);
    }
    let (ok, _, err) = psql(
        &agent,
        &["-c", "COPY tickets FROM STDIN"],
        Some("5\tfive\n6\tsix\n\\.\n"),
    );
    assert!(ok, "{err}");
    let (ok, out, err) = python(
        &agent,
        r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    for binary in (False, True):
        for _ in range(3):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT email, notes, card FROM customers WHERE id = %s", (1,), prepare=True)
                print(repr(cur.fetchall()))
        for sql in ("SELECT id FROM customers WHERE email::int = %s", "SELECT id FROM customers WHERE ssn::int = %s", "SELECT upper(email) FROM customers WHERE id = %s"):
            try:
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql, (1,), prepare=True)
            except psycopg.Error as e:
                print("ERR", e.sqlstate, str(e).replace("\n", " | "))
"#,
    );
    assert!(ok, "{out}{err}");
    client_output.push_str(&out);
    assert_never_raw("the clients' output", &client_output);
    // The workload did what it says (so the grep below is not vacuous).
    assert!(
        client_output.contains("invalid input syntax for type integer: [REDACTED]"),
        "{client_output}"
    );
    assert!(
        client_output.contains("violates check constraint \"card_len\""),
        "{client_output}"
    );
    assert!(
        client_output.contains("would be stored or sent out unmasked by an INSERT"),
        "{client_output}"
    );
    assert!(
        client_output.contains("column customer_contacts.contact would be stored"),
        "{client_output}"
    );
    for returned in ["(\"low\")", "(\"gone\")"] {
        assert!(
            client_output.contains(&format!(
                "masking rule \"email-hash\": column customers.email flows into result column 1 {returned}"
            )),
            "{returned}: {client_output}"
        );
    }
    assert_eq!(
        pg.admin_db(
            DATABASE,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM tickets"
        )
        .trim(),
        "5,6"
    );
    pg.admin_db(DATABASE, "DELETE FROM tickets");

    proxy.close_audit();
    let dir = state.path().join("audit");
    let mut log = String::new();
    for e in std::fs::read_dir(&dir).expect("audit dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            log.push_str(&String::from_utf8_lossy(&std::fs::read(&p).expect("read")));
        }
    }
    for needle in [
        "\"result\"",
        "invalid input syntax for type integer: [REDACTED]",
        "card_len",
        "masking rule",
        "COPY tickets FROM STDIN",
        "\"masking\"",
    ] {
        assert!(
            log.contains(needle),
            "{needle} missing in the audit log:\n{log}"
        );
    }
    assert_never_raw("the audit log", &log);
    let report = verify(&dir, &state.path().join("audit.key.pub"));
    assert!(report.ok, "verify: {:?}", report.issues);
}

#[cfg(feature = "bench-harness")]
fn tps(out: &str) -> f64 {
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l[6..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// pgbench through `addr` as `user`; returns TPS.
#[cfg(feature = "bench-harness")]
fn pgbench_tps(addr: std::net::SocketAddr, user: &str, args: &[&str]) -> f64 {
    let out = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-U",
            user,
        ])
        .args(args)
        .arg(DATABASE)
        .env("PGPASSWORD", GATEWAY_USER.1)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tps(&stdout)
}

/// CPU seconds this process (the in-process proxy; pgbench and PostgreSQL are other processes)
/// has used.
#[cfg(feature = "bench-harness")]
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// TPS and the proxy's CPU microseconds per transaction of one pgbench run.
#[cfg(feature = "bench-harness")]
fn measured(addr: std::net::SocketAddr, user: &str, args: &[&str], secs: f64) -> (f64, f64) {
    let c0 = self_cpu();
    let tps = pgbench_tps(addr, user, args);
    let us = (self_cpu() - c0) * 1e6 / (tps * secs).max(1.0);
    (tps, us)
}

#[cfg(feature = "bench-harness")]
fn bench_secs() -> String {
    std::env::var("BENCH_SECS").unwrap_or_else(|_| "10".into())
}

/// Not a test: `bench/pg_masking.sh`. A SELECT-heavy pgbench (10 customer rows per
/// transaction, every column masked or scanned) through the gateway, masked (group `agents`)
/// vs the same proxy and query for a caller in `except_groups` (no masking). Prints
/// `BENCH_JSON {...}`.
/// A benchmark driver, compiled only for bench/pg_masking.sh (`--features bench-harness`).
#[cfg(feature = "bench-harness")]
#[test]
fn bench_masking_select_heavy() {
    let pg = PgServer::start(None);
    let rows = 10_000;
    pg.admin_db(
        DATABASE,
        &format!(
            "CREATE TABLE customers (
               id int PRIMARY KEY, name text, email text, card varchar(19), ssn text,
               phone text, iban text, last_ip inet, api_key text, token text, private_key text,
               notes text, signed_up date);
             INSERT INTO customers
             SELECT i, 'Customer ' || i, 'user' || i || '@example.com',
                    (ARRAY['4111111111111111','5555555555554444','378282246310005'])[1 + i % 3],
                    lpad((i % 899 + 100)::text, 3, '0') || '-45-' || lpad((i % 9000 + 1000)::text, 4, '0'),
                    '+1 415 555 ' || lpad((i % 10000)::text, 4, '0'),
                    'GB82WEST12345698765432', ('10.0.' || (i % 250) || '.' || (i % 200 + 1))::inet,
                    'AKIAIOSFODNN7EXAMPLE', 'Bearer {JWT}', NULL,
                    'Customer since 2019, prefers email; last order shipped to the warehouse in ' ||
                    'Springfield, ticket ' || i || ' resolved by support without escalation.',
                    DATE '2020-01-01' + (i % 1000)
             FROM generate_series(1, {rows}) i;
             GRANT SELECT ON customers TO {gw};
             ANALYZE customers;",
            gw = GATEWAY_USER.0
        ),
    );
    let state = TempDir::new("airlock-bench-mask");
    let proxy = GatewayProxy::start(
        pg.addr(),
        &config_with(state.path(), pg.port, "    enabled: false\n"),
    );
    let script = state.path().join("select.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {})\nSELECT * FROM customers WHERE id BETWEEN :id AND :id + 9;\n",
            rows - 10
        ),
    )
    .expect("script");
    let script = script.display().to_string();
    let secs = bench_secs();
    let mut results = Vec::new();
    for mode in ["simple", "prepared"] {
        let args = [
            "-n", "-M", mode, "-c", "4", "-j", "2", "-T", &secs, "-f", &script,
        ];
        // Alternate to spread machine noise over both; CPU time per transaction spent in the
        // proxy is the steadier figure on a shared machine.
        let fsecs: f64 = secs.parse().unwrap_or(10.0);
        let (mut masked, mut plain, mut masked_us, mut plain_us) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..2 {
            let (t, us) = measured(proxy.addr, "agents+dba", &args, fsecs);
            plain += t / 2.0;
            plain_us += us / 2.0;
            let (t, us) = measured(proxy.addr, "agents", &args, fsecs);
            masked += t / 2.0;
            masked_us += us / 2.0;
        }
        let direct = pgbench_tps(pg.addr(), GATEWAY_USER.0, &args);
        println!(
            "| {mode} | {direct:.0} | {plain:.0} ({plain_us:.0} us CPU/tx) | {masked:.0} ({masked_us:.0} us CPU/tx) | {:.1}% |",
            100.0 * masked / plain
        );
        results.push(format!(
            "{{\"mode\":\"{mode}\",\"clients\":4,\"rows_per_tx\":10,\"direct_tps\":{direct:.1},\"unmasked_tps\":{plain:.1},\"masked_tps\":{masked:.1},\"ratio\":{:.4},\"unmasked_cpu_us_per_tx\":{plain_us:.1},\"masked_cpu_us_per_tx\":{masked_us:.1}}}",
            masked / plain
        ));
    }
    let metrics = proxy.ctx.metrics.encode();
    assert!(metrics.contains("airlock_masked_values_total{rule=\"email-hash\"}"));
    println!(
        "BENCH_JSON {{\"bench\":\"pg_masking\",\"secs\":{secs},\"results\":[{}]}}",
        results.join(",")
    );
}

/// Not a test: `bench/pg_audit.sh`. pgbench -S through the gateway with recording off, on
/// with `fsync: always` and on with `fsync: batch`. Prints `BENCH_JSON {...}`.
/// A benchmark driver, compiled only for bench/pg_audit.sh (`--features bench-harness`).
#[cfg(feature = "bench-harness")]
#[test]
fn bench_audit_select_only() {
    let pg = PgServer::start(None);
    let init = Command::new("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            GATEWAY_USER.0,
        ])
        .args(["-i", "-s", "2", "-q", DATABASE])
        .env("PGPASSWORD", GATEWAY_USER.1)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let secs = bench_secs();
    let clients = std::env::var("BENCH_CLIENTS").unwrap_or_else(|_| "8".into());
    let mut results = Vec::new();
    for mode in ["simple", "prepared"] {
        let args = [
            "-n", "-S", "-M", mode, "-c", &clients, "-j", "2", "-T", &secs,
        ];
        let mut row = Vec::new();
        for (name, audit) in [
            ("off", "    enabled: false\n"),
            ("always", "    fsync: always\n"),
            ("batch", "    fsync: batch\n"),
        ] {
            let state = TempDir::new("airlock-bench-audit");
            let proxy = GatewayProxy::start(pg.addr(), &config_with(state.path(), pg.port, audit));
            let (mut t, mut cpu) = (0.0, 0.0);
            let fsecs: f64 = secs.parse().unwrap_or(10.0);
            for _ in 0..2 {
                // A caller in except_groups: no masking, only what recording costs.
                let (tps, us) = measured(proxy.addr, "agents+dba", &args, fsecs);
                t += tps / 2.0;
                cpu += us / 2.0;
            }
            proxy.close_audit();
            if name != "off" {
                let report = verify(
                    &state.path().join("audit"),
                    &state.path().join("audit.key.pub"),
                );
                assert!(report.ok, "{:?}", report.issues);
            }
            row.push((name, t, cpu));
        }
        let off = row[0].1;
        println!(
            "| {mode} | {clients} | {off:.0} ({:.0} us CPU/tx) | {:.0} ({:.1}%, {:.0} us) | {:.0} ({:.1}%, {:.0} us) |",
            row[0].2,
            row[1].1,
            100.0 * row[1].1 / off,
            row[1].2,
            row[2].1,
            100.0 * row[2].1 / off,
            row[2].2
        );
        results.push(format!(
            "{{\"mode\":\"{mode}\",\"clients\":{clients},\"off_tps\":{off:.1},\"always_tps\":{:.1},\"batch_tps\":{:.1},\"off_cpu_us_per_tx\":{:.1},\"always_cpu_us_per_tx\":{:.1},\"batch_cpu_us_per_tx\":{:.1}}}",
            row[1].1, row[2].1, row[0].2, row[1].2, row[2].2
        ));
    }
    println!(
        "BENCH_JSON {{\"bench\":\"pg_audit\",\"secs\":{secs},\"results\":[{}]}}",
        results.join(",")
    );
}
