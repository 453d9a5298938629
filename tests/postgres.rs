//! PostgreSQL through airlock, end to end: a real PostgreSQL 15 started per test, the airlock
//! PostgreSQL handler in process, and real clients (psql, pgbench, psycopg 3). Every client
//! helper takes the proxy address as a parameter, so the same scenarios can run through the
//! transparent eBPF interception.

#[path = "support/postgres.rs"]
mod support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use airlock::config::{PostgresTarget, UpstreamTls, UpstreamTlsMode};
use airlock::protocol::postgres::backend_auth::{self, AuthMethod, BackendError};
use support::*;

/// Everything the handler logs, for assertions on log lines.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOG.lock() {
            l.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("airlock=debug")
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

fn logs() -> String {
    LOG.lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default()
}

fn gateway(pg: &PgServer) -> TestProxy {
    capture_logs();
    TestProxy::start(pg.addr(), &gateway_section(GATEWAY_USER.0, GATEWAY_USER.1))
}

#[test]
fn psql_script_transactions_notices_notify_and_large_results() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    let dsn = dsn(proxy.addr, "");

    // The client asked for user "someone"; the server sees the gateway's role.
    let (ok, out, err) = psql(
        &dsn,
        &["-c", "SELECT current_user, current_database()"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "gw|app");

    let script = r#"
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t VALUES (1, 'a'), (2, 'b');
BEGIN;
INSERT INTO t VALUES (3, 'c');
INSERT INTO t VALUES (1, 'duplicate');
SELECT 'not reached';
COMMIT;
SELECT 'rows', count(*) FROM t;
DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$;
SET application_name = 'airlock-test';
SHOW application_name;
LISTEN chan;
NOTIFY chan, 'payload-1';
SELECT 'after notify';
"#;
    let (_, out, err) = psql(&dsn, &["-v", "ON_ERROR_STOP=0", "-f", "-"], Some(script));
    assert!(err.contains("duplicate key value"), "{err}");
    assert!(
        err.contains("current transaction is aborted"),
        "the failed transaction stays failed: {err}"
    );
    assert!(
        out.contains("rows|2"),
        "the failed transaction rolled back: {out}"
    );
    assert!(err.contains("NOTICE:  hello from the server"), "{err}");
    assert!(out.contains("airlock-test"), "{out}");
    assert!(
        format!("{out}{err}")
            .contains("Asynchronous notification \"chan\" with payload \"payload-1\""),
        "{out}{err}"
    );

    large_value_and_copy_out(&dsn);
    assert!(proxy.decider.calls.load(Ordering::Relaxed) >= 15);
}

/// A large single value and a large COPY out, streamed.
fn large_value_and_copy_out(dsn: &str) {
    let (ok, out, err) = psql(dsn, &["-c", "SELECT repeat('x', 8000000)"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim_end().len(), 8_000_000);
    let (ok, out, err) = psql(
        dsn,
        &[
            "-c",
            "COPY (SELECT g, md5(g::text) FROM generate_series(1, 200000) g) TO STDOUT",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 200_000);
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("200000\t"))
    );
}

/// `pgbench -i -s 1` through the gateway at `addr` (DDL, COPY FROM STDIN, VACUUM); checks
/// the rows arrived.
fn pgbench_init(pg: &PgServer, addr: std::net::SocketAddr) {
    let (ok, _, err) = pgbench(addr, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {err}");
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT count(*) FROM pgbench_accounts")
            .trim(),
        "100000"
    );
}

#[test]
fn pgbench_simple_extended_prepared() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    // Initialisation goes through the gateway too: DDL, COPY FROM STDIN, VACUUM.
    pgbench_init(&pg, proxy.addr);
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = pgbench(proxy.addr, &["-M", mode, "-S", "-c", "2", "-t", "200"]);
        assert!(ok, "pgbench -M {mode} -S: {out}{err}");
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "{mode}: {out}"
        );
        let (ok, out, err) = pgbench(proxy.addr, &["-M", mode, "-c", "2", "-t", "50"]);
        assert!(ok, "pgbench -M {mode}: {out}{err}");
        assert!(
            out.contains("number of transactions actually processed: 100/100"),
            "{mode}: {out}"
        );
    }
    // The TPC-B-like run wrote through the gateway (pgbench empties the history before each
    // run, so only the last run's 100 transactions remain).
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT count(*) FROM pgbench_history")
            .trim(),
        "100"
    );
}

/// The io_uring engine carries the same sessions: the same session loop, only its sockets
/// on the ring. A transaction script, an 8 MB value, a 200,000-row COPY out, pgbench's
/// initialisation (DDL, COPY FROM STDIN) and its three protocols with concurrent clients.
#[test]
fn the_io_uring_engine_carries_whole_sessions() {
    use airlock::relay::uring::COMPLETIONS;
    let pg = PgServer::start(None);
    capture_logs();
    let proxy =
        TestProxy::start_on_ring(pg.addr(), &gateway_section(GATEWAY_USER.0, GATEWAY_USER.1));
    let dsn = dsn(proxy.addr, "");
    let before = COMPLETIONS.load(Ordering::Relaxed);

    let script = r#"
CREATE TABLE r (id int PRIMARY KEY, v text);
BEGIN;
INSERT INTO r VALUES (1, 'a'), (2, 'b');
INSERT INTO r VALUES (1, 'duplicate');
COMMIT;
INSERT INTO r VALUES (3, 'c');
SELECT 'rows', count(*) FROM r;
"#;
    let (_, out, err) = psql(&dsn, &["-v", "ON_ERROR_STOP=0", "-f", "-"], Some(script));
    assert!(err.contains("duplicate key value"), "{err}");
    assert!(
        out.contains("rows|1"),
        "the failed transaction rolled back: {out}"
    );
    large_value_and_copy_out(&dsn);

    pgbench_init(&pg, proxy.addr);
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = pgbench(
            proxy.addr,
            &["-M", mode, "-S", "-c", "4", "-j", "2", "-t", "300"],
        );
        assert!(ok, "pgbench -M {mode} -S: {out}{err}");
        assert!(
            out.contains("number of transactions actually processed: 1200/1200"),
            "{mode}: {out}"
        );
    }
    let (ok, out, err) = pgbench(proxy.addr, &["-c", "4", "-j", "2", "-t", "50"]);
    assert!(ok, "pgbench TPC-B: {out}{err}");
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT count(*) FROM pgbench_history")
            .trim(),
        "200"
    );
    // Every transaction took at least a receive and a send on each side through the ring.
    let completed = COMPLETIONS.load(Ordering::Relaxed) - before;
    assert!(completed > 4 * 3_800, "only {completed} ring completions");
}

#[test]
fn psycopg_copy_cursors_pipeline_errors_and_prepared() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    let script = r#"
import os, psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus
with psycopg.connect(os.environ["DSN"]) as conn:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    with conn.cursor() as cur:
        with cur.copy("COPY items FROM STDIN") as cp:
            for i in range(1000):
                cp.write_row((i, f"n{i}"))
    conn.commit()
    with conn.cursor() as cur:
        with cur.copy("COPY items TO STDOUT") as cp:
            rows = list(cp.rows())
    assert len(rows) == 1000, len(rows)
    with conn.cursor(name="server_side") as cur:
        cur.itersize = 100
        cur.execute("SELECT id FROM items ORDER BY id")
        total = sum(r[0] for r in cur)
    assert total == sum(range(1000)), total
    conn.commit()
    try:
        conn.execute("INSERT INTO items VALUES (1, 'dup')")
        raise SystemExit("expected a unique violation")
    except errors.UniqueViolation:
        pass
    assert conn.info.transaction_status == TransactionStatus.INERROR
    try:
        conn.execute("SELECT 1")
        raise SystemExit("expected in-failed-transaction")
    except errors.InFailedSqlTransaction:
        pass
    conn.rollback()
    for i in range(10):
        r = conn.execute("SELECT name FROM items WHERE id = %s", (i,), prepare=True).fetchone()
        assert r[0] == f"n{i}", r
    with conn.pipeline():
        c1 = conn.execute("SELECT 1")
        c2 = conn.execute("SELECT %s::int", (2,))
        conn.execute("INSERT INTO items VALUES (5000, 'p')")
    assert c1.fetchone()[0] == 1 and c2.fetchone()[0] == 2
    conn.commit()
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s)", [(6000 + i, "m") for i in range(50)])
    conn.commit()
    print("count", conn.execute("SELECT count(*) FROM items").fetchone()[0])
    # A notification reaches an idle listener on another session at once.
    import select
    with psycopg.connect(os.environ["DSN"], autocommit=True) as listener:
        got = []
        listener.add_notify_handler(lambda n: got.append(n.payload))
        listener.execute("LISTEN jobs")
        conn.execute("NOTIFY jobs, 'job-42'")
        conn.commit()
        readable, _, _ = select.select([listener.fileno()], [], [], 10)
        assert readable, "no notification while idle"
        listener.execute("SELECT 1")
        print("notified", got)
    print("pid-differs", conn.info.backend_pid != conn.execute("SELECT pg_backend_pid()").fetchone()[0])
"#;
    let (ok, out, err) = python(&dsn(proxy.addr, ""), script);
    assert!(ok, "{out}{err}");
    assert!(out.contains("count 1051"), "{out}");
    assert!(out.contains("notified ['job-42']"), "{out}");
    assert!(
        out.contains("pid-differs True"),
        "the client only sees a minted key: {out}"
    );
}

/// The same pipeline through the gateway (with a denied statement) and directly (with a
/// statement that fails on the server) must leave the same data and a usable connection.
#[test]
fn denied_statement_in_psycopg_pipeline_behaves_like_an_error() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    pg.admin_db(
        DATABASE,
        &format!(
            "CREATE TABLE p (v int); GRANT ALL ON p TO {};",
            GATEWAY_USER.0
        ),
    );
    let script = r#"
import os, sys, psycopg
bad = sys.argv[1]
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    try:
        with conn.pipeline():
            conn.execute("INSERT INTO p VALUES (1)")
            conn.execute(bad)
            conn.execute("INSERT INTO p VALUES (2)")
        print("no error")
    except psycopg.Error as e:
        print("error", e.sqlstate, str(e).splitlines()[0])
    print("status", conn.info.transaction_status.name)
    conn.execute("INSERT INTO p VALUES (3)")
    print("count", conn.execute("SELECT count(*) FROM p").fetchone()[0])
"#;
    let run = |dsn: &str, bad: &str| {
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, bad])
            .env("DSN", dsn)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let through = run(&dsn(proxy.addr, ""), "SELECT 'airlock_forbidden'");
    assert!(through.contains("error 42501"), "{through}");
    assert!(
        through.contains("test-deny"),
        "the message names the rule: {through}"
    );
    pg.admin_db(DATABASE, "TRUNCATE p");
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname={DATABASE} sslmode=disable",
        pg.port
    );
    let reference = run(&direct, "SELECT 1/0");
    assert!(reference.contains("error 22012"), "{reference}");
    let tail = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(tail(&through), tail(&reference));
    assert!(through.contains("status IDLE"), "{through}");
}

#[test]
fn raw_extended_protocol_denials_keep_the_session_consistent() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    let mut c = RawClient::connect(proxy.addr);
    c.startup(0, &[("user", "x"), ("database", DATABASE)]);
    let m = c.until_ready();
    assert_eq!(m[0].0, b'R');
    assert!(tags(&m).contains('K'), "{}", tags(&m));
    assert_eq!(m.last().map(|x| x.1.clone()), Some(b"I".to_vec()));

    // In an explicit transaction: the rows before the denial come back, the denial is an
    // error, the rest of the batch is discarded, and the transaction is failed.
    c.send(&query("BEGIN"));
    assert_eq!(c.until_ready().last().map(|x| x.1[0]), Some(b'T'));
    let mut batch = Vec::new();
    batch.extend(parse("", "SELECT 1"));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(parse("", "SELECT 'airlock_forbidden'"));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(parse("", "SELECT 2"));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(sync());
    c.send(&batch);
    let m = c.until_ready();
    assert_eq!(tags(&m), "12DCEZ");
    let err = &m[4].1;
    assert_eq!(error_field(err, b'C').as_deref(), Some("42501"));
    assert!(
        error_field(err, b'M')
            .unwrap_or_default()
            .contains("test-deny")
    );
    assert_eq!(m[5].1, b"E");
    c.send(&query("ROLLBACK"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "CZ");
    assert_eq!(m[1].1, b"I");

    // Simple query denied: an error and an idle session.
    c.send(&query("SELECT 'airlock_forbidden'"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    assert_eq!(error_field(&m[0].1, b'C').as_deref(), Some("42501"));
    assert_eq!(m[1].1, b"I");

    // Review is refused until the approval workflow exists.
    c.send(&query("SELECT 'airlock_needs_review'"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    let text = error_field(&m[0].1, b'M').unwrap_or_default();
    assert!(
        text.contains("requires review") && text.contains("test-review"),
        "{text}"
    );

    // A prepared statement is decided at Parse and again at each later Execute.
    let before = proxy.decider.seen.lock().map(|s| s.len()).unwrap_or(0);
    let mut b = parse("s1", "SELECT 42");
    b.extend(sync());
    c.send(&b);
    assert_eq!(tags(&c.until_ready()), "1Z");
    for _ in 0..2 {
        let mut b = bind("", "s1");
        b.extend(execute(""));
        b.extend(sync());
        c.send(&b);
        let m = c.until_ready();
        assert_eq!(tags(&m), "2DCZ");
    }
    let seen = proxy
        .decider
        .seen
        .lock()
        .map(|s| s[before..].to_vec())
        .unwrap_or_default();
    assert_eq!(seen, vec!["SELECT 42"; 3]);

    // SQL DEALLOCATE removes s1 behind the protocol's back; a new Parse of the same name is
    // what the server then runs, so it is what a Bind is judged as.
    c.send(&query("DEALLOCATE s1"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    let mut b = parse("s1", "SELECT 43");
    b.extend(sync());
    c.send(&b);
    assert_eq!(tags(&c.until_ready()), "1Z");
    let before = proxy.decider.seen.lock().map(|s| s.len()).unwrap_or(0);
    let mut b = bind("", "s1");
    b.extend(execute(""));
    b.extend(sync());
    c.send(&b);
    let m = c.until_ready();
    assert_eq!(tags(&m), "2DCZ");
    assert!(m[1].1.ends_with(b"43"), "the server ran the new statement");
    let seen = proxy
        .decider
        .seen
        .lock()
        .map(|s| s[before..].to_vec())
        .unwrap_or_default();
    assert_eq!(seen, vec!["SELECT 43"], "judged as what the server ran");
    // A Parse of a name the server still holds fails there; the gateway no longer knows
    // which text the name runs, so a Bind of it is refused until it is closed.
    let mut b = parse("s1", "SELECT 44");
    b.extend(sync());
    c.send(&b);
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    assert_eq!(error_field(&m[0].1, b'C').as_deref(), Some("42P05"));
    let mut b = bind("", "s1");
    b.extend(execute(""));
    b.extend(sync());
    c.send(&b);
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    assert_eq!(error_field(&m[0].1, b'C').as_deref(), Some("42501"));

    // An Execute of a portal the gateway never saw bound is refused.
    let mut b = execute("nope");
    b.extend(sync());
    c.send(&b);
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    assert_eq!(error_field(&m[0].1, b'C').as_deref(), Some("42501"));

    // The fastpath function call protocol is refused.
    c.send(&msg(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
    let m = c.until_ready();
    assert_eq!(tags(&m), "EZ");
    assert_eq!(error_field(&m[0].1, b'C').as_deref(), Some("42501"));

    // A multi-statement Query is judged whole: nothing of it runs.
    c.send(&query(
        "CREATE TABLE nope (v int); SELECT 'airlock_forbidden'",
    ));
    assert_eq!(tags(&c.until_ready()), "EZ");

    // Still usable.
    c.send(&query("SELECT 7"));
    assert_eq!(tags(&c.until_ready()), "TDCZ");
    c.send(&query(
        "SELECT count(*) FROM pg_class WHERE relname = 'nope'",
    ));
    let m = c.until_ready();
    assert_eq!(tags(&m), "TDCZ");
    assert!(m[1].1.ends_with(b"0"), "the denied Query created nothing");

    // COPY FROM STDIN with one CopyData far larger than the gateway's read buffer: streamed.
    c.send(&query("CREATE TABLE big (v text)"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    c.send(&query("COPY big FROM STDIN"));
    assert_eq!(c.read_msg().0, b'G');
    let line = format!("{}\n", "y".repeat(999));
    let data = line.repeat(3000);
    c.send(&msg(b'd', data.as_bytes()));
    c.send(&msg(b'c', &[]));
    let m = c.until_ready();
    assert_eq!(tags(&m), "CZ");
    assert_eq!(m[0].1, b"COPY 3000\0");
    c.send(&msg(b'X', &[]));
}

#[test]
fn startup_negotiation_and_declined_encryption() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    let mut c = RawClient::connect(proxy.addr);
    // SSLRequest declined (no client_tls configured), then GSSENCRequest declined.
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    assert_eq!(c.read_raw(1), b"N");
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    assert_eq!(c.read_raw(1), b"N");
    // A 3.2 client with a protocol option is told to fall back to 3.0.
    c.startup(
        2,
        &[("user", "x"), ("database", DATABASE), ("_pq_.future", "1")],
    );
    let (tag, body) = c.read_msg();
    assert_eq!(tag, b'v');
    assert_eq!(&body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&body[8..], b"_pq_.future\0");
    let m = c.until_ready();
    assert_eq!(m[0].0, b'R');
    assert!(
        m.iter()
            .any(|(t, b)| *t == b'S' && b.starts_with(b"server_version\0"))
    );
    c.send(&query("SELECT 1"));
    assert_eq!(tags(&c.until_ready()), "TDCZ");

    // Protocol 2 is refused with a FATAL error, as PostgreSQL does.
    let mut c = RawClient::connect(proxy.addr);
    c.send(&[0, 0, 0, 8, 0, 2, 0, 0]);
    let (tag, body) = c.read_msg();
    assert_eq!(tag, b'E');
    assert_eq!(error_field(&body, b'C').as_deref(), Some("0A000"));

    // Startup settings that would bypass policy are refused.
    let mut c = RawClient::connect(proxy.addr);
    c.startup(0, &[("user", "x"), ("options", "-c role=postgres")]);
    let (tag, body) = c.read_msg();
    assert_eq!(tag, b'E');
    assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
    assert!(
        error_field(&body, b'M')
            .unwrap_or_default()
            .contains("options")
    );
}

#[test]
fn cancel_reaches_the_right_backend() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    let script = r#"
import os, threading, time, psycopg
conn = psycopg.connect(os.environ["DSN"])
def cancel():
    time.sleep(1.5)
    conn.cancel()
threading.Thread(target=cancel).start()
t = time.time()
try:
    conn.execute("SELECT pg_sleep(60)")
    print("not cancelled")
except psycopg.errors.QueryCanceled:
    print("cancelled after", round(time.time() - t))
conn.rollback()
print("then", conn.execute("SELECT 5").fetchone()[0])
"#;
    let (ok, out, err) = python(&dsn(proxy.addr, ""), script);
    assert!(ok, "{out}{err}");
    assert!(out.contains("cancelled after"), "{out}");
    let secs: u64 = out
        .split("cancelled after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(99);
    assert!(secs < 10, "{out}");
    assert!(out.contains("then 5"), "{out}");
    assert!(logs().contains("cancel request forwarded"));
}

#[test]
fn tls_on_both_legs_with_channel_binding() {
    let tls = TlsFixture::generate();
    let pg = PgServer::start(Some(&tls));
    capture_logs();
    let section = format!(
        "      user: {}\n      password: \"{}\"\n      database: {DATABASE}\n      tls:\n        mode: verify-full\n        ca_file: {}\n        server_name: localhost\n      client_tls:\n        cert_file: {}\n        key_file: {}\n",
        TLS_USER.0,
        TLS_USER.1,
        tls.ca_cert.display(),
        tls.cert.display(),
        tls.key.display()
    );
    let proxy = TestProxy::start(pg.addr(), &section);
    let client_tls = format!("sslmode=verify-full sslrootcert={}", tls.ca_cert.display());
    let (ok, out, err) = psql(
        &dsn(proxy.addr, &client_tls),
        &[
            "-c",
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "\\conninfo",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("tlsuser|t"), "server leg is TLS: {out}");
    assert!(out.contains("SSL connection"), "client leg is TLS: {out}");
    // Plaintext on the local leg is still accepted.
    let (ok, out, err) = psql(
        &dsn(proxy.addr, ""),
        &[
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t");

    // The gateway's login used SCRAM with channel binding; a wrong name fails verification.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = PostgresTarget {
        user: TLS_USER.0.into(),
        password: Some(TLS_USER.1.into()),
        password_env: None,
        password_file: None,
        database: Some(DATABASE.into()),
        tls: UpstreamTls {
            mode: UpstreamTlsMode::VerifyFull,
            ca_file: Some(tls.ca_cert.clone()),
            server_name: Some("localhost".into()),
        },
        client_tls: None,
        roles: Vec::new(),
        run_as: None,
        rotate_every: None,
        cleartext_password: false,
    };
    let params = [("user", TLS_USER.0), ("database", DATABASE)];
    let b = rt
        .block_on(backend_auth::connect(&cfg, pg.addr(), &params))
        .expect("login");
    assert_eq!(b.auth, AuthMethod::ScramSha256Plus);
    cfg.tls.server_name = Some("wrong.example".into());
    let e = rt
        .block_on(backend_auth::connect(&cfg, pg.addr(), &params))
        .expect_err("wrong name must fail");
    assert!(matches!(e, BackendError::Handshake(_)), "{e}");
    // `require` encrypts without verifying; the IP (no server_name) is fine then.
    cfg.tls = UpstreamTls {
        mode: UpstreamTlsMode::Require,
        ca_file: None,
        server_name: None,
    };
    let b = rt
        .block_on(backend_auth::connect(&cfg, pg.addr(), &params))
        .expect("login with require");
    assert_eq!(b.auth, AuthMethod::ScramSha256Plus);
}

#[test]
fn md5_and_cleartext_backend_logins() {
    let pg = PgServer::start(None);
    capture_logs();
    for (user, password) in [MD5_USER, CLEAR_USER] {
        // Cleartext only where the target says so (no verify-full TLS here).
        let section = format!(
            "{}      cleartext_password: {}\n",
            gateway_section(user, password),
            user == CLEAR_USER.0
        );
        let proxy = TestProxy::start(pg.addr(), &section);
        let (ok, out, err) = psql(&dsn(proxy.addr, ""), &["-c", "SELECT current_user"], None);
        assert!(ok, "{user}: {err}");
        assert_eq!(out.trim(), user);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = PostgresTarget {
        user: MD5_USER.0.into(),
        password: None,
        password_env: None,
        password_file: None,
        database: None,
        tls: UpstreamTls::default(),
        client_tls: None,
        roles: Vec::new(),
        run_as: None,
        rotate_every: None,
        cleartext_password: false,
    };
    // The password may come from a file.
    let dir = TempDir::new("airlock-pw");
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{}\n", MD5_USER.1)).expect("write password");
    cfg.password_file = Some(file);
    let params = [("user", MD5_USER.0), ("database", DATABASE)];
    let b = rt
        .block_on(backend_auth::connect(&cfg, pg.addr(), &params))
        .expect("md5 login");
    assert_eq!(b.auth, AuthMethod::Md5);
    cfg.user = CLEAR_USER.0.into();
    cfg.password_file = None;
    cfg.password = Some(CLEAR_USER.1.into());
    let params = [("user", CLEAR_USER.0), ("database", DATABASE)];
    // A server asking for the password in cleartext, with no verified TLS: whoever answers on
    // the address would receive it. Refused unless the target allows it.
    let refused = rt.block_on(backend_auth::connect(&cfg, pg.addr(), &params));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("cleartext")),
        "{:?}",
        refused.as_ref().map(|b| b.auth)
    );
    cfg.cleartext_password = true;
    let b = rt
        .block_on(backend_auth::connect(&cfg, pg.addr(), &params))
        .expect("cleartext login");
    assert_eq!(b.auth, AuthMethod::Cleartext);
}

#[test]
fn wrong_backend_credentials_give_a_clear_error_and_a_log_line() {
    let pg = PgServer::start(None);
    capture_logs();
    let proxy = TestProxy::start(
        pg.addr(),
        &gateway_section(GATEWAY_USER.0, "not-the-password"),
    );
    let (ok, _, err) = psql(&dsn(proxy.addr, ""), &["-c", "SELECT 1"], None);
    assert!(!ok);
    assert!(
        err.contains("airlock could not authenticate to target demo-db as user gw"),
        "{err}"
    );
    assert!(err.contains("password authentication failed"), "{err}");
    let log = logs();
    assert!(
        log.lines().any(|l| l.contains("backend login failed")
            && l.contains("demo-db")
            && l.contains("28P01")),
        "{log}"
    );
}

/// Resident memory of this process (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("VmRSS")
}

/// A logged-in raw client.
fn raw_session(proxy: &TestProxy) -> RawClient {
    let mut c = RawClient::connect(proxy.addr);
    c.startup(0, &[("user", "x"), ("database", DATABASE)]);
    assert_eq!(
        c.until_ready().last().map(|m| m.1.clone()),
        Some(b"I".to_vec())
    );
    c
}

/// A header declaring a `len`-byte message of type `tag` (nothing of the body is sent).
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut h = vec![tag];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[test]
fn wire_limits_refuse_on_the_header_and_bound_buffers() {
    let pg = PgServer::start(None);
    let proxy = gateway(&pg);
    // Warm up: allocator arenas and the runtime's threads exist before the baseline.
    for _ in 0..3 {
        let mut c = raw_session(&proxy);
        c.send(&query("SELECT 1"));
        assert_eq!(tags(&c.until_ready()), "TDCZ");
    }
    let before = rss_kib();
    // An unknown message type declaring 64 MiB: refused as soon as its 5-byte header is read
    // (nothing more is sent, so waiting for the body would hang here), 40 times over.
    for _ in 0..40 {
        let mut c = raw_session(&proxy);
        c.send(&header(b'Y', 64 << 20));
        let (tag, body) = c.read_msg();
        assert_eq!(tag, b'E');
        assert_eq!(error_field(&body, b'S').as_deref(), Some("FATAL"));
        assert_eq!(error_field(&body, b'C').as_deref(), Some("08P01"));
        let m = error_field(&body, b'M').unwrap_or_default();
        assert!(m.contains("invalid frontend message type 89"), "{m}");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // A Sync carrying a body, a Query over the statement limit (1 MiB): refused on the header.
    for (h, what) in [
        (header(b'S', 4 + 100), "Sync message of 105 bytes"),
        (header(b'Q', 4 + (2 << 20)), "Query message of"),
        (header(b'E', 4 + 20_000), "Execute message of"),
    ] {
        let mut c = raw_session(&proxy);
        c.send(&h);
        let (tag, body) = c.read_msg();
        assert_eq!(tag, b'E');
        assert_eq!(error_field(&body, b'C').as_deref(), Some("54000"));
        let m = error_field(&body, b'M').unwrap_or_default();
        assert!(m.contains(what) && m.contains("exceeds the limit"), "{m}");
    }
    // The daemon-wide budget (256 MiB): four sessions each waiting for the rest of a 64 MiB
    // Bind hold it all; a fifth is refused at once; once they leave, the budget is free again.
    let mut waiting: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut c = raw_session(&proxy);
            c.send(&header(b'B', 64 << 20));
            c.send(b"\0\0");
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = raw_session(&proxy);
    c.send(&header(b'B', 64 << 20));
    let (tag, body) = c.read_msg();
    assert_eq!(tag, b'E');
    assert_eq!(
        error_field(&body, b'C').as_deref(),
        Some("53200"),
        "{body:?}"
    );
    waiting.clear();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = raw_session(&proxy);
    c.send(&header(b'B', 64 << 20));
    c.stream
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let r = loop {
        match std::io::Read::read(&mut c.stream, &mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a message within the freed budget waits for its body: {r:?}"
    );
    // Everything else still works.
    let mut c = raw_session(&proxy);
    c.send(&query("SELECT 7"));
    assert_eq!(tags(&c.until_ready()), "TDCZ");
}
