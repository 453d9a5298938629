//! The protocol-neutral gate, end to end: a raw TCP connection is a command the gate decides
//! (held until a human approves it, refused and recorded when denied), and `policy explain`
//! judges every protocol's command form, a rule for one kind of command never matching
//! another's. The clients are unmodified and intercepted by the kernel programs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    DB_ADDR, Daemon, PYTHON, Proc, TempDir, TestCgroup, Topology, airlock_bin, require_root,
    support_file,
};

const ECHO_PORT: u16 = 7000;
const PROXY_PORT: u16 = 15600;
const API_PORT: u16 = 17600;

/// The shared test host, service and daemon.
struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _echo: Proc,
    daemon: Daemon,
}

impl Env {
    fn new() -> Self {
        require_root();
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        let dir = TempDir::new(&topo.id);
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
        let config = dir.write(
            "airlock.yaml",
            &config(&cg.path, &bpffs, &dir.path("state")),
        );
        let daemon = Daemon::start(&cg, &topo, &config, &bpffs, &dir.path("daemon.log"));
        Env {
            topo,
            cg,
            dir,
            _echo: echo,
            daemon,
        }
    }
}

/// Callers are told apart by their cgroup: `held/` connections need review, `denied/` ones
/// are refused, `allowed/` ones pass.
fn config(cgroup: &Path, bpffs: &Path, state: &Path) -> String {
    format!(
        "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  listen_port_base: {PROXY_PORT}
  state_dir: {state}
  api: 127.0.0.1:{API_PORT}
targets:
  - name: echo
    protocol: tcp
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{ECHO_PORT}]
identities:
  - name: held
    workload: {{cgroups: [\"*/held\"]}}
    groups: [jit]
  - name: denied
    workload: {{cgroups: [\"*/denied\"]}}
    groups: [strangers]
  - name: allowed
    workload: {{cgroups: [\"*/allowed\"]}}
    groups: [ops]
rules:
  - name: strangers-out
    groups: [strangers]
    connect: {{}}
    action: deny
    reason: strangers may not open connections to echo
  - name: jit-access
    groups: [jit]
    connect: {{}}
    action: review
    review: {{approvers: [oncall], timeout: 2m}}
  - name: ops-connect
    groups: [ops]
    connect: {{}}
    action: allow
  - name: ops-ls
    groups: [ops]
    exec: {{programs: [ls]}}
    action: allow
  - name: ops-read-pods
    groups: [ops]
    kube: {{verbs: [get, list], resources: [pods]}}
    action: allow
  - name: ops-http-get
    groups: [ops]
    http: {{methods: [GET], paths: [\"/api/*\"]}}
    action: allow
  - name: ops-sql-read
    groups: [ops]
    classes: [read]
    action: allow
default: deny
",
        cg = cgroup.display(),
        bpffs = bpffs.display(),
        state = state.display(),
    )
}

impl Env {
    /// The unmodified client in cgroup `child`, started in the background.
    fn spawn_client(&self, child: &str, tag: &str) -> Child {
        let out = std::fs::File::create(self.dir.path(&format!("{tag}.out"))).expect("out");
        let cmd = format!(
            "{PYTHON} {} {DB_ADDR} {ECHO_PORT} --timeout 60",
            support_file("client.py").display()
        );
        Command::new("sh")
            .args(["-c", &self.cg.run_in(child, &self.topo.node, &cmd)])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("client")
    }

    fn client_output(&self, tag: &str) -> String {
        std::fs::read_to_string(self.dir.path(&format!("{tag}.out"))).unwrap_or_default()
    }

    /// Connections the service accepted (one line each).
    fn arrivals(&self) -> usize {
        std::fs::read_to_string(self.dir.path("echo.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The `airlock` CLI in the daemon's namespace, with its configuration.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.topo.node))
            .arg(airlock_bin())
            .args(args)
            .arg("--config")
            .arg(&self.daemon.config)
            .env("AIRLOCK_LOG", "warn")
            .output()
            .expect("airlock cli");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The audit log's records, parsed.
    fn records(&self) -> Vec<serde_json::Value> {
        let (ok, text) = self.cli(&["audit", "export", "--format", "jsonl"]);
        assert!(ok, "audit export: {text}");
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }
}

#[test]
fn tcp_connections_are_held_until_approved_and_denied_ones_never_reach_the_service() {
    let env = Env::new();

    // Allowed: relayed at once.
    let mut ok = env.spawn_client("allowed", "allowed");
    assert!(
        ok.wait().expect("client").success(),
        "{}",
        env.client_output("allowed")
    );
    let out = env.client_output("allowed");
    assert!(out.contains("echo=hello through airlock"), "{out}");
    assert_eq!(env.arrivals(), 1);

    // Denied: the proxy closes it; nothing reaches the service.
    let mut denied = env.spawn_client("denied", "denied");
    let _ = denied.wait();
    let out = env.client_output("denied");
    assert!(
        !out.contains("echo=hello"),
        "a denied connection was relayed: {out}"
    );
    assert_eq!(
        env.arrivals(),
        1,
        "the denied connection reached the service"
    );

    // Held: nothing reaches the service until the approval.
    let mut held = env.spawn_client("held", "held");
    let mut request = None;
    let mut listing = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while request.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        listing = env.cli(&["requests", "--pending", "--json"]).1;
        let list: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap_or_default();
        request = list.into_iter().find(|r| r["target"] == "echo");
    }
    let request = request.unwrap_or_else(|| {
        panic!(
            "no held request: {listing}\nclient: {}\ndaemon log:\n{}",
            env.client_output("held"),
            env.daemon.proc.log_text()
        )
    });
    assert_eq!(request["rule"], "jit-access");
    assert_eq!(request["protocol"], "tcp");
    assert_eq!(request["commands"][0]["text"], "<tcp connection>");
    // Held for a while: still nothing at the service, and the client still waits.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.arrivals(), 1, "a held connection reached the service");
    assert!(
        held.try_wait().expect("wait").is_none(),
        "the held client gave up"
    );
    let id = request["id"].as_str().expect("id").to_owned();
    let (approved, text) = env.cli(&["approve", &id, "--reason", "maintenance window"]);
    assert!(approved, "approve: {text}");
    assert!(held.wait().expect("client").success());
    let out = env.client_output("held");
    assert!(out.contains("echo=hello through airlock"), "{out}");
    assert_eq!(env.arrivals(), 2);

    // Every connection is in the audit log with its decision.
    let records = env.records();
    let commands: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"]["type"] == "command")
        .collect();
    let action_of = |rule: &str| {
        commands
            .iter()
            .find(|c| c["event"]["rule"] == rule)
            .map(|c| c["event"]["action"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(action_of("ops-connect").as_deref(), Some("allow"));
    assert_eq!(action_of("strangers-out").as_deref(), Some("deny"));
    assert_eq!(action_of("jit-access").as_deref(), Some("review"));
    assert!(
        records
            .iter()
            .any(|r| r["event"]["type"] == "session_end" && r["event"]["reason"] == "denied"),
        "the denied session's end is recorded"
    );
    let (verified, text) = env.cli(&["audit", "verify"]);
    assert!(verified, "audit verify: {text}");
}

/// `policy explain --json` of `command` for a caller in group `group`, under the same
/// configuration (no daemon needed).
fn explain(config: &Path, group: &str, command: &[&str]) -> serde_json::Value {
    let out = Command::new(airlock_bin())
        .args([
            "policy",
            "explain",
            "--target",
            "echo",
            "--identity",
            "tester",
        ])
        .args(["--group", group, "--json", "--config"])
        .arg(config)
        .args(command)
        .output()
        .expect("explain");
    assert!(
        out.status.success(),
        "explain {command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain json")
}

#[test]
fn explain_judges_every_protocols_command_form() {
    let dir = TempDir::new(&format!("explain-{}", std::process::id()));
    let config = dir.write(
        "airlock.yaml",
        &config(
            Path::new("t"),
            Path::new("/sys/fs/bpf/t"),
            &dir.path("state"),
        ),
    );
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (&["--connect"], "allow", "ops-connect", "connect"),
        (&["--exec", "ls -la /srv"], "allow", "ops-ls", "exec"),
        (&["--exec", "ls; rm -rf /"], "deny", "default", "exec"),
        (&["--shell"], "deny", "default", "shell"),
        (
            &["--kube", "list", "/api/v1/namespaces/default/pods"],
            "allow",
            "ops-read-pods",
            "kube",
        ),
        (
            &["--kube", "delete", "/api/v1/namespaces/default/pods/web"],
            "deny",
            "default",
            "kube",
        ),
        (
            &["--http", "GET", "https://api.internal/api/users"],
            "allow",
            "ops-http-get",
            "http",
        ),
        (
            &["--http", "DELETE", "https://api.internal/api/users/7"],
            "deny",
            "default",
            "http",
        ),
        (&["--sql", "SELECT 1"], "allow", "ops-sql-read", "sql"),
        (&["--sql", "DROP TABLE t"], "deny", "default", "sql"),
    ];
    for (command, action, rule, kind) in cases {
        let e = explain(&config, "ops", command);
        assert_eq!(e["action"], *action, "{command:?}: {e}");
        assert_eq!(e["rule"], *rule, "{command:?}: {e}");
        assert_eq!(e["command_kind"], *kind, "{command:?}: {e}");
        assert!(e["classes"].is_array() && e["trace"].is_array(), "{e}");
    }
    // A rule for one kind of command never matches another's: `ls` as SQL is not covered by
    // the exec rule, and the trace says why each rule was skipped.
    let e = explain(&config, "ops", &["--sql", "ls"]);
    assert_eq!(e["action"], "deny", "{e}");
    let trace = e["trace"].as_array().expect("trace");
    let step = |rule: &str| {
        trace
            .iter()
            .find(|t| t["rule"] == rule)
            .map(|t| t["result"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(step("ops-ls").contains("an exec rule"), "{trace:?}");
    assert!(step("ops-http-get").contains("an http rule"), "{trace:?}");
    let e = explain(&config, "ops", &["--exec", "cat /etc/passwd"]);
    assert!(step_of(&e, "ops-sql-read").contains("an sql rule"), "{e}");
    assert!(e["programs"] == serde_json::json!(["cat"]), "{e}");
}

fn step_of(e: &serde_json::Value, rule: &str) -> String {
    e["trace"]
        .as_array()
        .and_then(|t| t.iter().find(|s| s["rule"] == rule))
        .and_then(|s| s["result"].as_str())
        .unwrap_or("")
        .to_owned()
}
