//! Transparent interception end to end: real kernel programs attached to a test cgroup, a real
//! TCP service on a netns test host, unmodified clients in the host namespace and in a pod-like
//! namespace, bypass attempts, kill -9 of the daemon, restart from pins, reload.
//!
//! Needs root (CI runs as root). Each test builds its own namespaces and cgroup. Attacks are run
//! as `nobody`, as the threat model's unprivileged process.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

const ECHO_PORT: u16 = 7000;
const PROXY_PORT: u16 = 15000;
/// The daemon's metrics endpoint (node namespace).
const METRICS_PORT: u16 = 15900;
/// Runs the rest of a command line as `nobody`.
const NOBODY: &str = "setpriv --reuid=nobody --regid=nogroup --clear-groups --";
/// A second protected service: target `other`, on the db host, listener PROXY_PORT + 1.
const OTHER_TARGET: &str = "  - name: other
    protocol: tcp
    addresses: [\"198.18.0.0/24\"]
    ports: [7002]
";

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
        self.config_with(ports, "")
    }

    /// The configuration with more targets appended (listeners from PROXY_PORT + 1 on).
    fn config_with(&self, ports: &str, more_targets: &str) -> String {
        format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  node_address: {NODE_POD_ADDR}
  listen_port_base: {PROXY_PORT}
  metrics: 127.0.0.1:{METRICS_PORT}
  state_dir: {state}
targets:
  - name: echo
    protocol: tcp
    addresses: [\"198.18.0.0/24\", \"{DB_ADDR6}/128\"]
    ports: {ports}
{more_targets}rules:
  - name: test-clients-connect
    connect: {{}}
    action: allow
",
            cg = self.cg.path.display(),
            bpffs = self.bpffs.display(),
            state = self.dir.path("state").display(),
        )
    }

    fn start_daemon(&self, log: &str) -> Daemon {
        self.start_daemon_with("", log)
    }

    fn start_daemon_with(&self, more_targets: &str, log: &str) -> Daemon {
        let config = self.dir.write(
            "airlock.yaml",
            &self.config_with(&format!("[{ECHO_PORT}]"), more_targets),
        );
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
        self.client_as("", child, ns, args)
    }

    /// Runs the unmodified client as `nobody`.
    fn nobody_client(&self, child: &str, ns: &str, args: &str) -> ClientRun {
        self.client_as(NOBODY, child, ns, args)
    }

    fn client_as(&self, prefix: &str, child: &str, ns: &str, args: &str) -> ClientRun {
        let cmd = format!(
            "{prefix} {PYTHON} {} {args}",
            support_file("client.py").display()
        );
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
        self.arrivals_at("echo.log")
    }

    fn arrivals_at(&self, log: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path(log))
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
    // A process that sets SO_MARK (no part of the exemption, which is a mark on the daemon's
    // own sockets).
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT} --mark 1"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // A process in another cgroup.
    env.client("other", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // An MPTCP socket: its first subflow is intercepted, and the MPTCP socket itself still
    // shows the original peer.
    env.nobody_client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT} --mptcp"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    // A process in its own network namespace and cgroup, as a pod: it reaches the proxy on the
    // node address, and the service sees the proxy rather than the pod.
    let from_pod = env.client("pod", &pod, &format!("{DB_ADDR} {ECHO_PORT}"));
    from_pod.assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
    assert_ne!(from_pod.server_saw_peer, POD_ADDR);

    assert_eq!(
        env.arrivals().len(),
        8,
        "every client reached the service once"
    );
    env.assert_only_proxy_arrived();

    // UDP to a protected target's port (HTTP/3 to a 443) has no proxy to go to: refused,
    // connected or not, in either family; UDP elsewhere is untouched.
    for args in [
        format!("{DB_ADDR} {ECHO_PORT} --udp"),
        format!("{DB_ADDR} {ECHO_PORT} --udp --sendto"),
        format!("{DB_ADDR6} {ECHO_PORT} --udp --sendto"),
        format!("::ffff:{DB_ADDR} {ECHO_PORT} --udp --family 6"),
    ] {
        let run = env.nobody_client("clients", &node, &args);
        assert!(
            run.connect_error
                .as_deref()
                .is_some_and(|e| e.contains("errno=1 ")),
            "{args}: {run:?}"
        );
    }
    let other_port = sh(&env.cg.run_in(
        "clients",
        &node,
        &format!(
            "{NOBODY} {PYTHON} {} {DB_ADDR} {} --udp --sendto",
            support_file("client.py").display(),
            ECHO_PORT + 1
        ),
    ));
    assert!(
        String::from_utf8_lossy(&other_port.stdout).contains("udp-sent"),
        "{other_port:?}"
    );
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
    // Nobody may stand in for the proxy, or the daemon's other listeners, while it is down.
    for port in [PROXY_PORT, METRICS_PORT] {
        let squat = sh(&env.cg.run_in(
            "clients",
            &node,
            &format!("{NOBODY} {PYTHON} -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', {port})); print('bound')\""),
        ));
        assert!(
            !squat.status.success(),
            "a process bound port {port} while the daemon was dead"
        );
        assert!(String::from_utf8_lossy(&squat.stderr).contains("Operation not permitted"));
    }
    assert_eq!(
        env.arrivals().len(),
        before,
        "nothing reached the service while the daemon was dead"
    );

    let status = Daemon::status(&env.bpffs);
    assert_eq!(status["daemon_alive"], false);
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(9),
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
        "9",
        "exactly one attachment per program"
    );
    let status = Daemon::status(&env.bpffs);
    assert_eq!(status["daemon_alive"], true);
    assert_eq!(status["listeners"][0]["listening"], true, "{status}");
    env.assert_only_proxy_arrived();
}

/// `daemon.io_engine: io_uring`: intercepted connections are relayed with the ring's splices,
/// and `airlock status` names the engine. Where the kernel refuses rings
/// (`kernel.io_uring_disabled = 2`, as a container's seccomp profile would), the daemon runs
/// on epoll and says so in its log and in `airlock status`.
#[test]
fn the_io_uring_engine_relays_and_falls_back_to_epoll_where_refused() {
    let env = Env::new();
    let config = env.dir.write(
        "airlock.yaml",
        &env.config(&format!("[{ECHO_PORT}]")).replacen(
            "daemon:\n",
            "daemon:\n  io_engine: io_uring\n",
            1,
        ),
    );
    let status = |config: &std::path::Path| -> serde_json::Value {
        let out = sh(&format!(
            "{} status --json --config {}",
            airlock_bin(),
            config.display()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    };
    let node = env.topo.node.clone();
    {
        let _daemon = Daemon::start(
            &env.cg,
            &env.topo,
            &config,
            &env.bpffs,
            &env.dir.path("ring.log"),
        );
        env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
            .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
        let status = status(&config);
        assert_eq!(status["io_engine"], "io_uring", "{status}");
        let fds = sh_out(&format!("ls -l /proc/{}/fd", status["daemon_pid"]));
        assert!(
            fds.contains("[io_uring]"),
            "the daemon holds no ring: {fds}"
        );
    }
    // The kernel refuses rings to everyone while this daemon starts.
    let knob = "/proc/sys/kernel/io_uring_disabled";
    let was = std::fs::read_to_string(knob).expect("kernel.io_uring_disabled");
    struct Restore(&'static str, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, &self.1);
        }
    }
    let _restore = Restore(knob, was);
    std::fs::write(knob, "2").expect("set kernel.io_uring_disabled");
    let mut daemon = Daemon::start(
        &env.cg,
        &env.topo,
        &config,
        &env.bpffs,
        &env.dir.path("epoll.log"),
    );
    daemon
        .proc
        .wait_for_log("io_uring unavailable", Duration::from_secs(5));
    let engine = status(&config)["io_engine"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        engine.starts_with("epoll (io_uring unavailable"),
        "{engine}"
    );
    env.client("clients", &node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_proxied(&format!("{DB_ADDR}:{ECHO_PORT}"), NODE_DB_ADDR);
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
        log.contains("airlock.yaml:12:"),
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached 9"));
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

/// Removes a test's directory (and detaches anything pinned under it) on drop.
struct RemoveOnDrop(Vec<PathBuf>);

/// Unmounts a test's own mount when the test ends.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {} 2>/dev/null", self.0.display()));
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::process::Command::new(airlock_bin())
                .args(["uninstall", "--bpffs"])
                .arg(dir)
                .output();
            let _ = sh(&format!("rm -rf {}", dir.display()));
        }
    }
}

/// Issue 16, finding 1: a record left behind by a connect that never reached `echo`'s listener
/// (refused while the daemon was dead) is not admitted when the same source address and port
/// dial `other`'s listener: records belong to one listener and die with their connection.
#[test]
fn a_leftover_record_is_never_admitted_by_another_targets_listener() {
    let env = Env::new();
    let mut daemon = env.start_daemon_with(OTHER_TARGET, "daemon.log");
    let node = env.topo.node.clone();
    // Below the ephemeral range, so nothing else on the host picks it meanwhile.
    let source_port = 20000 + (std::process::id() % 8000) as u16;
    daemon.proc.kill9();
    env.nobody_client(
        "clients",
        &node,
        &format!("{DB_ADDR} {ECHO_PORT} --source-port {source_port}"),
    )
    .assert_refused();
    let records = sh_out(&format!(
        "bpftool map dump pinned {}/maps/v2/AIRLOCK_CONN_BY_PEER",
        env.bpffs.display()
    ));
    assert!(
        records.contains("Found 0 elements"),
        "the refused connection's record outlived it: {records}"
    );
    let restarted = Daemon::start(
        &env.cg,
        &env.topo,
        &daemon.config,
        &env.bpffs,
        &env.dir.path("daemon2.log"),
    );
    let dial = env.nobody_client(
        "clients",
        &node,
        &format!("127.0.0.1 {} --source-port {source_port}", PROXY_PORT + 1),
    );
    assert!(
        dial.server_saw_peer.is_empty() && dial.echo.is_empty(),
        "`other`'s listener relayed a connection: {dial:?}"
    );
    assert!(
        env.arrivals().is_empty(),
        "`echo` was reached through `other`'s listener: {:?}",
        env.arrivals()
    );
    assert!(
        restarted
            .proc
            .log_text()
            .contains("without an interception record"),
        "{}",
        restarted.proc.log_text()
    );
}

/// Issue 16, finding 2: after kill -9, a process in the daemon's cgroup and network namespace
/// that comes to hold the dead daemon's pid is intercepted like anyone else and cannot bind
/// the proxy port.
#[test]
fn a_process_holding_the_dead_daemons_pid_gets_no_exemption() {
    let env = Env::new();
    let mut daemon = env.start_daemon("daemon.log");
    let pid = daemon.proc.pid();
    daemon.proc.kill9();
    let out = sh(&env.cg.run_in(
        "daemon",
        &env.topo.node,
        &format!(
            "{PYTHON} {} {pid} {DB_ADDR} {ECHO_PORT} {PROXY_PORT}",
            support_file("pid_reuse.py").display()
        ),
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("took pid={pid} uid=65534")),
        "the test could not take the pid: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("connect=errno111"),
        "the connect must be redirected to the (dead) proxy and refused: {text}"
    );
    assert!(
        text.contains("bind=errno1\n"),
        "binding the proxy port must fail with EPERM: {text}"
    );
    assert!(
        env.arrivals().is_empty(),
        "the service was reached directly: {:?}",
        env.arrivals()
    );
}

/// Issue 16, finding 3: airlock refuses pin and state directories it did not make (a
/// directory or symlink `nobody` planted in a world-writable parent), creates its own as root
/// with mode 0700, and mounts bpffs with mode 0700 when it has to mount it.
#[test]
fn pin_and_state_directories_made_by_someone_else_are_refused() {
    let env = Env::new();
    let id = &env.topo.id;
    // A bpffs instance of the test's own, traversable by others: the host's /sys/fs/bpf is
    // mounted 0700 (as `cargo xtask setup` and the daemon mount it), which `nobody` cannot
    // enter at all.
    let bpf_root = env.dir.path("bpffs-open");
    let _unmount = UnmountOnDrop(bpf_root.clone());
    let open_bpf = bpf_root.join(format!("airlock-test-{id}-open"));
    let open_tmp = env.dir.path("open");
    let _cleanup = RemoveOnDrop(vec![open_bpf.clone(), open_bpf.join("planted")]);
    sh_ok(&format!(
        "mkdir -p {r} && mount -t bpf -o mode=0755 bpf {r} && mkdir -m 1777 {b} {t} && {NOBODY} mkdir {b}/planted {t}/state && {NOBODY} ln -s {b}/planted {b}/link",
        r = bpf_root.display(),
        b = open_bpf.display(),
        t = open_tmp.display()
    ));
    let good = env.config("[7000]");
    let run_refused = |name: &str, text: String| -> String {
        let config = env.dir.write(name, &text);
        let out = sh(&env.cg.run_in(
            "daemon",
            &env.topo.node,
            &format!(
                "timeout 15 {} run --config {}",
                airlock_bin(),
                config.display()
            ),
        ));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && out.status.code() != Some(124),
            "the daemon must refuse to start ({name}): {stderr}"
        );
        stderr
    };
    let bpffs_line = format!("bpffs: {}", env.bpffs.display());
    let planted = open_bpf.join("planted");
    let err = run_refused(
        "planted.yaml",
        good.replace(&bpffs_line, &format!("bpffs: {}", planted.display())),
    );
    assert!(
        err.contains(&planted.display().to_string()) && err.contains("uid 65534"),
        "the error must name the directory and its owner: {err}"
    );
    let err = run_refused(
        "link.yaml",
        good.replace(&bpffs_line, &format!("bpffs: {}/link", open_bpf.display())),
    );
    assert!(err.contains("symbolic link"), "{err}");
    let state_line = format!("state_dir: {}", env.dir.path("state").display());
    let err = run_refused(
        "state.yaml",
        good.replace(
            &state_line,
            &format!("state_dir: {}/state", open_tmp.display()),
        ),
    );
    assert!(
        err.contains(&format!("{}/state", open_tmp.display())) && err.contains("uid 65534"),
        "{err}"
    );
    let attached = sh(&format!(
        "bpftool cgroup show {} | tail -n +2 | wc -l",
        env.cg.path.display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&attached.stdout).trim(),
        "0",
        "a refused start attached nothing"
    );

    // Where bpffs is not mounted (a private mount namespace here), the daemon mounts it 0700
    // and makes its own directories root-owned, 0700.
    let config = env.dir.write("good.yaml", &good);
    let mut daemon = Proc::spawn_sh(
        &env.cg.run_in(
            "daemon",
            &env.topo.node,
            &format!(
                "unshare --mount --propagation private -- sh -c 'umount /sys/fs/bpf && exec {} run --config {}'",
                airlock_bin(),
                config.display()
            ),
        ),
        &env.dir.path("private.log"),
    );
    daemon.wait_for_log("airlock running", Duration::from_secs(30));
    let root = format!("/proc/{}/root", daemon.pid());
    let modes = sh_out(&format!(
        "stat -c '%a %u %F' {root}/sys/fs/bpf {root}{b} {root}{b}/links {root}{b}/maps {state}",
        b = env.bpffs.display(),
        state = env.dir.path("state").display()
    ));
    let lines: Vec<&str> = modes.lines().collect();
    assert_eq!(lines.len(), 5, "{modes}");
    // bpffs always adds the sticky bit to its root.
    assert_eq!(lines[0], "1700 0 directory", "{modes}");
    for line in &lines[1..] {
        assert_eq!(*line, "700 0 directory", "{modes}");
    }
    daemon.kill9();

    // In its own directory nobody can unlink the pinned links, so after kill -9 they stay
    // attached and a connect is refused, never sent direct.
    let mut daemon = env.start_daemon("daemon.log");
    let unlink = sh(&format!(
        "{NOBODY} rm -f {b}/links/connect4 {b}/links/connect6 {b}/links/bind4",
        b = env.bpffs.display()
    ));
    assert!(
        String::from_utf8_lossy(&unlink.stderr).contains("Permission denied"),
        "nobody must not reach the pins: {}",
        String::from_utf8_lossy(&unlink.stderr)
    );
    daemon.proc.kill9();
    env.nobody_client("clients", &env.topo.node, &format!("{DB_ADDR} {ECHO_PORT}"))
        .assert_refused();
    assert!(
        env.arrivals().is_empty(),
        "the service was reached directly: {:?}",
        env.arrivals()
    );
}

/// Issue 16, finding 4: with a target on 127.0.0.0/8 and ::1, a connect to 0.0.0.0, [::] or
/// [::ffff:0.0.0.0] on its port (which the kernel turns into loopback after the hook) is
/// intercepted like a connect to loopback. A socket bound to a local address first sends
/// 0.0.0.0 (and ::ffff:0.0.0.0) to that address instead: a target on it is protected too.
#[test]
fn the_unspecified_address_is_protected_as_the_local_host() {
    const LOCAL_PORT: u16 = 7003;
    const BOUND_PORT: u16 = 7004;
    let env = Env::new();
    let node = env.topo.node.clone();
    let mut servers = Vec::new();
    for (port, log) in [(LOCAL_PORT, "local"), (BOUND_PORT, "bound")] {
        let mut server = Proc::spawn_sh(
            &format!(
                "exec {} {PYTHON} {} {port} {}",
                Topology::enter(&node),
                support_file("echo_server.py").display(),
                env.dir.path(&format!("{log}.log")).display()
            ),
            &env.dir.path(&format!("{log}.out")),
        );
        server.wait_for_log("ready", Duration::from_secs(10));
        servers.push(server);
    }
    let _daemon = env.start_daemon_with(
        &format!(
            "  - name: local
    protocol: tcp
    addresses: [\"127.0.0.0/8\", \"::1/128\"]
    ports: [{LOCAL_PORT}]
  - name: bound
    protocol: tcp
    addresses: [\"127.0.0.2/32\"]
    ports: [{BOUND_PORT}]
"
        ),
        "daemon.log",
    );
    // 127.0.0.1 is not in the second target: only the bound address makes these protected.
    let bound_cases = [
        ("0.0.0.0", "--bind 127.0.0.2"),
        ("::ffff:0.0.0.0", "--family 6 --bind ::ffff:127.0.0.2"),
    ];
    for (addr, flags) in bound_cases {
        let run = env.nobody_client("clients", &node, &format!("{addr} {BOUND_PORT} {flags}"));
        let original = if addr.contains(':') {
            format!("::ffff:127.0.0.2:{BOUND_PORT}")
        } else {
            format!("127.0.0.2:{BOUND_PORT}")
        };
        run.assert_proxied(&original, "127.0.0.1");
    }
    assert_eq!(
        env.arrivals_at("bound.log").len(),
        bound_cases.len(),
        "each bound connect arrived once, through the proxy"
    );
    let cases = [
        ("0.0.0.0", "", "127.0.0.1"),
        ("::", "", "::1"),
        ("::ffff:0.0.0.0", "--family 6", "::ffff:127.0.0.1"),
    ];
    for (addr, flags, local_host) in cases {
        let run = env.nobody_client("clients", &node, &format!("{addr} {LOCAL_PORT} {flags}"));
        let proxy = if local_host == "::1" {
            "::1"
        } else {
            "127.0.0.1"
        };
        run.assert_proxied(&format!("{local_host}:{LOCAL_PORT}"), proxy);
    }
    assert_eq!(
        env.arrivals_at("local.log").len(),
        cases.len(),
        "each connect arrived once, through the proxy"
    );
    // From a pod, 127.0.0.1 is the pod's own loopback (nothing listens there), never the
    // host's: not sent to the node's proxy, which would dial a host-only service for it.
    let pod = env.topo.pod.clone();
    let run = env.nobody_client("pod", &pod, &format!("127.0.0.1 {LOCAL_PORT}"));
    assert!(
        run.connect_error
            .as_deref()
            .is_some_and(|e| e.contains("errno=111")),
        "{run:?}"
    );
    assert_eq!(env.arrivals_at("local.log").len(), cases.len());
}

/// A proxy listener port inside ip_local_port_range could be taken by anyone's plain listen()
/// (an ephemeral port, no bind hook) while the daemon is down: `policy check` and the daemon
/// refuse it.
#[test]
fn a_proxy_port_inside_the_ephemeral_range_is_refused() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("range");
    let dir = TempDir::new(&unique_id());
    let config = |port: u16| {
        format!(
            "daemon:
  cgroup: airlock-test-does-not-exist
  bpffs: {}
  state_dir: {}
targets:
  - name: echo
    protocol: tcp
    addresses: [\"198.18.0.0/24\"]
    ports: [7000]
    listen_port: {port}
",
            dir.path("bpf").display(),
            dir.path("state").display()
        )
    };
    let inside = dir.write("inside.yaml", &config(low + 1));
    let outside = dir.write("outside.yaml", &config(PROXY_PORT));
    for args in [vec!["policy", "check"], vec!["run", "--config"]] {
        let out = std::process::Command::new(airlock_bin())
            .args(&args)
            .arg(&inside)
            .output()
            .expect("airlock");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("ip_local_port_range"),
            "`airlock {}` must refuse port {}: {stderr}",
            args.join(" "),
            low + 1
        );
    }
    let out = std::process::Command::new(airlock_bin())
        .args(["policy", "check"])
        .arg(&outside)
        .output()
        .expect("airlock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
