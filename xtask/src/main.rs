//! `cargo xtask setup | build | test | demo | bench | clean-test-state`
//!
//! setup installs, idempotently, everything a fresh machine lacks: Debian packages (Debian's
//! rustc for the kernel programs, LLVM 22, bpftool, PostgreSQL, pgbouncer, haproxy, …),
//! bpf-linker, and the cgroup v2 and bpffs mounts.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod demo;

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
    // Node.js and npm (for the OIDC provider in tests) come with the machine image; Debian's
    // npm package conflicts with that build, so it is not listed here.
];

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
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
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
    // cgroup v2 and bpffs.
    if !sh_quiet_ok("grep -q ' - cgroup2 ' /proc/self/mountinfo") {
        sh(
            "if [ -d /sys/fs/cgroup/unified ]; then d=/sys/fs/cgroup/unified; \
            else d=/run/airlock/cgroup2; mkdir -p $d; fi; mount -t cgroup2 none $d",
        )?;
    }
    if !sh_quiet_ok("grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo") {
        sh("mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf")?;
    }
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
