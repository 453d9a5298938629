//! Test support: a real PostgreSQL 15 started in a temp dir on a random loopback port (stopped
//! by PID on drop), TLS fixtures made with the `openssl` CLI, an in-process airlock PostgreSQL
//! proxy, and helpers to run real clients (psql, pgbench, psycopg) against any address — the
//! proxy's here, the transparent interception's later.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock::config::Config;
use airlock::gate::Decider;
use airlock::model::Decision;
use airlock::model::Workload;
use airlock::policy::Request;
use airlock::protocol::Session;
use airlock::protocol::postgres::Hooks;
use airlock::runtime::Context;

/// PostgreSQL binaries (Debian's layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Roles created in every test server: (name, password, how the password is stored).
pub const GATEWAY_USER: (&str, &str) = ("gw", "gw-secret");
pub const MD5_USER: (&str, &str) = ("md5user", "md5-secret");
pub const CLEAR_USER: (&str, &str) = ("clearuser", "clear-secret");
/// Only allowed over TLS (hostssl), with SCRAM.
pub const TLS_USER: (&str, &str) = ("tlsuser", "tls-secret");
/// The database the tests use, owned by the gateway user.
pub const DATABASE: &str = "app";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1` (ECDSA P-256).
#[derive(Debug)]
pub struct TlsFixture {
    pub dir: TempDir,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TlsFixture {
    /// Generates the CA and the server certificate with the openssl CLI.
    pub fn generate() -> Self {
        let dir = TempDir::new("airlock-tls");
        let d = dir.path();
        let ca_key = d.join("ca.key");
        let ca_cert = d.join("ca.crt");
        let key = d.join("server.key");
        let csr = d.join("server.csr");
        let cert = d.join("server.crt");
        let ext = d.join("ext.cnf");
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=airlock test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                ])
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_cert),
        );
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca_cert)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-CAcreateserial")
                .arg("-out")
                .arg(&cert)
                .arg("-extfile")
                .arg(&ext),
        );
        TlsFixture {
            dir,
            ca_cert,
            cert,
            key,
        }
    }
}

/// The uid/gid PostgreSQL runs as: initdb and postgres refuse root, so as root the tests run
/// them as the `postgres` system user.
fn server_ids() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls without pointers we keep.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

fn chown_r(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((u, g)) = ids {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{u}:{g}"))
                .arg(path),
        );
    }
}

/// A running PostgreSQL server; stopped (by PID) and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    pub port: u16,
    /// The address it listens on (127.0.0.1 unless started in a network namespace).
    pub host: String,
    /// The network namespace it runs in (`None`: the test's own).
    pub netns: Option<String>,
    pub dir: TempDir,
    child: Child,
}

/// A free loopback port (the kernel picks it; a tiny race until the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PgServer {
    /// initdb, configure (TLS when `tls` is given), start, and create the test roles and
    /// database.
    pub fn start(tls: Option<&TlsFixture>) -> Self {
        Self::start_opts(tls, None)
    }

    /// As [`start`](Self::start), but inside network namespace `netns` (a test host of
    /// support::Topology), listening on `host:port`; clients from 198.18.0.0/15 (the proxy on
    /// the node) log in with passwords. The server runs under `nsenter --net`, which execs it,
    /// so the PID stopped on drop is the server's.
    pub fn start_in_netns(netns: &str, host: &str, port: u16) -> Self {
        Self::start_opts(None, Some((netns, host, port)))
    }

    fn start_opts(tls: Option<&TlsFixture>, place: Option<(&str, &str, u16)>) -> Self {
        let ids = server_ids();
        let dir = TempDir::new("airlock-pg");
        chown_r(dir.path(), ids);
        let data = dir.path().join("data");
        let mut initdb = Command::new(format!("{PG_BIN}/initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        if let Some((u, g)) = ids {
            initdb.uid(u).gid(g);
        }
        run_ok(&mut initdb);

        let (netns, host, port) = match place {
            Some((ns, host, port)) => (Some(ns.to_string()), host.to_string(), port),
            None => (None, "127.0.0.1".to_string(), free_port()),
        };
        // Password logins from the test hosts' range as well when the server sits on one.
        let nets: &[&str] = if netns.is_some() {
            &["127.0.0.1/32", "198.18.0.0/15"]
        } else {
            &["127.0.0.1/32"]
        };
        let mut conf = format!(
            "listen_addresses = '{host}'\nport = {port}\nunix_socket_directories = ''\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
        );
        if let Some(t) = tls {
            for (src, name) in [(&t.cert, "server.crt"), (&t.key, "server.key")] {
                let dst = data.join(name);
                std::fs::copy(src, &dst).expect("copy tls file");
                run_ok(Command::new("chmod").arg("600").arg(&dst));
            }
            chown_r(&data, ids);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data.join("postgresql.conf"), &conf);
        // The superuser is trusted only from the server's own address (the test's admin psql).
        let mut hba = format!("host all postgres {host}/32 trust\n");
        for net in nets {
            hba.push_str(&format!(
                "host all {} {net} md5\n\
                 host all {} {net} password\n\
                 hostssl all {} {net} scram-sha-256\n\
                 host all all {net} scram-sha-256\n",
                MD5_USER.0, CLEAR_USER.0, TLS_USER.0
            ));
        }
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        chown_r(&data, ids);

        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        chown_r(&dir.path().join("server.log"), ids);
        let mut cmd = match &netns {
            // nsenter needs root to switch namespaces, so it drops to postgres itself.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"));
                if let Some((u, g)) = ids {
                    c.arg(format!("--setuid={u}")).arg(format!("--setgid={g}"));
                }
                c.arg(format!("{PG_BIN}/postgres"));
                c
            }
            None => {
                let mut c = Command::new(format!("{PG_BIN}/postgres"));
                if let Some((u, g)) = ids {
                    c.uid(u).gid(g);
                }
                c
            }
        };
        cmd.arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start postgres");
        let server = PgServer {
            port,
            host,
            netns,
            dir,
            child,
        };
        server.wait_ready();
        let (gw, md5, clear, tls) = (GATEWAY_USER, MD5_USER, CLEAR_USER, TLS_USER);
        // One statement per call: CREATE DATABASE cannot run in a multi-statement Query.
        for sql in [
            format!("CREATE ROLE {} LOGIN PASSWORD '{}'", gw.0, gw.1),
            format!(
                "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN PASSWORD '{}'",
                md5.0, md5.1
            ),
            format!("CREATE ROLE {} LOGIN PASSWORD '{}'", clear.0, clear.1),
            format!("CREATE ROLE {} LOGIN PASSWORD '{}'", tls.0, tls.1),
            format!("CREATE DATABASE {DATABASE} OWNER {}", gw.0),
            format!(
                "GRANT ALL ON DATABASE {DATABASE} TO {}, {}, {}",
                md5.0, clear.0, tls.0
            ),
        ] {
            server.admin(&sql);
        }
        server.admin_db(
            DATABASE,
            &format!(
                "GRANT ALL ON SCHEMA public TO {}, {}, {}",
                md5.0, clear.0, tls.0
            ),
        );
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.parse().expect("server address"), self.port)
    }

    /// A command run in the server's network namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .command(&format!("{PG_BIN}/pg_isready"))
                .args([
                    "-h",
                    &self.host,
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL directly on the server as the superuser (not through airlock); returns stdout.
    pub fn admin(&self, sql: &str) -> String {
        self.admin_db("postgres", sql)
    }

    /// As [`admin`](Self::admin), in database `db`.
    pub fn admin_db(&self, db: &str, sql: &str) -> String {
        let out = run_ok(
            self.command("psql")
                .arg(format!(
                    "host={} port={} user=postgres dbname={db} sslmode=disable",
                    self.host, self.port
                ))
                .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: fast shutdown. Only our own child, by PID.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// Allows everything except commands containing [`DENY_MARKER`] (denied by rule `test-deny`)
/// or [`REVIEW_MARKER`] (review by rule `test-review`). Counts its calls.
#[derive(Debug, Default)]
pub struct TestDecider {
    pub calls: AtomicU64,
    /// Record every command in `seen` (off for benchmarks).
    pub record: bool,
    /// Every command seen, in order.
    pub seen: Mutex<Vec<String>>,
}

pub const DENY_MARKER: &str = "airlock_forbidden";
pub const REVIEW_MARKER: &str = "airlock_needs_review";

impl Decider for TestDecider {
    fn decide(&self, req: &Request<'_>) -> Decision {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.record
            && let Ok(mut s) = self.seen.lock()
        {
            s.push(req.command.to_string());
        }
        if req.command.text().contains(DENY_MARKER) {
            Decision::Deny {
                rule: "test-deny".into(),
                reason: "forbidden marker".into(),
            }
        } else if req.command.text().contains(REVIEW_MARKER) {
            Decision::Review {
                rule: "test-review".into(),
                approvers: vec!["dba".into()],
                quorum: 1,
                ttl: Duration::from_secs(60),
                timeout: Duration::from_secs(60),
                on_timeout: airlock::model::OnTimeout::Deny,
                escalate_to: Vec::new(),
                mode: airlock::model::ReviewMode::Hold,
                mask: Vec::new(),
                run_as: None,
                approved_run_as: None,
                dry_run: false,
            }
        } else {
            Decision::Allow {
                rule: "test-allow".into(),
                mask: vec![],
                run_as: None,
            }
        }
    }
}

/// An in-process airlock PostgreSQL listener on 127.0.0.1 (port picked by the kernel), in front
/// of `upstream`, with the target given as YAML (the `targets[0]` entry of a config file).
pub struct TestProxy {
    pub addr: SocketAddr,
    pub decider: Arc<TestDecider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestProxy {
    /// `postgres_yaml` is the target's `postgres:` section, indented by 6 spaces. The decider
    /// records every command.
    pub fn start(upstream: SocketAddr, postgres_yaml: &str) -> Self {
        let decider = TestDecider {
            record: true,
            ..TestDecider::default()
        };
        Self::start_with(upstream, postgres_yaml, decider)
    }

    /// As [`start`](Self::start) with a given decider.
    pub fn start_with(upstream: SocketAddr, postgres_yaml: &str, decider: TestDecider) -> Self {
        Self::start_on(upstream, postgres_yaml, decider, false)
    }

    /// As [`start`](Self::start), with the sessions' sockets on the io_uring engine.
    pub fn start_on_ring(upstream: SocketAddr, postgres_yaml: &str) -> Self {
        let decider = TestDecider {
            record: true,
            ..TestDecider::default()
        };
        Self::start_on(upstream, postgres_yaml, decider, true)
    }

    fn start_on(
        upstream: SocketAddr,
        postgres_yaml: &str,
        decider: TestDecider,
        ring: bool,
    ) -> Self {
        let yaml = format!(
            "targets:\n  - name: demo-db\n    protocol: postgres\n    addresses: [\"198.18.0.2/32\"]\n    ports: [5432]\n    postgres:\n{postgres_yaml}"
        );
        let config = Config::parse(Path::new("test.yaml"), &yaml).expect("test config");
        let target = Arc::clone(&config.targets[0]);
        let ctx = Arc::new(
            Context::new(config, airlock::policy::Engine::default()).expect("test context"),
        );
        let decider = Arc::new(decider);
        let hooks = Hooks {
            decider: Some(decider.clone()),
            ..Hooks::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        if ring {
            let driver = runtime
                .block_on(async { airlock::relay::uring::Driver::start() })
                .expect("io_uring (CI runs on a kernel that allows it)");
            ctx.uring.set(driver).expect("one driver");
        }
        let addr = serve_gateway(&runtime, target, upstream, ctx, hooks);
        TestProxy {
            addr,
            decider,
            runtime: Some(runtime),
        }
    }
}

/// Binds a loopback listener on `runtime` and serves every connection to it as a PostgreSQL
/// session of `target` (caller: root, as the interception events would say), relayed to
/// `upstream`. Returns the listener's address.
pub fn serve_gateway(
    runtime: &tokio::runtime::Runtime,
    target: Arc<airlock::config::TargetConfig>,
    upstream: SocketAddr,
    ctx: Arc<Context>,
    hooks: Hooks,
) -> SocketAddr {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    runtime.spawn(async move {
        let mut id = 0;
        while let Ok((client, peer)) = listener.accept().await {
            id += 1;
            let session = Session {
                id,
                client,
                target: target.clone(),
                workload: Some(Workload {
                    uid: 0,
                    user: Some("root".into()),
                    comm: "test".into(),
                    peer: Some(peer),
                    ..Workload::default()
                }),
                upstream,
                started: Instant::now(),
                drain: airlock::drain::Watch::never(),
            };
            let (ctx, hooks) = (ctx.clone(), hooks.clone());
            tokio::spawn(async move {
                airlock::protocol::postgres::serve_with(session, ctx, &hooks).await;
            });
        }
    });
    addr
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The `postgres:` section for the gateway user with an inline password (6-space indent).
pub fn gateway_section(user: &str, password: &str) -> String {
    format!("      user: {user}\n      password: \"{password}\"\n      database: {DATABASE}\n")
}

/// A libpq connection string for `addr`; `extra` is appended (e.g. `sslmode=verify-full`).
pub fn dsn(addr: SocketAddr, extra: &str) -> String {
    format!(
        "host={} port={} user=someone dbname={DATABASE} connect_timeout=10 {}",
        addr.ip(),
        addr.port(),
        if extra.is_empty() {
            "sslmode=disable"
        } else {
            extra
        }
    )
}

/// Runs psql with `args` against `dsn`; returns (success, stdout, stderr).
pub fn psql(dsn: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("psql")
        .arg(dsn)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    if let Some(input) = stdin {
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("psql output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a Python script with Debian's interpreter (psycopg 3 is installed for it), `DSN` in its
/// environment; returns (success, stdout, stderr).
pub fn python(dsn: &str, script: &str) -> (bool, String, String) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("DSN", dsn)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs pgbench with `args` against `addr` (database [`DATABASE`]).
pub fn pgbench(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("pgbench")
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-U",
            "someone",
        ])
        .args(args)
        .arg(DATABASE)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal blocking PostgreSQL wire client for exact protocol assertions.
pub struct RawClient {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
}

/// One tagged message.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).expect("len").to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// NUL-terminated pieces concatenated.
pub fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

/// Parse(name, text) with no parameter types.
pub fn parse(name: &str, text: &str) -> Vec<u8> {
    let mut b = cstrs(&[name, text]);
    b.extend_from_slice(&0u16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind(portal, statement) with no parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cstrs(&[portal, stmt]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

/// Execute(portal, all rows).
pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstrs(&[portal]);
    b.extend_from_slice(&0u32.to_be_bytes());
    msg(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn query(text: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[text]))
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a StartupMessage with version `3.minor` and `params`.
    pub fn startup(&mut self, minor: u16, params: &[(&str, &str)]) {
        let mut body = ((3u32 << 16) | u32::from(minor)).to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(&cstrs(&[k, v]));
        }
        body.push(0);
        let mut pkt = u32::try_from(body.len() + 4)
            .expect("len")
            .to_be_bytes()
            .to_vec();
        pkt.extend_from_slice(&body);
        self.send(&pkt);
    }

    /// Reads exactly `n` raw bytes (answers to SSLRequest and GSSENCRequest).
    pub fn read_raw(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut v = vec![0u8; n];
        self.stream.read_exact(&mut v).expect("read raw");
        v
    }

    /// The next message: (tag, body).
    pub fn read_msg(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..len + 1].to_vec();
                    self.buf.drain(..len + 1);
                    return (tag, body);
                }
            }
            let mut chunk = [0u8; 8192];
            // A signal to this thread (SIGCHLD from a server the suite started) interrupts a
            // read with a timeout set: SA_RESTART does not apply to those, so retry here.
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap_or_else(|e| panic!("read: {e}; pending {:?}", self.buf)),
            };
            assert!(n > 0, "connection closed; pending {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let m = self.read_msg();
            let done = m.0 == b'Z';
            v.push(m);
            if done {
                return v;
            }
        }
    }
}

/// The tags of messages, as a string (e.g. "12DCZ").
pub fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| char::from(*t)).collect()
}

/// A field of an ErrorResponse body by its code (`C` SQLSTATE, `M` message, `S` severity).
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let c = body[i];
        let end = i + 1 + body[i + 1..].iter().position(|&b| b == 0)?;
        if c == code {
            return Some(String::from_utf8_lossy(&body[i + 1..end]).into_owned());
        }
        i = end + 1;
    }
    None
}

/// A test authenticator: the startup `user` names the caller's groups, `+`-separated
/// (`agents`, `agents+dba`); the subject is `test:<user>`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupsFromUser;

impl airlock::gate::Authenticator for GroupsFromUser {
    fn authenticate<'a>(
        &'a self,
        _ctx: &'a Context,
        presented: airlock::gate::Presented<'a>,
    ) -> airlock::gate::AuthFuture<'a> {
        let user = presented.user.unwrap_or("");
        let identity = airlock::model::Identity {
            subject: format!("test:{user}"),
            groups: user
                .split('+')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            workload: presented.workload.cloned(),
            token: None,
        };
        Box::pin(async move { Ok(identity) })
    }
}

/// A fixed masking key, so hashes are comparable across proxies in a test.
pub const TEST_MASK_KEY: &[u8] = b"airlock-test-masking-key-0123456789abcdef";

/// An in-process airlock PostgreSQL listener with a full configuration: the real policy
/// engine, masking rules, and the audit log configured under `daemon.audit` (its directory
/// defaults to `<state_dir>/audit`). Callers' groups come from their user name
/// ([`GroupsFromUser`]). `config_yaml` must hold one postgres target (its upstream is replaced
/// by `upstream`).
pub struct GatewayProxy {
    pub addr: SocketAddr,
    pub ctx: Arc<Context>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GatewayProxy {
    pub fn start(upstream: SocketAddr, config_yaml: &str) -> Self {
        let config = Config::parse(Path::new("test.yaml"), config_yaml).expect("test config");
        let target = Arc::clone(&config.targets[0]);
        let engine = airlock::policy::Engine::new(&config).expect("policy engine");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let audit = {
            let _guard = runtime.enter();
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
            .expect("test context"),
        );
        let hooks = Hooks {
            decider: None,
            authenticator: Arc::new(GroupsFromUser),
        };
        let addr = serve_gateway(&runtime, target, upstream, ctx.clone(), hooks);
        GatewayProxy {
            addr,
            ctx,
            runtime: Some(runtime),
        }
    }

    /// Syncs the audit log and signs its head.
    pub fn flush_audit(&self) {
        if let Some(rt) = &self.runtime {
            rt.block_on(self.ctx.audit.flush()).expect("audit flush");
        }
    }

    /// Closes the audit log (flush, sign, stop the writer).
    pub fn close_audit(&self) {
        if let Some(rt) = &self.runtime {
            rt.block_on(self.ctx.audit.close()).expect("audit close");
        }
    }
}

impl Drop for GatewayProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A libpq connection string for `addr` as `user` (groups for [`GroupsFromUser`]).
pub fn dsn_as(addr: SocketAddr, user: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={DATABASE} connect_timeout=10 sslmode=disable",
        addr.ip(),
        addr.port()
    )
}
