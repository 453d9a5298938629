//! Test support for MySQL: a real MariaDB 10.11 (Debian's `mariadbd`) started in a test host's
//! network namespace (stopped by PID on drop), with the gateway's accounts (native password,
//! ed25519, TLS-only), TLS fixtures made with the `openssl` CLI, and runners for real clients:
//! the `mariadb` CLI, PyMySQL and mysql-connector-python (from the venv `cargo xtask setup`
//! builds), and sysbench.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python with PyMySQL and mysql-connector-python (pinned in `cargo xtask setup`).
pub const MYSQL_PYTHON: &str = "/opt/airlock-test-venv/bin/python";

/// Accounts created in every test server: (name, password).
pub const GW_NATIVE: (&str, &str) = ("gw", "gw-secret");
pub const GW_ED25519: (&str, &str) = ("gw_ed", "ed-secret");
/// Allowed only over TLS.
pub const GW_TLS: (&str, &str) = ("gw_tls", "tls-secret");
/// The database the tests use.
pub const DATABASE: &str = "app";
pub const PORT: u16 = 3306;
/// A second port of the same server (`extra_port`), for a target of its own on the same
/// address.
pub const EXTRA_PORT: u16 = 3307;

/// Fails with a clear message unless the MySQL test prerequisites are installed.
pub fn require_mysql_tools() {
    for tool in [
        "mariadbd",
        "mariadb-install-db",
        "mariadb",
        "sysbench",
        MYSQL_PYTHON,
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "missing prerequisite `{tool}`: run `cargo xtask setup`"
        );
    }
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

/// A CA and a server certificate for `localhost` (ECDSA P-256), and a client-facing one.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("cert dir");
        let p = |n: &str| dir.join(n);
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
                    "/CN=airlock mysql test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                ])
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.crt")),
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
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
        );
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:198.18.0.2,IP:198.18.0.3\n\
             basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.crt"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-CAcreateserial")
                .arg("-out")
                .arg(p("server.crt"))
                .arg("-extfile")
                .arg(p("ext.cnf")),
        );
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(dir)
            .status();
        Certs {
            dir: dir.to_owned(),
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
        }
    }
}

/// A running MariaDB server; stopped by PID on drop.
pub struct MariaDb {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
}

impl MariaDb {
    /// Initialises a data directory under `dir`, starts `mariadbd` in network namespace
    /// `netns` on every address of that host (port 3306), with TLS from `certs`, and creates
    /// the gateway's accounts and the test database.
    pub fn start(netns: &str, dir: &Path, certs: &Certs) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        run_ok(Command::new("chown").arg("-R").arg("mysql:mysql").arg(dir));
        run_ok(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=mysql")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .stdout(Stdio::null()),
        );
        let socket = dir.join("mysqld.sock");
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("mariadbd")
            .arg("--no-defaults")
            .arg("--user=mysql")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--port={PORT}"))
            .arg(format!("--extra-port={EXTRA_PORT}"))
            .arg("--extra-max-connections=100")
            .arg("--bind-address=0.0.0.0")
            .arg("--skip-name-resolve")
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--innodb-log-file-size=16M")
            .arg("--innodb-flush-log-at-trx-commit=0")
            .arg("--max-connections=300")
            .arg("--max-allowed-packet=64M")
            .arg(format!("--ssl-ca={}", certs.ca.display()))
            .arg(format!("--ssl-cert={}", certs.cert.display()))
            .arg(format!("--ssl-key={}", certs.key.display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        let server = MariaDb {
            dir: dir.to_owned(),
            socket,
            child,
        };
        server.wait_ready();
        let (gw, ed, tls) = (GW_NATIVE, GW_ED25519, GW_TLS);
        server.admin(&format!(
            "CREATE DATABASE {DATABASE};
             CREATE USER '{}'@'%' IDENTIFIED BY '{}';
             GRANT ALL ON {DATABASE}.* TO '{}'@'%';
             GRANT ALL ON sbtest.* TO '{}'@'%';
             INSTALL SONAME 'auth_ed25519';
             CREATE USER '{}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{}');
             GRANT ALL ON {DATABASE}.* TO '{}'@'%';
             CREATE USER '{}'@'%' IDENTIFIED BY '{}' REQUIRE SSL;
             GRANT ALL ON {DATABASE}.* TO '{}'@'%';
             CREATE DATABASE sbtest;",
            gw.0, gw.1, gw.0, gw.0, ed.0, ed.1, ed.0, tls.0, tls.1, tls.0
        ));
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs SQL as root over the server's unix socket (not through airlock); returns stdout.
    pub fn admin(&self, sql: &str) -> String {
        let out = run_ok(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "-N", "-B", "-e", sql]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGTERM: a clean shutdown. Only our own child, by PID.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
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
