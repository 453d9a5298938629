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
    config_with(state, upstream_port, "    head_interval: 100ms\n")
}

/// The test configuration with `audit` (the `daemon.audit` section's body, 4-space indent).
fn config_with(state: &Path, upstream_port: u16, audit: &str) -> String {
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
    let pg = PgServer::start(None);
    setup_data(&pg);
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
    let pg = PgServer::start(None);
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
