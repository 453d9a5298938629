//! Test support: network namespaces with veth pairs (test hosts in 198.18.0.0/15 and
//! 2001:2::/48, the benchmarking ranges), child cgroups, and the airlock daemon as a real
//! process. Everything a test creates is removed when its handle drops.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Debian's python3 (psycopg and friends are installed for it).
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails the test with a clear message unless the prerequisites are present.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests need root (cgroups, network namespaces, eBPF); run them as CI does: sudo cargo xtask test"
    );
    for tool in ["ip", "nsenter", PYTHON] {
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

/// A unique short id per test in this process (names must fit IFNAMSIZ).
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}{}",
        std::process::id() % 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("spawn sh -c {cmd}: {e}"))
}

pub fn sh_ok(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd`, asserts it succeeded, and returns its standard output.
pub fn sh_out(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Repo root (tests run with the package dir as cwd).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn support_file(name: &str) -> PathBuf {
    repo_root().join("tests/support").join(name)
}

/// Three hosts: `node` (where the daemon runs, and "host" clients), `db` (the protected
/// target), `pod` (a client in its own namespace, routed through the node).
///
/// ```text
///  pod 198.18.2.2 ── 198.18.2.1 node 198.18.0.1 / 2001:2::1 ── db 198.18.0.2, .3 / 2001:2::2
/// ```
pub struct Topology {
    pub id: String,
    pub node: String,
    pub db: String,
    pub pod: String,
}

pub const NODE_DB_ADDR: &str = "198.18.0.1";
pub const NODE_DB_ADDR6: &str = "2001:2::1";
pub const NODE_POD_ADDR: &str = "198.18.2.1";
pub const DB_ADDR: &str = "198.18.0.2";
pub const DB_ADDR_2: &str = "198.18.0.3";
pub const DB_ADDR6: &str = "2001:2::2";
pub const POD_ADDR: &str = "198.18.2.2";

impl Topology {
    pub fn new() -> Self {
        let id = unique_id();
        let t = Topology {
            node: format!("al{id}node"),
            db: format!("al{id}db"),
            pod: format!("al{id}pod"),
            id,
        };
        let (n, d, p, i) = (&t.node, &t.db, &t.pod, &t.id);
        let script = format!(
            "set -e
            for ns in {n} {d} {p}; do ip netns add $ns; ip -n $ns link set lo up; done
            ip link add a{i}d0 netns {n} type veth peer name a{i}d1 netns {d}
            ip link add a{i}p0 netns {n} type veth peer name a{i}p1 netns {p}
            ip -n {n} addr add {NODE_DB_ADDR}/24 dev a{i}d0
            ip -n {n} addr add {NODE_DB_ADDR6}/64 dev a{i}d0 nodad
            ip -n {n} addr add {NODE_POD_ADDR}/24 dev a{i}p0
            ip -n {d} addr add {DB_ADDR}/24 dev a{i}d1
            ip -n {d} addr add {DB_ADDR_2}/24 dev a{i}d1
            ip -n {d} addr add {DB_ADDR6}/64 dev a{i}d1 nodad
            ip -n {p} addr add {POD_ADDR}/24 dev a{i}p1
            ip -n {n} link set a{i}d0 up; ip -n {n} link set a{i}p0 up
            ip -n {d} link set a{i}d1 up; ip -n {p} link set a{i}p1 up
            ip -n {p} route add default via {NODE_POD_ADDR}
            ip -n {d} route add 198.18.2.0/24 via {NODE_DB_ADDR}
            ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"
        );
        sh_ok(&script);
        t
    }

    /// `nsenter` prefix that switches only the network namespace (mounts stay visible, unlike
    /// `ip netns exec`, which remounts /sys and would hide cgroupfs and bpffs).
    pub fn enter(ns: &str) -> String {
        format!("nsenter --net=/run/netns/{ns}")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.node, &self.db, &self.pod] {
            let _ = sh(&format!(
                "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}"
            ));
        }
    }
}

/// A child cgroup v2 for one test, with sub-cgroups made on demand.
pub struct TestCgroup {
    pub path: PathBuf,
}

/// The cgroup v2 mount point (mounted by `cargo xtask setup` when missing).
pub fn cgroup2_root() -> PathBuf {
    airlock::intercept::system::ensure_mounts(Path::new("/sys/fs/bpf"))
        .expect("cgroup v2 and bpffs mounts (run `cargo xtask setup`)")
}

impl TestCgroup {
    pub fn new(id: &str) -> Self {
        let path = cgroup2_root().join(format!("airlock-test-{id}"));
        fs::create_dir_all(&path).expect("create test cgroup");
        TestCgroup { path }
    }

    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).expect("create child cgroup");
        p
    }

    /// Shell prefix that moves the shell into `child` and then `exec`s into `ns`.
    pub fn run_in(&self, child: &str, ns: &str, cmd: &str) -> String {
        let procs = self.child(child).join("cgroup.procs");
        format!(
            "echo $$ > {} && exec {} {cmd}",
            procs.display(),
            Topology::enter(ns)
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill everything left inside, then remove the directories bottom-up.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = sh(&format!(
            "find {} -depth -type d -exec rmdir {{}} \\; 2>/dev/null",
            self.path.display()
        ));
    }
}

/// A process started by a test, killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn_sh(script: &str, log: &Path) -> Self {
        let file = fs::File::create(log).expect("log file");
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn");
        Proc {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or the process dies, or the timeout passes).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "process exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {needle:?} in log:\n{}",
            self.log_text()
        );
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(id: &str) -> Self {
        let p = std::env::temp_dir().join(format!("airlock-test-{id}"));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let mut f = fs::File::create(&p).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The airlock daemon under test: runs in cgroup `<test>/daemon` inside the node namespace.
pub struct Daemon {
    pub proc: Proc,
    pub config: PathBuf,
    pub bpffs: PathBuf,
}

pub fn airlock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_airlock")
}

impl Daemon {
    pub fn start(
        cg: &TestCgroup,
        topo: &Topology,
        config: &Path,
        bpffs: &Path,
        log: &Path,
    ) -> Self {
        let script = cg.run_in(
            "daemon",
            &topo.node,
            &format!("{} run --config {}", airlock_bin(), config.display()),
        );
        let mut proc = Proc::spawn_sh(&script, log);
        proc.wait_for_log("airlock running", Duration::from_secs(30));
        Daemon {
            proc,
            config: config.to_owned(),
            bpffs: bpffs.to_owned(),
        }
    }

    /// `airlock status --json`.
    pub fn status(bpffs: &Path) -> serde_json::Value {
        let out = Command::new(airlock_bin())
            .args(["status", "--json", "--bpffs"])
            .arg(bpffs)
            .output()
            .expect("airlock status");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.proc.kill9();
        let _ = Command::new(airlock_bin())
            .args(["uninstall", "--bpffs"])
            .arg(&self.bpffs)
            .output();
    }
}

/// Polls `f` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// `s` as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Terminal recordings (`<recordings>/<session>/<n>.cast`) whose text contains `needle`.
pub fn casts_containing(recordings: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for session in fs::read_dir(recordings).into_iter().flatten().flatten() {
        for cast in fs::read_dir(session.path()).into_iter().flatten().flatten() {
            if fs::read_to_string(cast.path()).is_ok_and(|t| t.contains(needle)) {
                out.push(cast.path());
            }
        }
    }
    out
}
