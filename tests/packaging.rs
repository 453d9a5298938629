//! How airlock is deployed: the Helm chart and the plain manifests it renders, the systemd
//! unit, and the container image.
//!
//! - The chart renders (Helm v4's SDK from PyPI, no helm binary) with its defaults and with
//!   every option on, and every object validates in strict mode against the Kubernetes 1.30
//!   and 1.37 schemas (kubernetes-validate), the ServiceMonitor against the prometheus-operator
//!   CRD's; the configuration it renders passes `airlock policy check`; the committed
//!   manifests are exactly what the chart renders; every values.yaml key is documented.
//! - `systemd-analyze verify` passes on deploy/systemd/airlock.service and its exposure
//!   score stays in systemd's "OK" band.
//! - The image's root filesystem (deploy/image/rootfs.sh) runs the binary on its own, and
//!   buildah builds deploy/image/Containerfile from it and runs the image.
//!
//! The Python tools and buildah are installed by `cargo xtask setup`. Needs root (chroot,
//! buildah).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{TempDir, airlock_bin, repo_root, require_root, unique_id};

/// The venv `cargo xtask setup` installs deploy/tools/requirements.txt into.
const TOOLS_PYTHON: &str = "/opt/airlock-tools/bin/python";

fn tools() -> PathBuf {
    assert!(
        Path::new(TOOLS_PYTHON).exists(),
        "missing {TOOLS_PYTHON} (helm-python-sdk, kubernetes-validate): run `cargo xtask setup`"
    );
    repo_root().join("deploy/tools/chart.py")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `chart.py render` of the chart with `values` files.
fn render(values: &[&Path], extra: &[&str]) -> String {
    let mut cmd = Command::new(TOOLS_PYTHON);
    cmd.arg(tools())
        .arg("render")
        .arg(repo_root().join("deploy/helm/airlock"));
    for v in values {
        cmd.arg("--values").arg(v);
    }
    cmd.args(extra);
    ok(&cmd.output().unwrap(), "chart render")
}

/// `chart.py validate` of a YAML stream: (passed, report).
fn validate(stream: &str, dir: &TempDir, name: &str) -> (bool, String) {
    let file = dir.write(name, stream);
    let out = Command::new(TOOLS_PYTHON)
        .arg(tools())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn objects(stream: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(stream)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The configuration the chart's ConfigMap holds passes the daemon's own check.
fn assert_config_checks(objs: &[serde_json::Value], dir: &TempDir, name: &str) {
    let config = find(objs, "ConfigMap")["data"]["airlock.yaml"]
        .as_str()
        .unwrap();
    let file = dir.write(name, config);
    let out = Command::new(airlock_bin())
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    ok(&out, "airlock policy check of the rendered configuration");
}

#[test]
fn chart_renders_and_every_object_validates_in_strict_mode() {
    let dir = TempDir::new(&format!("chart-{}", unique_id()));
    let full = repo_root().join("tests/data/helm-values-full.yaml");
    for (name, values) in [("defaults", vec![]), ("full", vec![full.as_path()])] {
        let stream = render(&values, &[]);
        let (passed, report) = validate(&stream, &dir, &format!("{name}.yaml"));
        assert!(passed, "{name}: {report}");
        let objs = objects(&stream);
        assert_eq!(
            report.lines().filter(|l| l.starts_with("OK ")).count(),
            objs.len(),
            "{name}: every object was checked: {report}"
        );
        assert_config_checks(&objs, &dir, &format!("{name}-airlock.yaml"));

        let ds = find(&objs, "DaemonSet");
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["priorityClassName"], "system-node-critical");
        let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
        assert_eq!(
            (
                rolling["maxSurge"].as_i64(),
                rolling["maxUnavailable"].as_i64()
            ),
            (Some(1), Some(0))
        );
        let c = &spec["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for cap in ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"] {
            assert!(
                caps.contains(&cap),
                "{name}: capability {cap} missing: {caps:?}"
            );
        }
        let mounts = c["volumeMounts"].as_array().unwrap();
        let mount = |path: &str| {
            mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{name}: no mount at {path}"))
        };
        assert_eq!(mount("/host/proc")["readOnly"], true);
        assert_eq!(mount("/host/sys/fs/cgroup")["readOnly"], true);
        let bpffs = mount("/sys/fs/bpf");
        let volumes = spec["volumes"].as_array().unwrap();
        let host_path = |volume: &serde_json::Value| {
            volumes
                .iter()
                .find(|v| v["name"] == volume["name"])
                .map(|v| v["hostPath"]["path"].clone())
        };
        assert_eq!(host_path(bpffs).unwrap(), "/sys/fs/bpf");
        assert_eq!(host_path(mount("/host/proc")).unwrap(), "/proc");
        assert_eq!(
            host_path(mount("/host/sys/fs/cgroup")).unwrap(),
            "/sys/fs/cgroup"
        );
        // A bidirectional bpffs mount only where Kubernetes allows it: privileged.
        let bidirectional = bpffs["mountPropagation"] == "Bidirectional";
        assert_eq!(bidirectional, name == "full");
        assert_eq!(c["securityContext"]["privileged"], bidirectional);
        for kind in [
            "ConfigMap",
            "Service",
            "PodDisruptionBudget",
            "ServiceAccount",
        ] {
            find(&objs, kind);
        }
        if name == "full" {
            find(&objs, "ServiceMonitor");
            let secret = find(&objs, "Secret");
            assert!(secret["stringData"]["ORDERS_DB_PASSWORD"].is_string());
        }
    }

    // The validation can fail: an unknown field and a wrong type are both errors.
    let stream = render(&[], &[]);
    let typo = stream.replacen(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrk: true",
        1,
    );
    let (passed, report) = validate(&typo, &dir, "typo.yaml");
    assert!(
        !passed && report.contains("'hostNetwrk' was unexpected"),
        "{report}"
    );
    let wrong = stream.replacen(
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriodSeconds: soon",
        1,
    );
    let (passed, report) = validate(&wrong, &dir, "wrong.yaml");
    assert!(!passed, "{report}");
    let full = render(&[full.as_path()], &[]);
    let monitor = full.replacen(
        "    - port: metrics",
        "    - port: metrics\n      pathh: /metrics",
        1,
    );
    let (passed, report) = validate(&monitor, &dir, "monitor.yaml");
    assert!(
        !passed && report.contains("'pathh' was unexpected"),
        "{report}"
    );
}

#[test]
fn committed_manifests_are_what_the_chart_renders() {
    let rendered = render(&[], &["--with-namespace"]);
    let committed =
        std::fs::read_to_string(repo_root().join("deploy/manifests/airlock.yaml")).unwrap();
    assert!(
        rendered == committed,
        "deploy/manifests/airlock.yaml is stale; regenerate it with\n  \
         {TOOLS_PYTHON} deploy/tools/chart.py render deploy/helm/airlock --with-namespace > deploy/manifests/airlock.yaml"
    );
    let dir = TempDir::new(&format!("manifests-{}", unique_id()));
    let (passed, report) = validate(&committed, &dir, "manifests.yaml");
    assert!(passed, "{report}");
    assert_eq!(objects(&committed)[0]["kind"], "Namespace");
}

/// Keys of values.yaml without a comment right above them (their own, or the comment block
/// that introduces them).
fn undocumented_keys(values: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut previous: Option<&str> = None;
    for line in values.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            previous = None;
            continue;
        }
        let is_key = !trimmed.starts_with('#')
            && !trimmed.starts_with('-')
            && trimmed
                .split_once(':')
                .is_some_and(|(k, _)| !k.contains(' '));
        if is_key && !previous.is_some_and(|p| p.trim_start().starts_with('#')) {
            missing.push(trimmed.split(':').next().unwrap_or("").to_owned());
        }
        previous = Some(line);
    }
    missing
}

#[test]
fn every_values_key_is_documented() {
    let values =
        std::fs::read_to_string(repo_root().join("deploy/helm/airlock/values.yaml")).unwrap();
    let missing = undocumented_keys(&values);
    assert!(
        missing.is_empty(),
        "values.yaml keys without a comment: {missing:?}"
    );
    // The check itself catches an undocumented key.
    assert_eq!(
        undocumented_keys("# a\nimage:\n  # b\n  tag: x\n  pullPolicy: y\n"),
        vec!["pullPolicy"]
    );
}

/// A root for `systemd-analyze --root`: the unit, the binary it starts, systemd's own units.
fn systemd_root(dir: &TempDir, unit: &str) -> PathBuf {
    let root = dir.path("root");
    for d in ["usr/bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(airlock_bin(), root.join("usr/bin/airlock")).unwrap();
    std::fs::write(root.join("etc/systemd/system/airlock.service"), unit).unwrap();
    let _ = std::fs::remove_dir_all(root.join("usr/lib/systemd/system"));
    let out = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(root.join("usr/lib/systemd/"))
        .output()
        .unwrap();
    ok(&out, "copying systemd's units");
    root
}

fn systemd_verify(dir: &TempDir, unit: &str) -> (bool, String) {
    let root = systemd_root(dir, unit);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("airlock.service")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    require_root();
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/airlock.service")).unwrap();
    let dir = TempDir::new(&format!("systemd-{}", unique_id()));
    let (passed, report) = systemd_verify(&dir, &unit);
    assert!(
        passed && report.trim().is_empty(),
        "systemd-analyze verify: {report}"
    );
    for directive in [
        "Type=notify",
        "ExecStart=/usr/bin/airlock run --config /etc/airlock/airlock.yaml",
        "ExecReload=/usr/bin/airlock upgrade --config /etc/airlock/airlock.yaml",
        "Restart=always",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_RESOURCE",
        "ProtectSystem=strict",
        "StateDirectory=airlock",
        "ReadWritePaths=/sys/fs/bpf",
        "NotifyAccess=all",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "the unit lacks `{directive}`"
        );
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(format!("--root={}", dir.path("root").display()))
        .arg("airlock.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for airlock.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    assert!(
        score < 4.0,
        "exposure {score} is above systemd's OK band:\n{text}"
    );

    // The verification can fail: a misspelt directive is reported.
    let typo = unit.replace("Restart=always", "Restrat=always");
    let (_, report) = systemd_verify(
        &TempDir::new(&format!("systemd-typo-{}", unique_id())),
        &typo,
    );
    assert!(report.contains("Unknown key 'Restrat'"), "{report}");
}

/// buildah with storage of its own under `dir`, so the test touches no shared images.
fn buildah(dir: &TempDir) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root")
        .arg(dir.path("storage"))
        .arg("--runroot")
        .arg(dir.path("run"))
        .args(["--storage-driver", "vfs"]);
    cmd
}

#[test]
fn image_root_filesystem_runs_and_buildah_builds_the_containerfile() {
    require_root();
    let found = Command::new("sh")
        .args(["-c", "command -v buildah && command -v runc"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "missing buildah or runc: run `cargo xtask setup`");
    let dir = TempDir::new(&format!("image-{}", unique_id()));
    let rootfs = dir.path("rootfs");
    let out = Command::new("sh")
        .arg(repo_root().join("deploy/image/rootfs.sh"))
        .arg(airlock_bin())
        .arg(&rootfs)
        .output()
        .unwrap();
    ok(&out, "rootfs.sh");

    // The tree is self-contained: the binary runs in it alone, the CLI as the non-root user.
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/bin/airlock", "--version"])
        .output()
        .unwrap();
    assert!(ok(&out, "airlock --version in the root filesystem").starts_with("airlock "));
    std::fs::copy(
        repo_root().join("policies/demo.yaml"),
        rootfs.join("etc/airlock/airlock.yaml"),
    )
    .unwrap();
    let out = Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args([
            "/usr/bin/airlock",
            "policy",
            "check",
            "/etc/airlock/airlock.yaml",
        ])
        .output()
        .unwrap();
    assert!(ok(&out, "policy check as nonroot").contains(": ok"));

    // buildah: the tree as the `rootfs` stage of the Containerfile (its build stage needs a
    // registry for the Debian builder image; it is skipped).
    let ctr = ok(
        &buildah(&dir).args(["from", "scratch"]).output().unwrap(),
        "buildah from",
    );
    let ctr = ctr.trim();
    let out = buildah(&dir)
        .arg("copy")
        .arg(ctr)
        .arg(&rootfs)
        .arg("/rootfs/")
        .output()
        .unwrap();
    ok(&out, "buildah copy");
    ok(
        &buildah(&dir)
            .args(["commit", "-q", ctr, "localhost/airlock-rootfs:test"])
            .output()
            .unwrap(),
        "buildah commit",
    );
    let context = dir.path("context");
    std::fs::create_dir_all(&context).unwrap();
    let out = buildah(&dir)
        .args([
            "bud",
            "--build-arg",
            "ROOTFS=localhost/airlock-rootfs:test",
            "-f",
        ])
        .arg(repo_root().join("deploy/image/Containerfile"))
        .args(["-t", "localhost/airlock:test"])
        .arg(&context)
        .output()
        .unwrap();
    ok(&out, "buildah bud of deploy/image/Containerfile");
    let out = buildah(&dir)
        .args(["inspect", "--type", "image", "localhost/airlock:test"])
        .output()
        .unwrap();
    let image: serde_json::Value = serde_json::from_str(&ok(&out, "buildah inspect")).unwrap();
    let config = &image["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/airlock"])
    );
    let ctr = ok(
        &buildah(&dir)
            .args(["from", "localhost/airlock:test"])
            .output()
            .unwrap(),
        "buildah from image",
    );
    let out = buildah(&dir)
        .args(["run", ctr.trim(), "--", "/usr/bin/airlock", "--version"])
        .output()
        .unwrap();
    assert!(ok(&out, "running the image").starts_with("airlock "));
    let _ = buildah(&dir).args(["rm", "--all"]).output();
    let _ = buildah(&dir).args(["rmi", "--all", "--force"]).output();
}
