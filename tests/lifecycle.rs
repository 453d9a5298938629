//! The daemon's life as an SRE sees it, through TRANSPARENT interception: the real daemon on a
//! test cgroup, PostgreSQL 15 on the `db` test host, an echo service beside it, unmodified
//! pgbench and psycopg sessions.
//!
//! - SIGTERM during a pgbench run: the daemon stops accepting, lets sessions finish within
//!   `shutdown_grace`, ends the rest with FATAL 57P01 (a tcp connection held for approval:
//!   closed, its request withdrawn), records every session's end, signs the head and exits;
//!   `airlock audit verify` passes and the programs stay pinned.
//! - `airlock upgrade` during a pgbench run with an open session: pgbench sees no failed
//!   connection, the open session keeps working on the old process until it ends, new
//!   connections land on the new process, the pinned links are the same links before and
//!   after (never detached), bypass probes during the hand-over are all proxied, and what
//!   either daemon connects upstream (the old one while draining) goes to the server itself,
//!   exempt by its sockets' marks.
//!
//! Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

mod support;

#[path = "support/postgres.rs"]
mod pg;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pg::{DATABASE, GATEWAY_USER, PgServer};
use support::*;

const PG_PORT: u16 = 5432;
const ECHO_PORT: u16 = 7000;
const PG_PROXY_PORT: u16 = 15400;

/// One test's world: namespaces, cgroup, PostgreSQL and an echo service on the db host.
struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _pg: PgServer,
    _echo: Proc,
    bpffs: PathBuf,
}

impl Env {
    fn new() -> Env {
        require_root();
        let _ = airlock_bin();
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        let dir = TempDir::new(&topo.id);
        let pg = PgServer::start_in_netns(&topo.db, DB_ADDR, PG_PORT);
        // pgbench's tables, made directly on the server (not through the gateway).
        let init = sh(&format!(
            "{} env PGPASSWORD={} PGSSLMODE=disable pgbench -i -s 1 -q -h {DB_ADDR} -p {PG_PORT} -U {} {DATABASE}",
            Topology::enter(&topo.db),
            GATEWAY_USER.1,
            GATEWAY_USER.0
        ));
        assert!(
            init.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut echo = Proc::spawn_sh(
            &format!(
                "exec {} {PYTHON} {} {ECHO_PORT} {}",
                Topology::enter(&topo.db),
                support_file("echo_server.py").display(),
                dir.path("echo.log").display()
            ),
            &dir.path("echo.out"),
        );
        echo.wait_for_log("ready", Duration::from_secs(10));
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        Env {
            topo,
            cg,
            dir,
            _pg: pg,
            _echo: echo,
            bpffs,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path("state")
    }

    fn start_daemon(&self, grace: &str) -> Daemon {
        let yaml = format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  node_address: {NODE_POD_ADDR}
  listen_port_base: {PG_PROXY_PORT}
  state_dir: {state}
  shutdown_grace: {grace}
targets:
  - name: demo-db
    protocol: postgres
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{PG_PORT}]
    postgres:
      user: {gw}
      password: \"{gw_pw}\"
      database: {DATABASE}
  - name: echo
    protocol: tcp
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{ECHO_PORT}]
identities:
  - name: held
    workload: {{cgroups: [\"*/held\"]}}
    groups: [jit]
rules:
  # Connections from the `held` cgroup wait for a reviewer.
  - name: jit-echo
    groups: [jit]
    connect: {{}}
    action: review
    review: {{approvers: [oncall], timeout: 2m}}
  # Masked answers make the gateway open a catalog connection of its own to the server.
  - name: branches-masked
    targets: [demo-db]
    tables: [pgbench_branches]
    action: allow
    mask: [branch-filler]
  - name: the-rest-unmasked
    action: allow
    mask: []
masking:
  - name: branch-filler
    columns: [\"*.pgbench_branches.filler\"]
    style: redact
default: allow
",
            cg = self.cg.path.display(),
            bpffs = self.bpffs.display(),
            state = self.state().display(),
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

    /// A shell command run from the `clients` cgroup in the node namespace (intercepted).
    fn client(&self, cmd: &str) -> String {
        self.cg.run_in("clients", &self.topo.node, cmd)
    }

    /// pgbench through the gateway, one new connection per transaction, in the background.
    fn pgbench(&self, seconds: u32) -> Child {
        let cmd = self.client(&format!(
            "env PGSSLMODE=disable PGCONNECT_TIMEOUT=10 pgbench -h {DB_ADDR} -p {PG_PORT} -U someone -C -S -c 4 -T {seconds} {DATABASE}"
        ));
        Command::new("sh")
            .args(["-c", &cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A bypass probe in the background from cgroup `child` in namespace `ns`.
    fn probe(&self, child: &str, ns: &str, seconds: f64) -> Child {
        let cmd = self.cg.run_in(
            child,
            ns,
            &format!(
                "{PYTHON} {} {DB_ADDR} {ECHO_PORT} {seconds}",
                support_file("probe.py").display()
            ),
        );
        Command::new("sh")
            .args(["-c", &cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// An unmodified TCP client of the echo service from the `held` cgroup (its connection
    /// waits for approval), in the background.
    fn held_echo_client(&self) -> Child {
        let cmd = self.cg.run_in(
            "held",
            &self.topo.node,
            &format!(
                "{PYTHON} {} {DB_ADDR} {ECHO_PORT} --timeout 60",
                support_file("client.py").display()
            ),
        );
        Command::new("sh")
            .args(["-c", &cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The states of the approval requests in the store (SQLite, read directly: the daemon
    /// may be gone).
    fn request_states(&self) -> Vec<String> {
        let db = self.state().join("approvals.db");
        let out = sh(&format!(
            "{PYTHON} -c 'import sqlite3,sys; print(\"\\n\".join(r[0] for r in sqlite3.connect(sys.argv[1]).execute(\"SELECT state FROM approval_requests ORDER BY created_ms\")))' {}",
            db.display()
        ));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The audit log's records, parsed.
    fn audit_records(&self) -> Vec<serde_json::Value> {
        let dir = self.state().join("audit");
        let mut segs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        segs.sort();
        segs.iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<serde_json::Value>>()
            })
            .collect()
    }

    /// `airlock audit verify --json` passes; every session that started has its end record.
    /// Returns (sessions, end reasons by session id).
    /// A running daemon signs its head within `head_interval` (1 s): the check waits for it.
    fn assert_audit_complete(&self) -> (usize, std::collections::HashMap<String, String>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let report = loop {
            let out = Command::new(airlock_bin())
                .args(["audit", "verify", "--json", "--config"])
                .arg(self.dir.path("airlock.yaml"))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "audit verify failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            if report["unsigned_tail"] == 0 || Instant::now() > deadline {
                break report;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["issues"], serde_json::json!([]), "{report}");
        assert_eq!(
            report["open_sessions"], 0,
            "sessions without an end: {report}"
        );
        assert_eq!(
            report["unsigned_tail"], 0,
            "the last head covers everything: {report}"
        );
        let records = self.audit_records();
        let mut started = std::collections::HashSet::new();
        let mut ended = std::collections::HashMap::new();
        for r in &records {
            let session = r["session"].as_str().unwrap_or("").to_owned();
            match r["event"]["type"].as_str() {
                Some("session_start") => {
                    started.insert(session);
                }
                Some("session_end") => {
                    ended.insert(session, r["event"]["reason"].as_str().unwrap().to_owned());
                }
                _ => {}
            }
        }
        for s in &started {
            assert!(ended.contains_key(s), "session {s} has no end record");
        }
        (started.len(), ended)
    }
}

/// A psycopg session driven line by line (tests/support/pg_session.py).
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Its local port, to find its socket.
    port: u16,
}

impl Session {
    fn open(env: &Env) -> Session {
        let dsn = format!(
            "host={DB_ADDR} port={PG_PORT} user=someone dbname={DATABASE} sslmode=disable connect_timeout=10"
        );
        let cmd = env.client(&format!(
            "{PYTHON} {}",
            support_file("pg_session.py").display()
        ));
        let mut child = Command::new("sh")
            .args(["-c", &cmd])
            .env("DSN", dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        let port = first.strip_prefix("port=").unwrap().parse().unwrap();
        Session {
            child,
            stdin,
            lines,
            port,
        }
    }

    /// Runs one statement; its answer line.
    fn ask(&mut self, sql: &str) -> String {
        writeln!(self.stdin, "{sql}").unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no answer to {sql}: {e}"))
    }

    fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// Waits for a process to exit.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The pids owning established sockets on the node whose local port is `local` and peer
/// port `peer` (what `ss -tnp` says; the kernel's view of who serves a connection).
fn socket_owners(env: &Env, local: u16, peer: u16) -> Vec<u32> {
    let out = sh(&format!(
        "{} ss -tnpH state established '( sport = :{local} and dport = :{peer} )'",
        Topology::enter(&env.topo.node)
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pids = Vec::new();
    for part in text.split("pid=").skip(1) {
        if let Some(pid) = part.split(',').next().and_then(|p| p.parse().ok()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// How many established connections of process `pid` on the node go to remote port `port`.
fn connections_to(env: &Env, pid: u32, port: u16) -> usize {
    let out = sh(&format!(
        "{} ss -tnpH state established '( dport = :{port} )'",
        Topology::enter(&env.topo.node)
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .count()
}

fn link_ids(env: &Env) -> Vec<u64> {
    let status = Daemon::status(&env.bpffs);
    let mut ids: Vec<u64> = status["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["link_id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

fn attached_programs(env: &Env) -> String {
    let out = sh(&format!(
        "bpftool cgroup show {} | tail -n +2 | wc -l",
        env.cg.path.display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn sigterm_drains_sessions_records_every_end_and_exits() {
    let env = Env::new();
    let mut daemon = env.start_daemon("3s");
    // An idle session that will outlive the grace period.
    let mut idle = Session::open(&env);
    assert_eq!(idle.ask("SELECT 41 + 1"), "row=42");
    // A tcp connection held for approval, which nobody gives before the grace period ends.
    let held_tcp = env.held_echo_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.request_states() != ["pending"] {
        assert!(
            Instant::now() < deadline,
            "no pending request: {:?}\n{}",
            env.request_states(),
            daemon.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bench = env.pgbench(8);
    std::thread::sleep(Duration::from_secs(2));

    let started = Instant::now();
    sh_ok(&format!("kill -TERM {}", daemon.proc.pid()));
    let status = wait_exit(&mut daemon.proc.child, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(
        status.success(),
        "daemon exit: {status}\n{}",
        daemon.proc.log_text()
    );
    assert!(
        took >= Duration::from_secs(3),
        "the idle session should have held the drain for the grace period ({took:?})"
    );
    let log = daemon.proc.log_text();
    assert!(log.contains("airlock draining"), "{log}");
    assert!(log.contains("grace period over"), "{log}");
    assert!(log.contains("audit log closed; head signed"), "{log}");

    // The idle session was ended the way PostgreSQL ends one on a fast shutdown: an
    // ErrorResponse, FATAL, SQLSTATE 57P01 (admin_shutdown), on the wire.
    assert_eq!(
        idle.ask("!raw"),
        "raw=E S=FATAL C=57P01 M=terminating connection due to administrator command"
    );
    idle.close();
    // The held connection ended with the deadline too: closed before anything was relayed,
    // its request withdrawn (not left pending), its end recorded as a shutdown.
    let (_, held_out) = output(held_tcp);
    assert!(!held_out.contains("echo="), "relayed: {held_out}");
    assert_eq!(env.request_states(), ["withdrawn"]);
    let held_end = env
        .audit_records()
        .into_iter()
        .find(|r| r["event"]["detail"] == "gateway shut down before approval")
        .unwrap_or_else(|| panic!("no end record for the held connection"));
    assert_eq!(held_end["event"]["reason"], "shutdown", "{held_end}");
    let (_, bench_out) = output(bench);

    let (sessions, ends) = env.assert_audit_complete();
    assert!(
        sessions > 10,
        "pgbench ran sessions before SIGTERM: {sessions}\n{bench_out}"
    );
    assert!(
        ends.values().any(|r| r == "shutdown"),
        "the idle session ended by the deadline: {ends:?}"
    );
    assert!(
        !ends.values().any(|r| r == "dropped"),
        "no session lost its end: {ends:?}"
    );

    // Interception stayed pinned: a client is refused now, never sent direct.
    assert_eq!(attached_programs(&env), "9");
    let out = sh(&env.client(&format!(
        "{PYTHON} {} {DB_ADDR} {ECHO_PORT}",
        support_file("client.py").display()
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connect-error errno=111"), "{text}");
}

#[test]
fn upgrade_hands_over_without_refusing_a_connection() {
    let env = Env::new();
    let daemon = env.start_daemon("20s");
    let old_pid = daemon.proc.pid();
    let links_before = link_ids(&env);
    assert_eq!(links_before.len(), 9);

    let mut held = Session::open(&env);
    let backend = held.ask("SELECT pg_backend_pid()");
    assert!(backend.starts_with("row="), "{backend}");
    assert_eq!(socket_owners(&env, PG_PROXY_PORT, held.port), vec![old_pid]);

    let bench = env.pgbench(10);
    let probe_node = env.probe("clients", &env.topo.node, 8.0);
    let probe_pod = env.probe("pod", &env.topo.pod, 8.0);
    std::thread::sleep(Duration::from_secs(2));

    let out = Command::new(airlock_bin())
        .args(["upgrade", "--config"])
        .arg(env.dir.path("airlock.yaml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "airlock upgrade: {said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.proc.log_text()
    );
    let new_pid: u32 = said
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {said}"));
    assert_ne!(new_pid, old_pid);
    let new_daemon = KillOnDrop(new_pid);

    // The kernel programs were adopted in place: the very same links, one per program.
    assert_eq!(link_ids(&env), links_before, "links were replaced");
    assert_eq!(attached_programs(&env), "9");
    assert_eq!(Daemon::status(&env.bpffs)["daemon_pid"], new_pid);

    // The open session still runs on the old process, on the same server backend.
    assert!(
        handover_alive(old_pid),
        "the old daemon drains while a session is open"
    );
    assert_eq!(held.ask("SELECT pg_backend_pid()"), backend);
    assert_eq!(socket_owners(&env, PG_PROXY_PORT, held.port), vec![old_pid]);
    // What the old daemon connects while it drains is exempt by its own socket marks, now
    // that the new daemon's programs run in the links: its first masked answer opens a
    // catalog connection, which must reach the server itself, not a proxy listener.
    assert_eq!(
        held.ask("SELECT bid, filler FROM pgbench_branches ORDER BY bid LIMIT 1"),
        "row=1"
    );
    // (Two at least: pgbench sessions it accepted before the hand-over may still be ending.)
    assert!(
        connections_to(&env, old_pid, PG_PORT) >= 2,
        "the old daemon's session and catalog connections go to the server"
    );
    assert_eq!(
        connections_to(&env, old_pid, PG_PROXY_PORT),
        0,
        "an upstream connection of the old daemon was redirected to a proxy listener"
    );
    // A new connection lands on the new process, whose own connections are marked too.
    let mut fresh = Session::open(&env);
    assert_eq!(fresh.ask("SELECT 6 * 7"), "row=42");
    assert_eq!(
        socket_owners(&env, PG_PROXY_PORT, fresh.port),
        vec![new_pid]
    );
    assert_eq!(
        fresh.ask("SELECT bid, filler FROM pgbench_branches ORDER BY bid LIMIT 1"),
        "row=1"
    );
    assert!(connections_to(&env, new_pid, PG_PORT) >= 2);
    assert_eq!(connections_to(&env, new_pid, PG_PROXY_PORT), 0);

    let (ok, bench_out) = output(bench);
    assert!(ok, "pgbench failed across the upgrade:\n{bench_out}");
    assert!(
        bench_out.contains("number of failed transactions: 0 "),
        "{bench_out}"
    );
    assert!(!bench_out.contains("aborted"), "{bench_out}");
    for probe in [probe_node, probe_pod] {
        let (ok, text) = output(probe);
        assert!(ok, "probe: {text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let c = &v["counts"];
        assert_eq!(c["direct"], 0, "a probe went around the proxy: {v}");
        assert_eq!(c["error"], 0, "a probe was reset or timed out: {v}");
        assert_eq!(
            c["refused"], 0,
            "a probe was refused during the hand-over: {v}"
        );
        assert!(c["proxied"].as_u64().unwrap() > 10, "{v}");
    }

    // The held session ends; the old daemon has nothing left and exits.
    held.close();
    fresh.close();
    let mut old = daemon;
    let status = wait_exit(&mut old.proc.child, Duration::from_secs(30));
    assert!(status.success(), "old daemon: {status}");
    // The new daemon (it logs to the old one's file) notices the exit by polling: wait for
    // its line; `wait_for_log` would give up at once, the old process being gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old
        .proc
        .log_text()
        .contains("the previous daemon has exited")
    {
        assert!(
            Instant::now() < deadline,
            "the new daemon did not notice the old one's exit:\n{}",
            old.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = old.proc.log_text();
    assert!(
        log.contains("handed over; stopping accepting and draining"),
        "{log}"
    );

    let (sessions, ends) = env.assert_audit_complete();
    assert!(sessions > 20, "{sessions}");
    assert!(
        !ends.values().any(|r| r == "dropped" || r == "shutdown"),
        "every session ended on its own: {ends:?}"
    );
    // The new daemon serves on alone.
    let mut after = Session::open(&env);
    assert_eq!(after.ask("SELECT 1"), "row=1");
    after.close();
    // The new daemon first, then the old handle (its drop uninstalls the programs).
    drop(new_daemon);
    drop(old);
}

fn handover_alive(pid: u32) -> bool {
    airlock::handover::process_alive(pid)
}

/// A process that is not our child (the daemon an upgrade started), killed by pid on drop.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = sh(&format!("kill -9 {}", self.0));
    }
}
