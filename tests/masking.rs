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
           id int PRIMARY KEY, name text, email text, card varchar(19), ssn text,
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
         GRANT SELECT ON customers TO {gw};",
        gw = GATEWAY_USER.0
    );
    pg.admin_db(DATABASE, &sql);
}

fn config(state: &Path, upstream_port: u16) -> String {
    format!(
        r#"daemon:
  state_dir: {state}
  audit:
    head_interval: 100ms
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
  - name: agents-deny-rest
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
  - name: card-partial
    columns: ["public.customers.card"]
    style: partial
    except_groups: [dba]
  - name: ssn-null
    columns: ["*.*.ssn"]
    style: "null"
    except_groups: [dba]
  - name: date-redact
    columns: ["customers.signed_up"]
    style: redact
    except_groups: [dba]
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
"#;

#[test]
fn masking_and_audit_through_psql_psycopg_and_copy() {
    let pg = PgServer::start(None);
    setup_data(&pg);
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
/// with SIGKILL mid-session.
#[test]
#[ignore = "helper: run by proxy_killed_mid_session_leaves_a_verifiable_log"]
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
    let pg = PgServer::start(None);
    setup_data(&pg);
    let state = TempDir::new("airlock-crash-state");
    let cfg_path: PathBuf = state.path().join("airlock.yaml");
    std::fs::write(&cfg_path, config(state.path(), pg.port)).expect("config");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_proxy", "--ignored", "--nocapture"])
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
