//! Classification corpus: 200+ statements with their expected kinds, classes and tables,
//! including evasion attempts (comments in odd places, mixed case, quoted identifiers, dollar
//! quoting, Unicode escapes, nested CTEs, statements hidden after a semicolon, writes inside
//! functions and EXPLAIN). Data: tests/data/policy_corpus.txt.

use std::path::Path;

use airlock::config::Config;
use airlock::model::{Class, Command, Dialect, Identity, Protocol};
use airlock::policy::sql::normalize::{self, DECIMAL, INTEGER, STRING};
use airlock::policy::{ClassCache, Engine, Limits, Request, classify};

struct Case {
    line: usize,
    kinds: Vec<String>,
    class: String,
    read: Option<Vec<String>>,
    written: Option<Vec<String>>,
    dialect: Dialect,
    sql: String,
}

fn list(field: &str, prefix: &str, line: usize) -> Option<Vec<String>> {
    let v = field
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("line {line}: expected `{prefix}…`, got `{field}`"))
        .trim();
    if v == "*" {
        return None;
    }
    Some(
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    )
}

fn load() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/policy_corpus.txt");
    let text = std::fs::read_to_string(&path).expect("corpus file");
    let mut cases: Vec<Case> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if let Some(h) = raw.strip_prefix("%%") {
            let f: Vec<&str> = h.split('|').collect();
            assert!(f.len() == 4 || f.len() == 5, "line {line}: bad header");
            let dialect = match f.get(4).map(|s| s.trim()) {
                None => Dialect::Postgres,
                Some("mysql") => Dialect::Mysql,
                Some(d) => panic!("line {line}: unknown dialect {d}"),
            };
            cases.push(Case {
                line,
                kinds: f[0].split(',').map(|s| s.trim().to_string()).collect(),
                class: f[1].trim().to_string(),
                read: list(f[2], "r=", line),
                written: list(f[3], "w=", line),
                dialect,
                sql: String::new(),
            });
        } else if raw.starts_with('#') && cases.last().is_none_or(|c| !c.sql.is_empty()) {
            // Comment between cases.
        } else if let Some(c) = cases.last_mut() {
            if !c.sql.is_empty() {
                c.sql.push('\n');
            }
            c.sql.push_str(raw);
        }
    }
    for c in &mut cases {
        c.sql = c.sql.trim_end_matches('\n').to_string();
    }
    cases
}

#[test]
fn corpus_kinds_classes_tables() {
    let cases = load();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let limits = Limits::default();
    let mut failures = Vec::new();
    for c in &cases {
        let got = classify(&c.sql, c.dialect, &limits);
        let kinds: Vec<String> = got.kinds.iter().map(|k| k.to_string()).collect();
        let mut bad = Vec::new();
        if kinds != c.kinds {
            bad.push(format!("kinds {kinds:?} != {:?}", c.kinds));
        }
        if got.class.as_str() != c.class {
            bad.push(format!("class {} != {}", got.class, c.class));
        }
        if let Some(r) = &c.read
            && &got.tables_read != r
        {
            bad.push(format!("read {:?} != {r:?}", got.tables_read));
        }
        if let Some(w) = &c.written
            && &got.tables_written != w
        {
            bad.push(format!("written {:?} != {w:?}", got.tables_written));
        }
        if !bad.is_empty() {
            failures.push(format!(
                "line {}: {}\n    {}\n    notes: {:?}",
                c.line,
                c.sql.replace('\n', " "),
                bad.join("; "),
                got.notes
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The literal-normalised cache must never change a classification: every corpus statement,
/// and variants of it with other literal values (setting names, table-like strings, quotes,
/// long numbers), classified through one shared cache equal their uncached classification.
#[test]
fn corpus_shape_cache_agrees_with_uncached() {
    let limits = Limits::default();
    let cache = ClassCache::new(4096);
    let ints = ["7", "0", "123456789"];
    let decimals = ["0.5", "99.125"];
    let strings = [
        "'role'",
        "''",
        "'it''s'",
        "'secret'",
        "'; DROP TABLE t; --'",
        "'0'",
    ];
    let mut checked = 0;
    let mut shaped = 0;
    let mut shape = String::new();
    for c in load() {
        let mut texts = vec![c.sql.clone()];
        if normalize::normalize(&c.sql, &mut shape, None).is_some_and(|n| n > 0) {
            shaped += 1;
            for v in 0..strings.len() {
                let (mut i, mut d, mut s) = (v, v, v);
                let mut t = String::new();
                for ch in shape.chars() {
                    match ch {
                        INTEGER => {
                            t.push_str(ints[i % ints.len()]);
                            i += 1;
                        }
                        DECIMAL => {
                            t.push_str(decimals[d % decimals.len()]);
                            d += 1;
                        }
                        STRING => {
                            t.push_str(strings[s % strings.len()]);
                            s += 1;
                        }
                        _ => t.push(ch),
                    }
                }
                texts.push(t);
            }
        }
        for t in texts {
            let cached = cache.classify(c.dialect, &t, &limits);
            assert_eq!(
                *cached,
                classify(&t, c.dialect, &limits),
                "line {}: {t}",
                c.line
            );
            checked += 1;
        }
    }
    let stats = cache.stats();
    assert!(shaped > 50, "only {shaped} corpus statements have literals");
    assert!(
        stats.hits > 100,
        "the shape cache was not exercised: {stats:?}"
    );
    assert!(checked > 500, "{checked}");
}

/// The property the corpus exists for: nothing that is not a plain read is allowed by a rule
/// written for `read`, whatever the disguise.
#[test]
fn corpus_nothing_but_reads_pass_a_read_rule() {
    let text = "
targets:
  - name: db
    protocol: postgres
    addresses: [\"198.18.0.2\"]
    ports: [5432]
rules:
  - name: reads
    classes: [read]
    action: allow
";
    let config = Config::parse(Path::new("corpus.yaml"), text).expect("config");
    let engine = Engine::new(&config).expect("engine");
    let id = Identity::default();
    let mut seen_denied = 0;
    for c in load().iter().filter(|c| c.dialect == Dialect::Postgres) {
        let d = engine.decide(&Request {
            identity: &id,
            target: "db",
            protocol: Protocol::Postgres,
            command: &Command::sql(Dialect::Postgres, &c.sql),
        });
        let expect_allow = c.class == Class::Read.as_str();
        assert_eq!(
            d.action() == "allow",
            expect_allow,
            "line {}: {} -> {d:?}",
            c.line,
            c.sql
        );
        if !expect_allow {
            seen_denied += 1;
        }
    }
    assert!(seen_denied > 100);
}

/// `airlock policy explain --json` and `airlock policy check` on the demo policy, through the
/// real binary (the user-facing contract).
#[test]
fn cli_explain_and_check_on_demo_policy() {
    let bin = env!("CARGO_BIN_EXE_airlock");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo.yaml");
    let run = |sql: &str| -> serde_json::Value {
        let out = std::process::Command::new(bin)
            .args(["policy", "explain", "--config"])
            .arg(&demo)
            .args([
                "--target",
                "demo-db",
                "--identity",
                "unix:root",
                "--group",
                "agents",
            ])
            .args(["--sql", sql, "--json"])
            .output()
            .expect("run airlock");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let v = run("SELECT email FROM customers");
    assert_eq!(v["action"], "allow");
    assert_eq!(v["rule"], "agents-read");
    assert_eq!(v["classes"], serde_json::json!(["read"]));
    assert_eq!(v["mask"], serde_json::json!(["customer-email"]));
    let v = run("UPDATE customers SET email = 'x' WHERE id = 1");
    assert_eq!(v["action"], "review");
    assert_eq!(v["review"]["approvers"], serde_json::json!(["dba"]));
    let v = run("SELECT 1; DROP TABLE customers");
    assert_eq!(v["action"], "deny");
    assert_eq!(v["classes"], serde_json::json!(["read", "ddl"]));
    // Privilege changes are admin, never session housekeeping: denied to agents; a plain
    // session setting stays allowed.
    for sql in [
        "SET ROLE postgres",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION postgres",
        "SET LOCAL SESSION AUTHORIZATION postgres",
        "RESET SESSION AUTHORIZATION",
        "RESET ALL",
        "DISCARD ALL",
        "SET search_path = evil, pg_catalog",
        "SELECT set_config('role', 'postgres', false)",
    ] {
        let v = run(sql);
        assert_eq!(v["action"], "deny", "{sql}: {v}");
        assert_eq!(v["rule"], "agents-deny-rest", "{sql}: {v}");
        assert_eq!(v["classes"], serde_json::json!(["admin"]), "{sql}: {v}");
    }
    assert_eq!(run("SET statement_timeout = '5s'")["action"], "allow");
    let v = run(&format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100)));
    assert_eq!(v["action"], "deny");
    assert!(
        v["limit"].as_str().is_some_and(|l| l.contains("nest")),
        "{v}"
    );

    let ok = std::process::Command::new(bin)
        .args(["policy", "check"])
        .arg(&demo)
        .output()
        .expect("run airlock");
    assert!(ok.status.success());
    let dir = std::env::temp_dir().join(format!("airlock-policy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "targets:\n  - name: db\n    protocol: postgres\n    addresses: [\"198.18.0.2\"]\n    ports: [5432]\nrules:\n  - name: r\n    action: allow\n    clases: [read]\n",
    )
    .expect("write");
    let out = std::process::Command::new(bin)
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .expect("run airlock");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.yaml:9:") && err.contains("clases"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
