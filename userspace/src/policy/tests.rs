//! Unit tests: rule matching, shadow mode, defaults, validation errors, limits.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::Config;
use crate::model::{Command, Dialect};

const TARGETS: &str = "
targets:
  - name: db
    protocol: postgres
    addresses: [\"198.18.0.2\"]
    ports: [5432]
  - name: raw
    protocol: tcp
    addresses: [\"198.18.0.3\"]
    ports: [22]
";

fn engine(policy: &str) -> Engine {
    let text = format!("{TARGETS}{policy}");
    let config = Config::parse(Path::new("t.yaml"), &text).expect("valid config");
    Engine::new(&config).expect("engine builds")
}

fn parse_err(policy: &str) -> String {
    let text = format!("{TARGETS}{policy}");
    match Config::parse(Path::new("t.yaml"), &text) {
        Ok(_) => panic!("expected an error for:\n{policy}"),
        Err(e) => e.to_string(),
    }
}

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        workload: None,
        token: None,
    }
}

fn decide(e: &Engine, id: &Identity, sql: &str) -> Decision {
    e.decide(&Request {
        identity: id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, sql),
    })
}

const AGENTS: &str = "
rules:
  - name: read
    groups: [agents]
    classes: [read]
    action: allow
  - name: write
    groups: [agents]
    classes: [read, write]
    action: review
    review: {approvers: [dba], quorum: 2, ttl: 10m, timeout: 30s, on_timeout: escalate, escalate_to: [sre], mode: retry}
  - name: deny-rest
    groups: [agents]
    action: deny
masking:
  - name: email
    columns: [\"*.customers.email\"]
    style: partial
    except_groups: [dba]
  - name: cards
    detectors: [card]
    style: redact
";

#[test]
fn first_match_wins_and_multi_statement_needs_every_part_covered() {
    let e = engine(AGENTS);
    let a = who("unix:bot", &["agents"]);
    let d = decide(&e, &a, "SELECT * FROM customers");
    assert_eq!(d.action(), "allow");
    assert_eq!(d.rule(), "read");
    let d = decide(&e, &a, "SELECT 1; UPDATE t SET a = 1");
    assert_eq!(d.rule(), "write");
    match d {
        Decision::Review {
            approvers,
            quorum,
            ttl,
            timeout,
            on_timeout,
            escalate_to,
            mode,
            ..
        } => {
            assert_eq!(approvers, vec!["dba"]);
            assert_eq!(quorum, 2);
            assert_eq!(ttl, Duration::from_secs(600));
            assert_eq!(timeout, Duration::from_secs(30));
            assert_eq!(on_timeout, OnTimeout::Escalate);
            assert_eq!(escalate_to, vec!["sre"]);
            assert_eq!(mode, ReviewMode::Retry);
        }
        other => panic!("{other:?}"),
    }
    // A write hidden after a read is not covered by the read rule, and DDL is covered by
    // neither the read nor the write rule.
    assert_eq!(decide(&e, &a, "SELECT 1; DROP TABLE t").rule(), "deny-rest");
    assert_eq!(decide(&e, &a, "SELECT 1; DROP TABLE t").action(), "deny");
}

#[test]
fn unknown_is_never_allowed_by_a_read_rule_or_a_rule_without_classes() {
    let e = engine(
        "
rules:
  - name: read
    classes: [read]
    action: allow
  - name: anything
    action: allow
",
    );
    let a = who("x", &[]);
    for sql in [
        "DO $$ BEGIN DELETE FROM t; END $$",
        "SELEC 1",
        "ALTER SYSTEM SET fsync = off",
    ] {
        let d = decide(&e, &a, sql);
        assert_eq!(d.action(), "deny", "{sql}: {d:?}");
        assert_eq!(d.rule(), "default", "{sql}");
    }
    // ...but a rule that names `unknown` may (explicitly).
    let e = engine(
        "
rules:
  - name: yolo
    classes: [read, unknown]
    action: allow
",
    );
    assert_eq!(decide(&e, &a, "SELEC 1").action(), "allow");
}

#[test]
fn default_is_deny_unless_set_and_allow_default_still_refuses_unknown() {
    let e = engine("rules: []\n");
    let d = decide(&e, &who("x", &[]), "SELECT 1");
    assert_eq!(d.rule(), "default");
    assert_eq!(d.action(), "deny");
    let e = engine("default: allow\n");
    assert_eq!(decide(&e, &who("x", &[]), "SELECT 1").action(), "allow");
    assert_eq!(decide(&e, &who("x", &[]), "SELEC 1").action(), "deny");
}

#[test]
fn shadow_rules_record_but_do_not_enforce() {
    let e = engine(
        "
rules:
  - name: would-deny-writes
    classes: [write]
    action: deny
    shadow: true
  - name: allow-all-parsed
    classes: [read, write]
    action: allow
",
    );
    let id = who("x", &[]);
    let v = e.evaluate(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, "DELETE FROM t"),
    });
    assert_eq!(v.decision.action(), "allow");
    assert_eq!(v.decision.rule(), "allow-all-parsed");
    assert_eq!(
        v.shadow,
        vec![ShadowHit {
            rule: "would-deny-writes".into(),
            action: Action::Deny
        }]
    );
    let v = e.evaluate(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, "SELECT 1"),
    });
    assert!(v.shadow.is_empty());
}

#[test]
fn masks_follow_rule_and_except_groups() {
    let e = engine(AGENTS);
    match decide(&e, &who("a", &["agents"]), "SELECT 1") {
        Decision::Allow { mask, .. } => assert_eq!(mask, vec!["email", "cards"]),
        d => panic!("{d:?}"),
    }
    match decide(&e, &who("a", &["agents", "dba"]), "SELECT 1") {
        Decision::Allow { mask, .. } => assert_eq!(mask, vec!["cards"]),
        d => panic!("{d:?}"),
    }
    let e = engine(
        "
rules:
  - name: r
    classes: [read]
    action: allow
    mask: [email]
masking:
  - name: email
    columns: [\"*.customers.email\"]
    style: redact
  - name: other
    detectors: [ssn]
    style: redact
",
    );
    match decide(&e, &who("a", &[]), "SELECT 1") {
        Decision::Allow { mask, .. } => assert_eq!(mask, vec!["email"]),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_tables_rule_never_allows_commands_on_no_table() {
    // An allow rule naming tables and no classes: everything on `orders`, nothing else.
    let e = engine(
        "
rules:
  - name: orders-only
    sql: { tables: [public.orders] }
    action: allow
",
    );
    let id = who("a", &[]);
    for ok in [
        "SELECT * FROM public.orders",
        "DELETE FROM public.orders WHERE id = 1",
    ] {
        assert_eq!(decide(&e, &id, ok).rule(), "orders-only", "{ok}");
    }
    for sql in [
        "SELECT 1",
        "SET ROLE postgres",
        "CREATE ROLE x SUPERUSER",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT pg_terminate_backend(1)",
    ] {
        let d = decide(&e, &id, sql);
        assert_eq!(d.rule(), "default", "{sql}");
        assert_eq!(d.action(), "deny", "{sql}");
    }
}

#[test]
fn tables_all_for_allow_any_for_deny() {
    let e = engine(
        "
rules:
  - name: no-payroll
    tables: [\"payroll.*\"]
    action: deny
  - name: public-reads
    classes: [read]
    tables: [\"public.*\", orders]
    action: allow
",
    );
    let id = who("a", &[]);
    assert_eq!(
        decide(&e, &id, "SELECT * FROM public.customers").action(),
        "allow"
    );
    assert_eq!(
        decide(&e, &id, "SELECT * FROM sales.orders").action(),
        "allow"
    );
    // One table outside the allowed set: the allow rule does not cover the command.
    assert_eq!(
        decide(&e, &id, "SELECT * FROM public.a JOIN secret.b ON true").rule(),
        "default"
    );
    // An unqualified name could be in any schema on the search path: a deny rule on
    // payroll.* catches it, an allow rule on public.* does not cover it.
    assert_eq!(
        decide(&e, &id, "SELECT * FROM salaries").rule(),
        "no-payroll"
    );
    assert_eq!(
        decide(&e, &id, "SELECT * FROM PAYROLL.Salaries").rule(),
        "no-payroll"
    );
    assert_eq!(
        decide(&e, &id, "SELECT * FROM \"payroll\".x").rule(),
        "no-payroll"
    );
}

#[test]
fn subjects_targets_protocols_kinds() {
    let e = engine(
        "
rules:
  - name: ci-inserts
    subjects: [\"unix:ci-*\"]
    targets: [db]
    protocols: [postgres]
    kinds: [insert]
    action: allow
  - name: raw-ssh
    targets: [raw]
    groups: [ops]
    action: allow
",
    );
    assert_eq!(
        decide(&e, &who("unix:ci-42", &[]), "INSERT INTO t VALUES (1)").rule(),
        "ci-inserts"
    );
    assert_eq!(
        decide(
            &e,
            &who("unix:ci-42", &[]),
            "INSERT INTO t VALUES (1); DELETE FROM t"
        )
        .rule(),
        "default"
    );
    assert_eq!(
        decide(&e, &who("unix:dev", &[]), "INSERT INTO t VALUES (1)").rule(),
        "default"
    );
    let ops = who("alice", &["ops"]);
    let d = e.decide(&Request {
        identity: &ops,
        target: "raw",
        protocol: Protocol::Tcp,
        command: &Command::Connect,
    });
    assert_eq!(d.rule(), "raw-ssh");
}

#[test]
fn workload_via_identities_and_inline() {
    let e = engine(
        "
identities:
  - name: ci
    workload:
      cgroups: [\"/system.slice/ci-*.service\"]
    groups: [ci]
  - name: pods
    workload:
      pods: [\"0b9a2d3e-1111-2222-3333-444455556666\"]
    groups: [pod-group]
rules:
  - name: by-identity
    identities: [ci]
    classes: [read]
    action: allow
  - name: inline
    workload: {users: [postgres], comms: [\"pg_*\"]}
    classes: [read]
    action: allow
",
    );
    let ci = Workload {
        uid: 1001,
        cgroup_path: Some("/system.slice/ci-77.service".into()),
        ..Default::default()
    };
    let id = e.identify(&ci, None);
    assert_eq!(id.subject, "uid:1001");
    assert_eq!(id.groups, vec!["ci"]);
    assert_eq!(decide(&e, &id, "SELECT 1").rule(), "by-identity");

    let pg = Workload {
        user: Some("postgres".into()),
        comm: "pg_dump".into(),
        ..Default::default()
    };
    let id = e.identify(&pg, None);
    assert_eq!(id.subject, "unix:postgres");
    assert_eq!(decide(&e, &id, "SELECT 1").rule(), "inline");
    let mut other = pg.clone();
    other.comm = "psql".into();
    assert_eq!(
        decide(&e, &e.identify(&other, None), "SELECT 1").rule(),
        "default"
    );
    // No workload (not intercepted): workload rules never match.
    assert_eq!(
        decide(&e, &who("unix:postgres", &[]), "SELECT 1").rule(),
        "default"
    );

    let pod = Workload {
        cgroup_path: Some(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b9a2d3e_1111_2222_3333_444455556666.slice/cri-containerd-abc.scope".into(),
        ),
        ..Default::default()
    };
    assert_eq!(e.identify(&pod, None).groups, vec!["pod-group"]);
}

#[test]
fn identify_with_token_claims() {
    let e = engine(
        "
identities:
  - name: corp
    oidc: {issuer: \"https://idp.example/\", audience: airlock}
    groups: [employees]
  - name: other
    oidc: {issuer: \"https://other.example\", audience: airlock}
    groups: [outsiders]
",
    );
    let claims = token("corp", "https://idp.example/", "alice", &["dba"], &[]);
    let id = e.identify(&Workload::default(), Some(&claims));
    assert_eq!(id.subject, "alice");
    assert_eq!(id.groups, vec!["dba", "employees"]);
    assert_eq!(id.token.as_ref(), Some(&claims));
    // Same issuer, but accepted by another identity entry (another audience): that entry's
    // groups only.
    let other = token("other", "https://idp.example/", "alice", &[], &[]);
    assert_eq!(
        e.identify(&Workload::default(), Some(&other)).groups,
        vec!["outsiders"]
    );
}

/// Verified claims as the OIDC verifier hands them over.
fn token(
    identity: &str,
    issuer: &str,
    subject: &str,
    groups: &[&str],
    claims: &[(&str, &str)],
) -> TokenClaims {
    TokenClaims {
        subject: subject.into(),
        issuer: issuer.into(),
        identity: identity.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expires_at: UNIX_EPOCH + Duration::from_secs(4_000_000_000),
    }
}

const TOKEN_RULES: &str = "
identities:
  - name: ci
    oidc: {issuer: \"https://idp.example\", audience: airlock}
    groups: [ci]
  - name: ops-host
    workload: {users: [root]}
    groups: [ops]
rules:
  - name: token-only
    groups: [ci]
    require: [token]
    classes: [read]
    tables: [reports]
    action: allow
  - name: workload-only
    require: [workload]
    groups: [ops]
    classes: [read]
    tables: [metrics]
    action: allow
  - name: both
    require: [token, workload]
    classes: [read]
    tables: [secrets]
    action: allow
  - name: deploy-from-main
    claims: {repository: \"acme/*\", ref: refs/heads/main}
    classes: [write]
    action: allow
";

#[test]
fn rules_can_require_a_token_a_workload_or_both() {
    let e = engine(TOKEN_RULES);
    let root = Workload {
        uid: 0,
        user: Some("root".into()),
        ..Workload::default()
    };
    let ci = token("ci", "https://idp.example", "repo:acme/app", &[], &[]);
    let with_token = e.identify(&root, Some(&ci));
    let without = e.identify(&root, None);
    assert!(with_token.groups.contains(&"ci".to_string()));
    assert!(with_token.groups.contains(&"ops".to_string()));

    // A token is required: the same workload without one does not match.
    assert_eq!(
        decide(&e, &with_token, "SELECT * FROM reports").rule(),
        "token-only"
    );
    let d = decide(&e, &without, "SELECT * FROM reports");
    assert_eq!(d.rule(), "default");
    assert_eq!(d.action(), "deny");
    // Even with the group granted some other way, no token means no match.
    let mut forged = without.clone();
    forged.groups.push("ci".into());
    assert_eq!(
        decide(&e, &forged, "SELECT * FROM reports").rule(),
        "default"
    );

    // A workload is required: an unintercepted caller (no kernel record) does not match.
    assert_eq!(
        decide(&e, &without, "SELECT * FROM metrics").rule(),
        "workload-only"
    );
    let mut no_workload = without.clone();
    no_workload.workload = None;
    assert_eq!(
        decide(&e, &no_workload, "SELECT * FROM metrics").rule(),
        "default"
    );

    // Both.
    assert_eq!(
        decide(&e, &with_token, "SELECT * FROM secrets").rule(),
        "both"
    );
    assert_eq!(
        decide(&e, &without, "SELECT * FROM secrets").rule(),
        "default"
    );
    let mut token_no_workload = with_token.clone();
    token_no_workload.workload = None;
    assert_eq!(
        decide(&e, &token_no_workload, "SELECT * FROM secrets").rule(),
        "default"
    );

    // `explain` names the filter that failed.
    let x = e.explain(&Request {
        identity: &without,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, "SELECT * FROM reports"),
    });
    assert!(x.trace[0].result.contains("no token"), "{:?}", x.trace[0]);
}

#[test]
fn ci_claims_match_by_glob() {
    let e = engine(TOKEN_RULES);
    let root = Workload {
        uid: 0,
        user: Some("root".into()),
        ..Workload::default()
    };
    let claims = |repo: &str, r#ref: &str| {
        token(
            "ci",
            "https://idp.example",
            "ci",
            &[],
            &[("repository", repo), ("ref", r#ref), ("workflow", "deploy")],
        )
    };
    let write = "INSERT INTO t VALUES (1)";
    let main = e.identify(&root, Some(&claims("acme/app", "refs/heads/main")));
    assert_eq!(decide(&e, &main, write).rule(), "deploy-from-main");
    assert_eq!(decide(&e, &main, write).action(), "allow");
    // Another branch, another org, a prefix that only looks alike: no match.
    for (repo, r) in [
        ("acme/app", "refs/heads/feature"),
        ("evil/app", "refs/heads/main"),
        ("acme", "refs/heads/main"),
        ("acme/app", "refs/heads/main2"),
    ] {
        let id = e.identify(&root, Some(&claims(repo, r)));
        assert_eq!(decide(&e, &id, write).rule(), "default", "{repo} {r}");
    }
    // A claim the token lacks does not match.
    let partial = token(
        "ci",
        "https://idp.example",
        "ci",
        &[],
        &[("repository", "acme/app")],
    );
    let id = e.identify(&root, Some(&partial));
    assert_eq!(decide(&e, &id, write).rule(), "default");
    // No token at all: no match.
    assert_eq!(
        decide(&e, &e.identify(&root, None), write).rule(),
        "default"
    );
}

#[test]
fn token_requirements_need_an_oidc_identity_and_valid_fields() {
    let rule = |extra: &str| {
        format!(
            "
rules:
  - name: r
    classes: [read]
{extra}    action: allow
"
        )
    };
    let e = parse_err(&rule("    require: [token]\n"));
    assert!(
        e.contains("require") && e.contains("no identity has `oidc`"),
        "{e}"
    );
    let e = parse_err(&rule("    claims: {repository: \"a/*\"}\n"));
    assert!(e.contains("claims") && e.contains("oidc"), "{e}");
    let e = parse_err(&rule("    require: [password]\n"));
    assert!(e.contains("password"), "{e}");
    let e = parse_err(&format!(
        "identities:\n  - name: i\n    oidc: {{issuer: \"https://x\", audience: a}}\n{}",
        rule("    claims: {\"\": x}\n")
    ));
    assert!(e.contains("claim name"), "{e}");
}

#[test]
fn time_windows() {
    let e = engine(
        "
rules:
  - name: office-hours
    classes: [read]
    time: [{days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"17:00\", utc_offset: \"+02:00\"}]
    action: allow
  - name: night
    classes: [read]
    time: [{from: \"22:00\", to: \"06:00\"}]
    action: allow
",
    );
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    // 08:00 UTC on a Monday = 10:00 at +02:00.
    let monday = 1_763_251_200; // 2025-11-16 00:00 UTC is a Sunday; +1 day = Monday
    let mon_0800 = monday + 86_400 + 8 * 3600;
    let id = who("a", &[]);
    let req = Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, "SELECT 1"),
    };
    assert_eq!(
        e.evaluate_at(&req, at(mon_0800)).decision.rule(),
        "office-hours"
    );
    // 16:00 UTC = 18:00 local: closed.
    assert_eq!(
        e.evaluate_at(&req, at(mon_0800 + 8 * 3600)).decision.rule(),
        "default"
    );
    // Sunday 10:00 local: closed; 23:00 UTC any day: night window; 05:00 UTC: still night.
    assert_eq!(
        e.evaluate_at(&req, at(monday + 8 * 3600)).decision.rule(),
        "default"
    );
    assert_eq!(
        e.evaluate_at(&req, at(monday + 23 * 3600)).decision.rule(),
        "night"
    );
    assert_eq!(
        e.evaluate_at(&req, at(monday + 5 * 3600)).decision.rule(),
        "night"
    );
    let _ = SystemTime::now();
}

#[test]
fn validation_errors_name_line_and_field() {
    // Unknown key inside a rule: serde reports its line.
    let err = parse_err("rules:\n  - name: r\n    action: allow\n    clases: [read]\n");
    assert!(err.contains("t.yaml:14:"), "{err}");
    assert!(err.contains("clases"), "{err}");
    // Bad class value.
    let err = parse_err("rules:\n  - name: r\n    action: allow\n    classes: [reads]\n");
    assert!(err.contains("t.yaml:14:"), "{err}");
    // Bad duration.
    let err = parse_err(
        "rules:\n  - name: r\n    action: review\n    review:\n      approvers: [dba]\n      timeout: 5 minutes\n",
    );
    assert!(err.contains("t.yaml:16:"), "{err}");
    assert!(err.contains("duration") || err.contains("unit"), "{err}");
    // Bad time of day.
    let err = parse_err("rules:\n  - name: r\n    action: allow\n    time: [{from: \"25:00\"}]\n");
    assert!(err.contains("t.yaml:14:") && err.contains("HH:MM"), "{err}");
    // Cross-field errors name the field.
    let err = parse_err("rules:\n  - name: r\n    targets: [nope]\n    action: allow\n");
    assert!(
        err.contains("rules[0] (r).targets[0]") && err.contains("nope"),
        "{err}"
    );
    let err = parse_err("rules:\n  - name: r\n    action: allow\n    mask: [nope]\n");
    assert!(err.contains("rules[0] (r).mask[0]"), "{err}");
    let err = parse_err("rules:\n  - name: r\n    action: review\n");
    assert!(err.contains("rules[0] (r).review"), "{err}");
    let err = parse_err("rules:\n  - name: r\n    action: allow\n    kinds: [selec]\n");
    assert!(err.contains("kinds[0]") && err.contains("selec"), "{err}");
    let err = parse_err("rules:\n  - name: a\n    action: allow\n  - name: a\n    action: deny\n");
    assert!(
        err.contains("rules[1] (a).name") && err.contains("duplicate"),
        "{err}"
    );
    let err = parse_err(
        "rules:\n  - name: r\n    action: review\n    review: {approvers: [dba], on_timeout: escalate}\n",
    );
    assert!(err.contains("escalate_to"), "{err}");
    let err = parse_err("identities:\n  - name: all\n    workload: {}\n    groups: [x]\n");
    assert!(err.contains("identities[0] (all).workload"), "{err}");
    let err = parse_err("default: maybe\n");
    assert!(err.contains("t.yaml:11:"), "{err}");
}

#[test]
fn bad_policy_never_builds_an_engine() {
    // A Config built in code (not through `parse`) is validated by Engine::new too.
    let text = format!("{TARGETS}rules:\n  - name: r\n    action: allow\n");
    let mut config = Config::parse(Path::new("t.yaml"), &text).expect("valid");
    config.rules[0].targets = vec!["missing".into()];
    let err = Engine::new(&config).expect_err("must fail");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn limits_are_checked_before_parsing_and_reported() {
    let e = engine("rules:\n  - name: r\n    classes: [read]\n    action: allow\n");
    let id = who("a", &[]);
    let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    let v = e.evaluate(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, &deep),
    });
    assert_eq!(v.decision.action(), "deny");
    assert!(v.classification.limit.is_some());
    match &v.decision {
        Decision::Deny { reason, .. } => assert!(reason.contains("nest"), "{reason}"),
        d => panic!("{d:?}"),
    }
    let long = format!("SELECT '{}'", "x".repeat(2 << 20));
    let c = e.classify(&Command::sql(Dialect::Postgres, &long));
    assert_eq!(c.class, Class::Unknown);
    assert!(c.limit.as_deref().unwrap_or("").contains("bytes"));
}

/// Long operator chains build ASTs as deep as they are long; walking and dropping those
/// recurses. On a thread with a small stack (smaller than tokio's 2 MiB workers), none of
/// these may overflow: they are either rejected by the pre-parse limits or safely parsed.
#[test]
fn adversarial_shapes_do_not_overflow_the_stack() {
    let inputs: Vec<String> = vec![
        format!("SELECT 1{}", "+1".repeat(3_000)),
        format!("SELECT 1{}", "+1".repeat(100_000)),
        format!("SELECT {}1", "NOT ".repeat(5_000)),
        format!("SELECT {}1", "- ".repeat(5_000)),
        format!("SELECT 1{}", "::int".repeat(3_000)),
        format!("SELECT a{}", "[1]".repeat(3_000)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(2_000),
            " END".repeat(2_000)
        ),
        format!("SELECT * FROM t WHERE a = 1{}", " OR a = 1".repeat(1_000)),
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}", "ARRAY[".repeat(5_000)),
        format!("{}SELECT 1", "WITH a AS (".repeat(2_000)),
        "SELECT 1 UNION SELECT 1 ".repeat(3_000),
        format!("SELECT (1){}", "+(1)".repeat(50_000)),
        format!("SELECT ((1){})", "||((1))".repeat(50_000)),
        "SELECT 1;".repeat(5_000),
    ];
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let l = Limits::default();
            inputs
                .iter()
                .map(|q| classify(q, Dialect::Postgres, &l).class)
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    let classes = handle.join().expect("no stack overflow or panic");
    // None of these is a write or worse in disguise; what was parsed is read, the rest unknown.
    assert!(
        classes
            .iter()
            .all(|c| matches!(c, Class::Read | Class::Unknown)),
        "{classes:?}"
    );
    assert_eq!(classes[1], Class::Unknown);
    assert_eq!(classes[classes.len() - 3], Class::Unknown);
    assert_eq!(classes[classes.len() - 2], Class::Unknown);
    assert_eq!(classes[classes.len() - 1], Class::Unknown);
}

#[test]
fn explain_reports_trace_and_json_fields() {
    let e = engine(AGENTS);
    let id = who("unix:bot", &["agents"]);
    let x = e.explain(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Postgres,
        command: &Command::sql(
            Dialect::Postgres,
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d JOIN customers c ON true",
        ),
    });
    assert_eq!(x.action, "review");
    assert_eq!(x.rule, "write");
    assert_eq!(x.tables_written, vec!["orders"]);
    assert_eq!(x.tables_read, vec!["customers"]);
    assert_eq!(x.trace[0].result, "no match: classes");
    assert_eq!(x.trace[1].result, "matched");
    let json = serde_json::to_value(&x).expect("json");
    assert_eq!(json["action"], "review");
    assert_eq!(json["rule"], "write");
    assert_eq!(json["classes"], serde_json::json!(["write"]));
    assert_eq!(json["review"]["approvers"], serde_json::json!(["dba"]));
}

#[test]
fn reload_shares_the_cache_and_keeps_old_engine_on_error() {
    let e1 = engine(AGENTS);
    let id = who("a", &["agents"]);
    decide(&e1, &id, "SELECT 42");
    let text = format!("{TARGETS}rules:\n  - name: only\n    classes: [read]\n    action: deny\n");
    let config = Config::parse(Path::new("t.yaml"), &text).expect("valid");
    let e2 = e1.rebuild(&config).expect("rebuild");
    let before = e2.cache_stats();
    assert_eq!(decide(&e2, &id, "SELECT 42").rule(), "only");
    assert_eq!(e2.cache_stats().hits, before.hits + 1);

    let swap = arc_swap::ArcSwap::from_pointee(e1);
    let mut bad = config.clone();
    bad.rules[0].mask = Some(vec!["nope".into()]);
    if let Ok(new) = swap.load().rebuild(&bad) {
        swap.store(Arc::new(new));
    }
    assert_eq!(decide(&swap.load(), &id, "SELECT 1").rule(), "read");
}

#[test]
fn demo_policy_matches_the_design() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo.yaml");
    let config = Config::load(&path).expect("demo policy loads");
    let e = Engine::new(&config).expect("builds");
    // Tests run clients as root in a test cgroup: they must be agents.
    let root = Workload {
        uid: 0,
        user: Some("root".into()),
        cgroup_path: Some("/airlock-test-1234".into()),
        comm: "psql".into(),
        ..Default::default()
    };
    let id = e.identify(&root, None);
    assert!(id.groups.contains(&"agents".to_string()), "{id:?}");
    let decide = |sql: &'static str| {
        e.decide(&Request {
            identity: &id,
            target: "demo-db",
            protocol: Protocol::Postgres,
            command: &Command::sql(Dialect::Postgres, sql),
        })
    };
    match decide("SELECT email FROM customers") {
        Decision::Allow { mask, .. } => assert_eq!(mask, vec!["customer-email"]),
        d => panic!("{d:?}"),
    }
    match decide("UPDATE customers SET email = 'x'") {
        Decision::Review { approvers, .. } => assert_eq!(approvers, vec!["dba"]),
        d => panic!("{d:?}"),
    }
    for sql in [
        "DROP TABLE customers",
        "GRANT ALL ON customers TO public",
        "SET ROLE postgres",
        "COPY customers TO PROGRAM 'curl x'",
        "SELEC 1",
        "SELECT 1; DROP TABLE customers",
    ] {
        assert_eq!(decide(sql).action(), "deny", "{sql}");
    }
    assert_eq!(decide("BEGIN").action(), "allow");
    // Someone not in agents: default deny.
    let stranger = Workload {
        uid: 1234,
        user: Some("mallory".into()),
        ..Default::default()
    };
    let sid = e.identify(&stranger, None);
    let d = e.decide(&Request {
        identity: &sid,
        target: "demo-db",
        protocol: Protocol::Postgres,
        command: &Command::sql(Dialect::Postgres, "SELECT 1"),
    });
    assert_eq!((d.action().as_str(), d.rule()), ("deny", "default"));
}

#[test]
fn engine_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<arc_swap::ArcSwap<Engine>>();
}

#[test]
fn functions_filter_pins_what_an_allow_rule_covers() {
    let e = engine(
        "
rules:
  - name: no-purge
    functions: [\"purge_*\"]
    action: deny
  - name: reads-with-known-functions
    classes: [read]
    functions: [count, lower, \"pg_catalog.*\"]
    action: allow
",
    );
    let id = who("a", &[]);
    assert_eq!(
        decide(&e, &id, "SELECT count(*), lower(x) FROM t").rule(),
        "reads-with-known-functions"
    );
    assert_eq!(
        decide(&e, &id, "SELECT pg_catalog.version()").rule(),
        "reads-with-known-functions"
    );
    assert_eq!(
        decide(&e, &id, "SELECT 1").rule(),
        "reads-with-known-functions"
    );
    // A user-defined function is `read` to the classifier, but not covered by the allow rule.
    assert_eq!(decide(&e, &id, "SELECT my_volatile_fn()").rule(), "default");
    assert_eq!(
        decide(&e, &id, "SELECT public.purge_all()").rule(),
        "no-purge"
    );
}

#[test]
fn a_rule_for_one_kind_of_command_never_matches_another() {
    let e = engine(
        "
rules:
  - name: sql
    sql: {classes: [read, write, ddl, admin, unknown]}
    action: allow
  - name: exec
    exec: {programs: [\"*\"], compound: true}
    action: allow
  - name: shell
    shell: {}
    action: allow
  - name: http
    http: {}
    action: allow
  - name: kube
    kube: {verbs: [get]}
    action: allow
  - name: connect
    connect: {}
    action: allow
",
    );
    let id = who("a", &[]);
    let kube = super::kube::parse("get", "/api/v1/namespaces/d/pods/p").unwrap();
    let http = super::http::parse("GET", "/x").unwrap();
    let commands: Vec<(Protocol, Command<'_>, &str)> = vec![
        (
            Protocol::Postgres,
            Command::sql(Dialect::Postgres, "DROP TABLE t"),
            "sql",
        ),
        (
            Protocol::Ssh,
            Command::Exec {
                line: "rm -rf /tmp/x".into(),
            },
            "exec",
        ),
        (Protocol::Ssh, Command::Shell, "shell"),
        (Protocol::Http, Command::Http(http), "http"),
        (Protocol::Kube, Command::Kube(kube), "kube"),
        (Protocol::Tcp, Command::Connect, "connect"),
    ];
    for (protocol, command, rule) in &commands {
        let x = e.explain(&Request {
            identity: &id,
            target: "db",
            protocol: *protocol,
            command,
        });
        assert_eq!((x.action, x.rule.as_str()), ("allow", *rule), "{command}");
        // Every earlier rule was skipped because it is for another kind of command.
        for step in x.trace.iter().take_while(|s| s.rule != *rule) {
            assert!(
                step.result.starts_with("no match: kind ("),
                "{command}: {} said {}",
                step.rule,
                step.result
            );
        }
    }
    // A who-only rule matches every kind, but never allows an unknown command.
    let any = engine("rules:\n  - name: anyone\n    action: allow\n");
    let unsplittable = Command::Exec {
        line: "for f in *; do rm $f; done".into(),
    };
    let d = any.decide(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Ssh,
        command: &unsplittable,
    });
    assert_eq!((d.action(), d.rule()), (Action::Deny, "default"));
    let d = any.decide(&Request {
        identity: &id,
        target: "db",
        protocol: Protocol::Tcp,
        command: &Command::Connect,
    });
    assert_eq!(d.rule(), "anyone");
}

#[test]
fn rules_have_at_most_one_what_block() {
    let err = parse_err(
        "rules:\n  - name: r\n    exec: {programs: [ls]}\n    http: {}\n    action: allow\n",
    );
    assert!(err.contains("at most one"), "{err}");
    let err = parse_err(
        "rules:\n  - name: r\n    classes: [read]\n    sql: {classes: [read]}\n    action: allow\n",
    );
    assert!(err.contains("either in `sql:`"), "{err}");
    let err = parse_err("rules:\n  - name: r\n    kube: {verbs: [nuke]}\n    action: allow\n");
    assert!(err.contains("unknown verb"), "{err}");
}

#[test]
fn computed_redact_holds_only_where_the_answer_path_redacts() {
    let e = engine(
        "
rules:
  - name: read
    groups: [agents]
    classes: [read]
    action: allow
masking:
  - name: mail
    columns: [\"*.customers.email\"]
    style: redact
    computed: redact
",
    );
    let agent = who("bot", &["agents"]);
    let sql = "SELECT upper(email) FROM customers";
    assert!(matches!(decide(&e, &agent, sql), Decision::Allow { .. }));
    // MySQL's answers are masked by column origin only: a computed value would pass raw.
    let mysql = e.decide(&Request {
        identity: &agent,
        target: "db",
        protocol: Protocol::Mysql,
        command: &Command::sql(Dialect::Mysql, sql),
    });
    assert!(
        matches!(&mysql, Decision::Deny { reason, .. } if reason.contains("computed: refuse")),
        "{mysql:?}"
    );
}

#[test]
fn record_bodies_carries_the_rules_masks_without_except_groups() {
    let e = engine(
        "
rules:
  - name: recorded
    http: {methods: [POST]}
    action: allow
    record_bodies: true
  - name: recorded-narrow
    http: {methods: [PUT]}
    action: allow
    mask: [cards]
    record_bodies: true
  - name: plain
    http: {}
    action: allow
masking:
  - name: email
    detectors: [email]
    style: redact
    except_groups: [dba]
  - name: cards
    detectors: [card]
    style: redact
",
    );
    let eval = |method: &str, groups: &[&str]| {
        let http = super::http::parse(method, "/x").expect("request");
        e.evaluate(&Request {
            identity: &who("a", groups),
            target: "db",
            protocol: Protocol::Http,
            command: &Command::Http(http),
        })
    };
    // A caller exempt from `email` sees raw emails; the audit record still masks them.
    let v = eval("POST", &["dba"]);
    match &v.decision {
        Decision::Allow { mask, .. } => assert_eq!(mask, &vec!["cards"]),
        d => panic!("{d:?}"),
    }
    assert_eq!(
        v.record_bodies,
        Some(vec!["email".to_string(), "cards".to_string()])
    );
    assert_eq!(
        eval("PUT", &[]).record_bodies,
        Some(vec!["cards".to_string()])
    );
    assert_eq!(eval("GET", &[]).record_bodies, None, "not asked: no bodies");
    // `policy explain` says so.
    let put = super::http::parse("PUT", "/x").expect("request");
    let x = e.explain(&Request {
        identity: &who("a", &[]),
        target: "db",
        protocol: Protocol::Http,
        command: &Command::Http(put),
    });
    assert_eq!(x.record_bodies, Some(vec!["cards".to_string()]));
}

#[test]
fn record_bodies_only_on_http_and_kube_rules() {
    let err = parse_err(
        "
rules:
  - name: r
    classes: [read]
    action: allow
    record_bodies: true
",
    );
    assert!(
        err.contains("record_bodies") && err.contains("http"),
        "{err}"
    );
    let e = engine(
        "
rules:
  - name: k
    kube: {verbs: [get]}
    action: allow
    record_bodies: true
",
    );
    let kube = super::kube::parse("get", "/api/v1/namespaces/d/pods/p").expect("request");
    let v = e.evaluate(&Request {
        identity: &who("a", &[]),
        target: "db",
        protocol: Protocol::Kube,
        command: &Command::Kube(kube),
    });
    assert_eq!(
        v.record_bodies,
        Some(Vec::new()),
        "no masking rules: none to apply"
    );
}

/// Column globs match names without regard to case: MySQL reports `Customers.Email` as
/// defined, the lineage folds it, and a rule written either way must see both; PostgreSQL's
/// quoted `"Email"` still matches a rule written for it.
#[test]
fn column_rules_match_names_whatever_their_case() {
    let e = engine(
        "
rules:
  - name: read
    groups: [agents]
    classes: [read]
    action: allow
masking:
  - name: mail
    columns: [\"*.Customers.Email\"]
    style: redact
",
    );
    let agent = who("bot", &["agents"]);
    let my = |sql: &str| {
        e.decide(&Request {
            identity: &agent,
            target: "db",
            protocol: Protocol::Mysql,
            command: &Command::sql(Dialect::Mysql, sql),
        })
    };
    for sql in [
        "SELECT CONCAT(Email, '') FROM Customers",
        "SELECT CONCAT(email, '') FROM customers",
        "INSERT INTO scratch SELECT Email FROM Customers",
        // `@v := …` keeps the value for a later `SELECT @v`.
        "SELECT id FROM Customers WHERE (@v := REPLACE(email, '@', ' at ')) IS NOT NULL",
        // `c` and `C` are two relations to MySQL.
        "SELECT REPLACE(C.id, '@', '') FROM (SELECT 'x' AS id) c, Customers C",
    ] {
        assert!(matches!(my(sql), Decision::Deny { .. }), "{sql}");
    }
    assert!(matches!(
        my("SELECT id FROM Customers WHERE (@v := id) IS NOT NULL"),
        Decision::Allow { .. }
    ));
    for sql in [
        r#"SELECT "Email" || '' FROM "Customers""#,
        r#"SELECT U&"\0045mail" || '' FROM "Customers""#,
    ] {
        assert!(
            matches!(decide(&e, &agent, sql), Decision::Deny { .. }),
            "{sql}"
        );
    }
}
