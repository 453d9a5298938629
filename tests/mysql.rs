//! MySQL through airlock, end to end and through TRANSPARENT interception: one real MariaDB
//! 10.11 on the `db` test host (shared by every test of this file), the real daemon protecting
//! a test cgroup, and real unmodified clients run in that cgroup in the node namespace: the
//! `mariadb` CLI, PyMySQL, mysql-connector-python (C extension and pure Python) and sysbench.
//! None of them knows a database password; the gateway logs in with its own accounts.
//!
//! Needs root (CI runs as root) and `cargo xtask setup` (MariaDB, sysbench, the Python venv).

#![allow(clippy::unwrap_used)]

mod support;

#[path = "support/mysql.rs"]
mod my;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use my::{Certs, DATABASE, EXTRA_PORT, GW_ED25519, GW_NATIVE, MYSQL_PYTHON, MariaDb, PORT};
use support::{
    DB_ADDR, DB_ADDR_2, Daemon, TempDir, TestCgroup, Topology, airlock_bin, require_root, sh,
    sh_ok, unique_id,
};

const API_PORT: u16 = 7081;
const METRICS_PORT: u16 = 7082;

/// The least-privilege target's login user: no rights of its own, granted `app_readonly`
/// (SELECT) and `app_writer` (SELECT, INSERT, UPDATE, DELETE) on the test database.
const GW_ROLES: (&str, &str) = ("gw_roles", "roles-secret");
/// The same for the `mariadb-roles-2` target, whose grants a test takes away mid-session.
const GW_ROLES_2: (&str, &str) = ("gw_roles2", "roles2-secret");
/// The `mariadb-rotate` target's login user (native password, read from a `password_file`),
/// whose password the rotation test changes; and the address of the database host that
/// target protects (only it: the other targets use the other address and port pairs).
const GW_ROTATE: (&str, &str) = ("gw_rot", "rot-secret-0");
const ROTATE_ADDR: &str = "198.18.0.4";

/// The shared world: namespaces, cgroup, MariaDB, the daemon.
struct World {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _db: MariaDb,
    db_socket: PathBuf,
    certs: Certs,
    config: PathBuf,
    _daemon: Daemon,
}

static WORLD: Mutex<Weak<World>> = Mutex::new(Weak::new());

/// The world every test of this file shares (built by the first, torn down after the last).
fn world() -> Arc<World> {
    let mut w = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(world) = w.upgrade() {
        return world;
    }
    let world = Arc::new(World::new());
    *w = Arc::downgrade(&world);
    world
}

/// What one client run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl World {
    fn new() -> World {
        require_root();
        my::require_mysql_tools();
        let _ = airlock_bin();
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        let dir = TempDir::new(&format!("my{}", topo.id));
        let certs = Certs::generate(&dir.path("certs"));
        sh_ok(&format!(
            "ip -n {} addr add {ROTATE_ADDR}/24 dev a{}d1",
            topo.db, topo.id
        ));
        let db = MariaDb::start(&topo.db, &dir.path("mariadb"), &certs);
        db.admin(&format!(
            "CREATE TABLE {DATABASE}.customers (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128), note TEXT);
             INSERT INTO {DATABASE}.customers VALUES
               (1, 'Ada', 'ada@example.com', 'met at the conference'),
               (2, 'Grace', 'grace@example.org', 'write to grace.h@example.net');
             CREATE VIEW {DATABASE}.customer_contacts AS SELECT id, email FROM {DATABASE}.customers;
             CREATE VIEW {DATABASE}.contacts_again AS SELECT * FROM {DATABASE}.customer_contacts;
             CREATE TABLE {DATABASE}.staff (id INT PRIMARY KEY, badge VARCHAR(32));
             INSERT INTO {DATABASE}.staff VALUES (1, 'K7-alpha-19'), (2, 'Q3-delta-44');
             CREATE VIEW {DATABASE}.staff_badges AS SELECT id, badge FROM {DATABASE}.staff;
             CREATE TABLE {DATABASE}.accounts (id INT PRIMARY KEY, balance INT NOT NULL);
             INSERT INTO {DATABASE}.accounts VALUES (1, 100), (2, 200);
             CREATE TABLE {DATABASE}.files (line TEXT);
             CREATE TABLE {DATABASE}.ledger (id INT PRIMARY KEY, body TEXT);
             INSERT INTO {DATABASE}.ledger VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');
             CREATE TABLE {DATABASE}.scratch (id INT PRIMARY KEY, body TEXT);
             INSERT INTO {DATABASE}.scratch VALUES (1, 'untouched');
             CREATE TABLE {DATABASE}.ghost_probe (id INT PRIMARY KEY);
             CREATE ROLE app_readonly;
             CREATE ROLE app_writer;
             CREATE ROLE app_ghost;
             GRANT SELECT, DELETE ON {DATABASE}.ghost_probe TO app_ghost;
             GRANT SELECT ON {DATABASE}.* TO app_readonly;
             GRANT SELECT, INSERT, UPDATE, DELETE ON {DATABASE}.* TO app_writer;
             CREATE USER '{gw}'@'%' IDENTIFIED BY '{pw}';
             GRANT app_readonly TO '{gw}'@'%';
             GRANT app_writer TO '{gw}'@'%';
             CREATE USER '{gw2}'@'%' IDENTIFIED BY '{pw2}';
             GRANT app_readonly TO '{gw2}'@'%';
             GRANT app_writer TO '{gw2}'@'%';
             CREATE USER '{rot}'@'%' IDENTIFIED BY '{rot_pw}';
             GRANT SELECT ON {DATABASE}.customers TO '{rot}'@'%';",
            rot = GW_ROTATE.0,
            rot_pw = GW_ROTATE.1,
            gw = GW_ROLES.0,
            pw = GW_ROLES.1,
            gw2 = GW_ROLES_2.0,
            pw2 = GW_ROLES_2.1,
        ));
        let root = support::cgroup2_root();
        let rel = |child: &str| {
            let p = cg.child(child);
            format!("/{}", p.strip_prefix(&root).unwrap().display())
        };
        let (agent, ops) = (rel("agent"), rel("ops"));
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        let yaml = format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  listen_port_base: 15500
  state_dir: {state}
  api: 127.0.0.1:{API_PORT}
  metrics: 127.0.0.1:{METRICS_PORT}
targets:
  - name: mariadb
    protocol: mysql
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{PORT}]
    mysql:
      user: {gw}
      password: \"{gw_pw}\"
      database: {DATABASE}
  - name: mariadb-secure
    protocol: mysql
    addresses: [\"{DB_ADDR_2}/32\"]
    ports: [{PORT}]
    mysql:
      user: {ed}
      password_file: {pwfile}
      database: {DATABASE}
      client_auth: caching_sha2_password
      tls: {{mode: verify-full, ca_file: {ca}, server_name: localhost}}
      client_tls: {{cert_file: {cert}, key_file: {key}}}
  - name: mariadb-roles
    protocol: mysql
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{EXTRA_PORT}]
    mysql:
      user: {roles_user}
      password: \"{roles_pw}\"
      database: {DATABASE}
      roles: [app_readonly, app_writer, app_ghost]
      run_as: app_readonly
  - name: mariadb-roles-2
    protocol: mysql
    addresses: [\"{DB_ADDR_2}/32\"]
    ports: [{EXTRA_PORT}]
    mysql:
      user: {roles_user2}
      password: \"{roles_pw2}\"
      database: {DATABASE}
      roles: [app_readonly, app_writer]
      run_as: app_readonly
  - name: mariadb-rotate
    protocol: mysql
    addresses: [\"{ROTATE_ADDR}/32\"]
    ports: [{PORT}]
    upstream: \"{ROTATE_ADDR}:{PORT}\"
    mysql:
      user: {rot}
      password_file: {rot_file}
      database: {DATABASE}
identities:
  - name: corp
    oidc: {{issuer: \"https://127.0.0.1:1\", audience: airlock}}
    groups: [staff]
  - name: agents
    workload: {{cgroups: [\"{agent}\"]}}
    groups: [agents]
  - name: ops
    workload: {{cgroups: [\"{ops}\"]}}
    groups: [ops]
rules:
  - name: staff-read
    groups: [staff]
    require: [token]
    classes: [read]
    action: allow
  - name: ops-all
    groups: [ops]
    classes: [read, session, transaction, write, ddl, dcl, admin, unknown]
    action: allow
    mask: []
  - name: roles-wrongly-allowed-writes
    groups: [agents]
    targets: [mariadb-roles, mariadb-roles-2]
    sql: {{kinds: [insert, update], tables: [scratch]}}
    action: allow
  - name: roles-ledger-updates-reviewed
    groups: [agents]
    targets: [mariadb-roles, mariadb-roles-2]
    sql: {{kinds: [update], tables: [ledger]}}
    action: review
    review: {{approvers: [dba], ttl: 1s, timeout: 60s}}
    approved_run_as: app_writer
  - name: roles-ghost-deletes
    groups: [agents]
    targets: [mariadb-roles]
    sql: {{kinds: [delete], tables: [ghost_probe]}}
    action: allow
    run_as: app_ghost
  - name: agents-read
    groups: [agents]
    classes: [read, session, transaction]
    action: allow
  - name: agents-write-review
    groups: [agents]
    classes: [read, session, transaction, write]
    action: review
    review: {{approvers: [dba], ttl: 1s, timeout: 60s}}
  - name: agents-deny-rest
    groups: [agents]
    classes: [ddl, dcl, admin, unknown]
    action: deny
    reason: agents may not run DDL, DCL, admin or unparseable commands
default: deny
masking:
  - name: customer-email
    columns: [\"*.customers.email\"]
    style: partial
  - name: mail-in-text
    detectors: [email]
    style: redact
  - name: staff-badge
    columns: [\"*.staff.badge\"]
    style: redact
",
            cg = cg.path.display(),
            bpffs = bpffs.display(),
            state = dir.path("state").display(),
            gw = GW_NATIVE.0,
            gw_pw = GW_NATIVE.1,
            roles_user = GW_ROLES.0,
            roles_pw = GW_ROLES.1,
            roles_user2 = GW_ROLES_2.0,
            roles_pw2 = GW_ROLES_2.1,
            ed = GW_ED25519.0,
            rot = GW_ROTATE.0,
            rot_file = dir
                .write("rot.password", &format!("{}\n", GW_ROTATE.1))
                .display(),
            pwfile = dir
                .write("ed.password", &format!("{}\n", GW_ED25519.1))
                .display(),
            ca = certs.ca.display(),
            cert = certs.cert.display(),
            key = certs.key.display(),
        );
        let config = dir.write("airlock.yaml", &yaml);
        let daemon = Daemon::start(&cg, &topo, &config, &bpffs, &dir.path("daemon.log"));
        World {
            db_socket: db.socket.clone(),
            _db: db,
            topo,
            cg,
            dir,
            certs,
            config,
            _daemon: daemon,
        }
    }

    /// Runs a shell command as an unmodified client in cgroup child `child` of the node
    /// namespace (so it is intercepted).
    fn client(&self, child: &str, cmd: &str) -> Run {
        let out_file = self.dir.path(&format!("out-{}", unique_id()));
        let err_file = self.dir.path(&format!("err-{}", unique_id()));
        let script = format!("{cmd} >{} 2>{}", out_file.display(), err_file.display());
        let status = sh(&self.cg.run_in(child, &self.topo.node, &script));
        Run {
            ok: status.status.success(),
            stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_file).unwrap_or_default()
                + &String::from_utf8_lossy(&status.stderr),
        }
    }

    /// The `mariadb` CLI to the protected address `host`, with no password.
    fn mariadb(&self, child: &str, host: &str, extra: &str, sql: &str) -> Run {
        let sql = sql.replace('\'', "'\\''");
        self.client(
            child,
            &format!(
                "mariadb --no-defaults -h {host} -P {PORT} -u someone -D {DATABASE} -N -B \
                 --connect-timeout=10 {extra} -e '{sql}'"
            ),
        )
    }

    /// The `mariadb` CLI reading a script from standard input (one statement per line).
    fn mariadb_script(&self, child: &str, host: &str, extra: &str, script: &str) -> Run {
        let path = self
            .dir
            .write(&format!("script-{}.sql", unique_id()), script);
        self.client(
            child,
            &format!(
                "mariadb --no-defaults -h {host} -P {PORT} -u someone -D {DATABASE} -N -B \
                 --connect-timeout=10 {extra} < {}",
                path.display()
            ),
        )
    }

    /// The `mariadb` CLI to the least-privilege target (`EXTRA_PORT`), reading a script from
    /// standard input and going on after errors (`--force`).
    fn mariadb_roles(&self, script: &str) -> Run {
        self.mariadb_roles_at(DB_ADDR, script)
    }

    /// [`World::mariadb_roles`] to `host` (`DB_ADDR_2`: the `mariadb-roles-2` target), never
    /// reconnecting.
    fn mariadb_roles_at(&self, host: &str, script: &str) -> Run {
        let path = self
            .dir
            .write(&format!("script-{}.sql", unique_id()), script);
        self.client(
            "agent",
            &format!(
                "mariadb --no-defaults -h {host} -P {EXTRA_PORT} -u someone -D {DATABASE} -N -B \
                 --connect-timeout=10 --force --skip-reconnect < {}",
                path.display()
            ),
        )
    }

    /// A Python script with PyMySQL and mysql-connector-python; `HOST` and `PORT` in its
    /// environment.
    fn python(&self, child: &str, host: &str, script: &str) -> Run {
        let path = self
            .dir
            .write(&format!("script-{}.py", unique_id()), script);
        self.client(
            child,
            &format!(
                "env HOST={host} PORT={PORT} CA={} {MYSQL_PYTHON} {}",
                self.certs.ca.display(),
                path.display()
            ),
        )
    }

    /// Runs SQL on the server directly (not through airlock).
    fn admin(&self, sql: &str) -> String {
        let out = sh(&format!(
            "mariadb --no-defaults --socket={} -uroot -N -B -e \"{sql}\"",
            self.db_socket.display()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `airlock` CLI in the node namespace (where the API listens).
    fn cli(&self, args: &str) -> Run {
        let out = sh(&format!(
            "{} {} {args} --config {}",
            Topology::enter(&self.topo.node),
            airlock_bin(),
            self.config.display()
        ));
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Waits for a pending approval request whose command text contains `needle`.
    fn wait_pending(&self, needle: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.cli("requests --pending --json");
            if r.ok {
                let list: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                if let Some(req) = list.as_array().and_then(|a| {
                    a.iter().find(|r| {
                        r["commands"][0]["text"]
                            .as_str()
                            .is_some_and(|t| t.contains(needle))
                    })
                }) {
                    return req.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no pending request for {needle}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("daemon.log")).unwrap_or_default()
    }
}

#[test]
fn mariadb_cli_reads_masked_ddl_denied_and_the_session_goes_on() {
    let w = world();
    let r = w.mariadb(
        "agent",
        DB_ADDR,
        "",
        "SELECT id, name, email, note FROM customers ORDER BY id; \
         SELECT CURRENT_USER(); \
         DROP TABLE customers; \
         SELECT COUNT(*) FROM customers",
    );
    // The CLI stops at the first error: the denial; what came before went through, masked.
    assert!(!r.ok, "the DROP must fail: {r:?}");
    assert!(r.stdout.contains("1\tAda\t"), "{r:?}\n{}", w.daemon_log());
    assert!(!r.stdout.contains("ada@example.com"), "{r:?}");
    assert!(!r.stdout.contains("grace.h@example.net"), "{r:?}");
    assert!(r.stdout.contains("1\tAda\t"), "{r:?}");
    assert!(
        r.stdout.contains(&format!("{}@%", GW_NATIVE.0)),
        "the server sees the gateway's account: {r:?}"
    );
    assert!(
        r.stderr.contains("ERROR 1142 (42000)")
            && r.stderr.contains("denied by rule \"agents-deny-rest\""),
        "{r:?}"
    );
    assert_eq!(
        w.admin(&format!("SELECT COUNT(*) FROM {DATABASE}.customers"))
            .trim(),
        "2"
    );
    // --force goes on after the error in the same session.
    let r = w.mariadb_script(
        "agent",
        DB_ADDR,
        "--force",
        "DROP TABLE customers;\nSELECT CONCAT('still ', COUNT(*)) FROM customers;\n",
    );
    assert!(
        r.stdout.contains("still 2"),
        "the session stays usable after a denial: {r:?}\n{}",
        w.daemon_log()
    );
}

/// MariaDB names a view's, subquery's or CTE's alias as a column's origin, not the table's:
/// a masked column read through one is refused (the column rule would not recognise it in
/// the answer), in the text and the binary protocol; the view's other columns pass.
#[test]
fn masked_columns_through_views_subqueries_and_ctes_are_refused() {
    let w = world();
    let refused = [
        "SELECT id, email FROM customer_contacts ORDER BY id",
        "SELECT email FROM contacts_again",
        "SELECT c.* FROM customer_contacts c",
        "SELECT e.email FROM (SELECT email FROM customers) e",
        "SELECT * FROM (SELECT id, email FROM customers) e",
        "WITH c AS (SELECT email FROM customers) SELECT email FROM c",
    ];
    let mut script = String::new();
    for (i, sql) in refused.iter().enumerate() {
        script.push_str(&format!("SELECT 'before {i}';\n{sql};\n"));
    }
    script.push_str("SELECT CONCAT('ids ', MIN(id), ',', MAX(id)) FROM contacts_again;\n");
    let r = w.mariadb_script("agent", DB_ADDR, "--force", &script);
    for i in 0..refused.len() {
        assert!(r.stdout.contains(&format!("before {i}")), "{r:?}");
    }
    let denials = r.stderr.matches("through a subquery, CTE or view").count();
    assert_eq!(denials, refused.len(), "{r:?}\n{}", w.daemon_log());
    assert!(
        r.stderr.contains("masking rule \"customer-email\""),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("ids 1,2"),
        "the view's other columns pass: {r:?}"
    );
    for raw in ["ada@example.com", "grace@example.org", "example."] {
        assert!(!r.stdout.contains(raw), "{raw} leaked: {r:?}");
    }
    // The binary protocol: refused at prepare, and the connection goes on.
    let r = w.python(
        "agent",
        DB_ADDR,
        r#"
import os, mysql.connector
host, port = os.environ["HOST"], int(os.environ["PORT"])
c = mysql.connector.connect(host=host, port=port, user="someone", database="app", use_pure=True)
cur = c.cursor(prepared=True)
try:
    cur.execute("SELECT email FROM customer_contacts WHERE id = %s", (1,))
    print("ran", cur.fetchall())
except mysql.connector.Error as e:
    print("refused", e.errno, e.msg)
cur.execute("SELECT id FROM customer_contacts WHERE id = %s", (2,))
print("ids", cur.fetchall())
"#,
    );
    assert!(
        r.stdout.contains("refused 1142") && r.stdout.contains("CTE or view"),
        "{r:?}\n{}",
        w.daemon_log()
    );
    assert!(r.stdout.contains("ids [(2,)]"), "{r:?}");
    assert!(!r.stdout.contains("example."), "{r:?}");

    // A user variable assigned inside a statement (`@v := …` in WHERE, a count, ORDER BY)
    // keeps the value for a later `SELECT @v`: refused like `SELECT … INTO @v`. Aliases `c`
    // and `C` are two relations to MariaDB (lower_case_table_names=0) and one when folded:
    // such a statement cannot be traced. REPLACE keeps the e-mail detector from seeing it.
    let script = "SELECT id FROM customers \
         WHERE (@v := CONCAT_WS(',', @v, REPLACE(email, '@', ' at '))) IS NOT NULL;
SELECT CONCAT('v1 ', COALESCE(@v, 'unset'));
SELECT COUNT(@w := REPLACE(email, '@', ' at ')) FROM customers;
SELECT id FROM customers ORDER BY (@x := REPLACE(email, '@', ' at '));
SELECT CONCAT('v2 ', COALESCE(@w, 'unset'), COALESCE(@x, 'unset'));
SELECT REPLACE(C.email, '@', ' at ') AS leaked FROM (SELECT 'decoy' AS email) c, customers C;
SELECT CONCAT('done');
";
    let r = w.mariadb_script("agent", DB_ADDR, "--force", script);
    assert!(
        r.stdout.contains("v1 unset") && r.stdout.contains("v2 unsetunset"),
        "{r:?}\n{}",
        w.daemon_log()
    );
    assert_eq!(r.stderr.matches("by a user variable").count(), 3, "{r:?}");
    assert!(r.stderr.contains("differ only in case"), "{r:?}");
    assert!(r.stdout.contains("done"), "{r:?}");
    for raw in [
        "ada@example.com",
        "ada at example",
        "grace at example",
        "example.",
    ] {
        assert!(!r.stdout.contains(raw), "{raw} leaked: {r:?}");
    }
}

/// The view lookup runs on the client's own connection, under the client's settings; none of
/// them may blind it or masking. `sql_select_limit = 0` would cut the catalog's answer to
/// nothing (the view's badge would pass as a table's column), `character_set_results = utf16`
/// would re-encode it and every answer after it (detectors read UTF-8), and with no
/// conversion (`NULL`) a column converted to UTF-16 comes as it is.
#[test]
fn client_session_settings_do_not_blind_the_view_lookup_or_the_detectors() {
    let w = world();
    let script = "SELECT 'marker 1';
SET sql_select_limit = 0;
SELECT id, badge FROM staff_badges LIMIT 5;
SET sql_select_limit = DEFAULT;
SELECT 'marker 2';
SET character_set_results = utf16;
SELECT 'marker 3';
SET character_set_results = NULL;
SELECT CONVERT(note USING utf16) AS n FROM customers ORDER BY id;
SELECT id FROM customers ORDER BY id LIMIT 1;
";
    let r = w.mariadb_script("agent", DB_ADDR, "--force", script);
    let log = w.daemon_log();
    for m in ["marker 1", "marker 2", "marker 3"] {
        assert!(r.stdout.contains(m), "{m}: {r:?}\n{log}");
    }
    assert!(
        r.stderr.contains("through a subquery, CTE or view")
            && r.stderr.contains("masking rule \"staff-badge\""),
        "the view is seen under sql_select_limit = 0: {r:?}\n{log}"
    );
    assert!(
        r.stderr.contains("character_set_results") && r.stderr.contains("agents-deny-rest"),
        "a UTF-16 results set is admin: {r:?}"
    );
    assert!(
        r.stderr
            .contains("comes in utf16, which the detectors cannot read"),
        "a UTF-16 column is refused, not scanned: {r:?}\n{log}"
    );
    // The session went on, on the connection as the client left it.
    assert!(r.stdout.lines().any(|l| l.trim() == "1"), "{r:?}");
    let utf16 = |s: &str| -> String { s.chars().flat_map(|c| ['\0', c]).collect() };
    for raw in ["K7-alpha-19", "Q3-delta-44", "grace.h@example.net"] {
        assert!(!r.stdout.contains(raw), "{raw} leaked: {r:?}");
        assert!(
            !r.stdout.contains(&utf16(raw)),
            "{raw} leaked in UTF-16: {r:?}"
        );
    }
}

/// What a session looked up about a view is not trusted past a redefinition: one through the
/// gateway in another session is seen at the session's next statement, one made outside the
/// gateway within `LOOKUP_TTL` (10 s); a prepared statement is judged through the view as it is
/// when it runs, not as it was when it was prepared.
#[test]
fn a_redefined_view_is_judged_by_its_new_definition() {
    let w = world();
    w.admin(&format!(
        "CREATE OR REPLACE VIEW {DATABASE}.relabeled AS SELECT id, name AS label FROM {DATABASE}.customers;
         CREATE OR REPLACE VIEW {DATABASE}.relabeled_outside AS SELECT id, name AS label FROM {DATABASE}.customers;"
    ));
    let ops_procs = w.cg.child("ops").join("cgroup.procs");
    let script = format!(
        r#"
import os, subprocess, time, mysql.connector
host, port = os.environ["HOST"], int(os.environ["PORT"])
# Autocommit: an open transaction that read a view holds it against redefinition.
c = mysql.connector.connect(host=host, port=port, user="someone", database="{DATABASE}", use_pure=True, autocommit=True)
text, prepared = c.cursor(), c.cursor(prepared=True)
def run(tag, cur, sql, args=()):
    try:
        cur.execute(sql, args)
        print(tag, "rows", cur.fetchall())
    except mysql.connector.Error as e:
        print(tag, "refused", e.errno, e.msg)
def redefine(view, how):
    sql = f"CREATE OR REPLACE VIEW {{view}} AS SELECT id, email AS label FROM customers"
    if how == "gateway":
        # Another session, of a caller allowed DDL (the ops cgroup), through the gateway.
        cmd = f"echo $$ > {ops_procs} && exec mariadb --no-defaults -h {{host}} -P {{port}} -u someone -D {DATABASE} -e '{{sql}}'"
    else:
        cmd = f"mariadb --no-defaults --socket={socket} -uroot -D {DATABASE} -e '{{sql}}'"
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
    print("redefined", view, how, r.returncode, r.stderr.strip())
run("text-before", text, "SELECT label FROM relabeled WHERE id = 1")
run("prepared-before", prepared, "SELECT label FROM relabeled WHERE id = %s", (1,))
run("outside-before", text, "SELECT label FROM relabeled_outside WHERE id = 1")
redefine("relabeled", "gateway")
run("prepared-after", prepared, "SELECT label FROM relabeled WHERE id = %s", (1,))
run("text-after", text, "SELECT label FROM relabeled WHERE id = 1")
# Looked up again after the change through the gateway, then changed outside it.
run("outside-cached", text, "SELECT label FROM relabeled_outside WHERE id = 1")
redefine("relabeled_outside", "outside")
time.sleep(10.5)
run("outside-after", text, "SELECT label FROM relabeled_outside WHERE id = 1")
"#,
        socket = w.db_socket.display(),
        ops_procs = ops_procs.display(),
    );
    let r = w.python("agent", DB_ADDR, &script);
    let log = w.daemon_log();
    for line in [
        "text-before rows [('Ada',)]",
        "prepared-before rows [('Ada',)]",
        "outside-before rows [('Ada',)]",
        "outside-cached rows [('Ada',)]",
        "redefined relabeled gateway 0",
        "redefined relabeled_outside outside 0",
    ] {
        assert!(r.stdout.contains(line), "{line}: {r:?}\n{log}");
    }
    for tag in ["prepared-after", "text-after", "outside-after"] {
        assert!(
            r.stdout.contains(&format!("{tag} refused 1142")),
            "{tag}: {r:?}\n{log}"
        );
    }
    assert_eq!(r.stdout.matches("CTE or view").count(), 3, "{r:?}\n{log}");
    for raw in ["ada@example.com", "example."] {
        assert!(!r.stdout.contains(raw), "{raw} leaked: {r:?}");
    }
}

/// The server's messages quote values: the warnings and errors of a statement that names a
/// masked column reach the client with their quoted values cut (no detector would know a
/// badge code), the session goes on, and the audit record holds the cut message too.
#[test]
fn warnings_and_errors_about_masked_columns_lose_their_quoted_values() {
    let w = world();
    let r = w.mariadb_script(
        "agent",
        DB_ADDR,
        "--force",
        "SELECT CONCAT('rows ', COUNT(*)) FROM staff WHERE badge = 5;\n\
         SHOW WARNINGS;\n\
         SELECT id FROM staff WHERE badge REGEXP '(';\n\
         SELECT CONCAT('ids ', MIN(id), ',', MAX(id)) FROM staff;\n",
    );
    assert!(r.stdout.contains("rows 0"), "{r:?}");
    assert!(
        r.stdout
            .contains("Truncated incorrect DECIMAL value: '[REDACTED]'"),
        "{r:?}\n{}",
        w.daemon_log()
    );
    assert!(r.stderr.contains("ERROR 1139"), "{r:?}");
    assert!(r.stdout.contains("ids 1,2"), "the session goes on: {r:?}");
    for raw in ["K7-alpha", "Q3-delta"] {
        assert!(
            !r.stdout.contains(raw) && !r.stderr.contains(raw),
            "{raw}: {r:?}"
        );
    }
    let log = w.cli("audit export --format jsonl");
    assert!(
        log.stdout.contains("Regex error '[REDACTED]") && !log.stdout.contains("K7-alpha"),
        "{}",
        log.stdout
    );
}

/// PyMySQL (text protocol) and mysql-connector-python, C extension and pure Python, with
/// server-side prepared statements (binary protocol): the same rows, emails masked in both
/// protocols (the column rule on `customers.email`, the detector in free text), raw values
/// nowhere, and other columns untouched.
#[test]
fn python_connectors_text_and_binary_protocol_masked() {
    let w = world();
    let script = r#"
import os, pymysql, mysql.connector
host, port = os.environ["HOST"], int(os.environ["PORT"])
q = "SELECT id, name, email, note FROM customers WHERE id >= %s ORDER BY id"
from pymysql.constants import CLIENT
c = pymysql.connect(host=host, port=port, user="someone", database="app", client_flag=CLIENT.MULTI_STATEMENTS)
cur = c.cursor()
cur.execute(q, (1,))
print("pymysql", cur.fetchall())
cur.execute("SELECT 1; SELECT email FROM customers WHERE id = 2")
print("multi-first", cur.fetchall())
cur.nextset()
print("multi-second", cur.fetchall())
c.close()
for pure in (False, True):
    cn = mysql.connector.connect(host=host, port=port, user="someone", database="app", use_pure=pure)
    print("cext" if not pure else "pure", "prepared" , type(cn).__name__)
    cur = cn.cursor(prepared=True)
    cur.execute(q, (1,))
    rows = cur.fetchall()
    print("binary", pure, [tuple(v.decode() if isinstance(v, (bytes, bytearray)) else v for v in r) for r in rows])
    cur.close()
    cur = cn.cursor()
    cur.execute("SELECT email, note FROM customers ORDER BY id")
    print("text", pure, cur.fetchall())
    cur.close()
    cn.close()
"#;
    let r = w.python("agent", DB_ADDR, script);
    assert!(r.ok, "{r:?}\n{}", w.daemon_log());
    for raw in [
        "ada@example.com",
        "grace@example.org",
        "grace.h@example.net",
    ] {
        assert!(!r.stdout.contains(raw), "{raw} leaked: {r:?}");
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    let line = |prefix: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    // Names, ids and free text pass; the email column is partially masked (the domain's end
    // kept), the address inside the note redacted, in both protocols and every connector.
    let rows = "(1, 'Ada', '***@******e.com', 'met at the conference'), \
                (2, 'Grace', '*****@******e.org', 'write to [REDACTED]')";
    assert_eq!(line("pymysql ("), [format!("pymysql ({rows})")], "{r:?}");
    assert_eq!(line("multi-first"), ["multi-first ((1,),)"], "{r:?}");
    assert_eq!(
        line("multi-second"),
        ["multi-second (('*****@******e.org',),)"],
        "{r:?}"
    );
    for pure in ["False", "True"] {
        assert_eq!(
            line(&format!("binary {pure}")),
            [format!("binary {pure} [{rows}]")],
            "{r:?}"
        );
        assert_eq!(
            line(&format!("text {pure}")),
            [format!(
                "text {pure} [('***@******e.com', 'met at the conference'), \
                 ('*****@******e.org', 'write to [REDACTED]')]"
            )],
            "{r:?}"
        );
    }
}

fn balance(w: &World, id: u32) -> i64 {
    w.admin(&format!(
        "SELECT balance FROM {DATABASE}.accounts WHERE id = {id}"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// A write waits on the data path (the server sees nothing) until `airlock approve`; a
/// prepared write is reviewed at its execution, with its parameters, and needs one approval.
#[test]
fn writes_held_until_airlock_approve_prepared_with_one_approval() {
    let w = world();
    let sql = "UPDATE accounts SET balance = balance + 1 WHERE id = 1";
    let before = balance(&w, 1);
    let held = {
        let w = w.clone();
        std::thread::spawn(move || w.mariadb("agent", DB_ADDR, "", sql))
    };
    let req = w.wait_pending(sql);
    assert_eq!(req["rule"], "agents-write-review", "{req}");
    assert_eq!(req["target"], "mariadb", "{req}");
    assert_eq!(req["commands"][0]["text"], sql, "{req}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(balance(&w, 1), before, "held: the server has not seen it");
    assert!(
        w.daemon_log().contains(req["id"].as_str().unwrap()),
        "the request id is in the daemon's log"
    );
    let id = req["id"].as_str().unwrap().to_string();
    let a = w.cli(&format!("approve {id} --reason ticket-7"));
    assert!(a.ok, "{a:?}");
    let r = held.join().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(balance(&w, 1), before + 1);

    // A prepared write: the prepare passes, the execution waits with its values.
    let before = balance(&w, 2);
    let script = r#"
import os, mysql.connector
cn = mysql.connector.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app", use_pure=True, autocommit=True)
cur = cn.cursor(prepared=True)
cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (5, 2))
print("rows", cur.rowcount)
"#;
    let held = {
        let w = w.clone();
        std::thread::spawn(move || w.python("agent", DB_ADDR, script))
    };
    let req = w.wait_pending("-- parameters:");
    assert_eq!(
        req["commands"][0]["text"],
        "UPDATE accounts SET balance = balance + ? WHERE id = ? -- parameters: (5, 2)",
        "{req}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(balance(&w, 2), before, "held: not executed");
    let id = req["id"].as_str().unwrap().to_string();
    assert!(w.cli(&format!("approve {id}")).ok);
    let r = held.join().unwrap();
    assert!(
        r.ok && r.stdout.contains("rows 1"),
        "{r:?}\n{}",
        w.daemon_log()
    );
    assert_eq!(balance(&w, 2), before + 5);
    // One approval: no other request was ever filed for that statement.
    let all = w.cli("requests --json");
    let list: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    let filed = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["commands"][0]["text"].as_str().is_some_and(|t| {
                t.contains("balance + ? WHERE id = ?") || t.contains("balance + %s")
            })
        })
        .count();
    assert_eq!(filed, 1, "{list}");
}

fn ledger(w: &World, id: u32) -> String {
    w.admin(&format!(
        "SELECT body FROM {DATABASE}.ledger WHERE id = {id}"
    ))
    .trim()
    .to_owned()
}

/// The server's own refusal of a write (not airlock's): `ERROR 1142 … command denied to user
/// 'gw_roles'`, at `line` of the script.
fn refused_by_server(r: &Run, line: u32, what: &str) -> bool {
    r.stderr.contains(&format!(
        "ERROR 1142 (42000) at line {line}: {what} command denied to user '{}'",
        GW_ROLES.0
    ))
}

/// Least privilege (issue 26) on MariaDB: the `mariadb-roles` target runs commands as
/// `app_readonly`, so a write a deliberately wrong rule allows is refused by the server
/// itself (1142 naming the gateway's user, no word from airlock), and the session goes on in
/// the same role.
#[test]
fn mariadb_roles_wrongly_allowed_write_is_refused_by_the_server() {
    let w = world();
    let r = w.mariadb_roles(
        "SELECT CURRENT_ROLE();\n\
         INSERT INTO scratch VALUES (10, 'wrongly allowed');\n\
         SELECT CONCAT('still here as ', CURRENT_ROLE());\n\
         SELECT COUNT(*) FROM scratch WHERE id = 10;\n",
    );
    assert!(refused_by_server(&r, 2, "INSERT"), "{r:?}");
    assert!(
        !r.stderr.contains("airlock"),
        "not airlock's refusal: {r:?}"
    );
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["app_readonly", "still here as app_readonly", "0"],
        "{r:?}"
    );
    assert_eq!(
        w.admin(&format!(
            "SELECT COUNT(*) FROM {DATABASE}.scratch WHERE id = 10"
        ))
        .trim(),
        "0"
    );
}

/// A role switch the server refuses (the rule's `run_as` names a role the gateway's user was
/// never granted) refuses the command, and the audit log records it as denied by that rule
/// with the server's reason, never as allowed; the session goes on in its base role.
#[test]
fn mariadb_roles_refused_switch_is_recorded_as_a_denial() {
    let w = world();
    let r = w.mariadb_roles(
        "DELETE FROM ghost_probe WHERE id = 424242;\n\
         SELECT CONCAT('still here as ', CURRENT_ROLE());\n",
    );
    assert!(
        r.stderr.contains("ERROR") && r.stderr.contains("airlock"),
        "refused by the gateway: {r:?}"
    );
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["still here as app_readonly"],
        "{r:?}"
    );
    let out = w.cli("audit export --format jsonl");
    assert!(out.ok, "{out:?}");
    let record = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["event"].clone())
        .find(|e| e["type"] == "command" && e["command"].to_string().contains("424242"))
        .unwrap_or_else(|| panic!("no command record: {}", out.stdout));
    assert_eq!(record["action"], "deny", "{record}");
    assert_eq!(record["rule"], "roles-ghost-deletes", "{record}");
    assert!(
        record.to_string().contains("app_ghost"),
        "the reason names the role: {record}"
    );
}

/// An approved UPDATE whose rule has `approved_run_as: app_writer` runs as app_writer, for
/// that statement only: the next write in the same session is refused by the server again.
#[test]
fn mariadb_roles_approved_update_runs_elevated_once() {
    let w = world();
    let held = {
        let w = w.clone();
        std::thread::spawn(move || {
            w.mariadb_roles(
                "UPDATE ledger SET body = 'approved-once' WHERE id = 1;\n\
                 INSERT INTO scratch VALUES (11, 'after the approval');\n\
                 SELECT CONCAT('back as ', CURRENT_ROLE());\n",
            )
        })
    };
    let req = w.wait_pending("approved-once");
    assert_eq!(req["rule"], "roles-ledger-updates-reviewed", "{req}");
    assert_eq!(req["target"], "mariadb-roles", "{req}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ledger(&w, 1), "a", "held: not run");
    let id = req["id"].as_str().unwrap().to_string();
    let a = w.cli(&format!("approve {id}"));
    assert!(a.ok, "{a:?}");
    let r = held.join().unwrap();
    assert_eq!(ledger(&w, 1), "approved-once", "{r:?}\n{}", w.daemon_log());
    assert!(refused_by_server(&r, 2, "INSERT"), "{r:?}");
    assert_eq!(r.stdout.trim(), "back as app_readonly", "{r:?}");
    assert_eq!(
        w.admin(&format!(
            "SELECT COUNT(*) FROM {DATABASE}.scratch WHERE id = 11"
        ))
        .trim(),
        "0"
    );
}

/// Inside an explicit transaction: MariaDB has no `SET LOCAL ROLE`, so the gateway switches
/// back right after the approved statement; the next UPDATE of the same transaction is
/// refused by the server, and COMMIT commits the approved one.
#[test]
fn mariadb_roles_elevation_ends_with_the_statement_inside_a_transaction() {
    let w = world();
    let held = {
        let w = w.clone();
        std::thread::spawn(move || {
            w.mariadb_roles(
                "BEGIN;\n\
                 UPDATE ledger SET body = 'approved-in-tx' WHERE id = 2;\n\
                 UPDATE scratch SET body = 'next in tx' WHERE id = 1;\n\
                 SELECT CONCAT('in tx as ', CURRENT_ROLE(), ' ', @@in_transaction);\n\
                 COMMIT;\n\
                 SELECT body FROM ledger WHERE id = 2;\n",
            )
        })
    };
    let req = w.wait_pending("approved-in-tx");
    let id = req["id"].as_str().unwrap().to_string();
    assert!(w.cli(&format!("approve {id}")).ok);
    let r = held.join().unwrap();
    assert!(refused_by_server(&r, 3, "UPDATE"), "{r:?}");
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["in tx as app_readonly 1", "approved-in-tx"],
        "{r:?}"
    );
    assert_eq!(ledger(&w, 2), "approved-in-tx", "committed");
    assert_eq!(
        w.admin(&format!("SELECT body FROM {DATABASE}.scratch WHERE id = 1"))
            .trim(),
        "untouched"
    );
}

/// Fail closed: when the way back from an elevation fails (here the base role's grant was
/// taken away while the command was held), the session ends; nothing more runs in it, and a
/// new session cannot start in a role it may not use.
#[test]
fn mariadb_roles_failed_switch_back_ends_the_session() {
    let w = world();
    let held = {
        let w = w.clone();
        std::thread::spawn(move || {
            w.mariadb_roles_at(
                DB_ADDR_2,
                "UPDATE ledger SET body = 'approved-then-stuck' WHERE id = 4;\n\
                 SELECT CONCAT('next ran as ', CURRENT_ROLE());\n",
            )
        })
    };
    let req = w.wait_pending("approved-then-stuck");
    assert_eq!(req["target"], "mariadb-roles-2", "{req}");
    w.admin(&format!("REVOKE app_readonly FROM '{}'@'%'", GW_ROLES_2.0));
    let a = w.cli(&format!("approve {}", req["id"].as_str().unwrap()));
    assert!(a.ok, "{a:?}");
    let r = held.join().unwrap();
    assert_eq!(
        ledger(&w, 4),
        "approved-then-stuck",
        "the approved UPDATE ran"
    );
    assert!(!r.stdout.contains("next ran"), "{r:?}");
    assert!(
        w.daemon_log()
            .contains("role not restored after an elevated command"),
        "{r:?}"
    );
    let again = w.mariadb_roles_at(DB_ADDR_2, "SELECT 'logged in';\n");
    assert!(
        !again.ok && again.stderr.contains("could not switch to its base role"),
        "{again:?}"
    );
}

/// Binary protocol: the server checks privileges when a statement is prepared, so a held
/// statement is prepared in the role it will run as once approved (preparing runs nothing);
/// its execution waits, runs as app_writer once approved, and the session is back in
/// app_readonly: a wrongly allowed prepared INSERT is refused by the server at prepare.
#[test]
fn mariadb_roles_prepared_update_is_approved_and_elevated_once() {
    let w = world();
    let script = format!(
        r#"
import os, mysql.connector
cn = mysql.connector.connect(host=os.environ["HOST"], port={EXTRA_PORT}, user="x", database="app", use_pure=True, autocommit=True)
cur = cn.cursor(prepared=True)
cur.execute("UPDATE ledger SET body = %s WHERE id = %s", ("prepared-approved", 3))
print("rows", cur.rowcount)
try:
    cn.cursor(prepared=True).execute("INSERT INTO scratch VALUES (%s, %s)", (12, "after"))
    print("inserted")
except mysql.connector.Error as e:
    print("refused", e.errno, e.msg)
"#
    );
    let held = {
        let w = w.clone();
        std::thread::spawn(move || w.python("agent", DB_ADDR, &script))
    };
    let req = w.wait_pending("prepared-approved");
    assert_eq!(req["rule"], "roles-ledger-updates-reviewed", "{req}");
    let id = req["id"].as_str().unwrap().to_string();
    assert!(w.cli(&format!("approve {id}")).ok);
    let r = held.join().unwrap();
    assert!(r.ok, "{r:?}\n{}", w.daemon_log());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"rows 1"), "{r:?}");
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("refused 1142")
            && l.contains(GW_ROLES.0)
            && !l.contains("airlock")),
        "{r:?}"
    );
    assert_eq!(ledger(&w, 3), "prepared-approved");
}

/// LOAD DATA LOCAL INFILE: denied by policy for agents; for a caller whose rules allow it, the
/// server still refuses, because the gateway never negotiates CLIENT_LOCAL_FILES.
#[test]
fn load_data_local_infile_is_refused() {
    let w = world();
    let r = w.mariadb(
        "agent",
        DB_ADDR,
        "--local-infile=1",
        "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE files",
    );
    assert!(
        !r.ok && r.stderr.contains("denied by rule \"agents-deny-rest\""),
        "{r:?}"
    );
    let script = r#"
import os, pymysql
c = pymysql.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app", local_infile=True)
try:
    c.cursor().execute("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE files")
    print("loaded")
except pymysql.err.MySQLError as e:
    print("refused", e.args[0], e.args[1])
"#;
    let r = w.python("ops", DB_ADDR, script);
    assert!(r.ok, "{r:?}");
    assert!(
        r.stdout.starts_with("refused 1148") || r.stdout.starts_with("refused 4166"),
        "the server refuses local files it was never offered: {r:?}"
    );
    assert_eq!(
        w.admin(&format!("SELECT COUNT(*) FROM {DATABASE}.files"))
            .trim(),
        "0"
    );
}

/// KILL QUERY through the gateway, from a second connection, by the id the first session's
/// client saw (the gateway's, mapped to the server's thread): it cancels `SELECT SLEEP(30)`;
/// another caller cannot kill it.
#[test]
fn kill_query_through_the_gateway_cancels_a_running_select() {
    let w = world();
    let idfile = w.dir.path(&format!("thread-{}", unique_id()));
    let script = format!(
        r#"
import os, time, pymysql
c = pymysql.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app")
open("{}", "w").write(str(c.thread_id()))
t = time.time()
cur = c.cursor()
try:
    cur.execute("SELECT SLEEP(30)")
    print("result", cur.fetchall())
except pymysql.err.MySQLError as e:
    print("error", e.args[0])
print("elapsed", round(time.time() - t))
"#,
        idfile.display()
    );
    let sleeper = {
        let w = w.clone();
        std::thread::spawn(move || w.python("ops", DB_ADDR, &script))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let Ok(s) = std::fs::read_to_string(&idfile)
            && !s.is_empty()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the sleeper did not connect");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let server_ids = w.admin("SELECT GROUP_CONCAT(ID) FROM information_schema.PROCESSLIST");
    assert!(
        !server_ids.split(',').any(|s| s.trim() == id),
        "the client sees a minted id, not the server's thread id"
    );
    // Another caller (nobody, in the same cgroup) may not kill it.
    let other = w.client(
        "ops",
        &format!(
            "setpriv --reuid=nobody --regid=nogroup --clear-groups mariadb --no-defaults -h {DB_ADDR} -P {PORT} -u x -e 'KILL QUERY {id}'"
        ),
    );
    assert!(!other.ok && other.stderr.contains("1095"), "{other:?}");
    // The same caller may, from another cgroup and connection.
    let kill = w.mariadb("agent", DB_ADDR, "", &format!("KILL QUERY {id}"));
    assert!(kill.ok, "{kill:?}\n{}", w.daemon_log());
    let r = sleeper.join().unwrap();
    assert!(r.ok, "{r:?}");
    let elapsed: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("elapsed "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(elapsed < 20, "SLEEP(30) was cancelled: {r:?}");
}

/// Bad packets end that session with an error, and the daemon keeps serving others.
#[test]
fn bad_packets_end_the_session_and_the_daemon_keeps_serving() {
    let w = world();
    let script = r#"
import os, socket, struct, pymysql
host, port = os.environ["HOST"], int(os.environ["PORT"])
def raw(payload_after_greeting):
    s = socket.create_connection((host, port), timeout=10)
    head = s.recv(4)
    n = head[0] | head[1] << 8 | head[2] << 16
    while n > 0:
        n -= len(s.recv(n))
    s.sendall(payload_after_greeting)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
def err(data):
    if len(data) > 7 and data[4] == 0xff:
        return "ERR %d %s" % (struct.unpack("<H", data[5:7])[0], data[13:].decode(errors="replace"))
    return "no ERR: %r" % data[:40]
# A header declaring 16 MiB - 1 bytes of handshake.
print("huge", err(raw(b"\xff\xff\xff\x01" + b"x" * 100)))
# A handshake response cut short.
print("truncated", err(raw(b"\x0a\x00\x00\x01" + b"\x0d\xa2\x00\x00" + b"\x00" * 6)))
# An unknown command byte after a good login.
c = pymysql.connect(host=host, port=port, user="x", database="app")
c._execute_command(0x99, b"")
try:
    c._read_packet()
    print("unknown no error")
except pymysql.err.MySQLError as e:
    print("unknown", e.args[0], e.args[1])
try:
    c.cursor().execute("SELECT 1")
    print("still open")
except Exception as e:
    print("closed", type(e).__name__)
"#;
    let r = w.python("agent", DB_ADDR, script);
    assert!(r.ok, "{r:?}");
    let line = |p: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("huge").starts_with("huge ERR 1835") && line("huge").contains("limit"),
        "{r:?}"
    );
    assert!(line("truncated").starts_with("truncated ERR 1835"), "{r:?}");
    assert!(
        line("unknown").starts_with("unknown 1047") && line("unknown").contains("0x99"),
        "{r:?}"
    );
    assert!(
        line("closed").starts_with("closed"),
        "the session ended: {r:?}"
    );
    // The daemon serves the next client as before.
    let ok = w.mariadb("agent", DB_ADDR, "", "SELECT 40 + 2");
    assert!(ok.ok && ok.stdout.trim() == "42", "{ok:?}");
}

/// The second target: the gateway logs in with MariaDB's ed25519 over verify-full TLS, and
/// terminates TLS towards clients. A token as password is taken only over TLS (here a
/// malformed one, refused by the verifier before any network access); without TLS a password
/// is refused with a clear error, and an empty one is the workload identity.
#[test]
fn ed25519_over_verified_tls_client_tls_and_tokens_only_over_tls() {
    let w = world();
    let script = r#"
import os, pymysql
host, port, ca = os.environ["HOST"], int(os.environ["PORT"]), os.environ["CA"]
c = pymysql.connect(host=host, port=port, user="x", database="app", ssl={"ca": ca})
print("client-tls", type(c._sock).__name__)
cur = c.cursor()
cur.execute("SELECT CURRENT_USER()")
print("user", cur.fetchone()[0])
cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
print("upstream-tls", cur.fetchone()[1])
cur.execute("SELECT email FROM customers WHERE id = 1")
print("masked", cur.fetchone()[0])
c.close()
for label, kw in (("token-tls", {"ssl": {"ca": ca}}), ("token-plain", {})):
    try:
        pymysql.connect(host=host, port=port, user="x", password="not-a-jwt", database="app", **kw)
        print(label, "accepted")
    except pymysql.err.MySQLError as e:
        print(label, e.args[0], e.args[1])
"#;
    let r = w.python("agent", DB_ADDR_2, script);
    assert!(r.ok, "{r:?}\n{}", w.daemon_log());
    let line = |p: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(line("client-tls"), "client-tls SSLSocket", "{r:?}");
    assert_eq!(line("user"), format!("user {}@%", GW_ED25519.0), "{r:?}");
    assert!(
        line("upstream-tls").starts_with("upstream-tls TLSv1."),
        "{r:?}"
    );
    assert_eq!(line("masked"), "masked ***@******e.com", "{r:?}");
    assert!(
        line("token-tls").starts_with("token-tls 1045")
            && line("token-tls").contains("invalid token"),
        "{r:?}"
    );
    assert!(
        line("token-plain").starts_with("token-plain 1045") && line("token-plain").contains("TLS"),
        "{r:?}"
    );
}

/// sysbench through the gateway: OLTP read-write for a caller whose rules allow it, and
/// read-only for agents (every statement judged, the masking plan passthrough for these
/// tables), with prepared statements (binary protocol) and without errors.
#[test]
fn sysbench_read_write_and_read_only_through_the_gateway() {
    let w = world();
    let common = format!(
        "--mysql-host={DB_ADDR} --mysql-port={PORT} --mysql-db=sbtest --tables=2 --table-size=2000"
    );
    let prep = sh(&format!(
        "{} sysbench oltp_read_write {common} --mysql-user={} --mysql-password={} prepare",
        Topology::enter(&w.topo.db),
        GW_NATIVE.0,
        GW_NATIVE.1
    ));
    assert!(
        prep.status.success(),
        "{}",
        String::from_utf8_lossy(&prep.stderr)
    );
    for (child, test) in [("ops", "oltp_read_write"), ("agent", "oltp_read_only")] {
        let r = w.client(
            child,
            &format!(
                "sysbench {test} {common} --mysql-user=x --threads=4 --time=4 --db-ps-mode=auto run"
            ),
        );
        assert!(r.ok, "{test}: {r:?}\n{}", w.daemon_log());
        let tx: u64 = r
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("transactions:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(tx > 10, "{test}: {r:?}");
        if test == "oltp_read_only" {
            // (Read-write runs may see deadlocks, which sysbench retries and counts here.)
            assert!(
                r.stdout.contains("ignored errors:                      0"),
                "{test}: {r:?}"
            );
        }
    }
}

/// A value longer than one MySQL packet (16 MiB) comes through whole, and masked: the row is
/// held, the address in it redacted, and the longer or shorter row split and numbered again.
#[test]
fn values_longer_than_a_packet_are_masked() {
    let w = world();
    let script = r#"
import os, pymysql
c = pymysql.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app", max_allowed_packet=64 << 20)
cur = c.cursor()
cur.execute("SELECT CONCAT(REPEAT('x', 17000000), ' write to ada@example.com'), 42")
v, n = cur.fetchone()
print("len", len(v), "tail", v[-30:], "n", n)
cur.execute("SELECT REPEAT('y', 20000000)")
print("plain", len(cur.fetchone()[0]))
"#;
    let r = w.python("agent", DB_ADDR, script);
    assert!(r.ok, "{r:?}");
    assert!(!r.stdout.contains("ada@example.com"), "{r:?}");
    assert!(
        r.stdout
            .contains("len 17000020 tail xxxxxxxxxx write to [REDACTED] n 42"),
        "{r:?}"
    );
    assert!(r.stdout.contains("plain 20000000"), "{r:?}");
}

/// When the server's sql_mode makes it read backslashes differently (NO_BACKSLASH_ESCAPES), a
/// statement with a backslash is refused: the server would end the string where the gateway
/// sees an escaped quote.
#[test]
fn backslashes_refused_when_the_server_reads_them_differently() {
    let w = world();
    let script = r#"
import os, pymysql
c = pymysql.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app")
cur = c.cursor()
cur.execute("SELECT 'a\\\\' AS v")
print("before", cur.fetchone()[0])
cur.execute("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'")
try:
    cur.execute("SELECT 'a\\\\'; SELECT 1 -- '")
    print("after accepted")
except pymysql.err.MySQLError as e:
    print("after", e.args[0], e.args[1])
cur.execute("SELECT 2")
print("still", cur.fetchone()[0])
"#;
    let r = w.python("ops", DB_ADDR, script);
    assert!(r.ok, "{r:?}");
    assert!(r.stdout.contains("before a\\"), "{r:?}");
    assert!(
        r.stdout.contains("after 1227") && r.stdout.contains("NO_BACKSLASH_ESCAPES"),
        "{r:?}"
    );
    assert!(r.stdout.contains("still 2"), "{r:?}");
}

/// Texts the server lexes otherwise than sqlparser are never judged by what sqlparser saw:
/// `--` then U+00A0 (a comment to sqlparser, two minus signs and a name to the server), a NUL
/// (the server's lexer stops there), and `@@sql_mode` (the session variable, privileged
/// like `SET sql_mode`) changing how the rest of the same multi-statement query is lexed, an
/// executable comment MariaDB skips (`/*!99999 EXPLAIN */ DELETE …` runs the DELETE) or ends
/// elsewhere (a `#` comment inside it), a quote in an optimizer hint. The agent's table
/// survives each one and the session goes on.
#[test]
fn lexer_disagreements_are_refused_not_run() {
    let w = world();
    let script = r#"
import os, pymysql
c = pymysql.connect(host=os.environ["HOST"], port=int(os.environ["PORT"]), user="x", database="app",
                    client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
cur = c.cursor()
for name, sql in [
    ("nbsp", "SELECT 1 --\u00a0x FROM (SELECT 2 AS `\u00a0x`) d; DROP TABLE customers"),
    ("nul", "SELECT 1 -- x\0; DROP TABLE customers"),
    ("sqlmode", "SET @@sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; DROP TABLE customers; -- '"),
    ("version", "/*!99999 EXPLAIN */ DELETE FROM customers"),
    ("hash", "/*!50000 # */ SELECT 1 /*\nDELETE FROM customers */"),
    ("hint", "SELECT /*+ '*/' */ 1 FROM customers #'"),
]:
    try:
        cur.execute(sql)
        while cur.nextset():
            pass
        print(name, "accepted")
    except pymysql.err.MySQLError as e:
        print(name, "refused", e.args[0])
cur.execute("SELECT COUNT(*) FROM customers")
print("still", cur.fetchone()[0])
"#;
    let r = w.python("agent", DB_ADDR, script);
    assert!(r.ok, "{r:?}\n{}", w.daemon_log());
    for name in ["nbsp", "nul", "sqlmode", "version", "hash", "hint"] {
        assert!(
            r.stdout.contains(&format!("{name} refused 1227")),
            "{name}: {r:?}\n{}",
            w.daemon_log()
        );
    }
    assert!(r.stdout.contains("still 2"), "{r:?}");
    assert_eq!(
        w.admin(&format!("SELECT COUNT(*) FROM {DATABASE}.customers"))
            .trim(),
        "2"
    );
}

/// Everything a MySQL session does is recorded and counted like PostgreSQL's: the session's
/// start names the target and protocol, each statement's record carries its decision and rule
/// (the denied one too, though the server never saw it), the log verifies, and the Prometheus
/// counters carry `protocol="mysql"`.
#[test]
fn audit_records_and_metrics_name_the_mysql_target() {
    let w = world();
    let r = w.mariadb(
        "agent",
        DB_ADDR,
        "--force",
        "SELECT COUNT(*) AS audit_probe_n FROM customers; DROP TABLE audit_probe_missing",
    );
    assert!(r.stdout.lines().any(|l| l.trim() == "2"), "{r:?}");
    assert!(r.stderr.contains("ERROR 1142"), "{r:?}");
    let out = w.cli("audit export --format jsonl");
    assert!(out.ok, "{out:?}");
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let command = |needle: &str| {
        records
            .iter()
            .map(|r| &r["event"])
            .find(|e| e["type"] == "command" && e["command"].to_string().contains(needle))
            .unwrap_or_else(|| panic!("no command record with {needle}"))
            .clone()
    };
    let read = command("audit_probe_n");
    assert_eq!(read["action"], "allow", "{read}");
    assert_eq!(read["rule"], "agents-read", "{read}");
    let ddl = command("audit_probe_missing");
    assert_eq!(ddl["action"], "deny", "{ddl}");
    assert_eq!(ddl["rule"], "agents-deny-rest", "{ddl}");
    assert!(
        records.iter().any(|r| r["event"]["type"] == "session_start"
            && r["event"]["protocol"] == "mysql"
            && r["event"]["target"] == "mariadb"),
        "a session start names the target and protocol"
    );
    let verified = w.cli("audit verify");
    assert!(verified.ok, "{verified:?}");

    let out = sh(&format!(
        "{} curl -sf http://127.0.0.1:{METRICS_PORT}/metrics",
        Topology::enter(&w.topo.node)
    ));
    let body = String::from_utf8_lossy(&out.stdout);
    let value = |series: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    let t = r#"target="mariadb",protocol="mysql""#;
    assert!(value(&format!("airlock_commands_total{{{t},action=\"allow\"}}")) >= 1.0);
    assert!(value(&format!("airlock_commands_total{{{t},action=\"deny\"}}")) >= 1.0);
}

/// Whether `password` logs in as the rotated user, straight to MariaDB (not through airlock).
fn rotated_user_logs_in(w: &World, password: &str) -> bool {
    sh(&format!(
        "{} mariadb --no-defaults -h {ROTATE_ADDR} -P {PORT} -u {} -p{password} -N -B \
         --connect-timeout=10 -e 'SELECT CURRENT_USER()'",
        Topology::enter(&w.topo.db),
        GW_ROTATE.0
    ))
    .status
    .success()
}

/// `airlock credentials rotate` on a MariaDB target (through the daemon's API, so recorded)
/// while PyMySQL clients log in again and again and others keep their sessions: no login and
/// no query fails, the password file holds a new password (mode 0600), the server takes only
/// that one, and the audit log has the change without the secret.
#[test]
fn rotation_under_load_fails_no_login_and_retires_the_old_password() {
    let w = world();
    let file = w.dir.path("rot.password");
    assert!(rotated_user_logs_in(&w, GW_ROTATE.1), "the first password");
    let load = r#"
import os, threading, time, pymysql
host, port = os.environ["HOST"], int(os.environ["PORT"])
stop = time.time() + 8
done, failed, lock = [0], [], threading.Lock()
def connect():
    return pymysql.connect(host=host, port=port, user="someone", database="app", connect_timeout=10)
def query(c):
    with c.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM customers")
        assert cur.fetchall()[0][0] == 2
def fresh():
    while time.time() < stop:
        try:
            c = connect()
            query(c)
            c.close()
            with lock: done[0] += 1
        except Exception as e:
            with lock: failed.append("fresh: " + repr(e))
def kept():
    try:
        c = connect()
        while time.time() < stop:
            query(c)
            with lock: done[0] += 1
            time.sleep(0.01)
        c.close()
    except Exception as e:
        with lock: failed.append("kept: " + repr(e))
threads = [threading.Thread(target=fresh) for _ in range(3)] + [threading.Thread(target=kept) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(f"done={done[0]} failed={len(failed)}")
for f in failed[:5]: print(f)
"#;
    let loader = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || w.python("ops", ROTATE_ADDR, load))
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut passwords = Vec::new();
    for _ in 0..2 {
        let r = w.cli("credentials rotate mariadb-rotate");
        assert!(
            r.ok && r.stdout.contains("recorded in the audit log"),
            "{r:?}\n{}",
            w.daemon_log()
        );
        passwords.push(std::fs::read_to_string(&file).unwrap());
        std::thread::sleep(Duration::from_millis(1500));
    }
    let r = loader.join().unwrap();
    eprintln!("load: {}", r.stdout.trim());
    assert!(r.ok, "{r:?}");
    let done: u64 = r
        .stdout
        .split_whitespace()
        .find_map(|f| f.strip_prefix("done="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        r.stdout.contains("failed=0") && done > 50,
        "{r:?}\n{}",
        w.daemon_log()
    );

    let new = passwords[1].trim_end();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), new);
    assert!(
        new.len() >= 32 && new != passwords[0].trim_end(),
        "{passwords:?}"
    );
    assert!(!w.dir.path("rot.password.rotating").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !rotated_user_logs_in(&w, GW_ROTATE.1),
        "the first password still logs in"
    );
    assert!(
        !rotated_user_logs_in(&w, passwords[0].trim_end()),
        "the second password still logs in"
    );
    assert!(
        rotated_user_logs_in(&w, new),
        "the new password does not log in"
    );

    let out = w.cli("audit export --format jsonl");
    assert!(out.ok, "{out:?}");
    for p in &passwords {
        assert!(
            !out.stdout.contains(p.trim_end()),
            "a password in the audit log"
        );
    }
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sessions: Vec<&serde_json::Value> = records
        .iter()
        .map(|r| &r["event"])
        .filter(|e| {
            e["type"] == "session_start"
                && e["target"] == "mariadb-rotate"
                && e["protocol"] == "mysql"
                && e.to_string().contains("airlock:credential-rotation")
        })
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let changes = records
        .iter()
        .map(|r| &r["event"])
        .filter(|e| {
            e["type"] == "command" && e["command"].to_string().contains("SET PASSWORD = '…'")
        })
        .count();
    assert_eq!(changes, 2, "{}", out.stdout);
}
