//! The SSH gateway end to end, through TRANSPARENT interception: the real daemon (kernel
//! programs on a test cgroup), one real OpenSSH server (Debian's sshd, `sshd -D -f` a config
//! written here) on the `db` test host, and unmodified clients (ssh, scp, sftp, rsync, tmux for
//! a pty, asyncssh as a library client) in the node namespace. The clients trust the target
//! only through the gateway's `@cert-authority` line with `StrictHostKeyChecking=yes`, and hold
//! no key: the gateway logs in to sshd with a per-session certificate from its user CA.
//!
//! sshd runs every command through a `ForceCommand` wrapper that appends it to the server's
//! command log (sshd itself never logs command lines) and runs the SFTP server with its
//! operation log, so the tests can say what reached the server.
//!
//! One server and one daemon are shared by the tests of this file (see `env()`). Needs root.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use support::{
    DB_ADDR, Daemon, PYTHON, Proc, TempDir, TestCgroup, Topology, airlock_bin, casts_containing,
    require_root, sh, sh_ok, shell_quote, support_file, unique_id, wait_until,
};

const API_PORT: u16 = 7071;
/// The server's second port, the `web-narrow` target (a cipher list of its own).
const NARROW_PORT: u16 = 2222;

struct Env {
    topo: Topology,
    cg: TestCgroup,
    dir: TempDir,
    _sshd: Proc,
    daemon: Mutex<Daemon>,
    config: PathBuf,
    state: PathBuf,
    known_hosts: PathBuf,
    /// Server-side files: `ro/` (read-only by policy), `rw/` (uploads allowed).
    srv: PathBuf,
}

/// What a client run printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// The shared environment: built by the first test that needs it, torn down when the last one
/// holding it is done.
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

impl Env {
    fn new() -> Env {
        require_root();
        for tool in [
            "/usr/sbin/sshd",
            "/usr/bin/ssh",
            "/usr/bin/scp",
            "/usr/bin/sftp",
            "/usr/bin/rsync",
            "/usr/bin/tmux",
        ] {
            assert!(
                Path::new(tool).exists(),
                "missing prerequisite {tool}: run `cargo xtask setup`"
            );
        }
        assert!(
            Command::new(PYTHON)
                .args(["-W", "ignore", "-c", "import asyncssh"])
                .status()
                .is_ok_and(|s| s.success()),
            "missing prerequisite python3-asyncssh: run `cargo xtask setup`"
        );
        let topo = Topology::new();
        let cg = TestCgroup::new(&topo.id);
        cg.child("clients");
        cg.child("reviewed");
        let dir = TempDir::new(&topo.id);
        let state = dir.path("state");
        let srv = dir.path("srv");
        std::fs::create_dir_all(srv.join("ro")).unwrap();
        std::fs::create_dir_all(srv.join("rw")).unwrap();
        std::fs::write(srv.join("ro/report.txt"), "quarterly report\n").unwrap();
        std::fs::write(srv.join("precious.txt"), "do not delete\n").unwrap();
        std::fs::write(
            srv.join("ro/customers.txt"),
            "id,contact\n1,alice@example.com\n2,bob@example.org\n",
        )
        .unwrap();

        // The gateway's CAs exist before the server is told to trust the user CA.
        let user_ca = airlock(&[
            "ssh",
            "ca",
            "--state-dir",
            state.to_str().unwrap(),
            "--user-ca",
        ]);
        assert!(user_ca.ok(), "{user_ca:?}");
        let user_ca_file = dir.write("user_ca.pub", &user_ca.stdout);

        // The real OpenSSH server on the db host.
        let host_key = dir.path("ssh_host_ed25519_key");
        sh_ok(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C target-host-key -f {}",
            host_key.display()
        ));
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let wrapper = dir.write(
            "force-command.sh",
            &format!(
                "#!/bin/sh\n\
                 log={commands}\n\
                 case \"${{SSH_ORIGINAL_COMMAND-}}\" in\n\
                   \"\") echo shell >> $log; exec /bin/bash --noprofile --norc -i ;;\n\
                   /usr/lib/openssh/sftp-server) echo sftp >> $log; exec /usr/lib/openssh/sftp-server -e -l INFO 2>>{sftp_log} ;;\n\
                   *) printf 'exec %s\\n' \"$SSH_ORIGINAL_COMMAND\" >> $log; exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\" ;;\n\
                 esac\n",
                commands = dir.path("server-commands.log").display(),
                sftp_log = dir.path("server-sftp.log").display(),
            ),
        );
        sh_ok(&format!("chmod 755 {}", wrapper.display()));
        sh_ok("mkdir -p /run/sshd && chmod 755 /run/sshd");
        let sshd_config = dir.write(
            "sshd_config",
            &format!(
                "ListenAddress {DB_ADDR}:22\n\
                 ListenAddress {DB_ADDR}:{NARROW_PORT}\n\
                 HostKey {host_key}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 AuthorizedKeysFile none\n\
                 TrustedUserCAKeys {user_ca}\n\
                 PermitRootLogin prohibit-password\n\
                 AllowTcpForwarding yes\n\
                 AllowAgentForwarding yes\n\
                 X11Forwarding no\n\
                 AcceptEnv LANG LC_* AIRLOCK_PROBE BASH_ENV\n\
                 LogLevel VERBOSE\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n\
                 ForceCommand {wrapper}\n",
                host_key = host_key.display(),
                user_ca = user_ca_file.display(),
                wrapper = wrapper.display(),
            ),
        );
        let mut sshd = Proc::spawn_sh(
            &format!(
                "exec {} /usr/sbin/sshd -D -e -f {}",
                Topology::enter(&topo.db),
                sshd_config.display()
            ),
            &dir.path("sshd.log"),
        );
        sshd.wait_for_log("Server listening on", Duration::from_secs(10));

        let clients_cgroup = {
            let root = support::cgroup2_root();
            format!(
                "/{}",
                cg.child("clients").strip_prefix(&root).unwrap().display()
            )
        };
        let reviewed_cgroup = {
            let root = support::cgroup2_root();
            format!(
                "/{}",
                cg.child("reviewed").strip_prefix(&root).unwrap().display()
            )
        };
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/airlock-test-{}", topo.id));
        let srv_s = srv.display();
        // `web` offers the default list, fitted to each client; the benchmark may give it one
        // (SSH_BENCH_CIPHERS, comma-separated). `web-narrow`, the same server on another port,
        // lists its ciphers without AES-CTR (`clients_get_only_the_configured_ciphers`).
        let web_ciphers = std::env::var("SSH_BENCH_CIPHERS")
            .map(|c| format!("\n      ciphers: [{c}]"))
            .unwrap_or_default();
        let yaml = format!(
            "daemon:
  cgroup: {cg}
  bpffs: {bpffs}
  listen_port_base: 15600
  state_dir: {state}
  api: 127.0.0.1:{API_PORT}
targets:
  - name: web
    protocol: ssh
    addresses: [\"{DB_ADDR}/32\"]
    ports: [22]
    ssh:
      user: root
      host_keys: [\"{host_pub}\"]
      names: [web.test]{web_ciphers}
  - name: web-narrow
    protocol: ssh
    addresses: [\"{DB_ADDR}/32\"]
    ports: [{NARROW_PORT}]
    ssh:
      user: root
      host_keys: [\"{host_pub}\"]
      names: [web.test]
      ciphers: [chacha20-poly1305@openssh.com, aes256-gcm@openssh.com, aes128-gcm@openssh.com]
identities:
  - name: test-clients
    workload: {{cgroups: [\"{clients_cgroup}\"]}}
    groups: [ops]
  - name: reviewed-clients
    workload: {{cgroups: [\"{reviewed_cgroup}\"]}}
    groups: [reviewed]
rules:
  - name: no-destructive
    targets: [web]
    exec: {{programs: [rm, rmdir, shutdown, reboot, dd]}}
    action: deny
    reason: destructive commands are not allowed on web
  - name: customer-data-masked
    targets: [web]
    groups: [ops]
    exec: {{commands: [\"cat {srv_s}/ro/customers.txt\"]}}
    action: allow
    mask: [secrets]
  - name: legacy-scp-downloads
    targets: [web]
    groups: [ops]
    exec: {{commands: [\"scp -f {srv_s}/*\"]}}
    action: allow
  - name: ops-commands
    targets: [web, web-narrow]
    groups: [ops]
    exec: {{programs: [echo, printf, cat, ls, 'true', uname, id, env, sha256sum, wc, rsync, sleep, head, seq, hostname]}}
    action: allow
  - name: changes-need-review
    targets: [web]
    groups: [ops]
    exec: {{programs: [tee]}}
    action: review
    review: {{approvers: [sre], quorum: 1, timeout: 2m, on_timeout: deny}}
  - name: shells-need-review
    targets: [web]
    groups: [reviewed]
    shell: {{}}
    action: review
    review: {{approvers: [sre], quorum: 1, timeout: 2m, on_timeout: deny}}
  - name: ops-shell
    targets: [web]
    groups: [ops]
    shell: {{}}
    action: allow
  - name: files-read
    targets: [web]
    groups: [ops]
    files: {{ops: [read], paths: [\"{srv_s}\", \"{srv_s}/*\", \"~\", \"~/*\", /tmp, \"/tmp/*\"]}}
    action: allow
  - name: files-upload-area
    targets: [web]
    groups: [ops]
    files: {{ops: [write, mkdir, remove, rename], paths: [\"{srv_s}/rw/*\"]}}
    action: allow
default: deny
masking:
  - name: secrets
    detectors: [email, aws_key]
    style: redact
",
            cg = cg.path.display(),
            bpffs = bpffs.display(),
            state = state.display(),
            host_pub = host_pub.trim(),
        );
        let config = dir.write("airlock.yaml", &yaml);
        let daemon = Daemon::start(&cg, &topo, &config, &bpffs, &dir.path("daemon.log"));
        let kh = airlock(&[
            "ssh",
            "ca",
            "--config",
            config.to_str().unwrap(),
            "--known-hosts",
        ]);
        assert!(kh.ok(), "{kh:?}");
        assert!(
            kh.stdout
                .starts_with(&format!("@cert-authority {DB_ADDR},web.test ssh-ed25519 ")),
            "{kh:?}"
        );
        let known_hosts = dir.write("known_hosts", &kh.stdout);
        Env {
            topo,
            cg,
            _sshd: sshd,
            daemon: Mutex::new(daemon),
            config,
            state,
            known_hosts,
            srv,
            dir,
        }
    }

    /// Client options: trust only the gateway's CA line, no prompts, no keys, no config.
    fn ssh_opts(&self) -> String {
        format!(
            "-F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentityFile=/dev/null \
             -o IdentitiesOnly=yes -o ConnectTimeout=20",
            self.known_hosts.display()
        )
    }

    /// A shell command line that runs `script` as an intercepted client (the clients' cgroup,
    /// the node's network namespace).
    fn in_client(&self, script: &str) -> String {
        self.cg.run_in(
            "clients",
            &self.topo.node,
            &format!("sh -c {}", shell_quote(script)),
        )
    }

    /// Runs `cmd` (a shell snippet) as an intercepted client; `stdin` is piped in when given.
    fn client(&self, cmd: &str, stdin: Option<&str>) -> Run {
        let n = unique_id();
        let (out, err) = (
            self.dir.path(&format!("c{n}.out")),
            self.dir.path(&format!("c{n}.err")),
        );
        let input = match stdin {
            Some(text) => format!("< {}", self.dir.write(&format!("c{n}.in"), text).display()),
            None => "< /dev/null".into(),
        };
        let script = format!(
            "cd {} && {cmd} {input} > {} 2> {}",
            self.dir.0.display(),
            out.display(),
            err.display()
        );
        let status = sh(&self.in_client(&script));
        Run {
            code: status.status.code(),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default()
                + &String::from_utf8_lossy(&status.stderr),
        }
    }

    fn ssh(&self, remote: &str, stdin: Option<&str>) -> Run {
        self.client(
            &format!("ssh {} root@{DB_ADDR} {remote}", self.ssh_opts()),
            stdin,
        )
    }

    /// The server's command log (what the ForceCommand wrapper ran).
    fn server_commands(&self) -> String {
        std::fs::read_to_string(self.dir.path("server-commands.log")).unwrap_or_default()
    }

    /// The SFTP server's operation log.
    fn server_sftp(&self) -> String {
        std::fs::read_to_string(self.dir.path("server-sftp.log")).unwrap_or_default()
    }

    /// `airlock` in the node namespace (where the API listens).
    fn cli(&self, args: &[&str]) -> Run {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.topo.node))
            .arg(airlock_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("AIRLOCK_LOG", "warn")
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn audit_dir(&self) -> PathBuf {
        self.state.join("audit")
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("daemon.log")).unwrap_or_default()
    }
}

fn airlock(args: &[&str]) -> Run {
    let out = Command::new(airlock_bin())
        .args(args)
        .env("AIRLOCK_LOG", "warn")
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Denied commands over the recorded sessions with a command containing `text`.
fn denied_in_sessions_with(env: &Env, text: &str) -> u64 {
    let t = env.cli(&["sessions", "--text", text, "--json"]);
    assert!(t.ok(), "{t:?}");
    let sessions: serde_json::Value = serde_json::from_str(&t.stdout).unwrap();
    sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["denied"].as_u64().unwrap())
        .sum()
}

#[test]
fn allowed_exec_runs_and_its_output_arrives() {
    let env = env();
    let r = env.ssh("echo hello-from-the-target", None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "hello-from-the-target\n");
    // Non-ASCII output, stderr and the exit status pass through.
    let r = env.ssh("\"printf 'grüße 世界\\n'; ls /nonexistent-dir\"", None);
    assert_eq!(
        r.code,
        Some(1),
        "a compound line is not covered by a non-compound rule: {r:?}"
    );
    assert!(
        r.stderr.contains("airlock: denied by rule \"default\""),
        "{r:?}"
    );
    let r = env.ssh("\"printf 'grüße 世界\\\\n'\"", None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "grüße 世界\n");
    let r = env.ssh("ls /nonexistent-dir", None);
    assert_eq!(r.code, Some(2), "ls's own exit status: {r:?}");
    assert!(r.stderr.contains("No such file"), "{r:?}");
    // A large output arrives whole.
    let r = env.ssh("seq 1 200000", None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout.lines().count(), 200_000);
    assert_eq!(r.stdout.lines().last(), Some("200000"));
    assert!(
        env.server_commands()
            .contains("exec echo hello-from-the-target\n")
    );
}

#[test]
fn exec_output_is_masked_live_where_the_rule_says_so() {
    let env = env();
    let file = env.srv.join("ro/customers.txt");
    // The rule for this command lists `mask: [secrets]`: emails are redacted on the way.
    let r = env.ssh(&format!("cat {}", file.display()), None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "id,contact\n1,[REDACTED]\n2,[REDACTED]\n");
    // A rule without `mask:` passes the output as it is.
    let r = env.ssh(&format!("head -n 5 {}", file.display()), None);
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.contains("alice@example.com"), "{r:?}");
    // Recordings are masked in either case.
    let recordings = env.audit_dir().join("recordings");
    wait_until(
        "the recording of the head command",
        Duration::from_secs(10),
        || casts_containing(&recordings, "1,[REDACTED]").len() >= 2,
    );
    assert!(casts_containing(&recordings, "alice@example.com").is_empty());
}

#[test]
fn denied_exec_exits_1_with_the_rule_message_and_never_reaches_the_server() {
    let env = env();
    let victim = env.srv.join("precious.txt");
    let line = format!("rm -f {}", victim.display());
    let r = env.ssh(&line, None);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("airlock: denied by rule \"no-destructive\": destructive commands are not allowed on web"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty());
    assert!(victim.exists(), "the file is still there");
    assert!(
        !env.server_commands().contains("rm -f"),
        "the server never saw it:\n{}",
        env.server_commands()
    );
    // Unsplittable lines are unknown: never allowed, and every deny rule covers them.
    let r = env.ssh("'echo $(cat <<EOF'", None);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("command line not judged"), "{r:?}");
    // The denial is in the audit log.
    assert_eq!(denied_in_sessions_with(&env, "precious.txt"), 1);
    // A program that runs another (`env`, which an allow rule lists) does not smuggle `rm`
    // past the deny rule: the line is unknown.
    // Nor does brace expansion (`{rm,-f,x}` is `rm -f x` to the server's shell).
    for (line, why) in [
        (
            format!("env rm -f {}", victim.display()),
            "runs the program in its arguments",
        ),
        (
            format!("echo {} | xargs rm -f", victim.display()),
            "runs the program in its arguments",
        ),
        (
            format!("{{rm,-f,{}}}", victim.display()),
            "only known after expansion",
        ),
        // rsync is allowed, but its `-e` names the command it runs.
        (
            format!(
                "rsync -e 'sh -c \"rm -f {}\"' /etc/hostname x:/tmp/",
                victim.display()
            ),
            "runs the command in its option",
        ),
    ] {
        let r = env.ssh(&shell_quote(&line), None);
        assert_eq!(r.code, Some(1), "{line}: {r:?}");
        assert!(r.stderr.contains(why), "{line}: {r:?}");
    }
    assert!(victim.exists(), "the file is still there");
    assert!(
        !env.server_commands().contains("rm -f"),
        "the server never saw it:\n{}",
        env.server_commands()
    );
    // A redirection makes an allowed program (`echo`, `cat`) a file writer: the allow rule
    // does not cover it, since its `writes` names no file. `2>/dev/null` writes nothing.
    let before = std::fs::read(&victim).unwrap();
    let line = format!("echo overwritten > {}", victim.display());
    let r = env.ssh(&shell_quote(&line), None);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("airlock: denied by rule \"default\""),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "the file is unchanged"
    );
    assert!(!env.server_commands().contains("overwritten"));
    let r = env.ssh(&shell_quote("ls /nonexistent-dir 2>/dev/null"), None);
    assert_eq!(r.code, Some(2), "allowed: ls's own exit status: {r:?}");
}

#[test]
fn environment_requests_pass_only_locale_variables() {
    let env = env();
    // The server accepts these names (AcceptEnv); the gateway passes only the locale.
    let r = env.client(
        &format!(
            "ssh {} -o 'SetEnv=LC_PROBE=kept AIRLOCK_PROBE=leaked BASH_ENV=/tmp/evil LC_TIME=/tmp/x' \
             root@{DB_ADDR} env",
            env.ssh_opts()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.contains("LC_PROBE=kept"), "{r:?}");
    for leaked in ["AIRLOCK_PROBE", "BASH_ENV", "LC_TIME"] {
        assert!(!r.stdout.contains(leaked), "{leaked}: {r:?}");
    }
    assert!(
        env.daemon_log()
            .contains("ssh environment variable dropped"),
        "the drop is logged"
    );
}

#[test]
fn held_exec_runs_only_after_approval_with_its_stdin_intact() {
    let env = env();
    let out = env.srv.join("rw/held-output.txt");
    let input: String = (0..2000)
        .map(|i| format!("line {i} of the piped input\n"))
        .collect();
    let n = unique_id();
    let (so, se) = (
        env.dir.path(&format!("held{n}.out")),
        env.dir.path(&format!("held{n}.err")),
    );
    let stdin = env.dir.write(&format!("held{n}.in"), &input);
    let cmd = format!(
        "ssh {} root@{DB_ADDR} tee {} < {} > {} 2> {}",
        env.ssh_opts(),
        out.display(),
        stdin.display(),
        so.display(),
        se.display()
    );
    let script = env.in_client(&cmd);
    let client = std::thread::spawn(move || sh(&script));
    let mut id = String::new();
    wait_until("the request id on stderr", Duration::from_secs(20), || {
        let err = std::fs::read_to_string(&se).unwrap_or_default();
        if let Some(rest) = err.split("waiting for approval of request ").nth(1) {
            id = rest.split_whitespace().next().unwrap_or("").to_owned();
        }
        !id.is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!out.exists(), "nothing ran before approval");
    assert!(!env.server_commands().contains("exec tee"));
    let approved = env.cli(&["approve", &id, "--reason", "reviewed"]);
    assert!(approved.ok(), "{approved:?}");
    let status = client.join().unwrap();
    let err = std::fs::read_to_string(&se).unwrap_or_default();
    assert!(status.status.success(), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        input,
        "stdin arrived whole"
    );
    assert_eq!(
        std::fs::read_to_string(&so).unwrap(),
        input,
        "tee's output came back"
    );
    assert!(
        env.server_commands()
            .contains(&format!("exec tee {}", out.display()))
    );
    // The audit record carries the review whole: its rule, quorum and the reviewer's vote.
    let review = recorded_review(&env, &format!("tee {}", out.display()), &id);
    assert_eq!(review["outcome"], "approved", "{review}");
    assert!(
        !review["rule"].as_str().unwrap_or("").is_empty(),
        "{review}"
    );
    assert_eq!(review["quorum"], 1, "{review}");
    let votes = review["votes"].as_array().cloned().unwrap_or_default();
    assert_eq!(votes.len(), 1, "{review}");
    assert_eq!(votes[0]["verdict"], "approve", "{review}");
    assert_eq!(votes[0]["reason"], "reviewed", "{review}");
    assert!(
        !votes[0]["by"].as_str().unwrap_or("").is_empty(),
        "{review}"
    );
}

/// The review `id` as the audit log recorded it in the session of the command containing `text`.
fn recorded_review(env: &Env, text: &str, id: &str) -> serde_json::Value {
    let found = env.cli(&["sessions", "--text", text, "--json"]);
    assert!(found.ok(), "{found:?}");
    let sessions: serde_json::Value = serde_json::from_str(&found.stdout).unwrap();
    let session = sessions[0]["id"].as_str().unwrap().to_owned();
    let replay = env.cli(&["replay", &session, "--json"]);
    assert!(replay.ok(), "{replay:?}");
    replay
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|rec| rec["event"].clone())
        .find(|event| event["type"] == "approval" && event["id"] == id)
        .unwrap_or_else(|| panic!("no review {id} recorded: {}", replay.stdout))
}

#[test]
fn revoking_the_approval_ends_the_command_it_released() {
    let env = env();
    let out = env.srv.join(format!("rw/revoked{}.txt", unique_id()));
    let n = unique_id();
    let (se, fifo) = (
        env.dir.path(&format!("rev{n}.err")),
        env.dir.path(&format!("rev{n}.fifo")),
    );
    // stdin stays open (this shell holds the fifo's write end): the approved command keeps
    // running until something ends it. The script's status is ssh's.
    let cmd = format!(
        "mkfifo {fifo}; (ssh {opts} root@{DB_ADDR} tee {out} < {fifo} > /dev/null 2> {se}) & \
         exec 3> {fifo}; echo first-line >&3; wait $!",
        fifo = fifo.display(),
        opts = env.ssh_opts(),
        out = out.display(),
        se = se.display()
    );
    let script = env.in_client(&cmd);
    let client = std::thread::spawn(move || sh(&script));
    let mut id = String::new();
    wait_until("the request id on stderr", Duration::from_secs(20), || {
        let err = std::fs::read_to_string(&se).unwrap_or_default();
        if let Some(rest) = err.split("waiting for approval of request ").nth(1) {
            id = rest.split_whitespace().next().unwrap_or("").to_owned();
        }
        !id.is_empty()
    });
    let approved = env.cli(&["approve", &id]);
    assert!(approved.ok(), "{approved:?}");
    wait_until(
        "the approved command to run",
        Duration::from_secs(20),
        || std::fs::read_to_string(&out).is_ok_and(|t| t == "first-line\n"),
    );
    assert!(!client.is_finished(), "the command runs until the revoke");
    let revoked = env.cli(&["revoke", &id, "--reason", "wrong host"]);
    assert!(revoked.ok(), "{revoked:?}");
    let status = client.join().unwrap();
    let err = std::fs::read_to_string(&se).unwrap_or_default();
    assert_eq!(status.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "airlock: approval {id} was revoked; the command was ended"
        )),
        "{err}"
    );
    // The audit log says why the command ended.
    let found = env.cli(&[
        "sessions",
        "--text",
        &format!("tee {}", out.display()),
        "--json",
    ]);
    assert!(found.ok(), "{found:?}");
    let sessions: serde_json::Value = serde_json::from_str(&found.stdout).unwrap();
    let session = sessions[0]["id"].as_str().unwrap().to_owned();
    let transcript = env.cli(&["replay", &session, "--transcript"]);
    assert!(transcript.ok(), "{transcript:?}");
    assert!(
        transcript
            .stdout
            .contains(&format!("error: ended: approval {id} was revoked")),
        "{transcript:?}"
    );
}

#[test]
fn held_shell_opens_only_after_approval_inside_the_live_session() {
    let env = env();
    let socket = env.dir.path(&format!("tmux-held{}", unique_id()));
    let tmux = format!("tmux -S {}", socket.display());
    let shells = || {
        env.server_commands()
            .lines()
            .filter(|l| *l == "shell")
            .count()
    };
    let before = shells();
    let start = format!(
        "{tmux} new-session -d -x 100 -y 30 'ssh -tt {} root@{DB_ADDR}; sleep 30'",
        env.ssh_opts()
    );
    let r = sh(&env.cg.run_in(
        "reviewed",
        &env.topo.node,
        &format!("sh -c {}", shell_quote(&start)),
    ));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let capture = || {
        let o = sh(&format!("{tmux} capture-pane -p -t 0"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut id = String::new();
    wait_until(
        "the request id in the terminal",
        Duration::from_secs(20),
        || {
            if let Some(rest) = capture().split("waiting for approval of request ").nth(1) {
                id = rest.split_whitespace().next().unwrap_or("").to_owned();
            }
            !id.is_empty()
        },
    );
    // Typed while held: kept, and run once the shell opens.
    sh_ok(&format!("{tmux} send-keys -t 0 -l 'echo typed-while-held'"));
    sh_ok(&format!("{tmux} send-keys -t 0 Enter"));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(shells(), before, "no shell on the server before approval");
    assert!(!capture().contains('#'), "no prompt yet: {}", capture());
    let approved = env.cli(&["approve", &id, "--reason", "maintenance window"]);
    assert!(approved.ok(), "{approved:?}");
    wait_until(
        "the typed command's output",
        Duration::from_secs(20),
        || {
            capture()
                .lines()
                .any(|l| l.trim_end() == "typed-while-held")
        },
    );
    assert_eq!(shells(), before + 1, "one shell opened, after approval");
    sh_ok(&format!("{tmux} send-keys -t 0 -l exit"));
    sh_ok(&format!("{tmux} send-keys -t 0 Enter"));
    wait_until("the shell to end", Duration::from_secs(20), || {
        capture().contains("Connection to")
    });
    let _ = sh(&format!("{tmux} kill-server"));
}

/// Runs an interactive shell in a tmux pane (a real pty), returns the pane's text.
fn tmux_shell(env: &Env, socket: &str, keys: &[&str]) -> String {
    let tmux = format!("tmux -S {socket}");
    let start = format!(
        "{tmux} new-session -d -x 100 -y 30 'ssh -tt {} root@{DB_ADDR}; sleep 30'",
        env.ssh_opts()
    );
    let r = sh(&env.in_client(&start));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let capture = || {
        let o = sh(&format!("{tmux} capture-pane -p -t 0"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    wait_until("a shell prompt", Duration::from_secs(20), || {
        capture().contains('#')
    });
    for k in keys {
        sh_ok(&format!("{tmux} send-keys -t 0 -l {}", shell_quote(k)));
        sh_ok(&format!("{tmux} send-keys -t 0 Enter"));
        std::thread::sleep(Duration::from_millis(400));
    }
    wait_until("the shell to end", Duration::from_secs(20), || {
        capture().contains("Connection to")
    });
    capture()
}

#[test]
fn interactive_shell_is_recorded_and_replay_reproduces_its_screen() {
    let env = env();
    let socket = env.dir.path("tmux.sock");
    let socket = socket.to_str().unwrap();
    let marker = format!("recorded-{}", unique_id());
    let screen = tmux_shell(
        &env,
        socket,
        &[
            &format!("echo {marker}-$((6*7))"),
            "printf 'ünïcödé ✓\\n'",
            "echo carol@example.com",
            "exit",
        ],
    );
    let _ = sh(&format!("tmux -S {socket} kill-server"));
    assert!(screen.contains(&format!("{marker}-42")), "{screen}");
    // The recording: the session directory whose cast holds the marker.
    let recordings = env.audit_dir().join("recordings");
    let mut found = None;
    for session in std::fs::read_dir(&recordings).unwrap().flatten() {
        for cast in std::fs::read_dir(session.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(cast.path()).unwrap_or_default();
            if text.contains(&format!("{marker}-42")) {
                found = Some((
                    session.file_name().to_string_lossy().into_owned(),
                    cast.path(),
                ));
            }
        }
    }
    let (session, cast) = found.expect("a recording with the marker");
    let text = std::fs::read_to_string(&cast).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    assert_eq!(header["height"], 30);
    assert!(header["timestamp"].as_u64().unwrap() > 1_700_000_000);
    let events: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e[1] == "o"));
    assert!(
        events
            .iter()
            .any(|e| e[1] == "i" && e[2].as_str().unwrap().contains("exit"))
    );
    assert!(text.contains("ünïcödé ✓"), "UTF-8 kept whole");
    // The shell showed the address live; the recording never held it.
    assert!(screen.contains("carol@example.com"), "{screen}");
    assert!(
        !text.contains("carol@example.com") && text.contains("[REDACTED]"),
        "{text}"
    );

    // Replay it into a pane of the same size: the shell's part of the screen comes back.
    let replay = format!(
        "{} replay {session} --instant --dir {}",
        airlock_bin(),
        env.audit_dir().display()
    );
    let tmux = format!("tmux -S {socket}-replay");
    sh_ok(&format!(
        "{tmux} new-session -d -x 100 -y 30 {}",
        shell_quote(&format!("{replay}; sleep 30"))
    ));
    let mut replayed = String::new();
    wait_until("the replayed screen", Duration::from_secs(10), || {
        replayed = String::from_utf8_lossy(&sh(&format!("{tmux} capture-pane -p -t 0")).stdout)
            .into_owned();
        replayed.contains("exit")
    });
    let _ = sh(&format!("{tmux} kill-server"));
    // Lines with the masked address differ by design.
    let keep = |l: &&str| !l.is_empty() && !l.contains("@example.com") && !l.contains("[REDACTED]");
    let original: Vec<&str> = screen.lines().map(str::trim_end).filter(keep).collect();
    let again: Vec<&str> = replayed.lines().map(str::trim_end).filter(keep).collect();
    assert!(again.len() >= 4, "{replayed}");
    // Every line of the replay is the original screen's, in order (the original also has the
    // local client's own closing message).
    assert_eq!(
        &original[..again.len()],
        &again[..],
        "original:\n{screen}\nreplayed:\n{replayed}"
    );

    // The recording is bound to the chain: a changed byte is named by verify and not played.
    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.ok(), "{verify:?}");
    let bytes = std::fs::read(&cast).unwrap();
    let mut tampered = bytes.clone();
    let i = text.find(&format!("{marker}-42")).unwrap();
    tampered[i] = b'X';
    std::fs::write(&cast, &tampered).unwrap();
    let verify = env.cli(&["audit", "verify"]);
    let replay_tampered = airlock(&[
        "replay",
        &session,
        "--instant",
        "--dir",
        env.audit_dir().to_str().unwrap(),
    ]);
    std::fs::write(&cast, &bytes).unwrap();
    assert!(!verify.ok(), "{verify:?}");
    assert!(
        verify.stdout.contains("error[recording]") && verify.stdout.contains("was changed"),
        "{verify:?}"
    );
    assert!(
        !replay_tampered.ok() && replay_tampered.stderr.contains("not played"),
        "{replay_tampered:?}"
    );
    assert!(env.server_commands().contains("shell\n"));
}

/// Whether any recording of the session log holds an input (`i`) event containing `needle`.
fn recorded_input(env: &Env, needle: &str) -> bool {
    let recordings = env.audit_dir().join("recordings");
    let mut found = false;
    for session in std::fs::read_dir(&recordings).unwrap().flatten() {
        for cast in std::fs::read_dir(session.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(cast.path()).unwrap_or_default();
            found |= text.lines().skip(1).any(|l| {
                let e: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                e[1] == "i" && e[2].as_str().is_some_and(|t| t.contains(needle))
            });
        }
    }
    found
}

/// What is piped into a command is recorded with its output: `ssh host sh < script`, where a
/// rule allows the program, leaves the script in the recording.
#[test]
fn piped_exec_input_is_recorded() {
    let env = env();
    let marker = format!("exec-stdin-{}", unique_id());
    let r = env.ssh("cat", Some(&format!("{marker}\n")));
    assert!(r.ok() && r.stdout.contains(&marker), "{r:?}");
    // The recording is complete once the command's result is recorded.
    wait_until(
        "the command's input in its recording",
        Duration::from_secs(10),
        || recorded_input(&env, &marker),
    );
}

/// A shell without a terminal (`ssh -T host` with commands piped in) has its input recorded
/// like a typed one; and once a shell's recording reaches `audit.recording_max_bytes` (here
/// through a flood of output), the next input ends the shell instead of running unrecorded.
#[test]
fn piped_shell_input_is_recorded_and_nothing_runs_past_the_recording_limit() {
    let env = env();
    let marker = format!("piped-{}", unique_id());
    let ssh = format!("ssh -T {} root@{DB_ADDR}", env.ssh_opts());
    let r = env.client(&ssh, Some(&format!("echo {marker}-$((6*7))\nexit\n")));
    assert!(r.stdout.contains(&format!("{marker}-42")), "{r:?}");
    // The recording is complete once the session's end is recorded, which can come after
    // the client has gone.
    wait_until(
        "the piped command in the recording",
        Duration::from_secs(10),
        || recorded_input(&env, &format!("echo {marker}-")),
    );

    // 70 MB of output passes the 64 MiB recording limit; the command piped in after it
    // would have run unrecorded, so the shell ends first.
    let ran = env.dir.path(&format!("{marker}-ran"));
    let feed = env.dir.write(
        &format!("{marker}-feed.sh"),
        &format!(
            "echo 'yes aaaaaaaa | head -c 70000000; echo; echo flooded'\n\
             sleep 8\n\
             echo 'touch {}'\n\
             sleep 2\n",
            ran.display()
        ),
    );
    let r = env.client(&format!("{{ sh {} | {ssh}; }}", feed.display()), None);
    assert!(r.stdout.contains("flooded"), "{}", &r.stderr);
    assert!(
        r.stderr
            .contains("the shell was ended: its recording reached audit.recording_max_bytes"),
        "{}\n{}",
        r.stderr,
        env.daemon_log()
    );
    assert!(!ran.exists(), "input past the recording limit ran");
}

#[test]
fn sftp_get_works_and_put_is_refused_under_a_read_only_rule() {
    let env = env();
    let ro = env.srv.join("ro");
    let rw = env.srv.join("rw");
    let n = unique_id();
    let local = env
        .dir
        .write(&format!("upload{n}.txt"), "uploaded content\n");
    let got = env.dir.path(&format!("got{n}.txt"));
    let batch = format!(
        "get {ro}/report.txt {got}\nput {local} {ro}/new{n}.txt\n",
        ro = ro.display(),
        got = got.display(),
        local = local.display()
    );
    let r = env.client(
        &format!("sftp {} -b - root@{DB_ADDR}", env.ssh_opts()),
        Some(&batch),
    );
    assert_ne!(r.code, Some(0), "the batch stops at the refused put: {r:?}");
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "quarterly report\n",
        "{r:?}"
    );
    assert!(!ro.join(format!("new{n}.txt")).exists());
    assert!(
        r.stderr.contains("Permission denied")
            && r.stderr.contains("airlock: denied by rule \"default\""),
        "{r:?}"
    );
    let sftp_log = env.server_sftp();
    assert!(
        sftp_log.contains(&format!("open \"{}/report.txt\" flags READ", ro.display())),
        "{sftp_log}"
    );
    assert!(
        !sftp_log.contains(&format!("new{n}.txt")),
        "the server never saw the refused put:\n{sftp_log}"
    );
    // Where a rule allows writing, put works, and so do mkdir and rename.
    let batch = format!(
        "put {local} {rw}/up{n}.txt\nmkdir {rw}/d{n}\nrename {rw}/up{n}.txt {rw}/d{n}/moved.txt\n",
        rw = rw.display(),
        local = local.display()
    );
    let r = env.client(
        &format!("sftp {} -b - root@{DB_ADDR}", env.ssh_opts()),
        Some(&batch),
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(rw.join(format!("d{n}/moved.txt"))).unwrap(),
        "uploaded content\n"
    );
    // A rename out of the upload area is refused: both paths must be covered.
    let batch = format!(
        "rename {rw}/d{n}/moved.txt {ro}/stolen{n}.txt\n",
        rw = rw.display(),
        ro = ro.display()
    );
    let r = env.client(
        &format!("sftp {} -b - root@{DB_ADDR}", env.ssh_opts()),
        Some(&batch),
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(rw.join(format!("d{n}/moved.txt")).exists());
    // scp (SFTP underneath) is judged the same way.
    let r = env.client(
        &format!(
            "scp {} root@{DB_ADDR}:{}/report.txt {}.scp",
            env.ssh_opts(),
            ro.display(),
            got.display()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    let r = env.client(
        &format!(
            "scp {} {} root@{DB_ADDR}:{}/scp{n}.txt",
            env.ssh_opts(),
            local.display(),
            ro.display()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(!ro.join(format!("scp{n}.txt")).exists());
    // Each operation is a command in the audit log.
    assert_eq!(denied_in_sessions_with(&env, &format!("new{n}.txt")), 1);
}

#[test]
fn legacy_scp_and_rsync_are_execs() {
    let env = env();
    let n = unique_id();
    let ro = env.srv.join("ro");
    let got = env.dir.path(&format!("legacy{n}.txt"));
    // scp -O runs `scp -f PATH` on the server: a download rule covers it...
    let r = env.client(
        &format!(
            "scp -O {} root@{DB_ADDR}:{}/report.txt {}",
            env.ssh_opts(),
            ro.display(),
            got.display()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "quarterly report\n");
    // ...and not an upload (`scp -t`).
    let r = env.client(
        &format!(
            "scp -O {} {} root@{DB_ADDR}:{}/legacy{n}.txt",
            env.ssh_opts(),
            got.display(),
            ro.display()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(!ro.join(format!("legacy{n}.txt")).exists());
    // ...nor a download climbing out of the rule's directory (`*` crosses `/`).
    let r = env.client(
        &format!(
            "scp -O {} root@{DB_ADDR}:{}/../../../../../../etc/hostname {}.climb",
            env.ssh_opts(),
            ro.display(),
            got.display()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(!env.server_commands().contains("etc/hostname"));
    assert!(
        env.server_commands()
            .contains(&format!("exec scp -f {}/report.txt", ro.display()))
    );
    assert!(!env.server_commands().contains("scp -t"));
    // rsync runs `rsync --server …`.
    let src = env.dir.path(&format!("rsync-src{n}"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        std::fs::write(
            src.join(format!("f{i}")),
            format!("file {i}\n").repeat(1000),
        )
        .unwrap();
    }
    let dest = env.srv.join(format!("rw/rsync{n}"));
    let r = env.client(
        &format!(
            "rsync -a -e 'ssh {}' {}/ root@{DB_ADDR}:{}/",
            env.ssh_opts(),
            src.display(),
            dest.display()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 20);
    assert_eq!(
        std::fs::read_to_string(dest.join("f7")).unwrap(),
        "file 7\n".repeat(1000)
    );
}

/// What an allow rule reads is what runs: a word the server's shell would expand, and words
/// past a `commands` glob's, are not allowed (`legacy-scp-downloads` allows `scp -f
/// <srv>/*`; each of these would read /etc/hostname).
#[test]
fn expansions_and_extra_words_are_not_allowed() {
    let env = env();
    let ro = env.srv.join("ro");
    for (line, why) in [
        (
            format!(
                "scp -f {}/report.txt${{x:-/../../../../../../etc/hostname}}",
                ro.display()
            ),
            "only known after expansion",
        ),
        (
            format!(
                "scp -f {}/{}etc/hostname",
                ro.display(),
                "{.,}./".repeat(12)
            ),
            "only known after expansion",
        ),
        (
            format!("scp -f {}/report.txt /etc/hostname", ro.display()),
            "denied by rule \"default\"",
        ),
    ] {
        let r = env.ssh(&shell_quote(&line), None);
        assert_eq!(r.code, Some(1), "{line}: {r:?}");
        assert!(r.stderr.contains(why), "{line}: {r:?}");
    }
    assert!(
        !env.server_commands().contains("etc/hostname"),
        "the server never saw them:\n{}",
        env.server_commands()
    );
    // Quoted, the same characters are literal and judged as written.
    let r = env.ssh(&shell_quote("echo '${x:-a}' '{.,}'"), None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "${x:-a} {.,}\n");
}

#[test]
fn forwarding_is_refused() {
    let env = env();
    // -W: a direct-tcpip channel for stdio.
    let r = env.client(
        &format!("ssh {} -W 127.0.0.1:22 root@{DB_ADDR}", env.ssh_opts()),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("port forwarding is not allowed"), "{r:?}");
    // -L: the local listener comes up, but a connection through it is refused by the gateway.
    let port = 20000 + (std::process::id() % 5000) as u16;
    let n = unique_id();
    let err = env.dir.path(&format!("fwd{n}.err"));
    let cmd = format!(
        "ssh {} -N -L 127.0.0.1:{port}:127.0.0.1:22 root@{DB_ADDR} 2> {}",
        env.ssh_opts(),
        err.display()
    );
    let mut fwd = Proc::spawn_sh(&env.in_client(&cmd), &env.dir.path(&format!("fwd{n}.log")));
    std::thread::sleep(Duration::from_secs(2));
    let probe = env.client(
        &format!(
            "{PYTHON} -c \"import socket; s=socket.create_connection(('127.0.0.1',{port}),timeout=5); s.settimeout(5); print(repr(s.recv(100)))\""
        ),
        None,
    );
    fwd.kill9();
    let err = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        !probe.stdout.contains("SSH-2.0"),
        "no byte of the server came through: {probe:?}"
    );
    assert!(err.contains("port forwarding is not allowed"), "{err}");
    // -R: refused as a global request.
    let r = env.client(
        &format!(
            "ssh {} -o ExitOnForwardFailure=yes -R 127.0.0.1:2222:127.0.0.1:22 root@{DB_ADDR} true",
            env.ssh_opts()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    // -A: the agent request is refused; the server has no agent socket.
    let r = env.client(
        &format!("ssh {} -A root@{DB_ADDR} env", env.ssh_opts()),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert!(!r.stdout.contains("SSH_AUTH_SOCK"), "{r:?}");
    assert!(env.daemon_log().contains("ssh port forwarding refused"));
    // X11: the request is refused; the command still runs, without a display.
    let r = env.client(
        &format!("DISPLAY=:99 ssh {} -X root@{DB_ADDR} env", env.ssh_opts()),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert!(r.stderr.contains("X11 forwarding request failed"), "{r:?}");
    assert!(!r.stdout.contains("DISPLAY="), "{r:?}");
    // A subsystem other than sftp is refused, and nothing reaches the server.
    let r = env.client(
        &format!("ssh {} -s root@{DB_ADDR} netconf", env.ssh_opts()),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("subsystem request failed"), "{r:?}");
    assert!(!env.server_commands().contains("netconf"));
    let log = env.daemon_log();
    assert!(log.contains("ssh X11 forwarding refused"), "{log}");
    assert!(log.contains("ssh subsystem refused"), "{log}");
}

#[test]
fn the_client_never_learns_the_upstream_credential() {
    let env = env();
    let r = env.client(
        &format!("ssh -v {} root@{DB_ADDR} id -un", env.ssh_opts()),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, "root\n");
    // The client authenticated with nothing (its workload is its identity)...
    assert!(
        r.stderr.contains("Authenticated to") && r.stderr.contains("using \"none\""),
        "{r:?}"
    );
    // ...and saw the gateway's host certificate, never the server's key.
    assert!(
        r.stderr
            .contains("Server host certificate: ssh-ed25519-cert-v01@openssh.com"),
        "{r:?}"
    );
    let server_key = std::fs::read_to_string(env.dir.path("ssh_host_ed25519_key.pub")).unwrap();
    let server_fp = String::from_utf8(
        sh(&format!(
            "ssh-keygen -lf {}",
            env.dir.path("ssh_host_ed25519_key.pub").display()
        ))
        .stdout,
    )
    .unwrap();
    let fp = server_fp.split_whitespace().nth(1).unwrap();
    assert!(
        !r.stderr.contains(fp),
        "the client saw the server's own key"
    );
    assert!(
        !r.stderr
            .contains(server_key.split_whitespace().nth(1).unwrap())
    );
    // The server saw a per-session certificate naming the caller and the session, from the
    // gateway's user CA; the client never held it.
    let sshd = std::fs::read_to_string(env.dir.path("sshd.log")).unwrap();
    assert!(
        sshd.contains("Accepted publickey for root from 198.18.0.1")
            && sshd.contains("ED25519-CERT")
            && sshd.contains("ID airlock session ")
            && sshd.contains("for unix:root"),
        "{sshd}"
    );
    // Nothing of the CA's private key is readable by the client's workload other than as root
    // on the host (out of scope): the key file is 0600.
    let mode = std::fs::metadata(env.state.join("ssh/user_ca")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn host_trust_is_the_cert_authority_line_and_nothing_else() {
    let env = env();
    // With the @cert-authority line: no prompt, StrictHostKeyChecking=yes passes (every test
    // runs this way).
    let r = env.ssh("true", None);
    assert!(r.ok(), "{r:?}");
    // Without it, the same strict client refuses the host.
    let empty = env
        .dir
        .write(&format!("empty_known_hosts{}", unique_id()), "");
    let r = env.client(
        &format!(
            "ssh -F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes root@{DB_ADDR} true",
            empty.display()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("Host key verification failed"), "{r:?}");
    // A CA line for other hosts does not cover this one.
    let line = std::fs::read_to_string(&env.known_hosts).unwrap();
    let other = env.dir.write(
        &format!("other_known_hosts{}", unique_id()),
        &line.replacen(&format!("{DB_ADDR},web.test"), "other.test", 1),
    );
    let r = env.client(
        &format!(
            "ssh -F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes root@{DB_ADDR} true",
            other.display()
        ),
        None,
    );
    assert_ne!(r.code, Some(0), "{r:?}");
}

/// A target with a cipher list offers its clients only those: ChaCha20-Poly1305 (OpenSSH's
/// first choice) and AES-GCM here, not AES-CTR.
#[test]
fn clients_get_only_the_configured_ciphers() {
    let env = env();
    // The host key is not what this test is about (host trust has its own).
    let opts = "-F /dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no \
                -o BatchMode=yes -o IdentityFile=/dev/null -o IdentitiesOnly=yes \
                -o ConnectTimeout=20";
    for (cipher, offered) in [
        ("chacha20-poly1305@openssh.com", true),
        ("aes256-gcm@openssh.com", true),
        ("aes128-gcm@openssh.com", true),
        ("aes128-ctr", false),
    ] {
        let r = env.client(
            &format!("ssh {opts} -p {NARROW_PORT} -c {cipher} root@{DB_ADDR} true"),
            None,
        );
        assert_eq!(r.ok(), offered, "{cipher}: {r:?}");
        if !offered {
            assert!(r.stderr.contains("no matching cipher"), "{cipher}: {r:?}");
        }
    }
}

/// Without a cipher list, a client that speaks AES-GCM is offered only that (the gateway's
/// fast AEAD), and one that asks for another cipher still gets it: the offer follows the
/// client's KEXINIT, so nothing that connects with the full list is refused.
#[test]
fn clients_that_speak_aes_gcm_get_it_and_others_their_cipher() {
    let env = env();
    for (asked, negotiated) in [
        ("", "aes128-gcm@openssh.com"),
        (
            "-c chacha20-poly1305@openssh.com",
            "chacha20-poly1305@openssh.com",
        ),
        ("-c aes256-ctr", "aes256-ctr"),
    ] {
        let r = env.client(
            &format!(
                "ssh -v {} {asked} root@{DB_ADDR} echo cipher-ok",
                env.ssh_opts()
            ),
            None,
        );
        assert!(r.ok() && r.stdout.contains("cipher-ok"), "{asked}: {r:?}");
        for direction in ["client->server", "server->client"] {
            let line = format!("kex: {direction} cipher: {negotiated} ");
            assert!(r.stderr.contains(&line), "{asked}: no `{line}`: {r:?}");
        }
    }
}

#[test]
fn library_client_asyncssh() {
    let env = env();
    let ro_file = env.srv.join("ro/report.txt");
    let r = env.client(
        &format!(
            "{PYTHON} -W ignore {} library {DB_ADDR} {} {}",
            support_file("ssh_client.py").display(),
            env.known_hosts.display(),
            ro_file.display()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    for line in [
        "allowed_exit=0",
        "allowed_stdout=library-client-ok",
        "denied_exit=1",
        "sftp_get=quarterly report",
        "sftp_put=refused code=3",
    ] {
        assert!(r.stdout.contains(line), "{line}: {r:?}");
    }
    assert!(
        r.stdout.contains("denied by rule \"no-destructive\""),
        "{r:?}"
    );
    assert!(ro_file.exists());
}

#[test]
fn bad_input_ends_that_session_and_others_are_served() {
    let env = env();
    let bad = support_file("ssh_bad_input.py");
    for mode in ["garbage", "truncated"] {
        let r = env.client(
            &format!("{PYTHON} {} {mode} {DB_ADDR}", bad.display()),
            None,
        );
        assert!(r.ok(), "{mode}: {r:?}");
        assert!(
            r.stdout.contains("server_banner=SSH-2.0-airlock"),
            "{mode}: {r:?}"
        );
        assert!(
            r.stdout.contains("end=closed") || r.stdout.contains("end=reset"),
            "{mode}: {r:?}"
        );
        // Others are served meanwhile.
        let ok = env.ssh("echo still-serving", None);
        assert!(
            ok.ok() && ok.stdout == "still-serving\n",
            "after {mode}: {ok:?}"
        );
    }
    // A channel flood: the connection is ended; the daemon serves the next one.
    let r = env.client(
        &format!(
            "{PYTHON} -W ignore {} flood {DB_ADDR} {} 200",
            support_file("ssh_client.py").display(),
            env.known_hosts.display()
        ),
        None,
    );
    assert!(r.ok(), "{r:?}");
    assert!(
        r.stdout.contains("alive=False"),
        "the flooding connection was ended: {r:?}"
    );
    let ok = env.ssh("echo after-flood", None);
    assert!(ok.ok() && ok.stdout == "after-flood\n", "{ok:?}");
    let log = env.daemon_log();
    assert!(log.contains("ssh channel flood"), "{log}");
    assert!(log.contains("ssh session ended with an error"), "{log}");
    // The daemon is still the same process.
    let mut d = env.daemon.lock().unwrap();
    assert!(
        d.proc.child.try_wait().unwrap().is_none(),
        "the daemon is running"
    );
}

/// One arm of the benchmark: how a client reaches the server.
#[cfg(feature = "bench-harness")]
#[derive(Clone, Copy, PartialEq)]
enum Arm {
    /// Outside the protected cgroup: straight to sshd, trusting its own host key, logging in
    /// with a key certified by the same user CA the server trusts.
    Direct,
    /// In the clients' cgroup: redirected into the gateway, as every test above.
    Airlock,
}

#[cfg(feature = "bench-harness")]
impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Airlock => "airlock",
        }
    }
}

#[cfg(feature = "bench-harness")]
fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(feature = "bench-harness")]
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(feature = "bench-harness")]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[cfg(feature = "bench-harness")]
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

/// `ssh host true` connection time and large-file throughput (scp get, sftp get, sftp put),
/// direct vs through the gateway, interleaved A/B rounds with alternating order; driven by
/// bench/ssh.sh. SSH_BENCH_MIB (file size, default 1024), SSH_BENCH_ROUNDS (default 3),
/// SSH_BENCH_CONNECTS (connections per arm and round, default 10).
#[cfg(feature = "bench-harness")]
#[test]
fn bench_ssh_connect_and_copy() {
    let env = env();
    let mib = env_num("SSH_BENCH_MIB", 1024);
    let rounds = env_num("SSH_BENCH_ROUNDS", 3);
    let connects = env_num("SSH_BENCH_CONNECTS", 10);
    println!(
        "load start {}; file {mib} MiB, {rounds} rounds, {connects} connections per arm and round",
        loadavg()
    );

    // The direct arm's trust: the server's own host key, and a client key certified by the
    // gateway's user CA (the only login the server accepts) for root.
    let host_pub = std::fs::read_to_string(env.dir.path("ssh_host_ed25519_key.pub")).unwrap();
    let direct_kh = env
        .dir
        .write("direct_known_hosts", &format!("{DB_ADDR} {host_pub}"));
    let key = env.dir.path("bench_client_key");
    sh_ok(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {key} && ssh-keygen -q -s {ca} -I bench-direct -n root -V +1h {key}.pub",
        key = key.display(),
        ca = env.state.join("ssh/user_ca").display()
    ));
    let direct_opts = format!(
        "-F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
         -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentityFile={} \
         -o CertificateFile={}-cert.pub -o IdentitiesOnly=yes -o ConnectTimeout=20",
        direct_kh.display(),
        key.display(),
        key.display()
    );
    let opts = |arm: Arm| match arm {
        Arm::Direct => direct_opts.clone(),
        Arm::Airlock => env.ssh_opts(),
    };
    // Runs `cmd` as `arm`'s client; the time is taken inside the client's shell, so both arms
    // pay the same wrapper costs outside it.
    let timed = |arm: Arm, cmd: &str| -> (f64, Run) {
        let n = unique_id();
        let (out, err, t) = (
            env.dir.path(&format!("b{n}.out")),
            env.dir.path(&format!("b{n}.err")),
            env.dir.path(&format!("b{n}.ns")),
        );
        let script = format!(
            "cd {dir} && s=$(date +%s%N); {{ {cmd}; }} < /dev/null > {out} 2> {err}; rc=$?; \
             e=$(date +%s%N); echo $((e - s)) > {t}; exit $rc",
            dir = env.dir.0.display(),
            out = out.display(),
            err = err.display(),
            t = t.display()
        );
        let wrapped = match arm {
            Arm::Direct => format!(
                "{} sh -c {}",
                Topology::enter(&env.topo.node),
                shell_quote(&script)
            ),
            Arm::Airlock => env.in_client(&script),
        };
        let status = sh(&wrapped);
        let ns: f64 = std::fs::read_to_string(&t)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        let run = Run {
            code: status.status.code(),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default()
                + &String::from_utf8_lossy(&status.stderr),
        };
        let _ = std::fs::remove_file(&out);
        (ns / 1e6, run)
    };

    // Each arm reaches the server by its own path: its trust fits only that path.
    for arm in [Arm::Direct, Arm::Airlock] {
        let (_, r) = timed(arm, &format!("ssh -v {} root@{DB_ADDR} true", opts(arm)));
        assert!(r.ok(), "{}: {r:?}", arm.name());
        let cert = r
            .stderr
            .contains("Server host certificate: ssh-ed25519-cert-v01@openssh.com");
        assert_eq!(
            cert,
            arm == Arm::Airlock,
            "{} saw the wrong host: {r:?}",
            arm.name()
        );
    }

    let big = env.srv.join("bench.bin");
    sh_ok(&format!(
        "head -c {}M /dev/urandom > {}",
        mib,
        big.display()
    ));
    let size = std::fs::metadata(&big).unwrap().len();
    let local = env.dir.path("bench-upload.bin");
    std::fs::copy(&big, &local).unwrap();
    let got = env.dir.path("bench-got.bin");
    let up = env.srv.join("rw/bench-up.bin");
    let transfers: [(&str, String, &Path); 3] = [
        (
            "scp-get",
            format!(
                "scp {{opts}} root@{DB_ADDR}:{} {}",
                big.display(),
                got.display()
            ),
            &got,
        ),
        (
            "sftp-get",
            format!(
                "echo 'get {} {}' | sftp {{opts}} -b - root@{DB_ADDR}",
                big.display(),
                got.display()
            ),
            &got,
        ),
        (
            "sftp-put",
            format!(
                "echo 'put {} {}' | sftp {{opts}} -b - root@{DB_ADDR}",
                local.display(),
                up.display()
            ),
            &up,
        ),
    ];

    let mut connect: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut mibps: Vec<[Vec<f64>; 2]> = transfers.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Arm::Direct, Arm::Airlock]
        } else {
            [Arm::Airlock, Arm::Direct]
        };
        let load_before = loadavg();
        let mut line = String::new();
        for _ in 0..connects {
            for arm in order {
                let (ms, r) = timed(arm, &format!("ssh {} root@{DB_ADDR} true", opts(arm)));
                assert!(r.ok(), "{}: {r:?}", arm.name());
                connect[arm as usize].push(ms);
            }
        }
        for (i, (name, cmd, dest)) in transfers.iter().enumerate() {
            for arm in order {
                let cmd = cmd.replace("{opts}", &opts(arm));
                let (ms, r) = timed(arm, &cmd);
                assert!(r.ok(), "{name} {}: {r:?}", arm.name());
                let len = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
                assert_eq!(len, size, "{name} {}: the whole file arrived", arm.name());
                std::fs::remove_file(dest).unwrap();
                let rate = size as f64 / (1024.0 * 1024.0) / (ms / 1000.0);
                mibps[i][arm as usize].push(rate);
                line.push_str(&format!(" {name} {} {rate:.1} MiB/s;", arm.name()));
            }
        }
        let last = |arm: Arm| {
            let v = &connect[arm as usize];
            median(&v[v.len() - connects..])
        };
        println!(
            "round {} order {}-first load {} -> {}; connect p50 direct {:.1} ms airlock {:.1} ms;{line}",
            round + 1,
            order[0].name(),
            load_before,
            loadavg(),
            last(Arm::Direct),
            last(Arm::Airlock),
        );
    }

    let pct = |arm: Arm, p: f64| {
        let mut s = connect[arm as usize].clone();
        s.sort_by(f64::total_cmp);
        percentile(&s, p)
    };
    let added = pct(Arm::Airlock, 0.5) - pct(Arm::Direct, 0.5);
    println!(
        "summary connect (ssh true, n={} per arm): direct p50 {:.1} ms p90 {:.1} ms; airlock p50 {:.1} ms p90 {:.1} ms; added p50 {added:.1} ms (budget <= 20 ms: {})",
        connect[0].len(),
        pct(Arm::Direct, 0.5),
        pct(Arm::Direct, 0.9),
        pct(Arm::Airlock, 0.5),
        pct(Arm::Airlock, 0.9),
        if added <= 20.0 { "met" } else { "MISSED" }
    );
    for (i, (name, _, _)) in transfers.iter().enumerate() {
        let (d, a) = (median(&mibps[i][0]), median(&mibps[i][1]));
        let ratio = a / d;
        println!(
            "summary {name} ({mib} MiB, median of {rounds}): direct {d:.1} MiB/s airlock {a:.1} MiB/s ratio {ratio:.2}{}",
            if *name == "sftp-get" || *name == "sftp-put" {
                format!(
                    " (budget >= 0.8: {})",
                    if ratio >= 0.8 { "met" } else { "MISSED" }
                )
            } else {
                String::new()
            }
        );
    }
    println!("load end {}", loadavg());
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&local);
}
