//! Transparent interception end to end: real kernel programs attached to a test cgroup, a real
//! TCP service on a netns test host, unmodified clients in the host namespace and in a pod-like
//! namespace, bypass attempts, kill -9 of the daemon, restart from pins, reload.
//!
//! Needs root (CI runs as root). Each test builds its own namespaces and cgroup.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

const ECHO_PORT: u16 = 7000;
const PROXY_PORT: u16 = 15000;

struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _echo: Proc,
    bpffs: PathBuf,
}

/// What the unmodified client printed.
#[derive(Debug, Default)]
struct ClientRun {
    connect_error: Option<String>,
    getpeername: String,
    own_port: String,
    server_saw_peer: String,
    server_saw_port: String,
    echo: String,
}

impl ClientRun {
    fn assert_proxied(&self, original: &str, proxy_addr: &str) {
        assert!(self.connect_error.is_none(), "connect failed: {self:?}");
        assert_eq!(
            self.getpeername, original,
            "getpeername must show the original destination"
        );
        assert_eq!(
            self.server_saw_peer, proxy_addr,
            "the service must see the proxy: {self:?}"
        );
        assert_ne!(
            self.server_saw_port, self.own_port,
            "the service saw the client's own socket, so the connection went direct: {self:?}"
        );
        assert_eq!(self.echo, "hello through airlock");
    }

    fn assert_refused(&self) {
        let err = self.connect_error.as_deref().unwrap_or("");
        assert!(
            err.contains("errno=111") || err.contains("errno=1 "),
            "expected ECONNREFUSED or EPERM, got {self:?}"
        );
    }
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
        Env {
            topo,
            cg,
            dir,
            _echo: echo,
            bpffs,
        }
    }

    fn config(&self, ports: &str) -> String {
        format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  node_address: {NODE_POD_ADDR}
  listen_port_base: {PROXY_PORT}
  state_dir: {state}
targets:
  - name: echo
    protocol: tcp
    addresses: [\"198.18.0.0/24\", \"{DB_ADDR6}/128\"]
    ports: {ports}
",
            cg = self.cg.path.display(),
            bpffs = self.bpffs.display(),
            state = self.dir.path("state").display(),
        )
    }

    fn start_daemon(&self, log: &str) -> Daemon {
        let config = self
            .dir
            .write("airlock.yaml", &self.config(&format!("[{ECHO_PORT}]")));
        Daemon::start(
            &self.cg,
            &self.topo,
            &config,
            &self.bpffs,
            &self.dir.path(log),
        )
    }

    /// Runs the unmodified client from cgroup `child` in namespace `ns`.
    fn client(&self, child: &str, ns: &str, args: &str) -> ClientRun {
        let cmd = format!("{PYTHON} {} {args}", support_file("client.py").display());
        let out = sh(&self.cg.run_in(child, ns, &cmd));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut run = ClientRun::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("connect-error ") {
                run.connect_error = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("getpeername=") {
                run.getpeername = v.to_owned();
            } else if let Some(v) = line.strip_prefix("sockname_port=") {
                run.own_port = v.to_owned();
            } else if let Some(v) = line.strip_prefix("echo=") {
                run.echo = v.to_owned();
            } else if line.starts_with("peer=") {
                for field in line.split_whitespace() {
                    if let Some(v) = field.strip_prefix("peer=") {
                        run.server_saw_peer = v.to_owned();
                    } else if let Some(v) = field.strip_prefix("peer_port=") {
                        run.server_saw_port = v.to_owned();
                    }
                }
            }
        }
        if run.connect_error.is_none() && run.getpeername.is_empty() {
            panic!(
                "client produced no result:\nstdout: {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        run
    }

    /// Connections the service accepted, as "peer port local" lines.
    fn arrivals(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("echo.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every connection that reached the service came from the proxy's addresses.
    fn assert_only_proxy_arrived(&self) {
        for line in self.arrivals() {
            let peer = line.split_whitespace().next().unwrap_or("");
            assert!(
                peer == NODE_DB_ADDR || peer == NODE_DB_ADDR6,
                "a connection reached the service directly from {peer}: {line}"
            );
        }
    }
}

#[test]
fn unmodified_clients_are_intercepted_on_every_path() {
    let env = Env::new();
    let _daemon = env.start_daemon("daemon.log");
    let node = env.topo.node.clone();
    let pod = env.topo.pod.clone();

    // Host namespace, IPv4.
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // Another address inside the protected CIDR.
    env.client("clients", &node, &format!("{DB_ADDR_2} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR_2}:{ECHO_PORT}"), NODE_DB_ADDR);
    // IPv6.
    env.client("clients", &node, &format!("{DB_ADDR6} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR6}:{ECHO_PORT}"), NODE_DB_ADDR6);
    // IPv4-mapped IPv6 on a dual-stack socket.
    env.client(
        "clients",
        &node,
        &format!("::ffff:{DB_ADDR} {ECHO_PORT} --family 6"),
    )
    .assert_proxied(&format!("::ffff:{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // A process that sets SO_MARK (forgeable; exemption needs cgroup, pid and netns).
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT} --mark 1"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // A process in another cgroup.
    env.client("other", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // A process in its own network namespace and cgroup, as a pod: it reaches the proxy on the
    // node address, and the service sees the proxy rather than the pod.
    let from_pod = env.client("pod", &pod, &format!("{DB_ADDR} {ECHO_PORT}"));
    from_pod.assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    assert_ne!(from_pod.server_saw_peer, POD_ADDR);

    assert_eq!(
        env.arrivals().len(),
        7,
        "every client reached the service once"
    );
    env.assert_only_proxy_arrived();
}

#[test]
fn fail_closed_while_the_daemon_is_dead_then_resumes_from_pins() {
    let env = Env::new();
    let mut daemon = env.start_daemon("daemon.log");
    let node = env.topo.node.clone();
    let pod = env.topo.pod.clone();
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);

    daemon.proc.kill9();
    let before = env.arrivals().len();
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_refused();
    env.client("clients", &node, &format!("{DB_ADDR6} {ECHO_PORT}"))
        .assert_refused();
    env.client("pod", &pod, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_refused();
    env.client("other", &node, &format!("{DB_ADDR_2} {ECHO_PORT} --mark 1"))
        .assert_refused();
    // Nobody may stand in for the proxy while it is down.
    let squat = sh(&env.cg.run_in(
        "clients",
        &node,
        &format!("{PYTHON} -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', {PROXY_PORT})); print('bound')\""),
    ));
    assert!(
        !squat.status.success(),
        "a process bound the proxy port while the daemon was dead"
    );
    assert!(String::from_utf8_lossy(&squat.stderr).contains("Operation not permitted"));
    assert_eq!(
        env.arrivals().len(),
        before,
        "nothing reached the service while the daemon was dead"
    );

    let status = Daemon::status(&env.bpffs);
    assert_eq!(status["daemon_alive"], false);
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(7),
        "{status}"
    );

    // Restart: the new daemon takes over the pins without attaching twice.
    let _daemon2 = Daemon::start(
        &env.cg,
        &env.topo,
        &daemon.config,
        &env.bpffs,
        &env.dir.path("daemon2.log"),
    );
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    let attached = sh(&format!(
        "bpftool cgroup show {} | tail -n +2 | wc -l",
        env.cg.path.display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&attached.stdout).trim(),
        "7",
        "exactly one attachment per program"
    );
    let status = Daemon::status(&env.bpffs);
    assert_eq!(status["daemon_alive"], true);
    assert_eq!(status["listeners"][0]["listening"], true, "{status}");
    env.assert_only_proxy_arrived();
}

#[test]
fn a_direct_dial_of_the_proxy_listener_is_refused() {
    let env = Env::new();
    let daemon = env.start_daemon("daemon.log");
    // From outside the protected cgroup: no interception record exists for this connection.
    let cmd = format!(
        "{} {PYTHON} -c \"import socket; s=socket.create_connection(('127.0.0.1', {PROXY_PORT}), 5); print('data=' + repr(s.recv(100)))\"",
        Topology::enter(&env.topo.node)
    );
    let out = sh(&cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("data=b''"),
        "the proxy must close an unrecorded connection: {text}"
    );
    assert!(env.arrivals().is_empty(), "nothing may reach the service");
    assert!(
        daemon
            .proc
            .log_text()
            .contains("without an interception record")
    );
}

#[test]
fn reload_applies_good_config_and_keeps_the_last_good_one() {
    let env = Env::new();
    let mut daemon = env.start_daemon("daemon.log");
    let node = env.topo.node.clone();
    let pid = daemon.proc.pid();

    // A bad file: the error names file, line and field; the old config stays in force.
    std::fs::write(&daemon.config, env.config("[7000, 70000]")).expect("write config");
    sh_ok(&format!("kill -HUP {pid}"));
    daemon
        .proc
        .wait_for_log("reload rejected", Duration::from_secs(10));
    let log = daemon.proc.log_text();
    assert!(
        log.contains("airlock.yaml:11:"),
        "error must name file and line: {log}"
    );
    assert!(
        log.contains("targets[0].ports[1]"),
        "error must name the field: {log}"
    );
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);

    // A good file protecting one more port takes effect.
    let mut echo2 = Proc::spawn_sh(
        &format!(
            "exec {} {PYTHON} {} 7001 {}",
            Topology::enter(&env.topo.db),
            support_file("echo_server.py").display(),
            env.dir.path("echo.log").display()
        ),
        &env.dir.path("echo2.out"),
    );
    echo2.wait_for_log("ready", Duration::from_secs(10));
    std::fs::write(&daemon.config, env.config("[7000, 7001]")).expect("write config");
    sh_ok(&format!("kill -HUP {pid}"));
    daemon
        .proc
        .wait_for_log("configuration reloaded", Duration::from_secs(10));
    env.client("clients", &node, &format!("{DB_ADDR} 7001"))
        .assert_proxied(&format!("{DB_ADDR}:7001"), NODE_DB_ADDR);
    env.assert_only_proxy_arrived();
}

#[test]
fn uninstall_detaches_everything() {
    let env = Env::new();
    let mut daemon = env.start_daemon("daemon.log");
    daemon.proc.kill9();
    let out = std::process::Command::new(airlock_bin())
        .args(["uninstall", "--bpffs"])
        .arg(&env.bpffs)
        .output()
        .expect("uninstall");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached 7"));
    let attached = sh(&format!(
        "bpftool cgroup show {} | tail -n +2 | wc -l",
        env.cg.path.display()
    ));
    assert_eq!(String::from_utf8_lossy(&attached.stdout).trim(), "0");
    assert!(!env.bpffs.exists(), "pins removed");
    // With interception off, the same client goes direct.
    let run = env.client(
        "clients",
        &env.topo.node.clone(),
        &format!("{DB_ADDR} {ECHO_PORT}"),
    );
    assert_eq!(
        run.server_saw_port, run.own_port,
        "direct connection after uninstall"
    );
}
