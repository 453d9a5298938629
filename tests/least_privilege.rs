//! Least privilege on the database side (issue 26), end to end: a real PostgreSQL 15, the
//! airlock PostgreSQL handler with the real policy engine and approval service in process,
//! and real clients (psql, a raw wire client).
//!
//! The gateway logs in as `gw` (`NOINHERIT`, a member of `app_readonly` and `app_writer`,
//! no rights of its own on the tables); rules say which of the two each command runs as.
//! Deliberately wrong rules let writes through, so that the refusal seen is the server's.

#[path = "support/postgres.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use airlock::approval::{Approvals, Principal, Ruling};
use airlock::config::Config;
use airlock::policy::Engine;
use airlock::protocol::postgres::Hooks;
use airlock::runtime::Context;
use support::*;

/// One PostgreSQL for the tests of this file that run at the same time (stopped when the
/// last of them drops it), with the roles and the table.
fn shared_pg() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = slot.upgrade() {
        return pg;
    }
    let pg = Arc::new(PgServer::start(None));
    let gw = GATEWAY_USER.0;
    for sql in [
        "CREATE ROLE app_readonly NOLOGIN".to_string(),
        "CREATE ROLE app_writer NOLOGIN".to_string(),
        // Listed by a target but never granted to the gateway: switching to it fails.
        "CREATE ROLE app_ghost NOLOGIN".to_string(),
        format!("GRANT app_readonly, app_writer TO {gw}"),
        format!("ALTER ROLE {gw} NOINHERIT"),
    ] {
        pg.admin(&sql);
    }
    pg.admin_db(
        DATABASE,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); \
         INSERT INTO accounts VALUES (1, 100); \
         CREATE TABLE notes (id int PRIMARY KEY, body text); \
         CREATE TABLE ledger (id int PRIMARY KEY, body text); \
         INSERT INTO ledger VALUES (1, 'x'); \
         GRANT SELECT ON accounts, notes, ledger TO app_readonly; \
         GRANT SELECT, INSERT, UPDATE ON accounts, notes, ledger TO app_writer;",
    );
    *slot = Arc::downgrade(&pg);
    pg
}

/// Reads pass as app_readonly; a deliberately wrong rule allows INSERT (still as
/// app_readonly); `allow-notes-as-writer` runs INSERTs into notes as app_writer; UPDATEs need
/// review and run as app_writer once approved.
const RULES: &str = r#"
rules:
  - name: notes-as-writer
    sql: { kinds: [insert], tables: [notes] }
    action: allow
    run_as: app_writer
  - name: wrongly-allowed-insert
    sql: { kinds: [insert] }
    action: allow
  - name: reads
    sql: { classes: [read, session, transaction] }
    action: allow
  - name: updates-reviewed
    sql: { kinds: [update] }
    action: review
    review: { approvers: [dba], timeout: 60s }
    approved_run_as: app_writer
default: deny
"#;

struct Instance {
    proxy: SocketAddr,
    api: SocketAddr,
    ctx: Arc<Context>,
    _state: TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

impl Instance {
    fn start(pg: &PgServer) -> Self {
        let login = format!(
            "      user: {}\n      password: \"{}\"\n      roles: [app_readonly, app_writer]\n      run_as: app_readonly\n",
            GATEWAY_USER.0, GATEWAY_USER.1
        );
        Self::start_with(pg, &login, RULES)
    }

    /// `login` holds the lines of the target's `postgres:` block besides `database`.
    fn start_with(pg: &PgServer, login: &str, rules: &str) -> Self {
        let state = TempDir::new("airlock-leastpriv");
        let yaml = format!(
            "daemon:\n  state_dir: {state}\n  approvals:\n    store: sqlite\n\
             targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2/32\"]\n    ports: [5432]\n    upstream: \"{upstream}\"\n    postgres:\n{login}      database: {DATABASE}\n{rules}",
            state = state.path().display(),
            upstream = pg.addr(),
        );
        let config = Config::parse(std::path::Path::new("test.yaml"), &yaml).expect("config");
        let engine = Engine::new(&config).expect("engine");
        let target = Arc::clone(&config.targets[0]);
        let approvals_cfg = config.daemon.approvals.clone();
        let state_dir = config.daemon.state_dir.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let audit = {
            let _guard = rt.enter();
            airlock::audit::Recorder::open(&config.daemon.audit, &config.daemon.state_dir)
                .expect("audit log")
        };
        let ctx = Arc::new(
            Context::with_parts(
                config,
                engine,
                audit,
                Arc::new(airlock::metrics::Metrics::new()),
                TEST_MASK_KEY.to_vec(),
            )
            .expect("context"),
        );
        let svc = rt
            .block_on(Approvals::open(
                &approvals_cfg,
                &state_dir,
                ctx.metrics.clone(),
            ))
            .expect("approvals");
        ctx.approvals.set(svc).expect("set approvals");
        let proxy = serve_gateway(&rt, target, pg.addr(), ctx.clone(), Hooks::default());
        let api_listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind api");
        let api = api_listener.local_addr().expect("api addr");
        rt.spawn(airlock::api::serve_listener(api_listener, ctx.clone()));
        Instance {
            proxy,
            api,
            ctx,
            _state: state,
            rt: Some(rt),
        }
    }

    /// Approves the pending request for `command` once it shows up.
    fn approve(&self, command: &str) {
        let rt = self.rt.as_ref().expect("runtime");
        let svc = self.ctx.approvals.get().expect("approvals").clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = rt.block_on(svc.list(true)).expect("list");
            if let Some(r) = pending
                .iter()
                .find(|r| r.commands[0].text.contains(command))
            {
                rt.block_on(svc.decide(&r.id, &Principal::admin(), Ruling::Approve, None))
                    .expect("approve");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no pending request for {command}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn balance(pg: &PgServer) -> String {
    pg.admin_db(DATABASE, "SELECT balance FROM accounts WHERE id = 1")
        .trim()
        .to_owned()
}

#[test]
fn wrongly_allowed_write_is_refused_by_the_server_and_the_session_goes_on() {
    let pg = shared_pg();
    let inst = Instance::start(&pg);
    let script = "\\set VERBOSITY verbose\n\
                  SELECT current_user;\n\
                  INSERT INTO accounts VALUES (7, 1);\n\
                  SELECT 'still here', current_user, count(*) FROM accounts;\n";
    let (_, out, err) = psql(
        &dsn(inst.proxy, ""),
        &["-v", "ON_ERROR_STOP=0"],
        Some(script),
    );
    // PostgreSQL's own refusal: its SQLSTATE and wording, not an airlock message.
    assert!(
        err.contains("ERROR:  42501: permission denied for table accounts"),
        "{err}"
    );
    assert!(!err.contains("airlock"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["app_readonly", "still here|app_readonly|1"],
        "{out}{err}"
    );
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT count(*) FROM accounts WHERE id = 7")
            .trim(),
        "0"
    );
}

/// A role switch the server refuses (the rule's `run_as` names a role the gateway was never
/// granted) refuses the command, and the audit log records a denial by that rule with the
/// server's reason, never an allowed command; the session goes on in its base role.
#[test]
fn refused_role_switch_is_recorded_as_a_denial() {
    let pg = shared_pg();
    let login = format!(
        "      user: {}\n      password: \"{}\"\n      roles: [app_readonly, app_writer, app_ghost]\n      run_as: app_readonly\n",
        GATEWAY_USER.0, GATEWAY_USER.1
    );
    let rules = format!(
        "rules:\n  - name: ghost-deletes\n    sql: {{ kinds: [delete], tables: [ledger] }}\n    action: allow\n    run_as: app_ghost\n{}",
        RULES.trim_start_matches("\nrules:\n")
    );
    let inst = Instance::start_with(&pg, &login, &rules);
    let (_, out, err) = psql(
        &dsn(inst.proxy, ""),
        &["-v", "ON_ERROR_STOP=0"],
        Some("DELETE FROM ledger WHERE id = 424242;\nSELECT 'still here', current_user;\n"),
    );
    assert!(err.contains("app_ghost"), "{err}");
    assert_eq!(out.trim(), "still here|app_readonly", "{out}{err}");
    let rt = inst.rt.as_ref().expect("runtime");
    let dir = inst._state.path().join("audit");
    let deadline = Instant::now() + Duration::from_secs(15);
    let record = loop {
        rt.block_on(inst.ctx.audit.flush()).expect("flush");
        let found = airlock::audit::read_records(&dir)
            .expect("records")
            .iter()
            .map(|r| serde_json::to_value(&r.event).expect("json"))
            .find(|e| e["type"] == "command" && e["command"].to_string().contains("424242"));
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no command record");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(record["action"], "deny", "{record}");
    assert_eq!(record["rule"], "ghost-deletes", "{record}");
    assert!(record.to_string().contains("app_ghost"), "{record}");
}

#[test]
fn approved_update_runs_elevated_for_that_statement_only() {
    let pg = shared_pg();
    let inst = Instance::start(&pg);
    let first = "UPDATE accounts SET balance = 200 WHERE id = 1";
    let second = "UPDATE accounts SET balance = 300 WHERE id = 1";
    let script = format!(
        "\\set VERBOSITY verbose\n\
         {first};\n\
         SELECT 'after', current_user;\n\
         INSERT INTO accounts VALUES (8, 1);\n\
         BEGIN;\n\
         {second};\n\
         SELECT 'in tx', current_user, balance FROM accounts WHERE id = 1;\n\
         INSERT INTO accounts VALUES (9, 1);\n\
         ROLLBACK;\n\
         SELECT 'end', current_user, balance FROM accounts WHERE id = 1;\n"
    );
    let dsn = dsn(inst.proxy, "");
    let client = std::thread::spawn(move || psql(&dsn, &["-v", "ON_ERROR_STOP=0"], Some(&script)));
    inst.approve(first);
    inst.approve(second);
    let (_, out, err) = client.join().expect("psql thread");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "UPDATE 1",
            "after|app_readonly",
            "BEGIN",
            "UPDATE 1",
            "in tx|app_readonly|300",
            "ROLLBACK",
            "end|app_readonly|200",
        ],
        "{out}{err}"
    );
    // Both writes after an elevation were refused by the server itself.
    assert_eq!(
        err.matches("ERROR:  42501: permission denied for table accounts")
            .count(),
        2,
        "{err}"
    );
    // (airlock speaks only in the notices naming the approval requests)
    assert!(
        err.lines()
            .filter(|l| l.contains("ERROR"))
            .all(|l| !l.contains("airlock")),
        "{err}"
    );
    assert_eq!(balance(&pg), "200");
}

#[test]
fn role_switches_are_invisible_to_the_client() {
    let pg = shared_pg();
    let inst = Instance::start(&pg);
    let mut c = RawClient::connect(inst.proxy);
    c.startup(0, &[("user", "someone"), ("database", DATABASE)]);
    let login = c.until_ready();
    assert_eq!(login.last().map(|m| m.0), Some(b'Z'));
    // As app_writer (rule notes-as-writer), then back to app_readonly, in the simple protocol:
    // exactly the messages of each statement.
    c.send(&query("INSERT INTO notes VALUES (1, 'simple')"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    c.send(&query("SELECT current_user"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "TDCZ");
    assert!(String::from_utf8_lossy(&m[1].1).contains("app_readonly"));
    // The extended protocol, at the start of a pipeline.
    let mut batch = parse("", "INSERT INTO notes VALUES (2, 'extended')");
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(sync());
    c.send(&batch);
    assert_eq!(tags(&c.until_ready()), "12CZ");
    // Inside a transaction the switch is LOCAL: it ends with the transaction.
    c.send(&query("BEGIN"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    c.send(&query("INSERT INTO notes VALUES (3, 'in tx')"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    c.send(&query("COMMIT"));
    assert_eq!(tags(&c.until_ready()), "CZ");
    c.send(&query("SELECT current_user, count(*) FROM notes"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "TDCZ");
    let row = String::from_utf8_lossy(&m[1].1).into_owned();
    assert!(row.contains("app_readonly") && row.contains('3'), "{row:?}");
    // A role change in the middle of a pipeline is refused (by the gateway, before the
    // server runs anything), and the session goes on.
    let mut batch = parse("", "SELECT 1");
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(parse("", "INSERT INTO notes VALUES (4, 'mid')"));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(sync());
    c.send(&batch);
    let m = c.until_ready();
    assert_eq!(tags(&m), "12DCEZ");
    let msg = error_field(&m[4].1, b'M').unwrap_or_default();
    assert!(msg.contains("start of a pipeline"), "{msg}");
    c.send(&query("SELECT count(*) FROM notes"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "TDCZ");
    assert!(String::from_utf8_lossy(&m[1].1).contains('3'));
    // What resets the role (when a rule lets it run at all) does not leave the session in the
    // login role: the next command runs as app_readonly again.
    for reset in ["RESET ALL", "DISCARD ALL", "BEGIN; RESET ALL; COMMIT"] {
        c.send(&query(reset));
        let m = c.until_ready();
        assert!(
            matches!(tags(&m).as_str(), "CZ" | "CCCZ" | "EZ"),
            "{reset}: {m:?}"
        );
        c.send(&query("SELECT current_user"));
        let m = c.until_ready();
        assert_eq!(tags(&m), "TDCZ", "{reset}");
        assert!(
            String::from_utf8_lossy(&m[1].1).contains("app_readonly"),
            "after {reset}: {:?}",
            String::from_utf8_lossy(&m[1].1)
        );
    }
}

/// The login role whose password the rotation test changes (not `gw`, which the other tests
/// of this file use at the same time), with pgbench's tables readable.
const ROT_USER: &str = "rot_gw";

fn prepare_rotation(pg: &PgServer, first: &str) {
    pg.admin(&format!("CREATE ROLE {ROT_USER} LOGIN PASSWORD '{first}'"));
    let out = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            &pg.host,
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-U", "postgres", DATABASE])
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.admin_db(
        DATABASE,
        &format!(
            "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers TO {ROT_USER}"
        ),
    );
}

/// Whether `password` logs in as the rotated role, directly on the server.
fn logs_in(pg: &PgServer, password: &str) -> bool {
    let target = airlock::config::PostgresTarget {
        user: ROT_USER.into(),
        password: Some(password.into()),
        password_env: None,
        password_file: None,
        database: Some(DATABASE.into()),
        tls: Default::default(),
        client_tls: None,
        roles: Vec::new(),
        run_as: None,
        rotate_every: None,
        cleartext_password: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(airlock::protocol::postgres::backend_auth::connect(
        &target,
        pg.addr(),
        &[("user", ROT_USER), ("database", DATABASE)],
    ))
    .is_ok()
}

#[test]
fn rotation_under_pgbench_fails_no_transaction_and_retires_the_old_password() {
    let pg = shared_pg();
    let first = "rot-secret-0";
    prepare_rotation(&pg, first);
    let dir = TempDir::new("airlock-rotate");
    let file = dir.path().join("db.password");
    std::fs::write(&file, format!("{first}\n")).expect("password file");
    let login = format!(
        "      user: {ROT_USER}\n      password_file: {}\n",
        file.display()
    );
    let rules = "rules:\n  - name: reads\n    sql: { classes: [read, session, transaction] }\n    action: allow\ndefault: deny\n";
    let inst = Instance::start_with(&pg, &login, rules);
    // Sessions kept open across the rotation, and a new session per transaction.
    let proxy = inst.proxy;
    let kept =
        std::thread::spawn(move || pgbench(proxy, &["-S", "-n", "-c", "4", "-j", "2", "-T", "6"]));
    let fresh =
        std::thread::spawn(move || pgbench(proxy, &["-S", "-n", "-C", "-c", "2", "-T", "6"]));
    std::thread::sleep(Duration::from_secs(2));
    let config = inst.ctx.config.load();
    let rt = inst.rt.as_ref().expect("runtime");
    let rotated = rt.block_on(airlock::protocol::credentials::rotate_recorded(
        &inst.ctx,
        &config.targets[0],
        pg.addr(),
    ));
    assert_eq!(rotated.expect("rotation"), file);
    for (name, run) in [("kept", kept), ("fresh", fresh)] {
        let (ok, out, err) = run.join().expect("pgbench thread");
        assert!(ok, "{name}: {out}{err}");
        assert!(
            out.contains("number of failed transactions: 0 "),
            "{name}: {out}{err}"
        );
        let done: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(done > 0, "{name}: {out}");
    }
    let new = std::fs::read_to_string(&file).expect("password file");
    let new = new.trim_end();
    assert_ne!(new, first);
    assert!(new.len() >= 32, "{new:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Recorded in the audit log, without the secret.
    rt.block_on(inst.ctx.audit.flush()).expect("audit flush");
    let mut log = String::new();
    let audit_dir = inst._state.path().join("audit");
    for e in std::fs::read_dir(&audit_dir).expect("audit dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            log.push_str(&String::from_utf8_lossy(&std::fs::read(&p).expect("read")));
        }
    }
    assert!(
        log.contains("airlock:credential-rotation") && log.contains("ALTER ROLE"),
        "{log}"
    );
    assert!(!log.contains(new), "the audit log holds the new password");
    assert!(!logs_in(&pg, first), "the old password still logs in");
    assert!(logs_in(&pg, new), "the new password does not log in");
    // On demand through the daemon's API: rotated again, recorded again.
    let token = std::fs::read_to_string(inst._state.path().join("api.token")).expect("token");
    let (status, body) = post(inst.api, "/v1/targets/db/rotate-credentials", token.trim());
    assert_eq!(status, 200, "{body}");
    let newer = std::fs::read_to_string(&file).expect("password file");
    let newer = newer.trim_end().to_owned();
    assert_ne!(newer, new);
    assert!(!logs_in(&pg, new) && logs_in(&pg, &newer));
    let (status, _) = post(inst.api, "/v1/targets/db/rotate-credentials", "wrong");
    assert_eq!(status, 401);
    // The CLI with a configuration naming the daemon's API goes through it.
    let cli_cfg = dir.path().join("daemon.yaml");
    std::fs::write(
        &cli_cfg,
        format!(
            "daemon:\n  state_dir: {}\n  api: \"{}\"\ntargets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2/32\"]\n    ports: [5432]\n    postgres:\n      user: {ROT_USER}\n      password_file: {}\n",
            inst._state.path().display(),
            inst.api,
            file.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["credentials", "rotate", "db", "--config"])
        .arg(&cli_cfg)
        .env("AIRLOCK_LOG", "warn")
        .output()
        .expect("airlock credentials rotate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("recorded in the audit log"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newer = std::fs::read_to_string(&file).expect("password file");
    let newer = newer.trim_end().to_owned();
    assert!(logs_in(&pg, &newer));
    let new = newer.as_str();
    // A failed rotation (the CLI with a wrong current password) changes nothing and says why.
    std::fs::write(&file, "not-the-password\n").expect("password file");
    let cfg = dir.path().join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2/32\"]\n    ports: [5432]\n    upstream: \"{}\"\n    postgres:\n      user: {ROT_USER}\n      password_file: {}\n      database: {DATABASE}\n",
            pg.addr(),
            file.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["credentials", "rotate", "db", "--config"])
        .arg(&cfg)
        .env("AIRLOCK_LOG", "warn")
        .output()
        .expect("airlock credentials rotate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("logging in with the current password") && err.contains("unchanged"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "not-the-password\n"
    );
    assert!(logs_in(&pg, new), "a failed rotation changed the password");
}

#[test]
fn approved_update_elevated_through_the_extended_protocol() {
    let pg = shared_pg();
    let inst = Instance::start(&pg);
    let update = "UPDATE ledger SET body = 'approved' WHERE id = 1";
    // psycopg 3 sends Parse/Bind/Describe/Execute/Sync for each execute.
    let script = format!(
        r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as c:
    cur = c.execute("{update}")
    print("updated", cur.rowcount)
    print("after", c.execute("SELECT current_user").fetchone()[0])
    try:
        c.execute("INSERT INTO ledger VALUES (11, 'y')")
        print("insert ran")
    except psycopg.Error as e:
        print("insert", e.sqlstate)
    print("end", c.execute("SELECT current_user").fetchone()[0])
"#
    );
    let dsn = dsn(inst.proxy, "");
    let client = std::thread::spawn(move || python(&dsn, &script));
    inst.approve(update);
    let (ok, out, err) = client.join().expect("python thread");
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "updated 1",
            "after app_readonly",
            "insert 42501",
            "end app_readonly"
        ],
        "{out}{err}"
    );
    assert_eq!(
        pg.admin_db(DATABASE, "SELECT body FROM ledger WHERE id = 1")
            .trim(),
        "approved"
    );
}

#[test]
fn approved_statement_in_the_middle_of_a_pipeline_is_elevated_inline() {
    let pg = shared_pg();
    let inst = Instance::start(&pg);
    let mut c = RawClient::connect(inst.proxy);
    c.startup(0, &[("user", "someone"), ("database", DATABASE)]);
    c.until_ready();
    // SELECT, then the reviewed UPDATE, then another write a wrong rule allows, in one
    // pipeline: only the UPDATE runs as app_writer.
    let update = "UPDATE ledger SET body = 'inline' WHERE id = 1";
    let mut batch = parse("", "SELECT 1");
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(parse("", update));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(parse("", "INSERT INTO ledger VALUES (12, 'z')"));
    batch.extend(bind("", ""));
    batch.extend(execute(""));
    batch.extend(sync());
    c.send(&batch);
    inst.approve(update);
    let m = c.until_ready();
    let seen: String = tags(&m).chars().filter(|t| *t != 'N').collect();
    assert_eq!(seen, "12DC12C12EZ", "{m:?}");
    let e = m.iter().find(|x| x.0 == b'E').expect("error");
    assert_eq!(error_field(&e.1, b'C').as_deref(), Some("42501"));
    let text = error_field(&e.1, b'M').unwrap_or_default();
    assert!(
        text.contains("permission denied for table ledger"),
        "{text}"
    );
    c.send(&query("SELECT current_user"));
    let m = c.until_ready();
    assert_eq!(tags(&m), "TDCZ");
    assert!(String::from_utf8_lossy(&m[1].1).contains("app_readonly"));
    // The failed pipeline rolled the UPDATE back with it (one implicit transaction).
    assert_ne!(
        pg.admin_db(DATABASE, "SELECT body FROM ledger WHERE id = 1")
            .trim(),
        "inline"
    );
}

/// A bare HTTP/1.1 POST with a bearer token: (status, body).
fn post(api: SocketAddr, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).expect("connect api");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}
