//! Identity end to end through TRANSPARENT interception: the real daemon (kernel programs on a
//! test cgroup), PostgreSQL 15 on the `db` test host, unmodified psql in the node namespace.
//!
//! - workload identity: the same rules give root in one cgroup and `nobody` in another
//!   different decisions;
//! - OIDC tokens in the password field (`PGPASSWORD=$TOKEN psql`) from a real `oidc-provider`
//!   running in the node namespace: valid (groups and CI claims), expired, wrong audience;
//! - a scrape of `/metrics` after those sessions.
//!
//! Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

mod support;

#[path = "support/postgres.rs"]
mod pg;

#[path = "support/oidc/mod.rs"]
mod oidc_support;

use std::collections::HashMap;
use std::path::PathBuf;

use oidc_support::{Pki, Provider};
use pg::{DATABASE, GATEWAY_USER, PgServer};
use support::{
    DB_ADDR, Daemon, TempDir, TestCgroup, Topology, airlock_bin, require_root, sh, unique_id,
};

const PG_PORT: u16 = 5432;

/// A minimal PostgreSQL client on a raw socket: startup, prints the authentication request
/// code, sends argv[3] as the password, prints the error fields (`S=…`, `C=…`, `M=…`).
const RAW_PASSWORD_CLIENT: &str = r#"
import socket, struct, sys
host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
params = b"user\0someone\0database\0app\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
def read_msg():
    head = b""
    while len(head) < 5:
        chunk = s.recv(5 - len(head))
        if not chunk:
            sys.exit("closed")
        head += chunk
    tag, n = head[:1], struct.unpack("!i", head[1:])[0]
    body = b""
    while len(body) < n - 4:
        chunk = s.recv(n - 4 - len(body))
        if not chunk:
            sys.exit("closed")
        body += chunk
    return tag, body
tag, body = read_msg()
print("auth=%d" % struct.unpack("!i", body[:4])[0] if tag == b"R" else "tag=" + tag.decode())
pw = password.encode() + b"\0"
s.sendall(b"p" + struct.pack("!i", 4 + len(pw)) + pw)
tag, body = read_msg()
if tag == b"E":
    for field in body.split(b"\0"):
        if field:
            print("%s=%s" % (chr(field[0]), field[1:].decode()))
else:
    print("tag=" + tag.decode())
"#;
const AUDIENCE: &str = "https://airlock.test";

/// One test's world: namespaces, cgroup, PostgreSQL on the db host, scratch dir.
struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _pg: PgServer,
    bpffs: PathBuf,
    metrics_port: u16,
}

/// What one psql run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Env {
    fn new() -> Env {
        require_root();
        let _ = airlock_bin();
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        let dir = TempDir::new(&topo.id);
        let pg = PgServer::start_in_netns(&topo.db, DB_ADDR, PG_PORT);
        pg.admin_db(
            DATABASE,
            &format!(
                "CREATE TABLE public.reports (id int, title text); \
                 INSERT INTO public.reports VALUES (1, 'q3-revenue'); \
                 GRANT ALL ON public.reports TO {}",
                GATEWAY_USER.0
            ),
        );
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        // The metrics port lives in the node namespace, which has nothing else listening.
        let metrics_port = 19000 + (std::process::id() % 1000) as u16;
        Env {
            topo,
            cg,
            dir,
            _pg: pg,
            bpffs,
            metrics_port,
        }
    }

    /// The config: daemon and the `demo-db` target, then `policy` (identities, rules).
    fn start_daemon(&self, policy: &str) -> Daemon {
        let yaml = format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  listen_port_base: 15400
  state_dir: {state}
  metrics: 127.0.0.1:{mport}
targets:
  - name: demo-db
    protocol: postgres
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{PG_PORT}]
    postgres:
      user: {gw}
      password: \"{gw_pw}\"
      database: {DATABASE}
{policy}",
            cg = self.cg.path.display(),
            bpffs = self.bpffs.display(),
            state = self.dir.path("state").display(),
            mport = self.metrics_port,
            gw = GATEWAY_USER.0,
            gw_pw = GATEWAY_USER.1,
        );
        let config = self.dir.write("airlock.yaml", &yaml);
        Daemon::start(
            &self.cg,
            &self.topo,
            &config,
            &self.bpffs,
            &self.dir.path("daemon.log"),
        )
    }

    /// The test cgroup's child `child` as a cgroup v2 path (what workload matchers see).
    fn cgroup_path(&self, child: &str) -> String {
        let root = support::cgroup2_root();
        let p = self.cg.child(child);
        format!("/{}", p.strip_prefix(&root).unwrap().display())
    }

    /// Unmodified psql to the protected address, from cgroup `child` in the node namespace,
    /// as `user` (via setpriv), with `password` (a token) in PGPASSWORD if given.
    fn psql(&self, child: &str, user: &str, password: Option<&str>, sql: &str) -> Run {
        let out_file = self.dir.path(&format!("psql-{}.out", unique_id()));
        let err_file = self.dir.path(&format!("psql-{}.err", unique_id()));
        let env = match password {
            Some(p) => format!("PGPASSWORD='{p}'"),
            None => String::new(),
        };
        let cmd = format!(
            "env HOME=/tmp {env} setpriv --reuid={user} --regid=$(id -g {user}) --init-groups \
             psql 'host={DB_ADDR} port={PG_PORT} user=someone dbname={DATABASE} sslmode=disable connect_timeout=10' \
             -X -At -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -c \"{sql}\" >{} 2>{}",
            out_file.display(),
            err_file.display()
        );
        let status = sh(&self.cg.run_in(child, &self.topo.node, &cmd));
        Run {
            ok: status.status.success(),
            stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_file).unwrap_or_default()
                + &String::from_utf8_lossy(&status.stderr),
        }
    }

    /// Scrapes `/metrics` from inside the node namespace (where the endpoint listens) with a
    /// real HTTP client; returns `series -> value` and the raw text.
    /// Scrapes until the intercepted-connections counter of `demo-db` reaches `at_least`
    /// (the daemon drains routine interception events on a 200 ms tick), or gives up after
    /// five seconds and returns the last scrape for the caller's assertions.
    fn scrape_after_intercepts(&self, at_least: f64) -> (HashMap<String, f64>, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (m, text) = self.scrape();
            let seen = m
                .get(r#"airlock_intercepted_connections_total{target="demo-db"}"#)
                .copied()
                .unwrap_or(0.0);
            if seen >= at_least || std::time::Instant::now() > deadline {
                return (m, text);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn scrape(&self) -> (HashMap<String, f64>, String) {
        let out = sh(&format!(
            "{} curl -sS --max-time 10 http://127.0.0.1:{}/metrics",
            Topology::enter(&self.topo.node),
            self.metrics_port
        ));
        assert!(
            out.status.success(),
            "scrape failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut series = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (k, v) = line.rsplit_once(' ').unwrap();
            series.insert(k.to_string(), v.parse::<f64>().unwrap());
        }
        (series, text)
    }
}

/// The metric families of shared/design.md. prometheus-client prints a labelled family only
/// once it has a series, so the families this branch never feeds from PostgreSQL sessions
/// (approval requests, masked values; commands until the per-command calls land) are checked
/// only when present.
fn assert_every_design_metric(text: &str) {
    let always = [
        ("airlock_approval_decision_latency_seconds", "histogram"),
        ("airlock_approvals_pending", "gauge"),
        ("airlock_sessions_active", "gauge"),
        ("airlock_intercepted_connections", "counter"),
        ("airlock_denied_connections", "counter"),
        ("airlock_policy_eval_seconds", "histogram"),
    ];
    for (name, kind) in always {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "metric {name} ({kind}) missing from the scrape:\n{text}"
        );
    }
    for (name, kind) in [
        ("airlock_commands", "counter"),
        ("airlock_approval_requests", "counter"),
        ("airlock_masked_values", "counter"),
    ] {
        if text.contains(&format!("{name}_total{{")) {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        }
    }
    // Labels are fixed words or configured names, never SQL or user input.
    assert!(!text.to_ascii_lowercase().contains("select"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn workload_identity_two_users_two_cgroups_different_decisions() {
    let env = Env::new();
    let (ops, agents) = (env.cgroup_path("ops"), env.cgroup_path("agents"));
    let _daemon = env.start_daemon(&format!(
        "identities:
  - name: ops
    workload: {{users: [root], cgroups: [\"{ops}\"]}}
    groups: [ops]
  - name: agents
    workload: {{users: [nobody], cgroups: [\"{agents}\"]}}
    groups: [agents]
rules:
  - name: ops-read
    groups: [ops]
    require: [workload]
    classes: [read]
    action: allow
  - name: agents-no-reports
    groups: [agents]
    tables: [reports]
    action: deny
    reason: agents may not read reports
  - name: agents-read
    groups: [agents]
    classes: [read]
    action: allow
default: deny
"
    ));

    // root in the ops cgroup may read the table.
    let root = env.psql("ops", "root", None, "SELECT title FROM reports");
    assert!(root.ok, "root/ops must be allowed: {root:?}");
    assert_eq!(root.stdout.trim(), "q3-revenue");

    // nobody in the agents cgroup: the same statement is denied by the rule that names it.
    let nobody = env.psql("agents", "nobody", None, "SELECT title FROM reports");
    assert!(!nobody.ok, "nobody/agents must be denied: {nobody:?}");
    assert!(
        nobody.stderr.contains("42501")
            && nobody
                .stderr
                .contains("denied by rule \"agents-no-reports\"")
            && nobody.stderr.contains("agents may not read reports"),
        "{nobody:?}"
    );
    // …while a read of something else is allowed for it.
    let other = env.psql("agents", "nobody", None, "SELECT 40 + 2");
    assert!(other.ok && other.stdout.trim() == "42", "{other:?}");

    // The cgroup counts as well as the user: root outside the ops cgroup, and nobody inside
    // it, match no identity and fall to the default.
    for (child, user) in [("agents", "root"), ("ops", "nobody")] {
        let r = env.psql(child, user, None, "SELECT title FROM reports");
        assert!(!r.ok, "{user} in {child} must be denied: {r:?}");
        assert!(
            r.stderr.contains("42501") && r.stderr.contains("denied by rule \"default\""),
            "{user} in {child}: {r:?}"
        );
    }

    // A session in progress (psql holds it open while a shell command sleeps) shows in
    // airlock_sessions_active, and leaves it when it ends.
    let sleeper = {
        let cmd = format!(
            "setpriv --reuid=0 --regid=0 --clear-groups psql 'host={DB_ADDR} port={PG_PORT} user=x dbname={DATABASE} sslmode=disable' -X -At -v ON_ERROR_STOP=1 -c 'SELECT 1' -c '\\! sleep 3'"
        );
        let script = env.cg.run_in("ops", &env.topo.node, &cmd);
        std::thread::spawn(move || {
            std::process::Command::new("sh")
                .args(["-c", &script])
                .output()
        })
    };
    let active = r#"airlock_sessions_active{target="demo-db",protocol="postgres"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut seen = 0.0;
    while std::time::Instant::now() < deadline && seen < 1.0 {
        seen = env.scrape().0.get(active).copied().unwrap_or(0.0);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, 1.0, "one session open while psql sleeps");
    let out = sleeper.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The daemon saw who was calling.
    let log = std::fs::read_to_string(env.dir.path("daemon.log")).unwrap();
    assert!(
        log.contains("subject=unix:root") && log.contains("subject=unix:nobody"),
        "{log}"
    );

    // Prometheus: what this branch emits for these sessions.
    let (m, text) = env.scrape_after_intercepts(6.0);
    assert_every_design_metric(&text);
    let intercepted = m
        .get(r#"airlock_intercepted_connections_total{target="demo-db"}"#)
        .copied()
        .unwrap_or(0.0);
    assert!(
        intercepted >= 6.0,
        "6 psql connections were intercepted:\n{text}"
    );
    assert_eq!(
        m.get(active).copied(),
        Some(0.0),
        "every session ended:\n{text}"
    );
    assert_eq!(
        m.get(r#"airlock_denied_connections_total{reason="invalid_token"}"#)
            .copied()
            .unwrap_or(0.0),
        0.0,
        "{text}"
    );
    // Per-command series (commands_total, policy_eval_seconds) are emitted by the PostgreSQL
    // session once the pgdata work lands; when they are, they must agree with what ran.
    if let Some(n) = m
        .get("airlock_policy_eval_seconds_count")
        .filter(|n| **n > 0.0)
    {
        assert!(*n >= 5.0, "{text}");
        let allow = m
            .get(r#"airlock_commands_total{target="demo-db",protocol="postgres",action="allow"}"#)
            .copied()
            .unwrap_or(0.0);
        let deny = m
            .get(r#"airlock_commands_total{target="demo-db",protocol="postgres",action="deny"}"#)
            .copied()
            .unwrap_or(0.0);
        assert!(allow >= 3.0 && deny >= 3.0, "{text}");
    }
}

#[test]
fn tokens_in_the_password_field_through_psql() {
    let env = Env::new();
    let pki = Pki::new("e2e");
    // The provider runs where the daemon runs (its 127.0.0.1 is the node's loopback).
    let provider = Provider::start_in(&pki, "k1", 0, Some(&env.topo.node));
    let _daemon = env.start_daemon(&format!(
        "identities:
  - name: ci
    oidc: {{issuer: \"{issuer}\", audience: \"{AUDIENCE}\", ca_file: {ca}}}
    groups: [ci-jobs]
rules:
  - name: ci-main-reads
    require: [token, workload]
    groups: [agents]
    claims: {{repository: \"acme/*\", ref: refs/heads/main}}
    classes: [read]
    action: allow
  - name: ci-feature-reads
    claims: {{ref: \"refs/heads/feature/*\"}}
    classes: [read]
    action: allow
default: deny
",
        issuer = provider.issuer,
        ca = pki.ca.display(),
    ));
    let node = env.topo.node.clone();

    // A valid token (client `ci`: groups agents+ci, repository acme/app, ref main): allowed per
    // its groups and claims.
    let token = provider.client_token_in(&pki, "ci", None, &node);
    let ok = env.psql(
        "clients",
        "nobody",
        Some(&token),
        "SELECT title FROM reports",
    );
    assert!(ok.ok, "a valid token must be let in and allowed: {ok:?}");
    assert_eq!(ok.stdout.trim(), "q3-revenue");
    // What the token allows stops at reads: DDL falls to the default.
    let ddl = env.psql("clients", "nobody", Some(&token), "CREATE TABLE t (x int)");
    assert!(
        !ddl.ok && ddl.stderr.contains("42501") && ddl.stderr.contains("rule \"default\""),
        "{ddl:?}"
    );

    // A 12 KiB token (under the verifier's 16 KiB limit, far over the 8 KiB a naive reader
    // would buffer) logs in whole.
    let bulky = provider.client_token_in(&pki, "bulky", None, &node);
    assert!(
        bulky.len() > 12 * 1024 && bulky.len() < 16 * 1024,
        "{}",
        bulky.len()
    );
    let r = env.psql(
        "clients",
        "nobody",
        Some(&bulky),
        "SELECT title FROM reports",
    );
    assert!(
        r.ok && r.stdout.trim() == "q3-revenue",
        "a 12 KiB token must log in: {r:?}"
    );
    // Past PostgreSQL's cap for a password message: a clear error, not a closed socket.
    let oversized = provider.client_token_in(&pki, "oversized", None, &node);
    assert!(oversized.len() > 65535, "{}", oversized.len());
    let r = env.psql("clients", "nobody", Some(&oversized), "SELECT 1");
    assert!(
        !r.ok
            && r.stderr.contains("FATAL")
            && r.stderr
                .contains("airlock: invalid token: the password message is"),
        "{r:?}"
    );

    // Expired: refused at login, with the reason.
    let expired = provider.client_token_in(&pki, "expired", None, &node);
    let r = env.psql("clients", "nobody", Some(&expired), "SELECT 1");
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr.contains("FATAL") && r.stderr.contains("airlock: invalid token: token expired"),
        "{r:?}"
    );

    // Wrong audience: refused at login, with the reason.
    let other = provider.client_token_in(&pki, "ci", Some("https://other.test"), &node);
    let r = env.psql("clients", "nobody", Some(&other), "SELECT 1");
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr.contains("FATAL")
            && r.stderr.contains("invalid token")
            && r.stderr.contains("does not contain an accepted audience"),
        "{r:?}"
    );

    // Garbage in the password field: refused, never treated as "no token".
    let r = env.psql("clients", "nobody", Some("hunter2"), "SELECT 1");
    assert!(
        !r.ok && r.stderr.contains("invalid token: malformed token"),
        "{r:?}"
    );

    // On the wire: the gateway asks for a cleartext password (AuthenticationCleartextPassword,
    // code 3) and answers a bad token with FATAL, SQLSTATE 28000, naming the reason.
    let script = env.dir.write("raw.py", RAW_PASSWORD_CLIENT);
    let out = sh(&env.cg.run_in(
        "clients",
        &node,
        &format!(
            "{} {} {DB_ADDR} {PG_PORT} {expired}",
            support::PYTHON,
            script.display()
        ),
    ));
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        raw.contains("auth=3\n"),
        "{raw} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        raw.contains("S=FATAL\n") && raw.contains("C=28000\n"),
        "{raw}"
    );
    assert!(
        raw.contains("M=airlock: invalid token: token expired"),
        "{raw}"
    );

    let log = std::fs::read_to_string(env.dir.path("daemon.log")).unwrap();
    assert!(
        log.contains("reason=expired") && log.contains("reason=wrong_audience"),
        "{log}"
    );

    let (m, text) = env.scrape_after_intercepts(7.0);
    assert_every_design_metric(&text);
    assert_eq!(
        m.get(r#"airlock_denied_connections_total{reason="invalid_token"}"#)
            .copied(),
        Some(5.0),
        "{text}"
    );
    let intercepted = m
        .get(r#"airlock_intercepted_connections_total{target="demo-db"}"#)
        .copied()
        .unwrap_or(0.0);
    assert!(intercepted >= 7.0, "{text}");
    provider.stop();
}

/// `airlock login` as a reviewer runs it: the real binary, issuer, CA and client id taken from
/// the config's OIDC identity, the device code approved "in the browser" while it polls, and
/// the cached token verifiable as that reviewer.
#[test]
fn airlock_login_cli_runs_the_device_flow_from_the_config() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let pki = Pki::new("cli-login");
    let provider = Provider::start(&pki, "k1", 0);
    let config = pki.dir.join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "targets: []
identities:
  - name: reviewers
    oidc: {{issuer: \"{}\", audience: cli, ca_file: {}}}
    groups: [reviewers]
",
            provider.issuer,
            pki.ca.display()
        ),
    )
    .unwrap();
    let token_file = pki.dir.join("token.json");

    let mut child = Command::new(airlock_bin())
        .arg("login")
        .arg("--config")
        .arg(&config)
        .arg("--token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let code = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "airlock login ended without a prompt"
        );
        if let Some(code) = line.trim().rsplit_once("enter the code ").map(|(_, c)| c) {
            break code.to_string();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(provider.approve_device(&pki, &code, "alice"));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "airlock login failed: {rest}");
    assert!(rest.contains("logged in at"), "{rest}");

    let bearer = airlock::identity::login::cached_token_at(&token_file).expect("cached token");
    let spec = airlock::config::Config::load(&config).unwrap().identities;
    let verifier = airlock::identity::oidc::OidcVerifier::new(&spec).unwrap();
    let claims = rt.block_on(verifier.verify(&bearer)).unwrap();
    assert_eq!(claims.subject, "alice");
    assert_eq!(claims.identity, "reviewers");

    // Without an issuer anywhere: a clear error, not a panic.
    let out = Command::new(airlock_bin()).arg("login").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give --issuer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
